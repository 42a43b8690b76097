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

One clock, time.monotonic_ns(), for the deadline, each call's send and arrival and its latency;
the deadline is an anyio cancel scope on the same clock. The calls themselves are asyncio futures
settled by the transports' protocols, not tasks: a task per call under `asyncio.gather`, or an
anyio task group, cost more CPU per call (figures in benchmarks/README.md). A call that must
wait to be sent (connecting, grpclib) has a sending task owned by its transport; `run` abandons
and awaits every one still running before it returns, or when it is cancelled itself. The
library changes no process-wide state: the cyclic GC, once paused here, is left alone.
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

from .answers import read_call_answer
from .connection import ModelConnection
from .encoding import ResultDecoder
from .outcomes import Kind, Outcome
from .transports.call import Call
from .transports.errors import outcome_of_error

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
        calls = _Calls(jobs, timeout, decoder, self.max_concurrent_calls)
        try:
            calls.launch()
            with anyio.CancelScope(deadline=calls.deadline_ns / 1e9):
                await calls.all_settled
        finally:  # the deadline, or `run` itself cancelled: nothing it started outlives it
            ended_ns = time.monotonic_ns()
            await calls.stop()
        await calls.read_large()
        return calls.outcomes_at(ended_ns)


class _Calls:
    """The calls of one `Fanout.run`, by job index: sent as room allows, each settled by its
    future's callback (no task per call), the rest stopped at the deadline."""

    __slots__ = ("all_settled", "deadline_ns", "decoder", "in_flight", "jobs", "limit",
                 "outcomes", "received", "sent_at", "started_ns", "timeout", "waiting")

    def __init__(self, jobs: Sequence[Job], timeout: float, decoder: ResultDecoder,
                 limit: int) -> None:
        self.jobs, self.timeout, self.decoder, self.limit = jobs, timeout, decoder, limit
        self.started_ns = time.monotonic_ns()
        self.deadline_ns = self.started_ns + int(timeout * 1e9)
        self.outcomes: list[Outcome | None] = [None] * len(jobs)
        self.sent_at = [0] * len(jobs)
        #: Large answers received in time: (index, bytes, latency), read after the calls.
        self.received: list[tuple[int, bytes, int]] = []
        self.waiting = collections.deque(range(len(jobs)))
        self.in_flight: dict[int, Call] = {}
        self.all_settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def launch(self) -> None:
        """Send waiting calls while fewer than `limit` are in flight and the deadline holds."""
        waiting, in_flight, deadline = self.waiting, self.in_flight, self.deadline_ns / 1e9
        while waiting and len(in_flight) < self.limit:
            if time.monotonic_ns() >= self.deadline_ns:
                break  # what is left was not sent (NOT_SENT), whatever ran late
            index = waiting.popleft()
            job = self.jobs[index]
            sent = self.sent_at[index] = time.monotonic_ns()
            try:
                started = job.connection.start_call(job.message, deadline)
            except Exception as exc:
                latency = (time.monotonic_ns() - sent) // 1000
                self.outcomes[index] = outcome_of_error(job.connection.endpoint, exc, latency)
                continue
            started.future.add_done_callback(functools.partial(self.call_done, index))
            in_flight[index] = started
        if not waiting and not in_flight and not self.all_settled.done():
            self.all_settled.set_result(None)

    def call_done(self, index: int, _: object) -> None:
        started = self.in_flight.pop(index, None)
        if started is None:
            return  # settled at the deadline (stop)
        self.finish(index, started)
        self.launch()

    def finish(self, index: int, started: Call) -> None:
        """A settled call's outcome, unless its answer came after the deadline (a TIMEOUT,
        however the loop ran)."""
        if started.arrived > self.deadline_ns:
            return
        job = self.jobs[index]
        latency = (started.arrived - self.sent_at[index]) // 1000
        try:
            raw = job.connection.finish_call(started)
        except Exception as exc:
            self.outcomes[index] = outcome_of_error(job.connection.endpoint, exc, latency)
            return
        if len(raw) > INLINE_BYTES:
            self.received.append((index, raw, latency))  # in time; read once all settle
        else:
            self.outcomes[index] = _read(job, raw, latency, self.decoder)

    async def stop(self) -> None:
        """Send nothing more; abandon what is in flight and await its sending tasks."""
        self.waiting.clear()
        pending = list(self.in_flight.items())
        self.in_flight.clear()
        senders = []
        for index, started in pending:
            if started.future.done():
                # Settled by its protocol before the deadline; its callback had not run yet
                # (a busy loop): the answer counts, as it arrived in time.
                self.finish(index, started)
            else:
                self.jobs[index].connection.abandon_call(started)  # RST_STREAM CANCEL
            if started.sender is not None and not started.sender.done():
                senders.append(started.sender)
        if senders:
            await asyncio.gather(*senders, return_exceptions=True)

    async def read_large(self) -> None:
        """Large answers: their verdict from a cheap check (JSON scanned, not decoded) while
        the budget lasts, then from the host's status alone; every value is decoded only when
        the coordinator reads it (CallResult.output). Decoding here made 100 models answering
        ~4 MiB of nested JSON add ~12 s to a 1 s tick."""
        budget_end = self.started_ns + int(self.timeout * LATE_READING * 1e9)
        for index, raw, latency in self.received:
            check = time.monotonic_ns() < budget_end
            self.outcomes[index] = _read(self.jobs[index], raw, latency, self.decoder,
                                         defer=True, check=check)
            await asyncio.sleep(0)  # one at a time: health probes, the orchestrator link

    def outcomes_at(self, ended_ns: int) -> list[Outcome]:
        """Every call's outcome, the calls `run` ended at `ended_ns` included."""
        results: list[Outcome] = []
        for index, outcome in enumerate(self.outcomes):
            if outcome is None:
                if self.sent_at[index]:
                    outcome = Outcome(Kind.TIMEOUT,
                                      latency_us=(ended_ns - self.sent_at[index]) // 1000,
                                      detail=f"no answer within {self.timeout:g}s")
                else:
                    outcome = Outcome(Kind.NOT_SENT, detail=(
                        f"not sent within {self.timeout:g}s: {self.limit} calls were already "
                        "in flight (raise max_concurrent_calls)"))
            results.append(outcome)
        return results


def _read(job: Job, raw: bytes, latency: int, decoder: ResultDecoder, *, defer: bool = False,
          check: bool = True) -> Outcome:
    try:
        return read_call_answer(raw, latency, decoder, defer=defer, check=check)
    except Exception as exc:  # a bug of ours must not fail the whole call
        logger.exception("bug: could not read the answer of %s", job.connection.endpoint)
        return Outcome(Kind.CLIENT_BUG, latency_us=latency,
                       detail=f"not counted: a bug in model-runner-client reading the answer "
                              f"({exc!r}); please report it")
