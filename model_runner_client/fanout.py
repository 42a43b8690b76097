"""`Fanout`: one request to many models at once, each answer or its absence turned into an
`Outcome` within one deadline.

All calls run under one deadline; when it passes, what is left is cancelled (grpclib resets
those streams, the connections stay usable). Nothing a model does escapes as an exception: every
call ends as an Outcome. A semaphore shared by all calls bounds how many are in flight at once.

A model's verdict is fixed when its answer arrives: an answer received before the deadline is
never a TIMEOUT, however long it takes to read. Answers up to INLINE_BYTES are read on arrival;
larger ones once every call is settled, so reading them never delays another model's answer
(a 16 MB JSON answer read on arrival held the loop 2-4 s and made honest models time out). The
cost of that late reading is bounded by the answer limit (the client's
max_receive_message_length, 4 MiB by default): ~30 ms per MiB for the costliest JSON shape
(nested small lists), ~4 ms per MiB for flat numbers, measured here with the cyclic GC paused.

This is the one place that uses asyncio primitives instead of anyio's, for measured reasons:
an anyio task group costs ~23 µs more per call than `asyncio.gather` (346 vs 323 ms per
1,000-model tick, benchmarks/README.md), most of what the client may spend beyond the transport;
and an anyio cancel scope directly around `gather` let a CancelledError escape when grpclib
awaited stream resets during cancellation, where `asyncio.timeout` (3.11) does not. `gather`
owns and awaits every call like a task group; cancelling `run` cancels them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

import anyio
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from model_runner.wire import CALL_PATH, StatusCode, VariantError
from model_runner.wire.lean import parse_call_response

from .connection import ModelConnection, ResponseTooLarge
from .encoding import ResultDecoder
from .results import CallStatus
from .transport_security import UntrustedHost

__all__ = ["INLINE_BYTES", "Fanout", "Job", "Kind", "Outcome"]

logger = logging.getLogger(__name__)

#: Answers up to this size are read as they arrive (~7 ms at worst); larger ones afterwards.
INLINE_BYTES = 256 * 1024


class Kind(Enum):
    """Why a call ended as it did; the client's failure policy reads it."""

    SUCCESS = "success"
    MODEL_FAILURE = "model failure"
    #: The host lost its model instance (FAILED_PRECONDITION): Setup must run again.
    NEEDS_SETUP = "needs setup"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    #: Not sent: the bound on calls in flight held it until the deadline.
    NOT_SENT = "not sent"
    #: The host refused our credentials (token, certificate): the coordinator's configuration.
    REFUSED = "refused"
    #: The host failed the identity check of the security mode: it is not the cruncher's.
    UNTRUSTED = "untrusted"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: CallStatus
    kind: Kind
    output: object = None
    latency_us: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Job:
    connection: ModelConnection
    payload: bytes


# gRPC statuses that mean "did not answer in time" rather than "answered wrongly". Existing
# servers reject a second concurrent call with RESOURCE_EXHAUSTED "Server busy".
_TIMEOUT_STATUSES = {GrpcStatus.DEADLINE_EXCEEDED, GrpcStatus.RESOURCE_EXHAUSTED,
                     GrpcStatus.CANCELLED}


