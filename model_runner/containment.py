"""What the host does so that a model's way of ending things becomes a status, not an exit.

- `os._exit` called by the submission (at import or in a method) raises `ModelExit`, which
  discovery and the service report like any exception; only the host itself ends the process,
  through `exit_process`.
- `describe` turns any exception into text, even one whose `__str__` raises.
- `die_with_parent` ends a host whose launcher (the local orchestrator, a test) died without
  stopping it: SIGTERM to those left 7 running hosts behind.

A determined model can still end its process (signals, ctypes); the orchestrator restarts it
and the client reports it. This closes the accidental and the lazy ways.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from .wire.errors import describe

__all__ = ["PARENT_PID", "ModelExit", "describe", "die_with_parent", "exit_process",
           "install"]

#: Set by a launcher (model_runner/process.py) to its pid: the host ends when that process does.
PARENT_PID = "MODEL_RUNNER_PARENT_PID"

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


def die_with_parent() -> None:
    """When PARENT_PID is set: SIGTERM (a drain) on the launcher's death (Linux's
    PR_SET_PDEATHSIG), or exit now if it is gone already. Elsewhere, nothing."""
    expected = os.environ.pop(PARENT_PID, "")
    if not expected.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        logging.getLogger(__name__).warning("cannot ask to be stopped with the launcher")
        return
    if os.getppid() != int(expected):  # it died before prctl took effect
        _real_exit(0)
