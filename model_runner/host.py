"""`ModelHost`: the gRPC server around one submission, with health and a graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from grpclib.events import SendInitialMetadata, listen
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health

from ._grpclib import ConnectionLimits, GuardedServer, listening_sockets
from .codec import PassthroughCodec
from .listen import WILDCARD_V6, dual_stack_socket, families
from .model import ModelCore
from .security import CallGuard, DelegationClaims, DelegationHeaders, server_tls_context
from .service import DynamicSubclassService
from .wire import DEFAULT_MAX_MESSAGE_LENGTH
from .wire.auth import GatewayVerifier

__all__ = ["DEFAULT_MAX_MESSAGE_LENGTH", "ConnectionLimits", "HostConfig", "ModelHost"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class HostConfig:
    code_directory: Path
    host: str | None = "::"
    port: int = 50051
    #: A Unix socket path instead of host/port.
    path: str | None = None
    max_receive_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH
    max_send_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH
    #: Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    grace_period: float = 10.0
    resource_directory: Path | None = None
    #: TLS: the host's certificate and key; with tls_client_ca, mutual TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    #: When set, model calls need `authorization: Bearer <token>` metadata (health stays open).
    auth_token: str | None = None
    #: The cruncher's wallet delegation of this host's TLS key, served in response headers
    #: (model-runner-client's SecureCredentials mode; needs tls_cert and, usually, mutual TLS).
    auth_delegation: Path | None = None
    #: SHA-256 hashes of the coordinator keys whose gateway tokens are accepted on model calls.
    gateway_keys: Path | None = None
    #: Seconds a gateway token's timestamp may differ from this host's clock.
    gateway_max_age: float = 60.0
    #: This host's model id, which gateway tokens and a secure host's delegation must name.
    model_id: str | None = None
    #: The deployed secure mode (SECURE): mutual TLS, the delegation checked against these
    #: claims at start, and the coordinator's client certificate checked on every model call.
    secure: bool = False
    delegation_claims: DelegationClaims | None = None
    #: SHA-256 (hex) of the coordinators' client-certificate public keys accepted on model
    #: calls (COORDINATOR_CERT_HASH, COORDINATOR_CERT_HASH_SECONDARY); needs mutual TLS.
    coordinator_cert_hashes: tuple[str, ...] = ()
    #: What one peer may cost: connections, silent peers, floods, calls without a deadline.
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: Passed by existing deployments; logged, they change nothing (as in crunch-model-runner).
    has_gpu: bool = False
    main_file: str = "main.py"


def call_guard(config: HostConfig) -> CallGuard | None:
    """Raises AuthError when the gateway key file is unusable."""
    gateway = None
    if config.gateway_keys is not None:
        gateway = GatewayVerifier.load(config.gateway_keys, model_id=config.model_id,
                                       max_age=config.gateway_max_age)
    # Client certificates exist only under mutual TLS; without it the hashes are not checked,
    # as the deployed host checks them only in secure mode (the orchestrator sets them always).
    cert_hashes = config.coordinator_cert_hashes if config.tls_client_ca is not None else ()
    if config.auth_token is None and gateway is None and not cert_hashes:
        return None
    return CallGuard(config.auth_token, gateway, cert_hashes)


class ModelHost:
    """Serves `DynamicSubclassService` and `grpc.health.v1.Health` for one submission.

    Health: service "" is SERVING while the host accepts calls; the model service name is SERVING
    only while a model instance exists (after Setup, until Rest).
    """

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self._overall = ServiceStatus()
        self._model_status = ServiceStatus()
        self._model_status.set(False)
        self.model = ModelCore(config.code_directory,
                               max_send_message_length=config.max_send_message_length,
                               on_instance=self._model_status.set)
        self.service = DynamicSubclassService(
            self.model,
            max_receive_message_length=config.max_receive_message_length,
            authorize=call_guard(config),
        )
        health = Health({self.service: [self._model_status], OVERALL: [self._overall]})
        self._server = GuardedServer([self.service, health], codec=PassthroughCodec(),
                                     limits=config.limits)
        if config.auth_delegation is not None:
            if config.tls_cert is None:
                raise ValueError("a delegation vouches for the host's TLS key: serve TLS "
                                 "(tls_cert, tls_key) with it")
            listen(self._server, SendInitialMetadata,
                   DelegationHeaders(config.auth_delegation, config.tls_cert,
                                     config.delegation_claims))
        if config.coordinator_cert_hashes and config.tls_client_ca is None:
            logger.info("coordinator cert hashes are set but this host serves no mutual TLS "
                        "(SECURE is off): they are not checked")
        self.port: int | None = None
        #: Which address families the host takes once started, e.g. "IPv4 and IPv6".
        self.families = ""

    async def start(self) -> None:
        """Bind and start serving; raises OSError when the address cannot be bound."""
        config = self.config
        tls = None
        if config.tls_cert is not None and config.tls_key is not None:
            tls = server_tls_context(config.tls_cert, config.tls_key, config.tls_client_ca)
        # A large backlog: a coordinator connects to every model at once after a restart.
        backlog = 1024
        if config.path is not None:
            await self._server.start_guarded(path=config.path, ssl=tls, backlog=backlog)
        elif config.host == WILDCARD_V6 and (sock := dual_stack_socket(config.port,
                                                                         backlog)) is not None:
            await self._server.start_guarded(sock=sock, ssl=tls, backlog=backlog)
        else:
            await self._server.start_guarded(config.host, config.port, ssl=tls,
                                             backlog=backlog)
        sockets = listening_sockets(self._server)
        if config.path is None:
            self.port = int(sockets[0].getsockname()[1]) if sockets else config.port
        self.families = families(sockets)
        self._overall.set(True)

    @property
    def connections(self) -> tuple[int, int]:
        """(connections open, HTTP/2 streams held open on them)."""
        return self._server.connection_count, self._server.calls_in_flight

    @property
    def address(self) -> str:
        """Where the host listens: `HOST:PORT` (IPv6 hosts in brackets) or `unix:PATH`."""
        config = self.config
        if config.path is not None:
            return f"unix:{config.path}"
        host = config.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def drain(self, grace_period: float | None = None) -> None:
        """Stop taking calls, give in-flight ones up to the grace period, then close."""
        grace = self.config.grace_period if grace_period is None else grace_period
        self._overall.set(False)
        self._model_status.set(False)
        self.service.draining = True
        try:
            await asyncio.wait_for(self.service.wait_idle(), grace)
        except TimeoutError:
            logger.warning("grace period of %.1fs over with %d calls still running; closing",
                           grace, self.service.in_flight)
        self._server.close()
        await self._server.wait_closed()
        self.model.close()
        logger.info("model host stopped")

    async def serve_until_signalled(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain.

        The signal handlers are in place before the host starts (and before `on_ready` announces
        it), so a launcher that signals as soon as it sees the announcement gets a drain.
        """
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signalled.set)
        try:
            await self.start()
            if on_ready is not None:
                on_ready()
            await signalled.wait()
            logger.info("signal received: draining (grace period %.1fs)", self.config.grace_period)
            await self.drain()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