class Fanout:
    def __init__(self, max_concurrent_calls: int) -> None:
        if max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be at least 1")
        self.max_concurrent_calls = max_concurrent_calls
        self._slots = anyio.Semaphore(max_concurrent_calls, fast_acquire=True)

    async def run(self, jobs: Sequence[Job], timeout: float,
                  decoder: ResultDecoder) -> list[Outcome]:
        count = len(jobs)
        outcomes: list[Outcome | None] = [None] * count
        sent_at = [0] * count
        #: Large answers received in time: (index, bytes, latency), read after the calls.
        received: list[tuple[int, bytes, int]] = []
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self._one(index, job, deadline, decoder, outcomes, sent_at,
                                                 received)
                                       for index, job in enumerate(jobs)))
        except TimeoutError:
            pass  # calls without an outcome are settled below
        finished = time.perf_counter_ns()
        for index, raw, latency in received:
            # One at a time, yielding in between (health probes, the orchestrator link).
            with _gc_paused():  # a million small containers: 3x faster without GC passes
                outcomes[index] = _read(jobs[index], raw, latency, decoder)
            await asyncio.sleep(0)
        results: list[Outcome] = []
        for index, outcome in enumerate(outcomes):
            if outcome is None:
                if sent_at[index]:
                    outcome = Outcome(CallStatus.TIMEOUT, Kind.TIMEOUT,
                                      latency_us=(finished - sent_at[index]) // 1000,
                                      detail=f"no answer within {timeout:g}s")
                else:
                    outcome = Outcome(
                        CallStatus.TIMEOUT, Kind.NOT_SENT,
                        detail=f"not sent within {timeout:g}s: {self.max_concurrent_calls} calls "
                               "were already in flight (raise max_concurrent_calls)")
            results.append(outcome)
        return results

    async def _one(self, index: int, job: Job, deadline: float, decoder: ResultDecoder,
                   outcomes: list[Outcome | None], sent_at: list[int],
                   received: list[tuple[int, bytes, int]]) -> None:
        async with self._slots:
            sent = sent_at[index] = time.perf_counter_ns()
            try:
                raw = await job.connection.unary(CALL_PATH, job.payload, deadline)
            except TimeoutError:
                outcomes[index] = _late(sent, "no answer before the deadline")
                return
            except GRPCError as exc:
                outcomes[index] = _from_grpc_error(sent, exc)
                return
            except UntrustedHost as exc:
                outcomes[index] = Outcome(CallStatus.FAILURE, Kind.UNTRUSTED,
                                          latency_us=_since(sent),
                                          detail=f"the host failed the identity check: {exc}")
                return
            except ResponseTooLarge as exc:
                outcomes[index] = Outcome(CallStatus.FAILURE, Kind.MODEL_FAILURE,
                                          latency_us=_since(sent), detail=str(exc))
                return
            except ssl.SSLError as exc:
                outcomes[index] = Outcome(
                    CallStatus.FAILURE, Kind.REFUSED, latency_us=_since(sent),
                    detail=f"TLS failed: {exc}; check the client's TLS settings")
                return
            except (OSError, StreamTerminatedError, ProtocolError) as exc:
                outcomes[index] = Outcome(
                    CallStatus.TIMEOUT, Kind.UNREACHABLE, latency_us=_since(sent),
                    detail=f"unreachable: {type(exc).__name__}: {exc}")
                return
            except Exception as exc:
                # grpclib raises odd errors on a connection closed under a call (e.g. when the
                # model was replaced mid-call); nothing a transport does escapes `call`.
                logger.debug("call to %s ended by %r", job.connection.endpoint, exc)
                outcomes[index] = Outcome(
                    CallStatus.TIMEOUT, Kind.UNREACHABLE, latency_us=_since(sent),
                    detail=f"connection lost: {type(exc).__name__}: {exc}")
                return
            latency = _since(sent)
        if len(raw) > INLINE_BYTES:
            received.append((index, raw, latency))  # answered in time; read once all settle
        else:
            outcomes[index] = _read(job, raw, latency, decoder)


def _read(job: Job, raw: bytes, latency: int, decoder: ResultDecoder) -> Outcome:
    try:
        return read_answer(raw, latency, decoder)
    except Exception as exc:  # a bug of ours must not fail the whole call
        logger.exception("could not read the answer of %s", job.connection.endpoint)
        return Outcome(CallStatus.FAILURE, Kind.MODEL_FAILURE, latency_us=latency,
                       detail=f"could not read the answer: {exc!r}")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_answer(raw: bytes, latency_us: int, decoder: ResultDecoder) -> Outcome:
    try:
        answer = parse_call_response(raw)
    except ValueError as exc:
        return Outcome(CallStatus.FAILURE, Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=f"unreadable response: {exc}")
    # Older hosts send no Status on success; their errors arrive as gRPC statuses instead.
    if answer.code and answer.code != StatusCode.SUCCESS:
        kind = Kind.NEEDS_SETUP if answer.code == StatusCode.FAILED_PRECONDITION \
            else Kind.MODEL_FAILURE
        return Outcome(CallStatus.FAILURE, kind, latency_us=latency_us,
                       detail=f"{answer.code or 'no status'}: {answer.message}")
    try:
        output = decoder(answer.variant_type, answer.value)
    except VariantError as exc:
        return Outcome(CallStatus.FAILURE, Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=f"unreadable result: {exc}")
    except ValueError as exc:
        return Outcome(CallStatus.FAILURE, Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=str(exc))
    return Outcome(CallStatus.SUCCESS, Kind.SUCCESS, output, latency_us)


def _since(sent: int) -> int:
    return (time.perf_counter_ns() - sent) // 1000


def _late(sent: int, detail: str) -> Outcome:
    return Outcome(CallStatus.TIMEOUT, Kind.TIMEOUT, latency_us=_since(sent), detail=detail)


def _from_grpc_error(sent: int, exc: GRPCError) -> Outcome:
    detail = f"gRPC {exc.status.name}: {exc.message or ''}".rstrip(": ")
    if exc.status in _TIMEOUT_STATUSES:
        return _late(sent, detail)
    if exc.status in (GrpcStatus.UNAUTHENTICATED, GrpcStatus.PERMISSION_DENIED):
        return Outcome(CallStatus.FAILURE, Kind.REFUSED, latency_us=_since(sent),
                       detail=f"{detail}; check the client's auth_token / TLS settings")
    if exc.status is GrpcStatus.UNAVAILABLE:
        return Outcome(CallStatus.TIMEOUT, Kind.UNREACHABLE, latency_us=_since(sent),
                       detail=detail)
    return Outcome(CallStatus.FAILURE, Kind.MODEL_FAILURE, latency_us=_since(sent), detail=detail)
