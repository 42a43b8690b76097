"""What the fan-out drivers share; standard library only, since the existing client's driver
runs in a venv of its own (and cannot import ours)."""

from __future__ import annotations

import resource

BASE = "starter_challenge.tracker.TrackerBase"
ARGUMENT = {"asset": "BTC", "horizon": 60, "step": 5}
PAYLOAD = b'{"asset":"BTC","horizon":60,"step":5}'


def raise_file_limit() -> None:
    """One connection per model (two for the grpcio client): 5,000 models need the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def measure_rusage() -> dict[str, float]:
    """Peak resident memory of this process, in MB."""
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
