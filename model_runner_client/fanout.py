"""`Fanout`: one request to many models at once, each answer or its absence turned into an
`Outcome` within one deadline.

All calls run under one deadline; when it passes, what is left is abandoned (the streams are
reset, the connections stay usable). Nothing a model does escapes as an exception: every call
ends as an Outcome. At most max_concurrent_calls are in flight at once.

A model's verdict is fixed when its answer arrives: an answer received before the deadline is
never a TIMEOUT, however long it takes to read. Answers up to INLINE_BYTES are read on arrival;
larger ones once every call is settled, so reading them never delays another model's answer
(a 16 MB JSON answer read on arrival held the loop 2-4 s and made honest models time out).
Those are not decoded here: each gets a cheap check (JSON scanned without building objects,
~1.5 ms per MiB) while the tick's budget lasts (LATE_READING), and its value is decoded when the
coordinator reads CallResult.output. Decoding them all here made 100 models answering ~4 MiB
of nested JSON add ~8 s to a 1 s tick (benchmarks/heavy_answers.py).

The deadline is an anyio cancel scope. The calls themselves are asyncio futures settled by the
transports' protocols, for measured reasons: at 1,000 models the bare ngh2 transport cost ~30 µs
of CPU per call that way, against ~50 µs with a task per call under `asyncio.gather`, and an
anyio task group cost ~23 µs per call more than `gather` (benchmarks/README.md). A call that
must wait to be sent (connecting, grpclib) has a sending task owned by its transport; `run`
abandons and awaits every one still running before it returns, or when it is cancelled itself.
The library changes no process-wide state: the cyclic GC, once paused here, is left alone.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from model_runner.wire import CALL_PATH

from .connection import ModelConnection
from .encoding import ResultDecoder
from .outcomes import Kind, Outcome, outcome_of_error, read_answer
from .transports import Started

__all__ = ["INLINE_BYTES", "Fanout", "Job"]

logger = logging.getLogger(__name__)

#: Answers up to this size are read as they arrive (~7 ms at worst); larger ones afterwards.
INLINE_BYTES = 256 * 1024
#: Large answers are checked until this many timeouts from the call's start; past it, their
#: verdict is the host's status (a call returns within ~1.2x its timeout whatever the answers
#: weigh: benchmarks/README.md).
LATE_READING = 1.2


@dataclass(frozen=True, slots=True)
class Job:
    connection: ModelConnection
    #: The gRPC-framed CallRequest (transports.call.frame): the same bytes for every model
    #: when the arguments are shared.
    message: bytes


class Fanout:
    def __init__(self, max_concurrent_calls: int) -> None:
        if max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be at least 1")
        self.max_concurrent_calls = max_concurrent_calls

    async def run(self, jobs: Sequence[Job], timeout: float,
                  decoder: ResultDecoder) -> list[Outcome]:
        """Send every job's request and settle each within `timeout` seconds.

        Every transport starts a call at once and hands back its future, settled by its
        protocol when the answer is complete: on an open ngh2 connection no task and no
        coroutine per call, ~30 µs of CPU per call instead of ~50 (benchmarks/README.md); a
        call that must wait to be sent (connecting, grpclib) has a sending task, which `run`
        cancels and awaits if the deadline comes first. At most max_concurrent_calls are in
        flight; each one that ends starts the next.
        """
        count = len(jobs)
        outcomes: list[Outcome | None] = [None] * count
        sent_at = [0] * count
        #: Large answers received in time: (index, bytes, latency), read after the calls.
        received: list[tuple[int, bytes, int]] = []
        started_at = time.monotonic()
        deadline = started_at + timeout
        deadline_ns = time.perf_counter_ns() + int(timeout * 1e9)
        loop = asyncio.get_running_loop()
        all_settled = loop.create_future()
        waiting = collections.deque(range(count))
        in_flight: dict[int, Started] = {}
        limit = self.max_concurrent_calls

        def launch() -> None:
            while waiting and len(in_flight) < limit:
                if time.monotonic() >= deadline:
                    break  # what is left was not sent (NOT_SENT), whatever ran late
                index = waiting.popleft()
                job = jobs[index]
                sent = sent_at[index] = time.perf_counter_ns()
                try:
                    started = job.connection.transport.start(CALL_PATH, job.message, deadline)
                except Exception as exc:
                    outcomes[index] = outcome_of_error(job.connection.endpoint, exc, _since(sent))
                    continue
                started.future.add_done_callback(functools.partial(call_done, index))
                in_flight[index] = started
            if not waiting and not in_flight and not all_settled.done():
                all_settled.set_result(None)

        def call_done(index: int, _: object) -> None:
            started = in_flight.pop(index, None)
            if started is None:
                return  # settled at the deadline below
            finish(index, started)
            launch()

        def finish(index: int, started: Started) -> None:
            if started.arrived > deadline_ns:
                return  # after the deadline: a TIMEOUT, however the loop ran
            job = jobs[index]
            latency = (started.arrived - sent_at[index]) // 1000
            try:
                raw = job.connection.transport.finish(started)
            except Exception as exc:
                outcomes[index] = outcome_of_error(job.connection.endpoint, exc, latency)
                return
            if len(raw) > INLINE_BYTES:
                received.append((index, raw, latency))  # answered in time; read once all settle
            else:
                outcomes[index] = _read(job, raw, latency, decoder)

        try:
            launch()
            # An anyio cancel scope is the deadline (the design's structured concurrency; the
            # calls themselves run without tasks: see the module's docstring).
            with anyio.move_on_after(timeout):
                await all_settled
        finally:  # the deadline, or `run` itself cancelled: nothing it started outlives it
            finished = time.perf_counter_ns()
            waiting.clear()
            pending = list(in_flight.items())
            in_flight.clear()
            senders = []
            for index, started in pending:
                if started.future.done():
                    # Settled by its protocol before the deadline; its callback had not run
                    # yet (a busy loop): the answer counts, as it arrived in time.
                    finish(index, started)
                else:
                    jobs[index].connection.transport.abandon(started)  # RST_STREAM CANCEL
                if started.sender is not None and not started.sender.done():
                    senders.append(started.sender)
            if senders:
                await asyncio.gather(*senders, return_exceptions=True)
        # Large answers: their verdict from a cheap check (JSON scanned, not decoded) while the
        # budget lasts, then from the host's status alone; every value is decoded only when the
        # coordinator reads it (CallResult.output). Decoding here made 100 models answering
        # ~4 MiB of nested JSON add ~12 s to a 1 s tick.
        budget_end = started_at + timeout * LATE_READING
        for index, raw, latency in received:
            check = time.monotonic() < budget_end
            outcomes[index] = _read(jobs[index], raw, latency, decoder, defer=True, check=check)
            await asyncio.sleep(0)  # one at a time: health probes, the orchestrator link
        results: list[Outcome] = []
        for index, outcome in enumerate(outcomes):
            if outcome is None:
                if sent_at[index]:
                    outcome = Outcome(Kind.TIMEOUT,
                                      latency_us=(finished - sent_at[index]) // 1000,
                                      detail=f"no answer within {timeout:g}s")
                else:
                    outcome = Outcome(Kind.NOT_SENT,
                        detail=f"not sent within {timeout:g}s: {self.max_concurrent_calls} calls "
                               "were already in flight (raise max_concurrent_calls)")
            results.append(outcome)
        return results


def _read(job: Job, raw: bytes, latency: int, decoder: ResultDecoder, *, defer: bool = False,
          check: bool = True) -> Outcome:
    try:
        return read_answer(raw, latency, decoder, defer=defer, check=check)
    except Exception as exc:  # a bug of ours must not fail the whole call
        logger.exception("bug: could not read the answer of %s", job.connection.endpoint)
        return Outcome(Kind.CLIENT_BUG, latency_us=latency,
                       detail=f"not counted: a bug in model-runner-client reading the answer "
                              f"({exc!r}); please report it")


def _since(sent: int) -> int:
    return (time.perf_counter_ns() - sent) // 1000


