"""The deployed system's two security modes, end to end, with keys the tests make.

SecureCredentials: mutual TLS to `model-node-<id>.crunchdao.internal`, and the host's wallet
delegation checked against the orchestrator's infos; every way it can be wrong is refused with
its reason and reported once as CONNECTION_FAILED, and the model is never called.
GatewayCredentials: TLS with the system CAs and a signed token per call, checked by the host.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.events import SendInitialMetadata, listen
from grpclib.exceptions import GRPCError

from model_runner import HostConfig, ModelHost
from model_runner.local_orchestrator import LocalOrchestrator, ModelSpec
from model_runner.security import client_tls_context
from model_runner.wire import CallRequest, DynamicSubclassServiceStub
from model_runner.wire.auth import (
    AuthError,
    Delegation,
    GatewayVerifier,
    cert_spki,
    gateway_metadata,
    model_node_name,
    spki,
)
from model_runner_client import FailureReport, ModelEndpoint, ModelRunnerClient
from model_runner_client.grpc.generated.commons_pb2 import Argument, Variant, VariantType
from model_runner_client.model_concurrent_runners import (
    DynamicSubclassModelConcurrentRunner,
    ModelPredictResult,
)
from model_runner_client.security.credentials import SecureCredentials
from model_runner_client.security.gateway_credentials import GatewayCredentials
from model_runner_client.utils.datatype_transformer import encode_data
from tests.certs import Pki, make_pki
from tests.deployment import wallet_address
from tests.hosts import BASE, EXAMPLES, SUBMISSIONS, HostProcess, until

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]

MODEL = "m1"
HOTKEY = "5Hotkey"


def wallet() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), server_names=[model_node_name(MODEL)])


@pytest.fixture(scope="module")
def credentials(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> SecureCredentials:
    folder = tmp_path_factory.mktemp("coordinator")
    shutil.copy(pki.ca, folder / "ca.crt")
    shutil.copy(pki.client_cert, folder / "tls.crt")
    shutil.copy(pki.client_key, folder / "tls.key")
    return SecureCredentials.from_directory(folder)


def delegate(key: ed25519.Ed25519PrivateKey, pki: Pki, **changes: Any) -> Delegation:
    fields: dict[str, Any] = {"cert_pub": cert_spki(pki.server_cert.read_bytes()),
                              "model_id": MODEL, "hotkey": HOTKEY,
                              "expires_at": int(time.time()) + 3600}
    fields.update(changes)
    return Delegation.sign(key, **fields)


# --- the client's checks, against a host whose headers each case sets --------------------------


class _Headers:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    async def __call__(self, event: Any) -> None:
        for name, value in self.headers.items():
            event.metadata[name] = value


@pytest.fixture(scope="module")
async def headers_host(pki: Pki) -> AsyncIterator[tuple[ModelHost, _Headers]]:
    """A mutual-TLS host in this process whose delegation headers a test chooses."""
    import sys
    sys.path.insert(0, str(EXAMPLES))
    host = ModelHost(HostConfig(SUBMISSIONS / "good_tracker", host="127.0.0.1", port=0,
                                tls_cert=pki.server_cert, tls_key=pki.server_key,
                                tls_client_ca=pki.ca))
    served = _Headers()
    # Internals, on purpose: the test sets the delegation headers the host sends.
    listen(host._server, SendInitialMetadata, served)
    await host.start()
    yield host, served
    await host.drain(0)
    sys.path.remove(str(EXAMPLES))


async def connect(port: int, credentials: SecureCredentials, infos: dict[str, Any]) -> tuple[
    list[str], list[FailureReport], Any
]:
    """Set up the model through a client in SecureCredentials mode and call it once."""
    reports: list[FailureReport] = []
    endpoint = ModelEndpoint(MODEL, "127.0.0.1", port, "d1", infos)
    client = ModelRunnerClient.from_addresses([endpoint], base_classname=BASE,
                                              secure_credentials=credentials,
                                              on_failure=reports.append)
    async with client:
        await client.wait_for_models(timeout=20)
        ready = [m.model_id for m in client.models]
        outcome = (await client.call("predict", "BTC", 2))[0] if ready else None
        if not ready:
            await until(lambda: bool(reports))
    return ready, reports, outcome


CRUNCHER = wallet()
STRANGER = wallet()


async def test_secure_mode_accepts_the_cruncher_s_host(
        headers_host: tuple[ModelHost, _Headers], credentials: SecureCredentials,
        pki: Pki) -> None:
    host, served = headers_host
    served.headers = delegate(CRUNCHER, pki).headers()
    infos = {"cruncher_wallet_pubkey": wallet_address(CRUNCHER), "cruncher_hotkey": HOTKEY}
    ready, reports, outcome = await connect(host.port or 0, credentials, infos)
    assert ready == [MODEL] and not reports
    assert outcome.ok and outcome.output == [0.0, 0.0]


def _bad_signature(pki: Pki) -> dict[str, str]:
    headers = delegate(CRUNCHER, pki).headers()
    headers["x-server-auth-signature"] = base64.b64encode(bytes(64)).decode()
    return headers


REFUSALS = {
    "no headers": (lambda pki: {}, {}, "sent no x-server-auth-message"),
    "wrong wallet": (lambda pki: delegate(STRANGER, pki).headers(), {},
                     "not by the cruncher's wallet"),
    "bad signature": (_bad_signature, {}, "signature does not verify"),
    "another TLS key": (lambda pki: delegate(CRUNCHER, pki, cert_pub=spki(
        ed25519.Ed25519PrivateKey.generate().public_key())).headers(), {},
        "another TLS key than the one the host presented"),
    "wrong model_id": (lambda pki: delegate(CRUNCHER, pki, model_id="m2").headers(), {},
                       "for model 'm2', not 'm1'"),
    "wrong hotkey": (lambda pki: delegate(CRUNCHER, pki, hotkey="5Other").headers(), {},
                     "for hotkey '5Other'"),
    "expired": (lambda pki: delegate(CRUNCHER, pki, expires_at=int(time.time()) - 60).headers(),
                {}, "expired"),
    "no wallet from the orchestrator": (lambda pki: delegate(CRUNCHER, pki).headers(),
                                        {"cruncher_wallet_pubkey": ""},
                                        "gave no cruncher_wallet_pubkey"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_secure_mode_refuses_with_the_reason(
        case: str, headers_host: tuple[ModelHost, _Headers], credentials: SecureCredentials,
        pki: Pki) -> None:
    host, served = headers_host
    make_headers, infos_changes, reason = REFUSALS[case]
    served.headers = make_headers(pki)
    infos = {"cruncher_wallet_pubkey": wallet_address(CRUNCHER), "cruncher_hotkey": HOTKEY,
             **infos_changes}
    ready, reports, _ = await connect(host.port or 0, credentials, infos)
    assert ready == []  # never called
    assert [r.code for r in reports] == ["CONNECTION_FAILED"]
    assert reason in reports[0].reason, reports[0].reason


async def test_secure_mode_checks_every_connection_not_just_setup(
        headers_host: tuple[ModelHost, _Headers], credentials: SecureCredentials,
        pki: Pki) -> None:
    """A delegation that turns bad later (here: another model's) fails the next call, which
    disconnects and reports the model once."""
    host, served = headers_host
    served.headers = delegate(CRUNCHER, pki).headers()
    reports: list[FailureReport] = []
    infos = {"cruncher_wallet_pubkey": wallet_address(CRUNCHER), "cruncher_hotkey": HOTKEY}
    client = ModelRunnerClient.from_addresses(
        [ModelEndpoint(MODEL, "127.0.0.1", host.port or 0, "d1", infos)], base_classname=BASE,
        secure_credentials=credentials, on_failure=reports.append)
    async with client:
        await client.wait_for_models(1, timeout=20)
        assert (await client.call("predict", "BTC", 1))[0].ok
        served.headers = delegate(CRUNCHER, pki, model_id="m2").headers()
        result = (await client.call("predict", "BTC", 1))[0]
        assert not result.ok and "identity check" in result.detail
        assert client.models == []
        await until(lambda: bool(reports))
        assert [r.code for r in reports] == ["CONNECTION_FAILED"]


# --- the host's side, and the old API end to end ------------------------------------------------


async def test_host_serves_its_delegation_to_the_old_api(
        pki: Pki, credentials: SecureCredentials, tmp_path: Path) -> None:
    """A host started with --auth-delegation, through the local orchestrator, called by a
    coordinator written for model-runner-client with SecureCredentials."""
    path = tmp_path / "delegation.json"
    delegate(CRUNCHER, pki).save(path)
    spec = ModelSpec(SUBMISSIONS / "good_tracker", MODEL, host_args=(
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca), "--auth-delegation", str(path)),
        infos=(("cruncher_wallet_pubkey", wallet_address(CRUNCHER)),
               ("cruncher_hotkey", HOTKEY)))
    async with LocalOrchestrator("secure", [spec], python_path=[EXAMPLES],
                                 health_ssl=client_tls_context(pki.ca, pki.client_cert,
                                                               pki.client_key)) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        async with DynamicSubclassModelConcurrentRunner(
                timeout=2, crunch_id="secure", host="127.0.0.1", port=orchestrator.port,
                base_classname=BASE, secure_credentials=credentials) as runner:
            assert list(runner.model_cluster.models_run) == [MODEL]
            asset = Argument(position=1, data=Variant(type=VariantType.STRING,
                                                      value=encode_data(VariantType.STRING, "X")))
            horizon = Argument(position=2, data=Variant(type=VariantType.INT,
                                                        value=encode_data(VariantType.INT, 1)))
            (result,) = (await runner.call("predict", ([asset, horizon], []))).values()
            assert result.status is ModelPredictResult.Status.SUCCESS, result.detail
        assert orchestrator.reports == []


@pytest.mark.transport_independent
def test_host_refuses_a_delegation_for_another_key(pki: Pki, tmp_path: Path) -> None:
    from tests.test_cli import assert_one_line_error, run_cli
    path = tmp_path / "delegation.json"
    delegate(CRUNCHER, pki, cert_pub=spki(STRANGER.public_key())).save(path)
    result = run_cli("--code-directory", str(SUBMISSIONS / "good_tracker"),
                     "--address", "127.0.0.1:0", "--tls-cert", str(pki.server_cert),
                     "--tls-key", str(pki.server_key), "--auth-delegation", str(path))
    assert_one_line_error(result, "another TLS key", "--tls-cert")


# --- gateway tokens -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coordinator_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def gateway_host(pki: Pki, coordinator_key: rsa.RSAPrivateKey,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    folder = tmp_path_factory.mktemp("gateway")
    allowed = folder / "allowed.txt"
    digest = hashlib.sha256(spki(coordinator_key.public_key())).hexdigest()
    allowed.write_text(f"# the coordinator\n{digest}\n")
    host = HostProcess(SUBMISSIONS / "good_tracker", "--tls-cert", str(pki.server_cert),
                       "--tls-key", str(pki.server_key), "--gateway-keys", str(allowed),
                       "--model-id", MODEL).start()
    yield host
    host.stop()


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


async def test_gateway_mode_accepted(gateway_host: HostProcess, pki: Pki,
                                     coordinator_key: rsa.RSAPrivateKey,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))  # "the system's CAs" for this test
    credentials = GatewayCredentials.from_pem(key_pem(coordinator_key))
    client = ModelRunnerClient.from_addresses(
        [ModelEndpoint(MODEL, "127.0.0.1", gateway_host.port, "d1")], base_classname=BASE,
        gateway_credentials=credentials)
    async with client:
        await client.wait_for_models(1, timeout=20)
        result = (await client.call("predict", "BTC", 3))[0]
        assert result.ok and result.output == [0.0, 0.0, 0.0]


async def raw_call(port: int, pki: Pki, metadata: dict[str, str] | None) -> GRPCError:
    async with Channel("127.0.0.1", port, ssl=client_tls_context(pki.ca)) as channel:
        stub = DynamicSubclassServiceStub(channel)
        with pytest.raises(GRPCError) as refused:
            await stub.call(CallRequest(method_name="predict"), timeout=10,
                            metadata=metadata)
        return refused.value


@pytest.mark.parametrize("case,reason", [
    ("missing", "missing gateway token"),
    ("unknown key", "not among this host's allowed keys"),
    ("stale", "outside this host's window of 60s"),
    ("other model", "for model 'm2', not this host's 'm1'"),
    ("bad signature", "signature does not verify"),
])
@pytest.mark.transport_independent
async def test_gateway_mode_refused(case: str, reason: str, gateway_host: HostProcess,
                                    pki: Pki, coordinator_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    metadata: dict[str, str] | None = {
        "missing": None,
        "unknown key": gateway_metadata(rsa.generate_private_key(public_exponent=65537,
                                                                 key_size=2048), MODEL, now),
        "stale": gateway_metadata(coordinator_key, MODEL, now - 3600),
        "other model": gateway_metadata(coordinator_key, "m2", now),
        "bad signature": {**gateway_metadata(coordinator_key, MODEL, now),
                          "x-gateway-auth-signature": base64.b64encode(bytes(256)).decode()},
    }[case]
    refused = await raw_call(gateway_host.port, pki, metadata)
    assert refused.status is GrpcStatus.UNAUTHENTICATED
    assert reason in (refused.message or "")


@pytest.mark.transport_independent
async def test_gateway_health_stays_open(gateway_host: HostProcess, pki: Pki) -> None:
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
    async with Channel("127.0.0.1", gateway_host.port, ssl=client_tls_context(pki.ca)) as channel:
        response = await HealthStub(channel).Check(HealthCheckRequest(service=""))
        assert response.status == HealthCheckResponse.SERVING


@pytest.mark.transport_independent
def test_gateway_verifier_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "allowed.txt"
    path.write_text("not-a-hash\n")
    with pytest.raises(AuthError, match=r"allowed\.txt:1.*SHA-256"):
        GatewayVerifier.load(path, model_id=MODEL, max_age=60)
    path.write_text("# nothing\n")
    with pytest.raises(AuthError, match="lists no coordinator key"):
        GatewayVerifier.load(path, model_id=MODEL, max_age=60)


def test_gateway_tokens_signed_once_per_second(coordinator_key: rsa.RSAPrivateKey,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from model_runner_client import transport_security
    clock = [1000.2]
    monkeypatch.setattr(transport_security.time, "time", lambda: clock[0])
    security = transport_security.Security(
        gateway_credentials=GatewayCredentials(coordinator_key), auth_token="t")
    tokens = security.for_endpoint(ModelEndpoint(MODEL, "127.0.0.1", 1, "d1")).metadata
    first = tokens()
    clock[0] = 1000.9
    assert tokens() is first  # the same second: the same token, not signed again
    clock[0] = 1001.0
    second = tokens()
    assert second != first and second["authorization"] == "Bearer t"
    verifier = GatewayVerifier([hashlib.sha256(spki(coordinator_key.public_key())).digest()],
                               model_id=MODEL)
    verifier.check(second, now=1001.0)
    with pytest.raises(AuthError, match="outside"):
        verifier.check(first, now=1100.0)


def test_a_delegation_without_expires_at_never_expires(tmp_path: Path) -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from model_runner.wire.auth import Delegation, verify_delegation
    from tests.deployment import wallet_address

    wallet = ed25519.Ed25519PrivateKey.generate()
    tls_key = b"\x30" + os.urandom(40)  # any bytes stand for the TLS key here
    message = json.dumps({"cert_pub": base64.b64encode(tls_key).decode(), "model_id": "m",
                          "hotkey": None}).encode()
    delegation = Delegation(base64.b64encode(message).decode(),
                            base64.b64encode(wallet.sign(message)).decode(),
                            wallet_address(wallet))
    expires = verify_delegation(delegation.headers(), wallet_pubkey=wallet_address(wallet),
                                model_id="m", hotkey=None, peer_spki=tls_key,
                                now=time.time() + 10 * 365 * 86400)
    assert expires == float("inf")


def test_the_host_reads_a_renewed_delegation_without_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from model_runner.security import DelegationHeaders
    from model_runner.wire.auth import SERVER_AUTH_MESSAGE, Delegation, cert_spki
    from tests.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    wallet = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "cruncher_msg.json"

    def sign(model_id: str) -> Delegation:
        return Delegation.sign(wallet, cert_pub=cert_spki(pki.server_cert.read_bytes()),
                               model_id=model_id, hotkey=None, expires_at=int(time.time()) + 60)

    sign("first").save(path)
    headers = DelegationHeaders(path, pki.server_cert)
    headers.RECHECK_SECONDS = 0.0

    class Event:
        def __init__(self) -> None:
            self.metadata: dict[str, Any] = {}

    def served() -> str:
        event = Event()
        asyncio.run(headers(event))
        return str(event.metadata[SERVER_AUTH_MESSAGE])

    first = served()
    renewed = sign("renewed")
    renewed.save(path)
    os.utime(path, (time.time() + 5, time.time() + 5))  # a later modification time
    assert served() == renewed.message != first
    path.write_text("{not json")
    os.utime(path, (time.time() + 10, time.time() + 10))
    with caplog.at_level(logging.ERROR, logger="model_runner.security"):
        assert served() == renewed.message  # a bad renewal keeps the previous delegation
    assert "kept the previous delegation" in caplog.text
