"""The models the client holds: a slot per model (its connection, failure streaks and state),
how each is set up and checked, and what the failure policy does with an outcome.

A slot's state is one value, written by the client's registry code only:

    SETTING_UP  connecting and running Setup; not called
    READY       called on every tick
    CHECKING    still called; its supervisor is checking it in the background (a health probe
                after a timeout, or Setup again after the host lost its instance)
    GONE        discarded (left, replaced, disconnected); its connection is closed

Each slot has one supervisor task for its whole life (the client owns it): it runs the first
Setup, then waits for the failure policy to ask for a check (`request`), one at a time.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import re
import resource
import ssl as _ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, TypeVarTuple, Unpack

import anyio
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from model_runner.wire import SERVICE_NAME, StatusCode
from model_runner.wire.codes import names_unimportable_base
from model_runner.wire.errors import describe

from .connection import ModelConnection
from .events import EventKind, FailureReport, ModelEvent, ReportCode
from .fanout import Kind, Outcome
from .models import ModelEndpoint
from .policy import Streaks
from .transport_security import UntrustedHost

__all__ = ["Check", "Registry", "Slot", "SlotState", "Spawn", "UnknownModelError"]

logger = logging.getLogger(__name__)
Ts = TypeVarTuple("Ts")


class Spawn(Protocol):
    """Runs `fn(*args)` as background work the client owns."""

    def __call__(self, fn: Callable[[Unpack[Ts]], Awaitable[object]], /,
                 *args: *Ts) -> None: ...


#: File descriptors left for everything but model connections before the client warns.
_FD_HEADROOM = 64
#: Departed models remembered, so results for them can still carry their metadata.
_DEPARTED_KEPT = 10_000
#: Setups (connect + Setup) in flight at once: 10,000 joining entries at an address that
#: refuses connections, all set up at once, held the loop 5-21 s and ticks with it.
MAX_CONCURRENT_SETUPS = 64
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


class UnknownModelError(KeyError):
    """`models=` named a model this client has never held."""

    def __str__(self) -> str:
        return str(self.args[0])


class SlotState(Enum):
    SETTING_UP = "setting up"
    READY = "ready"
    CHECKING = "checking"
    GONE = "gone"


class Check(Enum):
    """What the failure policy asks a slot's supervisor to do."""

    #: After a timeout: is the host still there and holding the model?
    PROBE = "probe"
    #: The host lost its instance (FAILED_PRECONDITION): Setup again.
    SETUP = "setup"


@dataclass(eq=False)
class Slot:
    endpoint: ModelEndpoint
    connection: ModelConnection
    streaks: Streaks
    #: The deployment this one replaces, for the REDEPLOYED event.
    previous: ModelEndpoint | None = None
    state: SlotState = SlotState.SETTING_UP
    #: The check asked for and not yet started (SETUP wins over PROBE).
    pending: Check | None = None
    wake: anyio.Event = field(default_factory=anyio.Event)

    @property
    def callable(self) -> bool:
        return self.state is SlotState.READY or self.state is SlotState.CHECKING

    @property
    def gone(self) -> bool:
        return self.state is SlotState.GONE

    def request(self, check: Check) -> None:
        """Ask the supervisor for a check (no-op while one of at least that weight waits)."""
        if self.gone or self.state is SlotState.SETTING_UP:
            return
        if self.pending is None or check is Check.SETUP:
            self.pending = check
            self.state = SlotState.CHECKING
            self.wake.set()

    def discard(self) -> None:
        self.state = SlotState.GONE
        # Closing the connection ends a pending Setup or probe at once (they then see GONE);
        # no cancel scope reaches into the transport, whose stream resets swallow them.
        self.connection.close()
        self.wake.set()  # the supervisor ends


