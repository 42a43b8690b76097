"""Where the client's models come from: a `ModelSource` drives a `ModelRegistry`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .models import ModelEndpoint

__all__ = ["ModelRegistry", "ModelSource", "StaticModels"]


class ModelRegistry(Protocol):
    """What a model source drives: the client's live model set."""

    def upsert(self, endpoint: ModelEndpoint) -> None: ...
    def remove(self, model_id: str, reason: str, *, deployment_id: str | None = None) -> None: ...
    def model_ids(self) -> set[str]: ...
    def deployment_of(self, model_id: str) -> str | None: ...
    def listed(self) -> None:
        """Call once the complete list of models has been upserted (readiness waits on it)."""


class ModelSource(Protocol):
    """Feeds the client's model set; `run` lives as long as the client (or returns early)."""

    async def run(self, registry: ModelRegistry) -> None: ...

    @property
    def problem(self) -> str | None:
        """Why the source cannot list models right now (None: nothing known to be wrong)."""
        ...


@dataclass
class StaticModels:
    """A fixed list of models (`ModelRunnerClient.from_addresses`)."""

    endpoints: list[ModelEndpoint]
    problem: str | None = None

    async def run(self, registry: ModelRegistry) -> None:
        for endpoint in self.endpoints:
            registry.upsert(endpoint)
        registry.listed()
