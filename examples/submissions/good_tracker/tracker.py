"""Predicts the last seen price, nudged by the recent trend."""

from starter_challenge.tracker import TrackerBase


class TrendTracker(TrackerBase):
    def __init__(self, damping: float = 0.5) -> None:
        self.damping = damping
        self.last: dict[str, float] = {}
        self.trend: dict[str, float] = {}

    def tick(self, data):
        for asset, price in data.items():
            previous = self.last.get(asset, price)
            self.trend[asset] = (price - previous) * self.damping
            self.last[asset] = price

    def predict(self, asset, horizon, step=1):
        price = self.last.get(asset, 0.0)
        trend = self.trend.get(asset, 0.0)
        return [price + trend * (i + 1) for i in range(horizon // step)]
