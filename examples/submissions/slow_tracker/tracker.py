"""Computes for a long time in plain (blocking) Python: the host must stay responsive."""

import time

from starter_challenge.tracker import TrackerBase


class SlowTracker(TrackerBase):
    def __init__(self, delay: float = 2.0) -> None:
        self.delay = delay
        self.calls = 0

    def tick(self, data):
        pass

    def predict(self, asset, horizon, step=1, delay=None):
        self.calls += 1
        time.sleep(self.delay if delay is None else delay)
        return [float(self.calls)] * (horizon // step)
