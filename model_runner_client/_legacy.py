"""model-runner-client 0.14's API, as a thin layer over `ModelRunnerClient`.

Coordinators written for the grpcio-based client run unchanged: the same import paths (thin
modules re-exporting from here), names, arguments and results. Underneath there is one
implementation: the client's fan-out, failure policy and orchestrator link. What differs, and
why it is better, is listed in the README ("Coming from model-runner-client").

- Results are keyed by one `ModelRunner` object per model deployment, the same object on every
  call while the deployment lasts (the old client keyed them by connection objects, so a
  reconnect mid-tick gave a stale key).
- `model_cluster.models_run` is a live, read-only view of the ready models.
- Requests are built with the protobuf messages coordinators already build arguments with, and
  the bytes go through the client's fan-out unchanged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Self, TypeAlias
from warnings import warn

import anyio

from model_runner.wire import Variant, VariantType

from .client import ModelRunnerClient, UnknownModelError
from .grpc.generated.commons_pb2 import Argument, KwArgument
from .grpc.generated.dynamic_subclass_pb2 import CallRequest
from .models import ModelEndpoint
from .results import CallResult, CallStatus
from .security import GatewayCredentials, SecureCredentials

__all__ = [
    "ArgsAndKwargsTuple",
    "ArgumentsType",
    "DynamicSubclassModelConcurrentRunner",
    "DynamicSubclassModelRunner",
    "InvalidCoordinatorUsageError",
    "ModelCluster",
    "ModelConcurrentRunner",
    "ModelPredictResult",
    "ModelRunner",
]

logger = logging.getLogger(__name__)


class InvalidCoordinatorUsageError(Exception):
    """The coordinator did not use the library as its contract says (the message says how)."""

    def __init__(self, message: str = "The coordinator did not use the library correctly. "
                                      "Please check the call contract.") -> None:
        super().__init__(message)


class ModelRunner:
    """One model deployment: the key of call results, and what `models_run` holds.

    Hashable by identity, as before; a redeploy (new deployment_id) or a new address gives a new
    object, fresher metadata of the same deployment updates this one.
    """

    class ErrorType(Enum):
        """model-runner-client 0.14.0's names for why a runner failed: kept because coordinators
        import it (`ModelRunner.ErrorType`); nothing here produces it (reports carry
        ReportCode)."""

        GRPC_CONNECTION_FAILED = "GRPC_CONNECTION_FAILED"
        FAILED = "FAILED"
        BAD_IMPLEMENTATION = "BAD_IMPLEMENTATION"
        ABORTED = "ABORTED"
        AUTH_ERROR = "AUTH_ERROR"

    def __init__(self, deployment_id: str, model_id: str, model_name: str, ip: str, port: int,
                 infos: dict[str, Any]) -> None:
        self.runner_id = uuid.uuid4().hex
        self.deployment_id = deployment_id
        self.model_id = model_id
        self.model_name = model_name
        self.ip = ip
        self.port = port
        self.infos = infos

    @classmethod
    def of(cls, endpoint: ModelEndpoint) -> Self:
        return cls(endpoint.deployment_id, endpoint.model_id, endpoint.model_name, endpoint.ip,
                   endpoint.port, dict(endpoint.infos))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_id={self.model_id!r}, "
                f"model_name={self.model_name!r}, deployment_id={self.deployment_id!r}, "
                f"address={self.ip}:{self.port})")


class DynamicSubclassModelRunner(ModelRunner):
    """The kind of `ModelRunner` a `DynamicSubclassModelConcurrentRunner` hands out."""


ArgsAndKwargsTuple: TypeAlias = tuple[list[Argument] | None, list[KwArgument] | None]
ArgumentsType: TypeAlias = (Callable[[DynamicSubclassModelRunner], ArgsAndKwargsTuple]
                            | ArgsAndKwargsTuple)


@dataclass
class ModelPredictResult:
    class Status(Enum):
        """0.14.0's statuses, as coordinators compare them (CallStatus is the new API's)."""

        SUCCESS = "SUCCESS"
        FAILED = "FAILED"
        TIMEOUT = "TIMEOUT"

    model_runner: ModelRunner
    result: Any
    status: Status
    exec_time_us: int
    detail: str | None = None

    @staticmethod
    def of_success(model_runner: ModelRunner, result: Any, exec_time: int, *,
                   detail: str | None = None) -> ModelPredictResult:
        return ModelPredictResult(model_runner, result, ModelPredictResult.Status.SUCCESS,
                                  exec_time, detail)

    @staticmethod
    def of_failed(model_runner: ModelRunner, exec_time: int, *,
                  detail: str | None = None) -> ModelPredictResult:
        return ModelPredictResult(model_runner, None, ModelPredictResult.Status.FAILED,
                                  exec_time, detail)

    @staticmethod
    def of_timeout(model_runner: ModelRunner, exec_time: int, *,
                   detail: str | None = None) -> ModelPredictResult:
        return ModelPredictResult(model_runner, None, ModelPredictResult.Status.TIMEOUT,
                                  exec_time, detail)


_STATUS = {CallStatus.SUCCESS: ModelPredictResult.Status.SUCCESS,
           CallStatus.FAILURE: ModelPredictResult.Status.FAILED,
           CallStatus.TIMEOUT: ModelPredictResult.Status.TIMEOUT}


class _Runners:
    """The `ModelRunner` of each model's current deployment, made once and kept while it lasts."""

    def __init__(self, kind: type[ModelRunner]) -> None:
        self._kind = kind
        self._by_model: dict[str, ModelRunner] = {}

    def of(self, endpoint: ModelEndpoint) -> ModelRunner:
        runner = self._by_model.get(endpoint.model_id)
        if runner is None or runner.deployment_id != endpoint.deployment_id \
                or runner.ip != endpoint.ip or runner.port != endpoint.port:
            runner = self._by_model[endpoint.model_id] = self._kind.of(endpoint)
        elif runner.infos != endpoint.infos:  # fresher metadata, same deployment
            runner.infos = dict(endpoint.infos)
            runner.model_name = endpoint.model_name
        return runner


