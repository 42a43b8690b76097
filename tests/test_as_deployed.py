"""The host started as the Model Orchestrator starts it: its default address form `[::]`, and
the environment it sets on every container (SECURE, MODEL_ID, CRUNCHER_*, COORDINATOR_*), with
the certificates directory its images carry. Real host subprocesses, reached over 127.0.0.1 and
::1 as the orchestrator and coordinators reach them."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from model_runner.security import client_tls_context
from model_runner.wire import DynamicSubclassServiceStub, StatusCode
from model_runner.wire.auth import spki
from model_runner_client import CallStatus, FailureReport, ModelEndpoint, ModelRunnerClient
from model_runner_client.security.credentials import SecureCredentials
from tests.deployment import CRUNCHER, HOTKEY, MODEL, Deployment, key_hash, wallet_address
from tests.hosts import (
    BASE,
    HOST_LOOPS,
    SUBMISSIONS,
    HostProcess,
    health,
    host_env,
    loop_env,
    set_up,
    until,
)

pytestmark = pytest.mark.anyio

GOOD = SUBMISSIONS / "good_tracker"
STRANGER = ed25519.Ed25519PrivateKey.generate()


async def refused(host: str, port: int, **tls: Any) -> bool:
    """Whether a health check over this address is refused (connection or handshake)."""
    try:
        await health(host, port, **tls)
    except (OSError, StreamTerminatedError):  # ssl.SSLError is an OSError
        return True
    except GRPCError as exc:
        return exc.status is GrpcStatus.UNAVAILABLE
    return False


# --- the address ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "GRPC_ADDRESS"])
async def test_the_default_address_form_serves_ipv4_and_ipv6(how: str) -> None:
    if how == "flag":
        host = HostProcess(GOOD, "--address", "[::]:0", host=None)
    else:
        host = HostProcess(GOOD, env={"GRPC_ADDRESS": "[::]:0"}, host=None)
    host.start()
    try:
        assert "over IPv4 and IPv6 on [::]:" in host.log
        serving = HealthCheckResponse.SERVING
        assert await health("127.0.0.1", host.port) == serving
        assert await health("::1", host.port) == serving
    finally:
        host.stop()


@pytest.mark.parametrize(("address", "reached", "not_reached", "families"), [
    ("0.0.0.0:0", "127.0.0.1", "::1", "IPv4"),
    ("[::1]:0", "::1", "127.0.0.1", "IPv6"),
])
async def test_explicit_addresses_stay_as_given(address: str, reached: str, not_reached: str,
                                                families: str) -> None:
    host = HostProcess(GOOD, "--address", address, host=None).start()
    try:
        assert f"over {families} on" in host.log
        assert await health(reached, host.port) == HealthCheckResponse.SERVING
        assert await refused(not_reached, host.port)
    finally:
        host.stop()


@pytest.mark.parametrize("address", ["[::]:0", "0.0.0.0:0"])
@pytest.mark.parametrize("loop", HOST_LOOPS)
async def test_sequential_calls_wait_for_no_delayed_ack(address: str, loop: str) -> None:
    """A tournament calls each model once per sample, one sample after another. The host's
    answer is three HTTP/2 frames written one by one; with Nagle's algorithm on, the last waits
    for the client's delayed ACK (40 ms on Linux) whenever the first two are unacknowledged,
    and that was every answer of an asyncio host on `[::]` (asyncio enables TCP_NODELAY only on
    sockets whose protocol number is TCP, and the dual-stack socket's was 0). The image runs
    asyncio: it does not install uvloop."""
    env = {**loop_env(loop), "LOG_LEVEL": "INFO"}
    host = HostProcess(GOOD, "--address", address, env=env, host=None).start()
    try:
        await until(lambda: f"event loop: {loop}" in host.log)
        client = ModelRunnerClient.from_addresses(
            [ModelEndpoint("m", "127.0.0.1", host.port, "d1")], base_classname=BASE, timeout=5)
        async with client:
            await client.wait_for_models(1, timeout=20)
            latencies = []
            for _ in range(30):
                started = time.monotonic()
                [result] = await client.call("predict", "BTC", 2)
                latencies.append(time.monotonic() - started)
                assert result.status is CallStatus.SUCCESS, result.detail
        # A tick here takes 1-3 ms; one that waited for a delayed ACK takes 40 ms or more.
        assert statistics.median(latencies) < 0.02, latencies
    finally:
        host.stop()


# --- the deployed secure mode ----------------------------------------------------------------


@pytest.fixture(scope="module")
def secure_host(deployment: Deployment) -> Iterator[HostProcess]:
    """Started with the orchestrator's environment alone: no flag but the code directory."""
    host = HostProcess(GOOD, env=deployment.environment(), host=None).start()
    yield host
    host.stop()


async def tick(port: int, credentials: SecureCredentials) -> tuple[list[Any], list[FailureReport]]:
    """Our client in SecureCredentials mode, as a coordinator runs it: set up, call twice."""
    reports: list[FailureReport] = []
    infos = {"cruncher_wallet_pubkey": wallet_address(CRUNCHER), "cruncher_hotkey": HOTKEY}
    client = ModelRunnerClient.from_addresses(
        [ModelEndpoint(MODEL, "127.0.0.1", port, "d1", infos)], base_classname=BASE,
        secure_credentials=credentials, on_failure=reports.append)
    async with client:
        await client.wait_for_models(1, timeout=20)
        results = [(await client.call("predict", "BTC", 2))[0] for _ in range(2)]
    return results, reports


@pytest.mark.parametrize("which", ["primary", "secondary"])
async def test_secure_host_from_the_environment_serves_each_listed_coordinator(
        which: str, deployment: Deployment, secure_host: HostProcess, tmp_path: Path) -> None:
    assert "in secure mode over IPv4 and IPv6" in secure_host.log
    cert, key = ((deployment.pki.client_cert, deployment.pki.client_key)
                 if which == "primary" else deployment.secondary)
    results, reports = await tick(secure_host.port,
                                  deployment.credentials(cert, key, tmp_path / which))
    assert [r.output for r in results] == [[0.0, 0.0], [0.0, 0.0]], [r.detail for r in results]
    assert reports == []


async def test_an_unlisted_coordinator_gets_unauthenticated_and_health_stays_open(
        deployment: Deployment, secure_host: HostProcess) -> None:
    context = deployment.coordinator(*deployment.stranger)
    async with Channel("127.0.0.1", secure_host.port, ssl=context) as channel:
        with pytest.raises(GRPCError) as refusal:
            await set_up(DynamicSubclassServiceStub(channel))
    assert refusal.value.status is GrpcStatus.UNAUTHENTICATED
    assert key_hash(deployment.stranger[0]) in str(refusal.value.message)
    assert "COORDINATOR_CERT_HASH" in str(refusal.value.message)
    # The orchestrator's probe: over mutual TLS, whatever certificate the CA signed.
    assert await health("127.0.0.1", secure_host.port, context) == HealthCheckResponse.SERVING
    assert await health("::1", secure_host.port, context) == HealthCheckResponse.SERVING
    # The listed coordinator over the same path is answered.
    listed = deployment.coordinator(deployment.pki.client_cert, deployment.pki.client_key)
    async with Channel("127.0.0.1", secure_host.port, ssl=listed) as channel:
        code, _ = await set_up(DynamicSubclassServiceStub(channel))
    assert code == StatusCode.SUCCESS


async def test_plaintext_and_tls_without_a_client_certificate_are_refused(
        deployment: Deployment, secure_host: HostProcess) -> None:
    assert await refused("127.0.0.1", secure_host.port)
    no_client_cert = client_tls_context(deployment.pki.ca)
    assert await refused("127.0.0.1", secure_host.port, context=no_client_cert)
    assert secure_host.proc is not None and secure_host.proc.poll() is None  # still serving


def run_host(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model_runner", "--code-directory", str(GOOD)],
                          capture_output=True, text=True, timeout=timeout, env=host_env(env))


def assert_refuses_to_start(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "model host serving" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


BAD_DELEGATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "wrong wallet": ({"key": STRANGER}, "not by the cruncher's wallet"),
    "another TLS key": ({"cert_pub": spki(STRANGER.public_key())}, "another TLS key"),
    "wrong model id": ({"model_id": "43"}, "for model '43', not '42'"),
    "wrong hotkey": ({"hotkey": "5Other"}, "for hotkey '5Other'"),
    "expired": ({"expires_at": int(time.time()) - 60}, "expired"),
}


@pytest.mark.parametrize("case", sorted(BAD_DELEGATIONS))
def test_a_bad_delegation_stops_the_host_before_it_serves(case: str, tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    changes, reason = BAD_DELEGATIONS[case]
    deployment.delegate(**changes)
    started = time.monotonic()
    result = run_host(deployment.environment())
    assert time.monotonic() - started < 20
    assert_refuses_to_start(result, "cruncher_msg.json", reason)


def test_a_bad_signature_stops_the_host(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    path = deployment.certificates / "cruncher_msg.json"
    forged = path.read_text().replace('"signature_b64": "', '"signature_b64": "AAAA', 1)
    path.write_text(forged)
    assert_refuses_to_start(run_host(deployment.environment()), "signature does not verify")


@pytest.mark.parametrize(("missing", "needle"), [
    ("tls.key", "has no tls.key"),
    ("ca.crt", "has no ca.crt"),
    ("cruncher_msg.json", "has no cruncher_msg.json"),
])
def test_secure_mode_never_fails_open_on_a_missing_file(missing: str, needle: str,
                                                        tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    (deployment.certificates / missing).unlink()
    assert_refuses_to_start(run_host(deployment.environment()), needle, "must hold")


@pytest.mark.parametrize(("unset", "needle"), [
    (("CRUNCHER_WALLET_PUBKEY",), "CRUNCHER_WALLET_PUBKEY"),
    (("MODEL_ID",), "MODEL_ID"),
    (("COORDINATOR_CERT_HASH", "COORDINATOR_CERT_HASH_SECONDARY"), "COORDINATOR_CERT_HASH"),
])
def test_secure_mode_never_fails_open_on_a_missing_value(unset: tuple[str, ...], needle: str,
                                                         tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    env = deployment.environment(**dict.fromkeys(unset, ""))  # the orchestrator's "unknown"
    assert_refuses_to_start(run_host(env), needle, "SECURE=false")


def test_secure_mode_without_its_certificates_directory(tmp_path: Path) -> None:
    env = Deployment(tmp_path).environment(CERTIFICATES_DIRECTORY=str(tmp_path / "nowhere"))
    assert_refuses_to_start(run_host(env), "does not exist", "CERTIFICATES_DIRECTORY")


@pytest.mark.parametrize("word", ["True", "true", "1", "yes", "ON"])
def test_secure_takes_click_s_boolean_words(word: str, tmp_path: Path) -> None:
    env = Deployment(tmp_path).environment(SECURE=word, MODEL_ID="")
    assert_refuses_to_start(run_host(env), "MODEL_ID")  # secure: it asks for what it needs


async def test_secure_false_serves_plaintext_with_the_orchestrator_s_environment(
        tmp_path: Path) -> None:
    env = Deployment(tmp_path).environment(SECURE="False")
    host = HostProcess(GOOD, env=env, host=None).start()
    try:
        assert "in insecure mode over IPv4 and IPv6" in host.log
        async with Channel("127.0.0.1", host.port) as channel:
            code, _ = await set_up(DynamicSubclassServiceStub(channel))
        assert code == StatusCode.SUCCESS
    finally:
        host.stop()


def test_secure_mode_and_our_tls_options_do_not_mix(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "model_runner", "--code-directory", str(GOOD), "--tls-cert",
         str(deployment.pki.server_cert)], capture_output=True, text=True, timeout=30,
        env=host_env(deployment.environment()))
    assert_refuses_to_start(result, "--secure takes its TLS files", "--tls-cert")
