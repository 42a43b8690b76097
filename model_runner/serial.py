"""Run a model's code one call at a time, in arrival order, off the event loop.

Plain functions run on one dedicated thread per model (so models with thread-affine state keep
working and health checks stay answered); coroutine functions run on the loop, in a task this
runner owns. A call waiting its turn whose deadline passes is never run. A call whose caller gave
up keeps its turn until the model's code returns, `def` and `async def` alike: the model never
sees two calls at once, and is never interrupted mid-body (a cancelled coroutine left model
state half-updated).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["DeadlinePassed", "SerialRunner"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DeadlinePassed(Exception):
    """The caller's deadline passed while the call waited for its turn."""


_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class SerialRunner:
    def __init__(self, name: str = "model") -> None:
        self._name = name
        self._lock = asyncio.Lock()  # FIFO: waiters acquire in arrival order
        #: Coroutine calls running (owned here: their callers may have stopped waiting).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # A daemon thread: a model stuck in a C loop must not keep the process alive after drain.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future, loop = job
            try:
                result: Any = fn()
            except BaseException as exc:  # reported to the caller, never kills the thread
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    async def run_sync(self, fn: Callable[[], T], *, expires_at: float | None = None,
                       then: Callable[[T], None] | None = None) -> T:
        """Run `fn` on the model thread when its turn comes (`expires_at`: time.monotonic()).

        `then(result)` runs on the loop as soon as `fn` returns, before the next turn starts and
        even when the caller has stopped waiting.
        """
        await self._lock.acquire()
        try:
            _check(expires_at)
            loop = asyncio.get_running_loop()
            future: asyncio.Future[T] = loop.create_future()
            self._jobs.put((fn, future, loop))
        except BaseException:
            self._lock.release()
            raise

        def turn_over(done: asyncio.Future[T]) -> None:
            # The turn ends when the code returns, not when the caller stops waiting.
            try:
                if then is not None and not done.cancelled() and done.exception() is None:
                    then(done.result())
            finally:
                self._lock.release()

        future.add_done_callback(turn_over)
        return await asyncio.shield(future)

    async def run_async(
        self, fn: Callable[[], Coroutine[Any, Any, T]], *, expires_at: float | None = None
    ) -> T:
        """Run `fn()` on the loop when its turn comes, to completion even when the caller stops
        waiting (the turn ends when the coroutine does)."""
        await self._lock.acquire()
        try:
            _check(expires_at)
            task = asyncio.get_running_loop().create_task(fn(), name=f"{self._name}-call")
        except BaseException:
            self._lock.release()
            raise
        self._tasks.add(task)

        def turn_over(done: asyncio.Task[T]) -> None:
            self._tasks.discard(done)
            self._lock.release()

        task.add_done_callback(turn_over)
        return await asyncio.shield(task)

    def close(self) -> None:
        """Stop the model thread after its current job; cancel a coroutine still running."""
        self._jobs.put(None)
        for task in self._tasks:
            task.cancel()


def _check(expires_at: float | None) -> None:
    if expires_at is not None and time.monotonic() >= expires_at:
        raise DeadlinePassed("the caller's deadline passed while the call waited for its turn")


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
