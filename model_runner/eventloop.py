"""How our entry points (the host, the local orchestrator, the demo, the benchmarks) run their
event loop: on uvloop when it is installed (`pip install 'model-runner-client[uvloop]'`, or
'model-runner[uvloop]' for a host alone), unless MODEL_RUNNER_UVLOOP=0. The libraries never
choose: a coordinator owns its loop.

At 1,000 models uvloop cut the client's CPU per call from 73 to 46 µs on the ngh2 transport
(benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple

import anyio

__all__ = ["Interrupted", "run", "run_until_signalled", "uvloop_enabled"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def uvloop_enabled() -> bool:
    return (os.environ.get("MODEL_RUNNER_UVLOOP", "1") != "0"
            and importlib.util.find_spec("uvloop") is not None)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop when it is enabled."""
    if uvloop_enabled():
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)


class Interrupted(Exception):
    """A signal stopped `run_until_signalled`; the run's cleanup has completed."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


async def _until_signalled(main: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    received: list[int] = []
    outcome: list[T] = []
    async with anyio.create_task_group() as group:
        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM,
                                            signal.SIGHUP) as signals:
                async for signum in signals:
                    received.append(signum)
                    group.cancel_scope.cancel()
                    return

        group.start_soon(watch)
        outcome.append(await main(*args))
        group.cancel_scope.cancel()
    if received:
        raise Interrupted(received[0])
    return outcome[0]


def run_until_signalled(main: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """`anyio.run(main, *args)` (on uvloop when enabled), where SIGINT, SIGTERM and SIGHUP
    cancel `main`, so its cleanup runs (the local orchestrator stops every host), then raise
    Interrupted. SIGTERM used to kill the process with its hosts left running."""
    return anyio.run(_until_signalled, main, *args,
                     backend_options={"use_uvloop": uvloop_enabled()})