class _ModelsView(Mapping[str, ModelRunner]):
    """model_id → ModelRunner of the models the client holds, read live."""

    def __init__(self, runner: ModelConcurrentRunner, *, ready: bool) -> None:
        self._runner = runner
        self._ready = ready

    def _endpoints(self) -> list[ModelEndpoint]:
        client = self._runner._client
        if client is None:
            return []
        return client.models if self._ready else client.pending

    def __getitem__(self, model_id: str) -> ModelRunner:
        client = self._runner._client
        endpoint = client.get_model(model_id) if client is not None and self._ready else next(
            (e for e in self._endpoints() if e.model_id == model_id), None)
        if endpoint is None:
            raise KeyError(model_id)
        return self._runner._runners.of(endpoint)

    def __iter__(self) -> Iterator[str]:
        return iter([e.model_id for e in self._endpoints()])

    def __len__(self) -> int:
        return len(self._endpoints())

    def __repr__(self) -> str:
        return repr(dict(self))


class _OrchestratorConnection:
    """What coordinators reach as `model_cluster.ws_client`: `disconnect()` shuts down."""

    def __init__(self, runner: ModelConcurrentRunner) -> None:
        self._runner = runner

    async def disconnect(self) -> None:
        """Stop following the orchestrator and close every model connection; `sync()` returns."""
        await self._runner.close()


class ModelCluster:
    """The live model list of a concurrent runner (`runner.model_cluster`)."""

    def __init__(self, runner: ModelConcurrentRunner, crunch_id: str, ws_host: str, ws_port: int,
                 report_failure: bool) -> None:
        self.crunch_id = crunch_id
        self.ws_host = ws_host
        self.ws_port = ws_port
        self.report_failure = report_failure
        self.ws_client = _OrchestratorConnection(runner)
        #: model_id → ModelRunner of every model ready for calls (live, read-only).
        self.models_run: Mapping[str, ModelRunner] = _ModelsView(runner, ready=True)
        #: Models still connecting or being set up (live, read-only).
        self.pending_model_runs: Mapping[str, ModelRunner] = _ModelsView(runner, ready=False)

    async def init(self) -> None:
        raise InvalidCoordinatorUsageError("call `await runner.init()`, not model_cluster.init()")


