"""What the host does so that a model's way of ending things becomes a status, not an exit.

- `os._exit` called by the submission (at import or in a method) raises `ModelExit`, which
  discovery and the service report like any exception; only the host itself ends the process,
  through `exit_process`.
- `describe` turns any exception into text, even one whose `__str__` raises.

A determined model can still end its process (signals, ctypes); the orchestrator restarts it
and the client reports it. This closes the accidental and the lazy ways.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

__all__ = ["ModelExit", "describe", "exit_process", "install"]

_real_exit = os._exit


class ModelExit(SystemExit):
    """The model called os._exit(): refused, and reported as the model's failure."""


def _refuse_exit(status: int) -> NoReturn:
    raise ModelExit(f"the model called os._exit({status}); a model host ends only when it is "
                    "stopped: return or raise instead")


def install() -> None:
    """Make `os._exit` from model code raise ModelExit (the host process calls this once)."""
    os._exit = _refuse_exit


def exit_process(status: int) -> NoReturn:
    """End the host now, whatever threads the model left behind (flushing logs first)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _real_exit(status)


def describe(exc: BaseException) -> str:
    """`Type: message` of any exception; `__str__` is user code and may itself raise."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except BaseException:
        try:
            text = repr(exc)
        except BaseException:
            text = "(its message could not be read: __str__ and __repr__ raised)"
    return f"{name}: {text}" if text else name
