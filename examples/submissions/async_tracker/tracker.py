import asyncio

from starter_challenge.tracker import TrackerBase


class AsyncTracker(TrackerBase):
    def __init__(self) -> None:
        self.prices: dict[str, float] = {}

    async def tick(self, data):
        self.prices.update(data)

    async def predict(self, asset, horizon, step=1):
        await asyncio.sleep(0.01)
        return [self.prices.get(asset, 0.0)] * (horizon // step)
