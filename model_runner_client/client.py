"""`ModelRunnerClient`: a live set of models, set up as they join, called all at once.

The client owns one anyio task group for its background work (model setups, health probes,
failure reports, the model source); leaving `async with` (or `close()`) cancels it and closes
every connection, so no task or socket outlives the client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import random
import re
import resource
import ssl as _ssl
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Self

import anyio
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from model_runner.wire import SERVICE_NAME, StatusCode

from .connection import ModelConnection
from .encoding import ArgumentError, ResultDecoder, encode_call, encode_setup
from .events import EventCallback, EventHub, EventKind, FailureReport, ModelEvent, iterate
from .fanout import Fanout, Job, Kind, Outcome
from .models import ModelEndpoint
from .orchestrator import OrchestratorLink
from .policy import Streaks
from .registry import Check, Slot, SlotState
from .results import CallResult, CallResults, CallStatus
from .security import GatewayCredentials, SecureCredentials
from .sources import ModelSource, StaticModels
from .transport_security import Security, UntrustedHost
from .transports import TRANSPORTS, TransportName

__all__ = ["ModelRunnerClient", "UnknownModelError"]

logger = logging.getLogger(__name__)

FailureCallback = Callable[[FailureReport], Awaitable[None] | None]
PerModel = Callable[[ModelEndpoint], tuple[Sequence[Any], Mapping[str, Any] | None]]
#: File descriptors left for everything but model connections before the client warns.
_FD_HEADROOM = 64
#: Departed models remembered, so results for them can still carry their metadata.
_DEPARTED_KEPT = 10_000
#: Largest answer read by default (grpcio's default, which model-runner-client 0.14 used): what
#: reading one answer may cost is bounded by it (see fanout.py).
DEFAULT_MAX_ANSWER = 4 * 1024 * 1024
#: Setups (connect + Setup) in flight at once: 10,000 joining entries at an address that
#: refuses connections, all set up at once, held the loop 5-21 s and ticks with it.
MAX_CONCURRENT_SETUPS = 64
_CONNECTION_ERRORS = (OSError, TimeoutError, GRPCError, StreamTerminatedError, ProtocolError)


def _host_problem(host: str) -> str | None:
    """Why `host` cannot be connected to, or None: an IP address or a DNS name (labels of 1 to
    63 letters, digits, '-' or '_'; 253 characters at most)."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        ascii_name = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        return f"host name {host[:80]!r} is not a valid DNS name ({exc})"
    labels = ascii_name.rstrip(".").split(".")
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"host name {host[:80]!r} is not a valid DNS name or IP address"
    return None


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _is_credentials_error(exc: BaseException) -> bool:
    if isinstance(exc, GRPCError):
        return exc.status in (GrpcStatus.UNAUTHENTICATED, GrpcStatus.PERMISSION_DENIED)
    return isinstance(exc, _ssl.SSLError)


