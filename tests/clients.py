"""The clients tests build, in one place: endpoints of hosts, a client over fixed addresses, a
client of an orchestrator, a model source a test drives by hand, and the hostile HTTP/2 host
(tests/hostile_host.py) as a process.

Every factory starts from the same defaults (BASE, a 2 s timeout) and takes any keyword of
ModelRunnerClient on top; the PKI lives in tests/certs.py and tests/deployment.py, the host
processes in tests/hosts.py, the fixtures sharing them in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

from model_runner.process import free_port, start_script
from model_runner_client import ModelEndpoint, ModelRunnerClient
from tests.hosts import BASE, EXAMPLES, ROOT, HostProcess

__all__ = ["FAST_SERVER", "address_client", "endpoint", "free_port", "hostile", "models_at",
           "orchestrator_client", "start_fast_server"]


def endpoint(at: HostProcess | int, model_id: str, deployment: str = "d",
             **infos: str) -> ModelEndpoint:
    """A model served by host `at` (a HostProcess or a port) on 127.0.0.1."""
    port = at if isinstance(at, int) else at.port
    assert port is not None, "the host is not started"
    return ModelEndpoint(model_id, "127.0.0.1", port, deployment, infos)


def models_at(at: HostProcess | int, count: int, prefix: str = "m") -> list[ModelEndpoint]:
    """`count` models served by one host: m0, m1, ..."""
    return [endpoint(at, f"{prefix}{i}") for i in range(count)]


def address_client(models: Iterable[ModelEndpoint | str], **options: Any) -> ModelRunnerClient:
    """A client over a fixed list of models (`from_addresses`)."""
    options.setdefault("timeout", 2.0)
    options.setdefault("base_classname", BASE)
    return ModelRunnerClient.from_addresses(models, **options)


def orchestrator_client(port: int, crunch_id: str = "crunch",
                        **options: Any) -> ModelRunnerClient:
    """A client of the orchestrator (or tests/peer.py's scripted one) on 127.0.0.1:`port`,
    reconnecting fast."""
    options.setdefault("timeout", 2.0)
    options.setdefault("base_classname", BASE)
    client = ModelRunnerClient(crunch_id, "127.0.0.1", port, **options)
    assert client.link is not None
    client.link.backoff_initial = 0.05
    return client


#: benchmarks/fast_server.py: a DynamicSubclassService answering in a set delay, of a set weight.
FAST_SERVER = ROOT / "benchmarks" / "fast_server.py"


def start_fast_server(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    """benchmarks/fast_server.py ARGS on a free port (the examples importable); (process, port)."""
    return start_script(FAST_SERVER, *args, python_path=[EXAMPLES, ROOT])


@contextlib.contextmanager
def hostile(mode: str) -> Iterator[int]:
    """tests/hostile_host.py in `mode`, as its own process; yields its port."""
    proc, port = start_script(ROOT / "tests" / "hostile_host.py", mode, python_path=[ROOT])
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


class ScriptedSource:
    """A ModelSource a test drives by hand, through the registry the client gives it (the
    hooks a source uses are not the coordinator's API)."""

    problem = None

    def __init__(self, endpoints: list[ModelEndpoint]) -> None:
        self.endpoints = endpoints
        self.registry: Any = None

    async def run(self, registry: Any) -> None:
        self.registry = registry
        for model in self.endpoints:
            registry.upsert(model)
        registry.listed()
