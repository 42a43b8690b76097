"""Implements the right methods but forgets to inherit from the base class."""


class Helper:
    pass


class MyTracker:
    def tick(self, data):
        pass

    def predict(self, asset, horizon, step=1):
        return [1.0]
