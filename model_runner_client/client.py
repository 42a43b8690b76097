"""`ModelRunnerClient`: a live set of models, set up as they join, called all at once.

The client owns one anyio task group for its background work: the dispatcher of events and
failure reports, and the registry's `run` (the model source, and every model's supervisor in a
task group of its own: registry.py). Leaving `async with` (or `close()`) cancels it and closes
every connection, so no task or socket outlives the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as _ssl
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, TypeVarTuple, Unpack, overload

import anyio

from .blame import Mistake
from .connection import Connector
from .encoding import ArgumentError, ResultDecoder, encode_call, encode_setup
from .events import EventCallback, EventHub, EventKind, FailureReport, ModelEvent, iterate
from .fanout import Fanout
from .metrics import Metrics
from .model_set import UnknownModelError
from .models import ModelEndpoint
from .orchestrator import OrchestratorLink
from .registry import Registry
from .reports import Reports
from .results import CallResults
from .security import GatewayCredentials, SecureCredentials
from .sources import ModelSource, StaticModels
from .supervision import Checks
from .tick import plan, settle
from .transport_security import Security
from .transports import TRANSPORTS, TransportName

__all__ = ["ModelRunnerClient", "UnknownModelError"]

logger = logging.getLogger(__name__)

FailureCallback = Callable[[FailureReport], Awaitable[None] | None]
PerModel = Callable[[ModelEndpoint], tuple[Sequence[Any], Mapping[str, Any] | None]]
#: Largest answer read by default (grpcio's default, which model-runner-client 0.14 used): what
#: reading one answer may cost is bounded by it (see fanout.py).
DEFAULT_MAX_ANSWER = 4 * 1024 * 1024


Ts = TypeVarTuple("Ts")
T = TypeVar("T")


async def _run_logging_failures(fn: Callable[[Unpack[Ts]], Awaitable[object]],
                                *args: *Ts) -> None:
    """Run background work so that a failure is logged, never propagated: the client's task
    group is entered by the coordinator's own task, which an escaping error would cancel."""
    try:
        await fn(*args)
    except Exception:
        logger.exception("background task %s failed; the client carries on",
                         getattr(fn, "__name__", fn))


class ClientOptions(TypedDict, total=False):
    """The keywords of `ModelRunnerClient` besides where the models come from (typed, so that
    a misspelt one is an error for mypy in `from_addresses` too)."""

    timeout: float
    max_consecutive_failures: int
    max_consecutive_timeouts: int
    instance_args: Sequence[Any]
    instance_kwargs: Mapping[str, Any] | None
    max_concurrent_calls: int
    max_receive_message_length: int
    setup_timeout: float
    connect_attempts: int
    on_failure: FailureCallback | None
    on_event: EventCallback | None
    ssl: _ssl.SSLContext | None
    auth_token: str | None
    metadata: Mapping[str, str] | None
    secure_credentials: SecureCredentials | None
    gateway_credentials: GatewayCredentials | None
    report_failure: bool
    transport: TransportName | None
    metrics: Metrics | None


