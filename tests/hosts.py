"""Real model host subprocesses for tests: `python -m model_runner` on `[::]` (IPv4 and IPv6,
the deployed default form), port 0, reached over 127.0.0.1."""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from model_runner.process import ModelHostProcess, host_environment
from model_runner.wire import (
    Argument,
    CallRequest,
    DynamicSubclassServiceStub,
    KwArgument,
    SetupRequest,
    StatusCode,
    decode_variant,
    encode_value,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SUBMISSIONS = EXAMPLES / "submissions"
TEST_SUBMISSIONS = ROOT / "tests" / "submissions"
BASE = "starter_challenge.tracker.TrackerBase"


#: The event loops a host runs on (MODEL_RUNNER_UVLOOP picks one; tests against the host's
#: defences run on each).
HOST_LOOPS = ("asyncio", "uvloop")


def loop_env(loop: str) -> dict[str, str]:
    """The host's environment for one of HOST_LOOPS."""
    return {"MODEL_RUNNER_UVLOOP": "1" if loop == "uvloop" else "0"}


def host_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return host_environment([EXAMPLES], extra)


class HostProcess(ModelHostProcess):
    """A model host for tests, with the examples' Crunch package on its path."""

    def __init__(self, code_directory: Path, *args: str, env: dict[str, str] | None = None,
                 host: str | None = "::", port: int = 0):
        super().__init__(code_directory, args, env=env, python_path=[EXAMPLES], host=host,
                         port=port)

    def start(self, timeout: float = 30.0) -> HostProcess:
        super().start(timeout)
        return self

    def channel(self) -> Channel:
        return Channel(self.connect_host, self.port)


async def health(host: str, port: int, context: ssl.SSLContext | None = None) -> int:
    """The overall health status a host answers (grpc.health.v1 Check, service "")."""
    async with Channel(host, port, ssl=context) as channel:
        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
        return int(reply.status)


def variant_args(*args: Any, **kwargs: Any) -> tuple[list[Argument], list[KwArgument]]:
    return ([Argument(position=i, data=encode_value(a)) for i, a in enumerate(args)],
            [KwArgument(keyword=k, data=encode_value(v)) for k, v in kwargs.items()])


async def set_up(stub: DynamicSubclassServiceStub, class_name: str = BASE, *args: Any,
                **kwargs: Any) -> tuple[str, str]:
    positional, keywords = variant_args(*args, **kwargs)
    response = await stub.setup(SetupRequest(class_name=class_name, instance_arguments=positional,
                                             instance_kw_arguments=keywords), timeout=30)
    assert response.status is not None
    return response.status.code, response.status.message


async def call(stub: DynamicSubclassServiceStub, method: str, *args: Any,
               timeout: float | None = 10, **kwargs: Any) -> tuple[str, str, Any]:
    positional, keywords = variant_args(*args, **kwargs)
    response = await stub.call(CallRequest(method_name=method, method_arguments=positional,
                                           method_kw_arguments=keywords), timeout=timeout)
    assert response.status is not None
    return response.status.code, response.status.message, decode_variant(response.method_response)


async def ok(stub: DynamicSubclassServiceStub, method: str, *args: Any, **kwargs: Any) -> Any:
    code, message, value = await call(stub, method, *args, **kwargs)
    assert code == StatusCode.SUCCESS, message
    return value


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Wait until `predicate()` (or, if it is a coroutine function, `await predicate()`) is
    true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout

    async def check() -> bool:
        outcome = predicate()
        return bool(await outcome) if inspect.isawaitable(outcome) else bool(outcome)

    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def runs_again(stub: DynamicSubclassServiceStub, method: str = "stats", *args: Any,
                     **kwargs: Any) -> None:
    """Wait until a call runs again: the host answers RESOURCE_EXHAUSTED "Server busy" until
    an abandoned call returns. Tests that abandon a call on a shared host end with this, so
    the next test finds the model idle."""
    async def ran() -> bool:
        try:
            await call(stub, method, *args, timeout=5, **kwargs)
        except GRPCError as exc:
            assert exc.status is GrpcStatus.RESOURCE_EXHAUSTED, exc
            return False
        return True
    await until(ran)


def until_sync(predicate: Any, timeout: float = 10.0) -> None:
    """`until` for tests without an event loop (those driving subprocesses)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def reported(caplog: Any) -> list[str]:
    """The failure reports the client decided (the registry logs each as it decides it, before
    it is queued for delivery): checks that nothing was reported need not wait for delivery."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("reporting ")]
