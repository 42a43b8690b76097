"""What one call returns: a `CallResult` per targeted model, gathered in `CallResults`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, overload

from .models import ModelEndpoint

__all__ = ["CallResult", "CallResults", "CallStatus"]


class CallStatus(StrEnum):
    SUCCESS = "SUCCESS"
    #: The model raised, lacks the method, returned something unreadable or not of `returns=`.
    FAILURE = "FAILURE"
    #: No answer within the deadline, unreachable, or skipped while cooling down (see detail).
    TIMEOUT = "TIMEOUT"


@dataclass(frozen=True, slots=True)
class CallResult:
    model_id: str
    status: CallStatus
    #: The decoded result (None unless SUCCESS).
    output: Any
    #: Microseconds from sending the request to receiving the answer (0 when not sent).
    latency_us: int
    #: Which case it was, e.g. "MODEL_FAILED: ValueError: ..." or "skipped while cooling down".
    detail: str
    model_name: str
    cruncher_name: str
    cruncher_id: str
    deployment_id: str
    #: The model as the client held it when called (address, infos).
    endpoint: ModelEndpoint = field(repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is CallStatus.SUCCESS

    @classmethod
    def make(cls, model: ModelEndpoint, status: CallStatus, output: Any = None,
             latency_us: int = 0, detail: str = "") -> CallResult:
        return cls(model.model_id, status, output, latency_us, detail, model.model_name,
                   model.cruncher_name, model.cruncher_id, model.deployment_id, model)


class CallResults(Sequence[CallResult]):
    """One result per targeted model, in target order; also indexable by model_id."""

    __slots__ = ("_by_id", "_results")

    def __init__(self, results: list[CallResult]) -> None:
        self._results = results
        self._by_id = {r.model_id: r for r in results}

    @overload
    def __getitem__(self, key: int) -> CallResult: ...
    @overload
    def __getitem__(self, key: slice) -> Sequence[CallResult]: ...
    @overload
    def __getitem__(self, key: str) -> CallResult: ...

    def __getitem__(self, key: int | slice | str) -> CallResult | Sequence[CallResult]:
        if isinstance(key, str):
            try:
                return self._by_id[key]
            except KeyError:
                raise KeyError(f"no result for model {key!r}: it was not targeted") from None
        return self._results[key]

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[CallResult]:
        return iter(self._results)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_id
        return item in self._results

    def get(self, model_id: str) -> CallResult | None:
        return self._by_id.get(model_id)

    def with_status(self, status: CallStatus) -> list[CallResult]:
        return [r for r in self._results if r.status is status]

    @property
    def outputs(self) -> dict[str, Any]:
        """model_id → output of every successful call."""
        return {r.model_id: r.output for r in self._results if r.status is CallStatus.SUCCESS}

    def counts(self) -> dict[CallStatus, int]:
        counts = dict.fromkeys(CallStatus, 0)
        for r in self._results:
            counts[r.status] += 1
        return counts

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.value}={n}" for s, n in self.counts().items())
        return f"CallResults({len(self)} models: {counts})"