class ModelRunnerClient:
    """Calls a live set of models concurrently, each call with a deadline.

    By default the models come from the Model Orchestrator at `ws://host:port/<crunch_id>`;
    `from_addresses([...])` uses a fixed list instead, and `source=` any `ModelSource`. Then
    `async with client:` connects, and `await client.call(...)` returns one `CallResult` per
    model.

    Args:
        crunch_id, host, port: the orchestrator's websocket (`ws://host:port/<crunch_id>`).
        base_classname: the Crunch's base class, a full dotted path; each host finds the
            submission's subclass of it at Setup.
        timeout: the default deadline of a call, in seconds.
        max_consecutive_failures: failures of one method in a row before a model is
            disconnected and reported MULTIPLE_FAILED.
        max_consecutive_timeouts: timeouts in a row before MULTIPLE_TIMEOUT (or
            CONNECTION_FAILED when nothing ever answered).
        instance_args, instance_kwargs: the constructor's arguments, sent with Setup.
        max_concurrent_calls: calls in flight at once; more wait, and those still waiting at
            the deadline come back TIMEOUT ("not sent").
        max_receive_message_length: the largest answer read, in bytes (default 4 MiB); a
            larger one is that model's FAILURE, refused from its length prefix.
        setup_timeout: the deadline of each Setup, in seconds.
        connect_attempts: Setup attempts (with backoff) before a model that cannot be
            reached is reported CONNECTION_FAILED.
        on_failure: called with each FailureReport (a model disconnected for its own fault).
        on_event: called with each ModelEvent (JOINED, LEFT, REDEPLOYED).
        ssl, auth_token, metadata, secure_credentials, gateway_credentials: how calls are
            secured (README "Security").
        report_failure: send reports to the orchestrator (False: log them only).
        source: any ModelSource instead of the orchestrator.
        transport: "ngh2" (default) or "grpclib"; MODEL_RUNNER_TRANSPORT chooses too.
        metrics: a recorder (`metrics.PrometheusMetrics()`): latency per model, calls by
            outcome, reports by code, models by state, tick durations. None: nothing recorded.
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
        metrics: Metrics | None = None,
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
        self.transport_name: TransportName = next(t for t in TRANSPORTS if t == chosen)
        self._fanout = Fanout(max_concurrent_calls)
        self.max_receive_message_length = max_receive_message_length
        self._on_failure = on_failure
        security = Security(ssl=ssl, auth_token=auth_token, metadata=metadata,
                            secure_credentials=secure_credentials,
                            gateway_credentials=gateway_credentials)
        self._events = EventHub()
        if on_event is not None:
            self._events.add_callback(on_event)
        self._started = False
        self._runner: asyncio.Task[None] | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._closed = False
        #: The coordinator mistakes already logged at ERROR (blame.py).
        self._mistakes_logged: set[str] = set()
        self._metrics = metrics
        self._registry = Registry(
            connector=Connector(self.transport_name, security, max_receive_message_length),
            checks=Checks(setup_payload=self._setup_payload, setup_timeout=setup_timeout,
                          connect_attempts=connect_attempts,
                          probe_timeout=min(max(timeout, 1.0), 5.0)),
            reports=Reports(self._events),
            max_consecutive_failures=max_consecutive_failures,
            max_consecutive_timeouts=max_consecutive_timeouts)
        self._models = self._registry.models
        if metrics is not None:
            models = self._models
            metrics.watch(lambda: len(models.ready), lambda: len(models.pending),
                          lambda: models.cooling)

    @classmethod
    def from_addresses(
        cls, addresses: Iterable[str | ModelEndpoint], *, base_classname: str,
        **options: Unpack[ClientOptions],
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
            self._registry.close()
            self._events.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _run_background(self, started: anyio.Event) -> None:
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(_run_logging_failures, self._dispatch)
            group.start_soon(_run_logging_failures, self._registry.run, self._source)
            started.set()
            await anyio.sleep_forever()

    async def _dispatch(self) -> None:
        """Deliver events and failure reports one at a time, in the order they happened."""
        async for notice in self._registry.reports.notices:
            if isinstance(notice, FailureReport):
                await self._deliver_report(notice)
            else:
                if notice.kind is EventKind.LEFT:
                    self._forget_departed(notice.model.model_id)
                await self._events.call_back(notice)

    def _forget_departed(self, model_id: str) -> None:
        """Drop a model's metrics once it has left, unless it is already back."""
        if self._metrics is not None and model_id not in self._models.slots:
            self._metrics.forget(model_id)

    async def _deliver_report(self, report: FailureReport) -> None:
        if self._metrics is not None:
            self._metrics.report(report.code)
        if self.link is not None:
            await self.link.report(report)
        if self._on_failure is not None:
            try:
                outcome = self._on_failure(report)
                if outcome is not None:
                    await outcome
            except Exception:
                logger.exception("the on_failure callback raised for %s", report)

    async def wait_listed(self, timeout: float | None = None) -> bool:
        """Whether the model source has delivered its complete list of models (the
        orchestrator's first `init`) within `timeout` seconds; their Setups may still run."""
        with anyio.move_on_after(timeout):
            while not self._models.is_listed:
                await self._models.wait_changed()
        return self._models.is_listed

    # --- the model set (model_set.py) ------------------------------------------------------------

    @property
    def models(self) -> list[ModelEndpoint]:
        """The models ready for calls (set up), in the order they were added."""
        return self._models.ready

    @property
    def pending(self) -> list[ModelEndpoint]:
        """Models still connecting or being set up."""
        return self._models.pending

    def forgive(self, models: Iterable[str | ModelEndpoint] | None = None) -> None:
        """Reset the failure and timeout streaks of these models (default: all): after an
        incident on the coordinator's side, so that no model is disconnected for it."""
        for _, slot in self._models.targets(models):
            if slot is not None:
                slot.streaks.forgive()

    def get_model(self, model_id: str) -> ModelEndpoint | None:
        """The ready model with this id, if the client holds one."""
        return self._models.get(model_id)

    def model_ids(self) -> set[str]:
        """Every model held, ready or still being set up."""
        return set(self._models.slots)

    # --- waiting ---------------------------------------------------------------------------

    async def wait_for_models(self, count: int | None = None, *,
                              timeout: float | None = None) -> list[ModelEndpoint]:
        """Wait until `count` models are ready (default: the source has listed its models and
        every one of them is set up or has failed; with no models listed, that is at once).

        Raises TimeoutError, saying how many are ready and pending, if that takes longer than
        `timeout` seconds.
        """
        self._require_started()
        models = self._models

        def reached() -> bool:
            return models.settled if count is None else len(models.ready) >= count

        with anyio.move_on_after(timeout) as scope:
            while not reached():
                await models.wait_changed()
        if scope.cancelled_caught:
            if count is None and not (models.is_listed or models.slots or models.departed):
                problem = self._source.problem
                raise TimeoutError(
                    f"waited {timeout}s and the model source {self._source!r} has listed no "
                    "models yet: " + (f"{problem}; check crunch_id, host and port" if problem
                                      else "is the orchestrator reachable?"))
            want = "every model to be ready" if count is None else f"{count} ready models"
            problem = self._source.problem
            raise TimeoutError(
                f"waited {timeout}s for {want}: {len(self.models)} ready, "
                f"{len(self.pending)} still connecting "
                f"({', '.join(e.model_id for e in self.pending[:10])})"
                + (f"; {problem}" if problem else ""))
        return self.models

    def events(self) -> AsyncIterator[ModelEvent]:
        """Model JOINED / LEFT / REDEPLOYED events from now on, until the client closes."""
        return iterate(self._events.subscribe())

    def add_event_callback(self, callback: EventCallback) -> None:
        self._events.add_callback(callback)

    # --- calling ---------------------------------------------------------------------------

    @overload
    async def call(self, method: str, *args: Any, kwargs: Mapping[str, Any] | None = None,
                   models: Iterable[str | ModelEndpoint] | None = None,
                   timeout: float | None = None, returns: None = None,
                   per_model: PerModel | None = None) -> CallResults[Any]: ...

    @overload
    async def call(self, method: str, *args: Any, kwargs: Mapping[str, Any] | None = None,
                   models: Iterable[str | ModelEndpoint] | None = None,
                   timeout: float | None = None, returns: type[T],
                   per_model: PerModel | None = None) -> CallResults[T]: ...

    async def call(
        self,
        method: str,
        *args: Any,
        kwargs: Mapping[str, Any] | None = None,
        models: Iterable[str | ModelEndpoint] | None = None,
        timeout: float | None = None,
        returns: Any = None,
        per_model: PerModel | None = None,
    ) -> CallResults[Any]:
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
        return await self.call_request(method, request, models=models, timeout=timeout,
                                       returns=returns)

    async def call_request(
        self,
        method: str,
        request: bytes | Callable[[ModelEndpoint], bytes],
        *,
        models: Iterable[str | ModelEndpoint] | None = None,
        timeout: float | None = None,
        returns: Any = None,
    ) -> CallResults[Any]:
        """`call` with the CallRequest already encoded (its bytes, as protobuf or betterproto2
        build them): the same bytes for every model, or built per model by a function of the
        model. `method` names the call in results and logs. The old API sends its
        protobuf-built requests through here."""
        self._require_started()
        started = time.monotonic()
        deadline = self.timeout if timeout is None else timeout
        if deadline <= 0:
            raise ValueError(f"timeout must be positive seconds, got {deadline}")
        tick = plan(self._models.targets(models), request, self._models.departed.get)
        answers = await self._fanout.run(tick.jobs, deadline, ResultDecoder(returns)) \
            if tick.jobs else []
        called, ended, mistake = settle(tick, method, answers, self._registry.apply_policy)
        if mistake is not None and not self._closed:  # (closing ends every call: no news)
            self._log_mistake(mistake)
        if self._metrics is not None:
            self._metrics.tick(method, time.monotonic() - started, called,
                               [o.kind.value for o in ended])
            # A model that left during this tick may have had its LEFT dispatched (and its
            # series forgotten) before tick() recorded it again. (~0.4 ms at 10,000 models;
            # recording costs ~0.6 µs per model in observe() alone.)
            for _, slot in tick.called:
                if slot.gone:
                    self._forget_departed(slot.endpoint.model_id)
        return called

    def _log_mistake(self, mistake: Mistake) -> None:
        """The coordinator's likely mistake: at ERROR the first time, then at DEBUG (a network
        outage is a WARNING each time: it comes and goes)."""
        if mistake.key == "unreachable":
            logger.warning("%s", mistake.message)
            return
        if mistake.key in self._mistakes_logged:
            logger.debug("%s", mistake.message)
            return
        if len(self._mistakes_logged) < 1024:
            self._mistakes_logged.add(mistake.key)
        logger.error("%s", mistake.message)

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("the client is not started: use `async with client:` "
                               "or `await client.start()` first")
