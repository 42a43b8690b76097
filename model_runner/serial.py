"""Run a model's code one call at a time, in arrival order, on the model's own thread.

Plain functions and coroutine functions alike run on one dedicated thread per model (coroutines
on an event loop of that thread's own), never on the host's loop: a model that spins, `async
def` included, cannot stop health checks or the answers below (an `async def` spinning on the
host's loop once left health unanswered for its whole run).

A call waiting its turn whose deadline passes is never run. A call whose caller gave up (its
deadline passed, it cancelled, its connection closed) keeps its turn until the model's code
returns: the model never sees two calls at once, and is never interrupted mid-body. While such
an abandoned call runs, every call that arrives or waits behind it fails at once with
`ModelBusy` (answered RESOURCE_EXHAUSTED "Server busy", as the deployed host answers every call
that finds its model busy): nobody waits for the abandoned call, so queueing behind it only made
every later caller wait its own deadline. Calls behind a call whose caller still waits keep their
turn.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DeadlinePassed", "ModelBusy", "SerialRunner"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How every busy answer starts: the deployed host's wording, which clients recognise.
BUSY = "Server busy"


class DeadlinePassed(Exception):
    """The caller's deadline passed while the call waited for its turn."""


class ModelBusy(Exception):
    """The model is still running a call whose caller gave up; this call was not run."""


@dataclass(eq=False)
class _Turn:
    """One call's claim on the model: what it runs, and whether its caller still waits."""

    what: str
    expires_at: float | None
    started: float = 0.0
    abandoned: bool = False

    def busy(self) -> ModelBusy:
        running = time.monotonic() - self.started
        return ModelBusy(f"{BUSY}: the model is still running {self.what}, started "
                         f"{running:.1f} s ago, whose caller gave up; this call was not run. "
                         f"Calls run again once {self.what} returns")


#: (what to run, whether it returns a coroutine, the caller's future, the caller's loop).
_Job = tuple[Callable[[], Any], bool, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class SerialRunner:
    def __init__(self, name: str = "model") -> None:
        self._name = name
        #: The turn the model is on (running, or handed over and about to start).
        self._current: _Turn | None = None
        #: Calls waiting for the model, in arrival order.
        self._waiting: deque[tuple[_Turn, asyncio.Future[None]]] = deque()
        # A SimpleQueue hand-off costs ~27 µs a call on uvloop; waking an event loop on the
        # model thread with call_soon_threadsafe cost ~50 (measured on 2 cores, 2026-12-03).
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        #: The model thread's event loop, for coroutines (made on the first one), and the task
        #: it runs, which close() cancels.
        self._model_loop: asyncio.AbstractEventLoop | None = None
        self._model_task: asyncio.Task[Any] | None = None
        # A daemon thread: a model stuck in a C loop must not keep the process alive after drain.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # --- the model thread ----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                fn, is_coroutine, future, loop = job
                try:
                    result: Any = self._run_coroutine(fn, loop) if is_coroutine else fn()
                except BaseException as exc:  # reported to the caller, never kills the thread
                    loop.call_soon_threadsafe(_settle, future, None, exc)
                else:
                    loop.call_soon_threadsafe(_settle, future, result, None)
        finally:
            if self._model_loop is not None:
                self._model_loop.close()

    def _run_coroutine(self, fn: Callable[[], Coroutine[Any, Any, Any]],
                       host_loop: asyncio.AbstractEventLoop) -> Any:
        if self._model_loop is None:
            # The host's kind of loop (uvloop when the host runs on it), owned by this thread.
            self._model_loop = type(host_loop)()
        task = self._model_task = self._model_loop.create_task(fn(), name=f"{self._name}-call")
        try:
            return self._model_loop.run_until_complete(task)
        finally:
            self._model_task = None

    # --- turns, on the host's loop -------------------------------------------------------------

    async def _take_turn(self, turn: _Turn) -> None:
        """Wait for the model; raises ModelBusy or DeadlinePassed instead of waiting in vain."""
        if self._current is not None or self._waiting:
            if self._current is not None and self._current.abandoned:
                raise self._current.busy()
            handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (turn, handed)
            self._waiting.append(entry)
            try:
                await handed
            except asyncio.CancelledError:
                if handed.done() and not handed.cancelled():
                    self._end_turn()  # handed the turn just as its caller left: pass it on
                else:
                    self._waiting.remove(entry)
                raise
        self._current = turn
        if turn.expires_at is not None and time.monotonic() >= turn.expires_at:
            self._end_turn()
            raise DeadlinePassed("the caller's deadline passed while the call waited for its "
                                 "turn")
        turn.started = time.monotonic()

    def _end_turn(self) -> None:
        """The model is free: the first caller still waiting gets it."""
        self._current = None
        while self._waiting:
            turn, handed = self._waiting.popleft()
            if not handed.done():
                self._current = turn
                handed.set_result(None)
                return

    def _abandon(self, turn: _Turn) -> None:
        """The caller of the running call gave up: nobody waits for it, so nobody waits behind
        it either."""
        turn.abandoned = True
        while self._waiting:
            _, handed = self._waiting.popleft()
            if not handed.done():
                handed.set_exception(turn.busy())

    async def _run(self, what: str, fn: Callable[[], Any], is_coroutine: bool,
                   expires_at: float | None, then: Callable[[Any], None] | None) -> Any:
        turn = _Turn(what, expires_at)
        await self._take_turn(turn)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def turn_over(done: asyncio.Future[Any]) -> None:
            # The turn ends when the code returns, not when the caller stops waiting.
            try:
                if then is not None and not done.cancelled() and done.exception() is None:
                    then(done.result())
            finally:
                self._end_turn()

        future.add_done_callback(turn_over)
        self._jobs.put((fn, is_coroutine, future, loop))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                self._abandon(turn)
            raise

    async def run_sync(self, fn: Callable[[], T], *, what: str = "a call",
                       expires_at: float | None = None,
                       then: Callable[[T], None] | None = None) -> T:
        """Run `fn` on the model thread when its turn comes (`expires_at`: time.monotonic()).

        `what` names the call in busy answers. `then(result)` runs on the loop as soon as `fn`
        returns, before the next turn starts and even when the caller has stopped waiting.
        """
        result: T = await self._run(what, fn, False, expires_at, then)
        return result

    async def run_async(
        self, fn: Callable[[], Coroutine[Any, Any, T]], *, what: str = "a call",
        expires_at: float | None = None
    ) -> T:
        """Run `fn()` on the model thread's event loop when its turn comes, to completion even
        when the caller stops waiting (the turn ends when the coroutine does)."""
        result: T = await self._run(what, fn, True, expires_at, None)
        return result

    def close(self) -> None:
        """Stop the model thread after its current job; cancel a coroutine still running."""
        self._jobs.put(None)
        model_loop, task = self._model_loop, self._model_task
        if model_loop is not None and task is not None:
            try:
                model_loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile: the coroutine has ended
                pass


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
