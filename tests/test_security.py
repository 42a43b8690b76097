"""TLS, mutual TLS and the bearer token, on both halves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from model_runner.wire import DynamicSubclassServiceStub
from model_runner_client import (
    CallStatus,
    FailureReport,
    ModelRunnerClient,
    client_tls_context,
)
from tests.certs import Pki, make_pki
from tests.clients import address_client, endpoint
from tests.hosts import SUBMISSIONS, HostProcess, host_env, reported, set_up

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other-pki"), "stranger")


def client(host: HostProcess, **options: object) -> ModelRunnerClient:
    return address_client([endpoint(host, "m")], timeout=5.0, connect_attempts=2, **options)


async def test_tls(pki: Pki, stranger: Pki, caplog: pytest.LogCaptureFixture) -> None:
    host = HostProcess(SUBMISSIONS / "good_tracker", "--tls-cert", str(pki.server_cert),
                       "--tls-key", str(pki.server_key)).start()
    try:
        async with client(host, ssl=client_tls_context(pki.ca)) as tls_client:
            await tls_client.wait_for_models(1, timeout=20)
            assert (await tls_client.call("predict", "BTC", 1))["m"].ok
        # A client that trusts another CA is refused, and does not blame the model.
        reports: list[FailureReport] = []
        async with client(host, ssl=client_tls_context(stranger.ca),
                          on_failure=reports.append) as wrong:
            await wrong.wait_for_models(timeout=20)
            assert wrong.models == [] and reported(caplog) == []
        # Plaintext gets nothing.
        channel = Channel("127.0.0.1", host.port)
        with pytest.raises((ConnectionError, OSError, GRPCError, StreamTerminatedError)):
            await HealthStub(channel).Check(HealthCheckRequest(), timeout=3)
        channel.close()
    finally:
        host.stop()


async def test_mutual_tls(pki: Pki, stranger: Pki) -> None:
    host = HostProcess(SUBMISSIONS / "good_tracker", "--tls-cert", str(pki.server_cert),
                       "--tls-key", str(pki.server_key),
                       "--tls-client-ca", str(pki.ca)).start()
    try:
        with_cert = client_tls_context(pki.ca, pki.client_cert, pki.client_key)
        async with client(host, ssl=with_cert) as good:
            await good.wait_for_models(1, timeout=20)
            assert (await good.call("predict", "BTC", 1))["m"].ok
        for context in (client_tls_context(pki.ca),
                        client_tls_context(pki.ca, stranger.client_cert, stranger.client_key)):
            async with client(host, ssl=context) as refused:
                await refused.wait_for_models(timeout=20)
                assert refused.models == []
    finally:
        host.stop()


async def test_bearer_token(caplog: pytest.LogCaptureFixture) -> None:
    host = HostProcess(SUBMISSIONS / "good_tracker", env={"AUTH_TOKEN": "s3cret"}).start()
    try:
        async with host.channel() as channel:
            # Health stays open.
            reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
            assert reply is not None and reply.status == HealthCheckResponse.SERVING
            stub = DynamicSubclassServiceStub(channel)
            with pytest.raises(GRPCError) as missing:
                await set_up(stub)
            assert missing.value.status is GrpcStatus.UNAUTHENTICATED
            assert "Bearer" in str(missing.value.message)
            stub = DynamicSubclassServiceStub(channel,
                                              metadata={"authorization": "Bearer wrong"})
            with pytest.raises(GRPCError) as wrong:
                await set_up(stub)
            assert wrong.value.status is GrpcStatus.UNAUTHENTICATED
        reports: list[FailureReport] = []
        async with client(host, on_failure=reports.append) as no_token:
            await no_token.wait_for_models(timeout=20)
            # Our mistake, not the model's.
            assert no_token.models == [] and reported(caplog) == []
        async with client(host, auth_token="s3cret") as good:
            await good.wait_for_models(1, timeout=20)
            results = await good.call("predict", "BTC", 1)
            assert results["m"].status is CallStatus.SUCCESS
    finally:
        host.stop()


@pytest.mark.parametrize("args,needle", [
    (["--tls-cert", "x.pem"], "go together"),
    (["--tls-client-ca", "ca.pem"], "needs --tls-cert"),
])
@pytest.mark.transport_independent
def test_tls_option_errors(args: list[str], needle: str) -> None:
    result = subprocess.run([sys.executable, "-m", "model_runner", "--code-directory",
                             str(SUBMISSIONS / "good_tracker"), "--address", "127.0.0.1:0",
                             *args], capture_output=True, text=True, timeout=30, env=host_env())
    assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr


@pytest.mark.transport_independent
def test_unusable_tls_files(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    result = subprocess.run([sys.executable, "-m", "model_runner", "--code-directory",
                             str(SUBMISSIONS / "good_tracker"), "--address", "127.0.0.1:0",
                             "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key",
                             str(tmp_path / "key.pem")],
                            capture_output=True, text=True, timeout=30, env=host_env())
    assert result.returncode == 2 and "cannot use the TLS files" in result.stderr


async def test_health_of_a_tls_host_for_a_trusting_client(pki: Pki) -> None:
    host = HostProcess(SUBMISSIONS / "good_tracker", "--tls-cert", str(pki.server_cert),
                       "--tls-key", str(pki.server_key)).start()
    try:
        channel = Channel("127.0.0.1", host.port, ssl=client_tls_context(pki.ca))
        reply = await asyncio.wait_for(HealthStub(channel).Check(HealthCheckRequest()), 5)
        assert reply is not None and reply.status == HealthCheckResponse.SERVING
        channel.close()
    finally:
        host.stop()
