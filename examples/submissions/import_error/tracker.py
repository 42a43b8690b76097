import a_package_that_is_not_installed  # noqa: F401
from starter_challenge.tracker import TrackerBase


class Tracker(TrackerBase):
    def tick(self, data):
        pass

    def predict(self, asset, horizon, step=1):
        return [1.0]