class ModelConcurrentRunner:
    """Calls every model the orchestrator lists, concurrently, each call with a deadline.

    `await init()` connects and returns once the models of the orchestrator's first list are set
    up (or failed); `await sync()` follows the orchestrator until
    `model_cluster.ws_client.disconnect()` (or `close()`); `call()` fans a method out. The
    client underneath is `runner.client` (events, readiness, the new API).
    """

    MAX_CONSECUTIVE_FAILURES = 3
    MAX_CONSECUTIVE_TIMEOUTS = 3
    #: How long `init()` waits for the orchestrator's first list before raising ConnectionError
    #: (model-runner-client gave up after 5 attempts 10 s apart).
    INIT_TIMEOUT = 60.0
    _runner_kind: type[ModelRunner] = ModelRunner

    def __init__(
        self,
        timeout: float,
        crunch_id: str,
        host: str,
        port: int,
        max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
        max_consecutive_timeouts: int = MAX_CONSECUTIVE_TIMEOUTS,
        secure_credentials: SecureCredentials | None = None,
        gateway_credentials: GatewayCredentials | None = None,
        report_failure: bool = True,
    ) -> None:
        if secure_credentials is not None and gateway_credentials is not None:
            raise ValueError("secure_credentials and gateway_credentials are mutually exclusive")
        self.timeout = timeout
        self.crunch_id = crunch_id
        self.host = host
        self.port = port
        self.max_consecutive_failures = max_consecutive_failures
        self.max_consecutive_timeout = max_consecutive_timeouts  # (sic) the old attribute name
        self.secure_credentials = secure_credentials
        self.gateway_credentials = gateway_credentials
        self.report_failure = report_failure
        self.model_cluster = ModelCluster(self, crunch_id, host, port, report_failure)
        self._runners = _Runners(self._runner_kind)
        self._client: ModelRunnerClient | None = None
        self._closed = False
        self._stopped: anyio.Event | None = None
        self._starting: anyio.Lock | None = None

    def _client_options(self) -> dict[str, Any]:
        """The subclass's part of the ModelRunnerClient's options (base class, instance)."""
        raise NotImplementedError

    @property
    def client(self) -> ModelRunnerClient:
        """The `ModelRunnerClient` doing the work (after `init()` or `sync()`)."""
        if self._client is None:
            raise InvalidCoordinatorUsageError("the runner is not started: await "
                                               "runner.init() first")
        return self._client

    async def _start(self) -> ModelRunnerClient:
        if self._closed:
            raise InvalidCoordinatorUsageError("this runner was disconnected; create a new one")
        if self._starting is None:  # (no await between the check and the assignment)
            self._starting = anyio.Lock()
        async with self._starting:  # init() and sync() may start concurrently: one client
            return await self._start_once()

    async def _start_once(self) -> ModelRunnerClient:
        if self._client is None:
            client = ModelRunnerClient(
                self.crunch_id, self.host, self.port, timeout=self.timeout,
                max_consecutive_failures=self.max_consecutive_failures,
                max_consecutive_timeouts=self.max_consecutive_timeout,
                secure_credentials=self.secure_credentials,
                gateway_credentials=self.gateway_credentials,
                report_failure=self.report_failure, **self._client_options())
            self._stopped = anyio.Event()
            await client.start()
            self._client = client
        return self._client

    async def init(self) -> None:
        """Connect, and return once every model of the orchestrator's first list is set up or
        has failed. Raises ConnectionError when no list came within INIT_TIMEOUT seconds."""
        client = await self._start()
        if not await client.wait_listed(self.INIT_TIMEOUT):
            url = client.link.url if client.link is not None else "the model source"
            await self.close()
            raise ConnectionError(f"no model list from the orchestrator at {url} within "
                                  f"{self.INIT_TIMEOUT:g}s; check host, port and crunch_id")
        await client.wait_for_models()

    async def sync(self) -> None:
        """Keep the model list live until `model_cluster.ws_client.disconnect()`."""
        await self._start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def close(self) -> None:
        """Stop following the orchestrator and close every connection. Safe to call twice."""
        self._closed = True
        if self._client is not None:
            await self._client.close()
        if self._stopped is not None:
            self._stopped.set()

    async def __aenter__(self) -> Self:
        await self.init()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _call(self, method_name: str, request: bytes | Callable[[ModelEndpoint], bytes],
                    timeout: float | None,
                    model_runs: Sequence[ModelRunner] | None) -> dict[ModelRunner,
                                                                      ModelPredictResult]:
        if self._closed:
            logger.warning("call(%r) after disconnect(): no model is called", method_name)
            return {}
        client = self.client
        models = None if model_runs is None else [r.model_id for r in model_runs]
        try:
            results = await client.call_request(method_name, request, models=models,
                                                 timeout=timeout or self.timeout)
        except UnknownModelError as exc:
            raise InvalidCoordinatorUsageError(str(exc)) from None
        by_runner: dict[ModelRunner, ModelPredictResult] = {}
        for result in results:
            runner = self._runners.of(result.endpoint)
            by_runner[runner] = _predict_result(runner, result)
        return by_runner


