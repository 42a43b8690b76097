from __future__ import annotations

from typing import Any


class TrackerBase:
    """Receives market data on every tick and predicts the next prices of an asset."""

    def tick(self, data: dict[str, Any]) -> None:
        """New market data: e.g. {"BTC": 97000.5, "ETH": 3400.1}."""
        raise NotImplementedError

    def predict(self, asset: str, horizon: int, step: int = 1) -> list[float]:
        """Predicted prices of `asset` for the next `horizon` seconds, one every `step`."""
        raise NotImplementedError


class ExampleTracker(TrackerBase):
    """Shipped with the Crunch as an example: discovery never picks it for a submission."""

    def tick(self, data: dict[str, Any]) -> None:
        pass

    def predict(self, asset: str, horizon: int, step: int = 1) -> list[float]:
        return [0.0] * (horizon // step)
