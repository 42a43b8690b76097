"""What one call returns: a `CallResult` per targeted model, gathered in `CallResults`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar, overload

from .models import ModelEndpoint

__all__ = ["CallResult", "CallResults", "CallStatus", "DeferredOutput"]


class CallStatus(StrEnum):
    """What a coordinator sees: the three statuses of the old API's ModelPredictResult (the
    outcome table maps every Kind to one)."""

    SUCCESS = "SUCCESS"
    #: The model raised, lacks the method, returned something unreadable or not of `returns=`.
    FAILURE = "FAILURE"
    #: No answer within the deadline, unreachable, or skipped while cooling down (see detail).
    TIMEOUT = "TIMEOUT"


class DeferredOutput:
    """A large answer received in time and checked, decoded when first read (`decode` raises
    ValueError for a value that does not match `returns=`)."""

    __slots__ = ("_decode", "_type", "_value")

    def __init__(self, decode: Callable[[int | None, bytes], Any], variant_type: int | None,
                 value: bytes) -> None:
        self._decode, self._type, self._value = decode, variant_type, value

    def resolve(self) -> Any:
        return self._decode(self._type, self._value)


_UNREAD = object()

#: The type of a result's output: what `returns=` names (Any without it).
T = TypeVar("T")


@dataclass(frozen=True, slots=True, repr=False)
class CallResult(Generic[T]):
    model_id: str
    status: CallStatus
    #: The result, or a DeferredOutput (read through `output`).
    raw_output: Any
    #: Microseconds from sending the request to receiving the answer (0 when not sent).
    latency_us: int
    #: Which case it was, e.g. "MODEL_FAILED: ValueError: ..." or "skipped while cooling down".
    detail: str
    model_name: str
    cruncher_name: str
    cruncher_id: str
    deployment_id: str
    #: The model as the client held it when called (address, infos).
    endpoint: ModelEndpoint = field(compare=False)
    _decoded: Any = field(default=_UNREAD, compare=False)

    @property
    def output(self) -> T:
        """The decoded result (None unless SUCCESS). An answer over 256 KiB is decoded here,
        the first time it is read (the call only checked it): a tick's length never depends on
        what the answers weigh. Raises ValueError if it does not match `returns=`."""
        raw = self.raw_output
        if not isinstance(raw, DeferredOutput):
            return raw  # type: ignore[no-any-return]
        if self._decoded is _UNREAD:
            object.__setattr__(self, "_decoded", raw.resolve())
        return self._decoded  # type: ignore[no-any-return]

    @property
    def ok(self) -> bool:
        return self.status is CallStatus.SUCCESS

    def __repr__(self) -> str:
        output = "<not read yet>" if isinstance(self.raw_output, DeferredOutput) and \
            self._decoded is _UNREAD else repr(self.output)
        return (f"CallResult(model_id={self.model_id!r}, status={self.status!r}, "
                f"output={output}, latency_us={self.latency_us}, detail={self.detail!r}, "
                f"model_name={self.model_name!r}, cruncher_name={self.cruncher_name!r}, "
                f"cruncher_id={self.cruncher_id!r}, deployment_id={self.deployment_id!r})")

    @classmethod
    def make(cls, model: ModelEndpoint, status: CallStatus, output: Any = None,
             latency_us: int = 0, detail: str = "") -> CallResult[Any]:
        return cls(model.model_id, status, output, latency_us, detail, model.model_name,
                   model.cruncher_name, model.cruncher_id, model.deployment_id, model)


class CallResults(Sequence[CallResult[T]]):
    """One result per targeted model, in target order; also indexable by model_id."""

    __slots__ = ("_by_id", "_results")

    def __init__(self, results: list[CallResult[T]]) -> None:
        self._results = results
        self._by_id = {r.model_id: r for r in results}

    @overload
    def __getitem__(self, key: int) -> CallResult[T]: ...
    @overload
    def __getitem__(self, key: slice) -> Sequence[CallResult[T]]: ...
    @overload
    def __getitem__(self, key: str) -> CallResult[T]: ...

    def __getitem__(self, key: int | slice | str) -> CallResult[T] | Sequence[CallResult[T]]:
        if isinstance(key, str):
            try:
                return self._by_id[key]
            except KeyError:
                raise KeyError(f"no result for model {key!r}: it was not targeted") from None
        return self._results[key]

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[CallResult[T]]:
        return iter(self._results)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_id
        return item in self._results

    def get(self, model_id: str) -> CallResult[T] | None:
        return self._by_id.get(model_id)

    def with_status(self, status: CallStatus) -> list[CallResult[T]]:
        return [r for r in self._results if r.status is status]

    @property
    def outputs(self) -> dict[str, T]:
        """model_id → output of every successful call."""
        return {r.model_id: r.output for r in self._results if r.status is CallStatus.SUCCESS}

    def counts(self) -> dict[CallStatus, int]:
        counts: dict[CallStatus, int] = dict.fromkeys(CallStatus, 0)
        for r in self._results:
            counts[r.status] += 1
        return counts

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.value}={n}" for s, n in self.counts().items())
        return f"CallResults({len(self)} models: {counts})"