def _predict_result(runner: ModelRunner, result: CallResult[Any]) -> ModelPredictResult:
    return ModelPredictResult(runner, result.output, _STATUS[result.status], result.latency_us,
                              result.detail or None)


def _call_request(method_name: str, arguments: Any) -> bytes:
    try:
        args, kwargs = arguments
        request = CallRequest(methodName=method_name, methodArguments=args or [],
                              methodKwArguments=kwargs or [])
    except (TypeError, ValueError) as exc:
        raise InvalidCoordinatorUsageError(
            f"arguments must be a pair (list[Argument], list[KwArgument]) of "
            f"model_runner_client.grpc.generated.commons_pb2 messages, or a function of the "
            f"model runner returning one: {exc}") from None
    return bytes(request.SerializeToString())


def _variant(data: Any) -> Variant:
    return Variant(type=VariantType(data.type), value=data.value)


class _Unset:
    """The default of the deprecated `args` / `kwargs`, told apart from an explicit value."""


_UNSET: Any = _Unset()


class DynamicSubclassModelConcurrentRunner(ModelConcurrentRunner):
    """model-runner-client's runner for the Dynamic Subclass pattern."""

    _runner_kind = DynamicSubclassModelRunner

    def __init__(self, timeout: float, crunch_id: str, host: str, port: int, base_classname: str,
                 instance_args: list[Argument] | None = None,
                 instance_kwargs: list[KwArgument] | None = None, **kwargs: Any) -> None:
        super().__init__(timeout, crunch_id, host, port, **kwargs)
        self.base_classname = base_classname
        self.instance_args = list(instance_args or [])
        self.instance_kwargs = list(instance_kwargs or [])

    def _client_options(self) -> dict[str, Any]:
        return {
            "base_classname": self.base_classname,
            "instance_args": [_variant(a.data) for a in
                              sorted(self.instance_args, key=lambda a: a.position)],
            "instance_kwargs": {k.keyword: _variant(k.data) for k in self.instance_kwargs},
        }

    async def call(
        self,
        method_name: str,
        arguments: ArgumentsType = _UNSET,
        args: list[Argument] = _UNSET,
        kwargs: list[KwArgument] = _UNSET,
        timeout: float | None = None,
        model_runs: Sequence[ModelRunner] | None = None,
    ) -> dict[ModelRunner, ModelPredictResult]:
        """Call `method_name` on every ready model (or on `model_runs`) at once.

        `arguments` is `(args, kwargs)` as commons_pb2 `Argument` / `KwArgument` lists, or a
        function of each model's runner returning that pair. Returns a result per model called,
        keyed by its runner.
        """
        if args is not _UNSET or kwargs is not _UNSET:
            warn("call(args=..., kwargs=...) is deprecated: pass arguments=(args, kwargs)",
                 DeprecationWarning, stacklevel=2)
        if arguments is _UNSET:
            arguments = ([] if args is _UNSET else args, [] if kwargs is _UNSET else kwargs)
        request: bytes | Callable[[ModelEndpoint], bytes]
        if callable(arguments):
            build = arguments
            runners = self._runners

            def request(endpoint: ModelEndpoint) -> bytes:
                return _call_request(method_name, build(runners.of(endpoint)))  # type: ignore[arg-type]
        else:
            request = _call_request(method_name, arguments)
        return await self._call(method_name, request, timeout, model_runs)