async def _guarded(fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
    """Run background work so that a failure is logged, never propagated: the client's task
    group is entered by the coordinator's own task, which an escaping error would cancel."""
    try:
        await fn(*args)
    except Exception:
        logger.exception("background task %s failed; the client carries on",
                         getattr(fn, "__name__", fn))


class UnknownModelError(KeyError):
    """`models=` named a model this client has never held."""

    def __str__(self) -> str:
        return str(self.args[0])


class ModelRunnerClient:
    """Calls a live set of models concurrently, each call with a deadline.

    By default the models come from the Model Orchestrator at `ws://host:port/<crunch_id>`;
    `from_addresses([...])` uses a fixed list instead, and `source=` any `ModelSource`. Then
    `async with client:` connects, and `await client.call(...)` returns one `CallResult` per
    model.
    """

    def __init__(
        self,
        crunch_id: str | None = None,
        host: str = "localhost",
        port: int = 9091,
        *,
        base_classname: str,
        timeout: float = 1.0,
        max_consecutive_failures: int = 3,
        max_consecutive_timeouts: int = 3,
        instance_args: Sequence[Any] = (),
        instance_kwargs: Mapping[str, Any] | None = None,
        max_concurrent_calls: int = 1000,
        max_receive_message_length: int = DEFAULT_MAX_ANSWER,
        setup_timeout: float = 60.0,
        connect_attempts: int = 8,
        on_failure: FailureCallback | None = None,
        on_event: EventCallback | None = None,
        ssl: _ssl.SSLContext | None = None,
        auth_token: str | None = None,
        metadata: Mapping[str, str] | None = None,
        secure_credentials: SecureCredentials | None = None,
        gateway_credentials: GatewayCredentials | None = None,
        report_failure: bool = True,
        source: ModelSource | None = None,
        transport: TransportName | None = None,
    ) -> None:
        if not base_classname:
            raise ValueError("base_classname must name the base class, e.g. "
                             "'birdgame.trackers.trackerbase.TrackerBase'")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        if max_consecutive_failures < 1 or max_consecutive_timeouts < 1:
            raise ValueError("max_consecutive_failures and max_consecutive_timeouts must be >= 1")
        self.base_classname = base_classname
        self.timeout = timeout
        self.max_consecutive_failures = max_consecutive_failures
        self.max_consecutive_timeouts = max_consecutive_timeouts
        self.setup_timeout = setup_timeout
        self.connect_attempts = connect_attempts
        # Fails here, not on the first join, when an instance argument cannot be encoded.
        self._setup_payload = encode_setup(base_classname, instance_args, instance_kwargs)
        self.link: OrchestratorLink | None = None
        if source is None:
            if not crunch_id:
                raise ValueError("name the Crunch (crunch_id=...) to get models from the "
                                 "orchestrator, or use ModelRunnerClient.from_addresses([...])")
            source = self.link = OrchestratorLink(crunch_id, host, port,
                                                  report_failure=report_failure)
        self._source = source
        # The environment chooses too, so a deployment can switch without a code change.
        chosen = transport or os.environ.get("MODEL_RUNNER_TRANSPORT") or "ngh2"
        if chosen not in TRANSPORTS:
            raise ValueError(f"transport {chosen!r} (argument or MODEL_RUNNER_TRANSPORT): use one "
                             f"of {', '.join(TRANSPORTS)}")
        self.transport: TransportName = chosen
        self._fanout = Fanout(max_concurrent_calls)
        self.max_receive_message_length = max_receive_message_length
        self._on_failure = on_failure
        self._security = Security(ssl=ssl, auth_token=auth_token, metadata=metadata,
                                  secure_credentials=secure_credentials,
                                  gateway_credentials=gateway_credentials)
        self._events = EventHub()
        if on_event is not None:
            self._events.add_callback(on_event)
        self._slots: dict[str, Slot] = {}
        self._departed: dict[str, ModelEndpoint] = {}
        #: Every model id ever held (ids only, so the memory of departed ones can be bounded
        #: without a held-then-forgotten id passing for one never held).
        self._ever_held: set[str] = set()
        self._setups = anyio.Semaphore(MAX_CONCURRENT_SETUPS)
        # Events and failure reports, delivered in order by one task (`_dispatch`).
        self._notices, self._notices_out = anyio.create_memory_object_stream[
            ModelEvent | FailureReport](math.inf)
        self._reported: set[tuple[str, str]] = set()
        self._changed = anyio.Event()
        #: The source has delivered its first complete list (the orchestrator's `init`).
        self._listed = False
        self._started = False
        self._runner: asyncio.Task[None] | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._fd_warned = False

    @classmethod
    def from_addresses(
        cls, addresses: Iterable[str | ModelEndpoint], *, base_classname: str, **options: Any
    ) -> ModelRunnerClient:
        """A client over a fixed list of model hosts (`"host:port"` or `ModelEndpoint`)."""
        endpoints = [a if isinstance(a, ModelEndpoint) else ModelEndpoint.from_address(a)
                     for a in addresses]
        ids = [e.model_id for e in endpoints]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"model ids must be unique; repeated: {', '.join(duplicates)}")
        return cls(source=StaticModels(endpoints), base_classname=base_classname, **options)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the model source and background work (what `async with` does)."""
        if self._started:
            raise RuntimeError("the client is already started")
        if self._closed:
            raise RuntimeError("the client is closed; create a new one")
        started = anyio.Event()
        # The background task group lives in a task of its own, owned here and awaited by
        # close(): nothing that happens in it can cancel or fail the coordinator's task.
        self._runner = asyncio.get_running_loop().create_task(self._run_background(started),
                                                              name="model-runner-client")
        await started.wait()
        self._started = True

    async def close(self) -> None:
        """Cancel background work and close every connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._started = False
        if self._group is not None:
            self._group.cancel_scope.cancel()
        try:
            if self._runner is not None:
                await asyncio.wait([self._runner])  # finishes once its group is cancelled
        finally:
            for slot in list(self._slots.values()):
                self._discard(slot)
            self._events.close()
            self._notify()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _run_background(self, started: anyio.Event) -> None:
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(_guarded, self._dispatch)
            group.start_soon(_guarded, self._run_source)
            started.set()
            await anyio.sleep_forever()

    async def _run_source(self) -> None:
        try:
            await self._source.run(self)
        except Exception:
            logger.exception("the model source %r failed; the client keeps the models it has",
                             self._source)

    async def _dispatch(self) -> None:
        """Deliver events and failure reports one at a time, in the order they happened."""
        async for notice in self._notices_out:
            if isinstance(notice, FailureReport):
                await self._deliver_report(notice)
            else:
                await self._events.call_back(notice)

    def _notify_event(self, event: ModelEvent) -> None:
        self._events.publish(event)  # iterators get it at once
        self._notices.send_nowait(event)  # callbacks, in order, from `_dispatch`

    async def _wait_listed(self, timeout: float | None) -> bool:
        """Whether the source listed its models within `timeout` seconds."""
        with anyio.move_on_after(timeout):
            while not self._listed:
                await self._changed.wait()
        return self._listed

    # --- the model set -------------------------------------------------------------------------

    @property
    def models(self) -> list[ModelEndpoint]:
        """The models ready for calls (set up), in the order they were added."""
        return [slot.endpoint for slot in self._slots.values() if slot.callable]

    @property
    def pending(self) -> list[ModelEndpoint]:
        """Models still connecting or being set up."""
        return [slot.endpoint for slot in self._slots.values() if not slot.callable]

    def upsert(self, endpoint: ModelEndpoint) -> None:
        """Add a model, or replace it when its address or deployment changed."""
        if (endpoint.model_id, endpoint.deployment_id) in self._reported:
            logger.info("not adding %s again: this deployment was reported as failed", endpoint)
            return
        problem = _host_problem(endpoint.ip)
        if problem is not None:
            # Never connectable: report it now rather than leave it pending forever.
            current = self._slots.get(endpoint.model_id)
            if current is not None:
                self._drop(current, f"replaced by a deployment at an impossible address: "
                                    f"{problem}")
            self._ever_held.add(endpoint.model_id)
            self._departed[endpoint.model_id] = endpoint
            self._report(endpoint, "CONNECTION_FAILED", f"{problem}; the orchestrator gave "
                                                        "an address no connection can reach")
            return
        current = self._slots.get(endpoint.model_id)
        if current is not None:
            same_place = (current.endpoint.deployment_id == endpoint.deployment_id
                          and current.endpoint.address == endpoint.address)
            if same_place:
                current.endpoint = endpoint  # fresher metadata, same deployment
                return
            previous = current.endpoint if current.callable else current.previous
            self._discard(current)
        else:
            previous = self._departed.pop(endpoint.model_id, None)
            if previous is not None and previous.deployment_id == endpoint.deployment_id:
                previous = None  # the same deployment coming back is a join, not a redeploy
        connection = ModelConnection(endpoint, security=self._security.for_endpoint(endpoint),
                                     max_receive_message_length=self.max_receive_message_length,
                                     transport=self.transport)
        slot = Slot(endpoint, connection, Streaks(self.max_consecutive_failures,
                                                   self.max_consecutive_timeouts),
                     previous=previous)
        self._slots[endpoint.model_id] = slot
        self._ever_held.add(endpoint.model_id)
        self._check_descriptors()
        self._spawn(self._supervise, slot)
        self._notify()

    def _check_descriptors(self) -> None:
        """Warn once when the models (one connection each) near the open-file limit."""
        if self._fd_warned:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and len(self._slots) + _FD_HEADROOM > soft:
            self._fd_warned = True
            logger.warning(
                "%d models need as many open connections, near this process's limit of %d "
                "open files (hard limit %s); raise it with `ulimit -n` or "
                "resource.setrlimit(resource.RLIMIT_NOFILE, ...) before starting the client",
                len(self._slots), soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)

    def listed(self) -> None:
        """The source has delivered its complete list of models (called by sources)."""
        if not self._listed:
            self._listed = True
            self._notify()

    def get_model(self, model_id: str) -> ModelEndpoint | None:
        """The ready model with this id, if the client holds one."""
        slot = self._slots.get(model_id)
        return slot.endpoint if slot is not None and slot.callable else None

    def model_ids(self) -> set[str]:
        """Every model held, ready or still being set up."""
        return set(self._slots)

    def deployment_of(self, model_id: str) -> str | None:
        slot = self._slots.get(model_id)
        return slot.endpoint.deployment_id if slot is not None else None

    def remove(self, model_id: str, reason: str, *, deployment_id: str | None = None) -> None:
        """Remove a model (if `deployment_id` is given, only if it is still that deployment)."""
        slot = self._slots.get(model_id)
        if slot is None:
            return
        if deployment_id is not None and slot.endpoint.deployment_id != deployment_id:
            return  # about an older deployment than the one held
        self._drop(slot, reason)

    def _discard(self, slot: Slot) -> None:
        slot.discard()
        if self._slots.get(slot.endpoint.model_id) is slot:
            del self._slots[slot.endpoint.model_id]

    def _drop(self, slot: Slot, reason: str, report_code: str | None = None) -> None:
        if slot.gone:
            return
        was_ready = slot.callable
        self._discard(slot)
        self._departed[slot.endpoint.model_id] = slot.endpoint
        while len(self._departed) > _DEPARTED_KEPT:
            del self._departed[next(iter(self._departed))]  # oldest first
        if report_code is not None:
            self._report(slot.endpoint, report_code, reason)
        if was_ready:
            self._notify_event(ModelEvent(EventKind.LEFT, slot.endpoint, reason=reason))
        else:
            logger.warning("model %s dropped before it was ready: %s", slot.endpoint, reason)
        self._notify()

    def _report(self, endpoint: ModelEndpoint, code: str, reason: str) -> None:
        key = (endpoint.model_id, endpoint.deployment_id)
        if key in self._reported:
            return  # one report per deployment: the orchestrator stops the model for good
        self._reported.add(key)
        logger.warning("reporting %s as %s: %s", endpoint, code, reason)
        self._notices.send_nowait(FailureReport(endpoint, code, reason))

    async def _deliver_report(self, report: FailureReport) -> None:
        if self.link is not None:
            await self.link.report(report)
        if self._on_failure is not None:
            try:
                outcome = self._on_failure(report)
                if outcome is not None:
                    await outcome
            except Exception:
                logger.exception("the on_failure callback raised for %s", report)

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._group is None or self._closed:
            return
        try:
            self._group.start_soon(_guarded, fn, *args, name=getattr(fn, "__name__", None))
        except RuntimeError:  # the background group ended: only close() does that
            logger.error("the client's background work has stopped; %s not run",
                         getattr(fn, "__name__", fn))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # --- setup and health ------------------------------------------------------------------

    async def _supervise(self, slot: Slot) -> None:
        """The slot's one supervisor: the first Setup, then each check the policy asks for,
        one at a time, until the slot is gone."""
        await self._setup_with_retries(slot)
        while not slot.gone:
            await slot.wake.wait()
            slot.wake = anyio.Event()
            check, slot.pending = slot.pending, None
            if check is Check.SETUP:
                await self._setup_with_retries(slot)  # the host lost its instance
            elif check is Check.PROBE:
                await self._probe(slot)
            if slot.state is SlotState.CHECKING and slot.pending is None:
                slot.state = SlotState.READY

    async def _setup_with_retries(self, slot: Slot) -> None:
        endpoint = slot.endpoint
        for attempt in range(1, self.connect_attempts + 1):
            if slot.gone:
                return
            try:
                async with self._setups:
                    if slot.gone:
                        return
                    code, message = await slot.connection.setup(self._setup_payload,
                                                                 self.setup_timeout)
            except UntrustedHost as exc:
                self._drop(slot, f"the host failed the identity check: {exc}",
                           "CONNECTION_FAILED")
                return
            except Exception as exc:  # grpclib/asyncio errors, and odd ones (UnicodeError, ...)
                if slot.gone:
                    return  # discarded while connecting: its connection was closed
                if _is_credentials_error(exc):
                    # The coordinator's configuration (token, certificates), not the model.
                    logger.error("Setup of %s refused our credentials (%s: %s); check "
                                 "auth_token and the TLS settings", endpoint,
                                 type(exc).__name__, exc)
                    self._drop(slot, f"credentials refused: {exc}")
                    return
                if isinstance(exc, GRPCError) and exc.status is GrpcStatus.INTERNAL:
                    # How older hosts say the constructor raised: the model's fault, final.
                    self._drop(slot, f"Setup failed: gRPC INTERNAL: {exc.message}",
                               "BAD_IMPLEMENTATION")
                    return
                if attempt == self.connect_attempts:
                    self._drop(slot, f"could not set up after {attempt} attempts: "
                                     f"{type(exc).__name__}: {exc}", "CONNECTION_FAILED")
                    return
                delay = min(8.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                logger.info("Setup of %s failed (%s: %s); retrying in %.1fs", endpoint,
                            type(exc).__name__, exc, delay)
                await anyio.sleep(delay)
                slot.connection.reconnect()
                continue
            if code in (StatusCode.SUCCESS, ""):  # older hosts answer success with no Status
                if slot.state is SlotState.SETTING_UP:
                    slot.state = SlotState.READY
                    self._notify()
                    previous, slot.previous = slot.previous, None
                    if previous is not None and previous.deployment_id != endpoint.deployment_id:
                        event = ModelEvent(EventKind.REDEPLOYED, endpoint, previous=previous)
                    else:
                        event = ModelEvent(EventKind.JOINED, endpoint)
                    self._notify_event(event)
                return
            if code in (StatusCode.BAD_IMPLEMENTATION, StatusCode.SETUP_FAILED):
                self._drop(slot, f"Setup answered {code}: {message}", "BAD_IMPLEMENTATION")
            else:  # INVALID_ARGUMENT and the like: the coordinator's mistake, not the model's
                logger.error("Setup of %s answered %s: %s; check base_classname and the "
                             "instance arguments", endpoint, code or "no status", message)
                self._drop(slot, f"Setup answered {code}: {message}")
            return

    async def _probe(self, slot: Slot) -> None:
        """After a timeout: is the host still there and still holding the model?"""
        try:
            status = await slot.connection.health(SERVICE_NAME, min(max(self.timeout, 1.0), 5.0))
        except _CONNECTION_ERRORS as exc:
            if slot.gone:
                return
            logger.info("health probe of %s failed (%s: %s); reconnecting",
                        slot.endpoint, type(exc).__name__, exc)
            slot.connection.reconnect()
            status = None
        if status != HealthCheckResponse.SERVING:
            await self._setup_with_retries(slot)  # Setup is a no-op if the model exists

    # --- waiting ---------------------------------------------------------------------------

    async def wait_for_models(self, count: int | None = None, *,
                              timeout: float | None = None) -> list[ModelEndpoint]:
        """Wait until `count` models are ready (default: the source has listed its models and
        every one of them is set up or has failed; with no models listed, that is at once).

        Raises TimeoutError, saying how many are ready and pending, if that takes longer than
        `timeout` seconds.
        """
        self._require_started()
        def reached() -> bool:
            if count is None:
                return not self.pending and (self._listed or bool(self._slots or self._departed))
            return len(self.models) >= count

        with anyio.move_on_after(timeout) as scope:
            while not reached():
                await self._changed.wait()
        if scope.cancelled_caught:
            if count is None and not (self._listed or self._slots or self._departed):
                raise TimeoutError(f"waited {timeout}s and the model source {self._source!r} "
                                   "has listed no models yet (is the orchestrator reachable?)")
            want = "every model to be ready" if count is None else f"{count} ready models"
            raise TimeoutError(
                f"waited {timeout}s for {want}: {len(self.models)} ready, "
                f"{len(self.pending)} still connecting "
                f"({', '.join(e.model_id for e in self.pending[:10])})")
        return self.models

    def events(self) -> AsyncIterator[ModelEvent]:
        """Model JOINED / LEFT / REDEPLOYED events from now on, until the client closes."""
        return iterate(self._events.subscribe())

    def add_event_callback(self, callback: EventCallback) -> None:
        self._events.add_callback(callback)

    # --- calling ---------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        *args: Any,
        kwargs: Mapping[str, Any] | None = None,
        models: Iterable[str | ModelEndpoint] | None = None,
        timeout: float | None = None,
        returns: Any = None,
        per_model: PerModel | None = None,
    ) -> CallResults:
        """Call `method` on every ready model (or on `models`) at once; one result each.

        Returns within `timeout` (default: the client's) plus a few milliseconds, however many
        models hang. Arguments are encoded once and the same bytes go to every model, unless
        `per_model(model) -> (args, kwargs)` builds them per model. `returns=T` validates each
        output as T (msgspec); a mismatch is that model's FAILURE.

        Raises ArgumentError for an argument that cannot be encoded and UnknownModelError for a
        model id the client never held, before anything is sent.
        """
        if per_model is not None and (args or kwargs):
            raise ValueError("pass either shared arguments or per_model, not both")
        request: bytes | Callable[[ModelEndpoint], bytes]
        if per_model is None:
            request = encode_call(method, args, kwargs)
        else:
            def request(endpoint: ModelEndpoint) -> bytes:
                model_args, model_kwargs = per_model(endpoint)
                try:
                    return encode_call(method, model_args, model_kwargs)
                except ArgumentError as exc:
                    raise ArgumentError(f"per_model arguments for {endpoint.model_id}: "
                                        f"{exc}") from None
        return await self._call_encoded(method, request, models=models, timeout=timeout,
                                        returns=returns)

    async def _call_encoded(
        self,
        method: str,
        request: bytes | Callable[[ModelEndpoint], bytes],
        *,
        models: Iterable[str | ModelEndpoint] | None = None,
        timeout: float | None = None,
        returns: Any = None,
    ) -> CallResults:
        """`call` with the CallRequest already encoded: the same bytes for every model, or
        built per model (the compatibility layer sends protobuf-built requests through here)."""
        self._require_started()
        deadline = self.timeout if timeout is None else timeout
        if deadline <= 0:
            raise ValueError(f"timeout must be positive seconds, got {deadline}")
        targets = self._targets(models)
        decoder = ResultDecoder(returns)

        # Build every request first: a bad argument raises before anything is sent or counted.
        payloads: list[bytes | None] = []
        for _, slot in targets:
            if slot is None or not slot.callable:
                payloads.append(None)
            else:
                payloads.append(request if isinstance(request, bytes) else request(slot.endpoint))

        results: list[CallResult | None] = [None] * len(targets)
        jobs: list[Job] = []
        sent: list[tuple[int, Slot]] = []
        for index, ((model_id, slot), payload) in enumerate(zip(targets, payloads, strict=True)):
            if slot is None:
                # Departed long ago, its metadata may be forgotten (the memory is bounded).
                departed = self._departed.get(model_id) or ModelEndpoint(model_id, "", 0)
                results[index] = CallResult.make(departed, CallStatus.FAILURE,
                                                 detail="not called: the model has left")
            elif not slot.callable:
                results[index] = CallResult.make(
                    slot.endpoint, CallStatus.TIMEOUT,
                    detail="not called: the model is still being set up")
            elif slot.streaks.take_skip():
                results[index] = CallResult.make(
                    slot.endpoint, CallStatus.TIMEOUT,
                    detail=f"skipped while cooling down after {slot.streaks.timeouts} "
                           "timeouts in a row")
            else:
                assert payload is not None
                jobs.append(Job(slot.connection, payload))
                sent.append((index, slot))

        outcomes = await self._fanout.run(jobs, deadline, decoder) if jobs else []
        # Every model unreachable at once is the coordinator's network, not the models' fault.
        blame = len(outcomes) < 2 or any(o.kind is not Kind.UNREACHABLE for o in outcomes)
        if not blame and not self._closed:  # (closing ends every call: no news)
            logger.warning("all %d models were unreachable in this call: the coordinator's "
                           "network is likely down; not counting it against the models",
                           len(outcomes))
        for (index, slot), outcome in zip(sent, outcomes, strict=True):
            results[index] = CallResult.make(slot.endpoint, outcome.status, outcome.output,
                                             outcome.latency_us, outcome.detail)
            if blame:
                self._apply_policy(slot, method, outcome)
        return CallResults([r for r in results if r is not None])

    def _targets(self, models: Iterable[str | ModelEndpoint] | None) -> list[
        tuple[str, Slot | None]
    ]:
        if models is None:
            return [(slot.endpoint.model_id, slot) for slot in self._slots.values()
                    if slot.callable]
        targets: list[tuple[str, Slot | None]] = []
        seen: set[str] = set()
        for model in models:
            model_id = model.model_id if isinstance(model, ModelEndpoint) else model
            if model_id in seen:
                continue
            seen.add(model_id)
            slot = self._slots.get(model_id)
            if slot is None and model_id not in self._ever_held:
                raise UnknownModelError(
                    f"models= names {model_id!r}, which this client has never held; "
                    "pick ids from client.models")
            targets.append((model_id, slot))
        return targets

    def _apply_policy(self, slot: Slot, method: str, outcome: Outcome) -> None:
        if slot.gone:
            return  # left during the call: nothing to count
        streaks = slot.streaks
        kind = outcome.kind
        verdict: str | None = None
        if kind is Kind.SUCCESS:
            streaks.success(method)
        elif kind in (Kind.MODEL_FAILURE, Kind.NEEDS_SETUP):
            verdict = streaks.failure(method)
            if kind is Kind.NEEDS_SETUP and verdict is None:
                slot.request(Check.SETUP)  # the host restarted and lost the instance
        elif kind is Kind.REFUSED:
            pass  # our credentials: not the model's fault
        elif kind is Kind.UNTRUSTED:
            verdict = "CONNECTION_FAILED"  # never call a host that is not the cruncher's
        elif kind in (Kind.TIMEOUT, Kind.UNREACHABLE):
            verdict = streaks.timeout(unreachable=kind is Kind.UNREACHABLE)
            if verdict is None:
                slot.request(Check.PROBE)
        if verdict is not None:
            if verdict == "MULTIPLE_FAILED":
                reason = (f"{streaks.failures[method]} failures of {method} in a row; "
                          f"last: {outcome.detail}")
            elif kind is Kind.UNTRUSTED:
                reason = outcome.detail
            else:
                reason = f"{streaks.timeouts} timeouts in a row; last: {outcome.detail}"
            self._drop(slot, reason, verdict)

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("the client is not started: use `async with client:` "
                               "or `await client.start()` first")