class Registry:
    """The client's model set (the `ModelRegistry` that model sources drive), each model's
    supervisor, and the failure policy's effects. The client hands it four things: how to
    connect to a model, how to run background work, and where changes, events and failure
    reports go (delivered in order by the client)."""

    def __init__(
        self,
        *,
        setup_payload: bytes,
        setup_timeout: float,
        connect_attempts: int,
        probe_timeout: float,
        max_consecutive_failures: int,
        max_consecutive_timeouts: int,
        connect: Callable[[ModelEndpoint], ModelConnection],
        spawn: Spawn,
        changed: Callable[[], None],
        emit: Callable[[ModelEvent | FailureReport], None],
    ) -> None:
        self._setup_payload = setup_payload
        self.setup_timeout = setup_timeout
        self.connect_attempts = connect_attempts
        self.probe_timeout = probe_timeout
        self.max_consecutive_failures = max_consecutive_failures
        self.max_consecutive_timeouts = max_consecutive_timeouts
        self._connect = connect
        self._spawn = spawn
        self._changed = changed
        self._emit = emit
        self.slots: dict[str, Slot] = {}
        self.departed: dict[str, ModelEndpoint] = {}
        #: Every model id ever held (ids only, so the memory of departed ones can be bounded
        #: without a held-then-forgotten id passing for one never held).
        self._ever_held: set[str] = set()
        self._reported: set[tuple[str, str]] = set()
        self._setups = anyio.Semaphore(MAX_CONCURRENT_SETUPS)
        #: Whether any host has imported the base class (then a host that cannot, can't by the
        #: submission's fault); until then, those that cannot wait here, unreported.
        self._base_imported = False
        self._unimportable: dict[tuple[str, str], tuple[ModelEndpoint, str]] = {}
        #: The source has delivered its first complete list (the orchestrator's `init`).
        self.is_listed = False
        self._fd_warned = False

    def discard_all(self) -> None:
        for slot in list(self.slots.values()):
            self._discard(slot)

    @property
    def models(self) -> list[ModelEndpoint]:
        """The models ready for calls (set up), in the order they were added."""
        return [slot.endpoint for slot in self.slots.values() if slot.callable]

    @property
    def pending(self) -> list[ModelEndpoint]:
        """Models still connecting or being set up."""
        return [slot.endpoint for slot in self.slots.values() if not slot.callable]

    def upsert(self, endpoint: ModelEndpoint) -> None:
        """Add a model, or replace it when its address or deployment changed."""
        if (endpoint.model_id, endpoint.deployment_id) in self._reported:
            logger.info("not adding %s again: this deployment was reported as failed", endpoint)
            return
        problem = _host_problem(endpoint.ip)
        if problem is not None:
            # Never connectable: report it now rather than leave it pending forever.
            current = self.slots.get(endpoint.model_id)
            if current is not None:
                self._drop(current, f"replaced by a deployment at an impossible address: "
                                    f"{problem}")
            self._ever_held.add(endpoint.model_id)
            self.departed[endpoint.model_id] = endpoint
            self._report(endpoint, ReportCode.CONNECTION_FAILED,
                         f"{problem}; the orchestrator gave an address no connection can reach")
            return
        current = self.slots.get(endpoint.model_id)
        if current is not None:
            same_place = (current.endpoint.deployment_id == endpoint.deployment_id
                          and current.endpoint.address == endpoint.address)
            if same_place:
                current.endpoint = endpoint  # fresher metadata, same deployment
                return
            previous = current.endpoint if current.callable else current.previous
            self._discard(current)
        else:
            previous = self.departed.pop(endpoint.model_id, None)
            if previous is not None and previous.deployment_id == endpoint.deployment_id:
                previous = None  # the same deployment coming back is a join, not a redeploy
        connection = self._connect(endpoint)
        slot = Slot(endpoint, connection, Streaks(self.max_consecutive_failures,
                                                   self.max_consecutive_timeouts),
                     previous=previous)
        self.slots[endpoint.model_id] = slot
        self._ever_held.add(endpoint.model_id)
        self._check_descriptors()
        self._spawn(self._supervise, slot)
        self._changed()

    def _check_descriptors(self) -> None:
        """Warn once when the models (one connection each) near the open-file limit."""
        if self._fd_warned:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and len(self.slots) + _FD_HEADROOM > soft:
            self._fd_warned = True
            logger.warning(
                "%d models need as many open connections, near this process's limit of %d "
                "open files (hard limit %s); raise it with `ulimit -n` or "
                "resource.setrlimit(resource.RLIMIT_NOFILE, ...) before starting the client",
                len(self.slots), soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)

    def listed(self) -> None:
        """The source has delivered its complete list of models (called by sources)."""
        if not self.is_listed:
            self.is_listed = True
            self._changed()

    def get_model(self, model_id: str) -> ModelEndpoint | None:
        """The ready model with this id, if the client holds one."""
        slot = self.slots.get(model_id)
        return slot.endpoint if slot is not None and slot.callable else None

    def model_ids(self) -> set[str]:
        """Every model held, ready or still being set up."""
        return set(self.slots)

    def deployment_of(self, model_id: str) -> str | None:
        slot = self.slots.get(model_id)
        return slot.endpoint.deployment_id if slot is not None else None

    def remove(self, model_id: str, reason: str, *, deployment_id: str | None = None) -> None:
        """Remove a model (if `deployment_id` is given, only if it is still that deployment)."""
        slot = self.slots.get(model_id)
        if slot is None:
            return
        if deployment_id is not None and slot.endpoint.deployment_id != deployment_id:
            return  # about an older deployment than the one held
        self._drop(slot, reason)

    def _discard(self, slot: Slot) -> None:
        slot.discard()
        if self.slots.get(slot.endpoint.model_id) is slot:
            del self.slots[slot.endpoint.model_id]

    def _drop(self, slot: Slot, reason: str, report_code: ReportCode | None = None) -> None:
        if slot.gone:
            return
        was_ready = slot.callable
        self._discard(slot)
        self.departed[slot.endpoint.model_id] = slot.endpoint
        while len(self.departed) > _DEPARTED_KEPT:
            del self.departed[next(iter(self.departed))]  # oldest first
        if report_code is not None:
            self._report(slot.endpoint, report_code, reason)
        if was_ready:
            self._emit(ModelEvent(EventKind.LEFT, slot.endpoint, reason=reason))
        else:
            logger.warning("model %s dropped before it was ready: %s", slot.endpoint, reason)
        self._changed()

    def _report(self, endpoint: ModelEndpoint, code: ReportCode, reason: str) -> None:
        key = (endpoint.model_id, endpoint.deployment_id)
        if key in self._reported:
            return  # one report per deployment: the orchestrator stops the model for good
        self._reported.add(key)
        logger.warning("reporting %s as %s: %s", endpoint, code, reason)
        self._emit(FailureReport(endpoint, code, reason))

    async def _supervise(self, slot: Slot) -> None:
        """The slot's one supervisor: the first Setup, then each check the policy asks for,
        one at a time, until the slot is gone."""
        await self._guarded(slot, self._setup_with_retries)
        while not slot.gone:
            await slot.wake.wait()
            slot.wake = anyio.Event()
            check, slot.pending = slot.pending, None
            if check is Check.SETUP:
                await self._guarded(slot, self._setup_with_retries)  # the host lost its model
            elif check is Check.PROBE:
                await self._guarded(slot, self._probe)
            if slot.state is SlotState.CHECKING and slot.pending is None:
                slot.state = SlotState.READY

    async def _guarded(self, slot: Slot, check: Callable[[Slot], Awaitable[None]]) -> None:
        """A check that raises is a bug of ours: logged with its traceback, never the model's
        fault, and the supervisor goes on (it once left the model CHECKING for good)."""
        try:
            await check(slot)
        except Exception:
            logger.exception("bug: %s of %s raised; the model is kept and checked again "
                             "after its next timeout", check.__name__, slot.endpoint)

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
                           ReportCode.CONNECTION_FAILED)
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
                               ReportCode.BAD_IMPLEMENTATION)
                    return
                if attempt == self.connect_attempts:
                    self._drop(slot, f"could not set up after {attempt} attempts: "
                                     f"{describe(exc)}", ReportCode.CONNECTION_FAILED)
                    return
                delay = min(8.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                logger.info("Setup of %s failed (%s); retrying in %.1fs", endpoint,
                            describe(exc), delay)
                await anyio.sleep(delay)
                slot.connection.reconnect()
                continue
            if code in (StatusCode.SUCCESS, ""):  # older hosts answer success with no Status
                self._base_found()
                if slot.state is SlotState.SETTING_UP:
                    slot.state = SlotState.READY
                    self._changed()
                    previous, slot.previous = slot.previous, None
                    if previous is not None and previous.deployment_id != endpoint.deployment_id:
                        event = ModelEvent(EventKind.REDEPLOYED, endpoint, previous=previous)
                    else:
                        event = ModelEvent(EventKind.JOINED, endpoint)
                    self._emit(event)
                return
            if (code == StatusCode.BAD_IMPLEMENTATION and not self._base_imported
                    and names_unimportable_base(message)):
                self._base_not_found(slot, message)
            elif code in (StatusCode.BAD_IMPLEMENTATION, StatusCode.SETUP_FAILED):
                self._drop(slot, f"Setup answered {code}: {message}", ReportCode.BAD_IMPLEMENTATION)
            else:  # INVALID_ARGUMENT and the like: the coordinator's mistake, not the model's
                logger.error("Setup of %s answered %s: %s; check base_classname and the "
                             "instance arguments", endpoint, code or "no status", message)
                self._drop(slot, f"Setup answered {code}: {message}")
            return

    def _base_not_found(self, slot: Slot, message: str) -> None:
        """A host cannot import the base class and none has yet: most likely the coordinator's
        base_classname (it once got every model reported BAD_IMPLEMENTATION). The model is
        dropped unreported; if another host imports it later, it is reported then."""
        if not self._unimportable:
            logger.error("no model host could import the base class so far: %s. Check "
                         "base_classname (the Crunch package's dotted path, e.g. "
                         "'starter_challenge.tracker.TrackerBase'); nothing is reported",
                         message)
        endpoint = slot.endpoint
        if len(self._unimportable) < _DEPARTED_KEPT:
            self._unimportable[(endpoint.model_id, endpoint.deployment_id)] = (
                endpoint, f"Setup answered BAD_IMPLEMENTATION: {message}")
        self._drop(slot, f"not counted: no host could import the base class: {message}")

    def _base_found(self) -> None:
        if self._base_imported:
            return
        self._base_imported = True
        deferred, self._unimportable = self._unimportable, {}
        for endpoint, reason in deferred.values():  # other hosts import it: the submission's
            self._report(endpoint, ReportCode.BAD_IMPLEMENTATION,
                         f"{reason} (other model hosts import it)")

    async def _probe(self, slot: Slot) -> None:
        """After a timeout: is the host still there and still holding the model?"""
        try:
            status = await slot.connection.health(SERVICE_NAME, self.probe_timeout)
        except Exception as exc:  # unreachable, or an answer that does not parse: ask again
            if slot.gone:
                return
            logger.info("health probe of %s failed (%s: %s); reconnecting",
                        slot.endpoint, type(exc).__name__, exc)
            slot.connection.reconnect()
            status = None
        if status != HealthCheckResponse.SERVING:
            await self._setup_with_retries(slot)  # Setup is a no-op if the model exists

    def targets(self, models: Iterable[str | ModelEndpoint] | None) -> list[
        tuple[str, Slot | None]
    ]:
        if models is None:
            return [(slot.endpoint.model_id, slot) for slot in self.slots.values()
                    if slot.callable]
        targets: list[tuple[str, Slot | None]] = []
        seen: set[str] = set()
        for model in models:
            model_id = model.model_id if isinstance(model, ModelEndpoint) else model
            if model_id in seen:
                continue
            seen.add(model_id)
            slot = self.slots.get(model_id)
            if slot is None and model_id not in self._ever_held:
                raise UnknownModelError(
                    f"models= names {model_id!r}, which this client has never held; "
                    "pick ids from client.models")
            targets.append((model_id, slot))
        return targets

    def apply_policy(self, slot: Slot, method: str, outcome: Outcome) -> None:
        if slot.gone:
            return  # left during the call: nothing to count
        streaks = slot.streaks
        kind = outcome.kind
        verdict: ReportCode | None = None
        if kind is Kind.SUCCESS:
            streaks.success(method)
        elif kind in (Kind.MODEL_FAILURE, Kind.MISSING_METHOD):
            verdict = streaks.failure(method)
        elif kind is Kind.NEEDS_SETUP:
            # The host restarted and lost the instance: not answered, like a timeout (a host
            # that keeps restarting is reported MULTIPLE_TIMEOUT in the end).
            verdict = streaks.timeout()
            if verdict is None:
                slot.request(Check.SETUP)
        elif kind in (Kind.REFUSED, Kind.COORDINATOR, Kind.CLIENT_BUG):
            pass  # our credentials, the coordinator's call, our bug: not the model's fault
        elif kind is Kind.UNTRUSTED:
            verdict = ReportCode.CONNECTION_FAILED  # never call a host that is not the cruncher's
        elif kind in (Kind.TIMEOUT, Kind.UNREACHABLE):
            verdict = streaks.timeout(unreachable=kind is Kind.UNREACHABLE)
            if verdict is None:
                slot.request(Check.PROBE)
        if verdict is not None:
            if verdict == ReportCode.MULTIPLE_FAILED:
                reason = (f"{streaks.failures[method]} failures of {method} in a row; "
                          f"last: {outcome.detail}")
            elif kind is Kind.UNTRUSTED:
                reason = outcome.detail
            else:
                plural = "" if streaks.timeouts == 1 else "s"
                reason = f"{streaks.timeouts} timeout{plural} in a row; last: {outcome.detail}"
            self._drop(slot, reason, verdict)
