"""How our entry points (the host, the local orchestrator, the demo, the benchmarks) run their
event loop: on uvloop when it is installed (`pip install 'model-runner[uvloop]'`), unless
MODEL_RUNNER_UVLOOP=0. The libraries never choose: a coordinator owns its loop.

At 1,000 models uvloop cut the client's CPU per call from 73 to 46 µs on the ngh2 transport
(benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "uvloop_enabled"]

T = TypeVar("T")


def uvloop_enabled() -> bool:
    return (os.environ.get("MODEL_RUNNER_UVLOOP", "1") != "0"
            and importlib.util.find_spec("uvloop") is not None)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop when it is enabled."""
    if uvloop_enabled():
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)
