"""`dynamic_subclass.DynamicSubclassService`: Setup / Call / Rest over one model instance.

Every model misbehaviour becomes a `commons.Status` inside the response; gRPC statuses are only
used for transport-level refusals (oversized or malformed requests, shutting down).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpclib.const
import grpclib.server
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus

from .discovery import DiscoveryError, discover_class, unload_submission
from .serial import DeadlinePassed, SerialRunner
from .wire import (
    CALL_PATH,
    REST_PATH,
    SETUP_PATH,
    CallRequest,
    CallResponse,
    Empty,
    RestResponse,
    SetupRequest,
    SetupResponse,
    Status,
    StatusCode,
    VariantError,
    VariantType,
    decode_variant,
    encode_variant_value,
)
from .wire import Variant as VariantMessage

__all__ = ["DynamicSubclassService"]

logger = logging.getLogger(__name__)

# Bytes a CallResponse adds around the result value: tags, lengths, and the status message.
_RESPONSE_OVERHEAD = 64


@dataclass
class _Outcome:
    """What one model call produced; built on the model thread, so user code never leaks out."""

    code: StatusCode
    message: str = ""
    variant: tuple[int, bytes] | None = None


class DynamicSubclassService:
    """Serves one submission: finds its class at Setup and calls its methods one at a time."""

    def __init__(
        self,
        code_directory: Path,
        *,
        model_status: ServiceStatus,
        max_receive_message_length: int,
        max_send_message_length: int,
        authorize: Callable[[Mapping[str, str]], str | None] | None = None,
    ) -> None:
        self._code_directory = code_directory
        #: Returns why a call's metadata is refused (UNAUTHENTICATED), or None to accept it.
        self._authorize = authorize
        self._model_status = model_status
        self._max_receive = max_receive_message_length
        self._max_send = max_send_message_length
        self._runner = SerialRunner()
        self._instance: Any = None
        # Per instance: method name -> how to call it (resolved once, cleared by Setup and Rest).
        self._methods: dict[str, _Method] = {}
        self._dropped_logged: set[tuple[str, frozenset[str]]] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    # --- grpclib plumbing ----------------------------------------------------------------------

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        return {
            SETUP_PATH: grpclib.const.Handler(self._rpc_setup, unary, SetupRequest, SetupResponse),
            CALL_PATH: grpclib.const.Handler(self._rpc_call, unary, CallRequest, CallResponse),
            REST_PATH: grpclib.const.Handler(self._rpc_rest, unary, Empty, RestResponse),
        }

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered (what a drain waits for)."""
        return self._in_flight

    @property
    def runner(self) -> SerialRunner:
        return self._runner

    async def _serve(
        self,
        stream: grpclib.server.Stream[Any, Any],
        request_type: type[Any],
        handle: Callable[[Any, float | None], Any],
    ) -> None:
        if self._authorize is not None:
            # Values of non "-bin" keys are str in grpclib's metadata MultiDict.
            refusal = self._authorize(cast(Mapping[str, str], stream.metadata or {}))
            if refusal is not None:
                raise GRPCError(GrpcStatus.UNAUTHENTICATED, refusal)
        if self.draining:
            raise GRPCError(GrpcStatus.UNAVAILABLE,
                            "the model host is shutting down; retry on another host")
        self._in_flight += 1
        self._idle.clear()
        try:
            request = await _recv_bounded(stream, request_type, self._max_receive)
            expires_at = None
            if stream.deadline is not None:
                expires_at = time.monotonic() + stream.deadline.time_remaining()
            response = await handle(request, expires_at)
            await stream.send_message(response)
            # Trailers are written here, not after we return, so a drain that waits for
            # in-flight calls knows the whole answer is on its way to the client.
            await stream.send_trailing_metadata()
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()

    async def _rpc_setup(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self._serve(stream, SetupRequest, self.setup)

    async def _rpc_call(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self._serve(stream, CallRequest, self.call)

    async def _rpc_rest(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self._serve(stream, Empty, self.rest)

    # --- Setup ---------------------------------------------------------------------------------

    async def setup(self, request: SetupRequest, expires_at: float | None) -> SetupResponse:
        if not request.class_name:
            return SetupResponse(status=_status(
                StatusCode.INVALID_ARGUMENT,
                "className is empty; send the base class's full dotted path"))
        try:
            args, kwargs = _decode_arguments(request.instance_arguments,
                                             request.instance_kw_arguments)
        except VariantError as exc:
            return SetupResponse(status=_status(StatusCode.INVALID_ARGUMENT, str(exc)))
        try:
            outcome = await self._runner.run_sync(
                lambda: self._create_instance(request.class_name, args, kwargs),
                expires_at=expires_at)
        except DeadlinePassed:
            raise GRPCError(GrpcStatus.DEADLINE_EXCEEDED,
                            "deadline passed before Setup ran") from None
        if outcome.code is StatusCode.SUCCESS:
            self._model_status.set(True)
        return SetupResponse(status=_status(outcome.code, outcome.message))

    def _create_instance(
        self, class_name: str, args: list[Any], kwargs: dict[str, Any]
    ) -> _Outcome:
        # Runs on the model thread, after any earlier Setup: the first one to succeed wins.
        if self._instance is not None:
            return _Outcome(StatusCode.SUCCESS, "already set up; Setup again after Rest to "
                                                "create a new instance")
        try:
            cls = discover_class(self._code_directory, class_name)
        except DiscoveryError as exc:
            logger.error("Setup failed: %s", exc)
            return _Outcome(StatusCode.BAD_IMPLEMENTATION, str(exc))
        except BaseException as exc:  # discovery runs user code at import time
            if isinstance(exc, KeyboardInterrupt):
                raise
            logger.exception("Setup failed while looking for %s", class_name)
            return _Outcome(StatusCode.BAD_IMPLEMENTATION, f"{type(exc).__name__}: {exc}")
        try:
            instance = cls(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            logger.exception("the constructor of %s raised", cls.__qualname__)
            return _Outcome(StatusCode.SETUP_FAILED,
                            f"{cls.__qualname__}() raised {_describe(exc)}")
        self._instance = instance
        self._methods.clear()
        self._dropped_logged.clear()
        logger.info("model %s.%s is set up", cls.__module__, cls.__qualname__)
        return _Outcome(StatusCode.SUCCESS)

    # --- Rest ----------------------------------------------------------------------------------

    async def rest(self, request: Empty, expires_at: float | None) -> RestResponse:
        # Deliberately not queued behind calls: a hung method must not make the host unresettable.
        had_instance = self._instance is not None
        self._instance = None
        self._methods.clear()
        self._dropped_logged.clear()
        self._model_status.set(False)
        dropped = unload_submission(self._code_directory)
        logger.info("Rest: instance %s, %d submission modules unloaded",
                    "dropped" if had_instance else "was not set", dropped)
        return RestResponse(status=_status(StatusCode.SUCCESS))

    # --- Call ----------------------------------------------------------------------------------

    async def call(self, request: CallRequest, expires_at: float | None) -> bytes:
        outcome = await self._call(request, expires_at)
        if outcome.code is not StatusCode.SUCCESS:
            logger.warning("Call %s: %s %s", request.method_name, outcome.code, outcome.message)
        response = CallResponse(status=_status(outcome.code, outcome.message))
        if outcome.variant is not None:
            type_, value = outcome.variant
            response.method_response = VariantMessage(type=VariantType(type_), value=value)
        return bytes(response)

    async def _call(self, request: CallRequest, expires_at: float | None) -> _Outcome:
        name = request.method_name
        if not name:
            return _Outcome(StatusCode.INVALID_ARGUMENT,
                            "methodName is empty; name a method of the base class")
        if name.startswith("_"):
            return _Outcome(StatusCode.INVALID_ARGUMENT,
                            f"method {name!r} is private (starts with '_') and cannot be called; "
                            "call a public method of the base class")
        instance = self._instance
        if instance is None:
            return _Outcome(StatusCode.FAILED_PRECONDITION,
                            "no model instance: call Setup with the base class first")
        info = self._methods.get(name)
        if info is None:
            info = self._methods[name] = _Method.resolve(instance, name)
        if info.error is not None:
            return info.error
        method = getattr(instance, name)  # binds a function: runs no user code
        try:
            args, kwargs = _decode_arguments(request.method_arguments,
                                             request.method_kw_arguments)
        except VariantError as exc:
            return _Outcome(StatusCode.INVALID_ARGUMENT, str(exc))
        if kwargs and info.accepted is not None:
            kwargs = self._drop_unaccepted(name, info.accepted, kwargs)

        cls_name, max_send = info.cls_name, self._max_send

        def failed(exc: BaseException) -> _Outcome:
            # A TypeError may be the caller's: arguments that do not fit the signature.
            problem = info.binding_problem(args, kwargs) if isinstance(exc, TypeError) else None
            if problem is not None:
                return _Outcome(StatusCode.INVALID_ARGUMENT, problem)
            return _failed(cls_name, name, exc)

        try:
            if info.is_async:
                async def invoke_async() -> _Outcome:
                    try:
                        result = await method(*args, **kwargs)
                    except asyncio.CancelledError:
                        raise  # the caller's deadline: not the model's failure
                    except BaseException as exc:
                        if isinstance(exc, KeyboardInterrupt):
                            raise
                        return failed(exc)
                    return _encode_result(cls_name, name, result, max_send)

                return await self._runner.run_async(invoke_async, expires_at=expires_at)

            def invoke() -> _Outcome:
                try:
                    result = method(*args, **kwargs)
                except BaseException as exc:
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    return failed(exc)
                # Encoding runs here too: a large DataFrame must not stall the event loop.
                return _encode_result(cls_name, name, result, max_send)

            return await self._runner.run_sync(invoke, expires_at=expires_at)
        except DeadlinePassed:
            raise GRPCError(GrpcStatus.DEADLINE_EXCEEDED,
                            f"deadline passed while {name} waited for an earlier call") from None

    def _drop_unaccepted(
        self, name: str, accepted: frozenset[str], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        dropped = frozenset(kwargs) - accepted
        if not dropped:
            return kwargs
        if (name, dropped) not in self._dropped_logged:
            self._dropped_logged.add((name, dropped))
            logger.warning("%s does not take keyword arguments %s; dropping them",
                           name, ", ".join(sorted(dropped)))
        return {k: v for k, v in kwargs.items() if k in accepted}


@dataclass(frozen=True)
class _Method:
    """A model method as resolved once: how to call it, or why it cannot be called."""

    cls_name: str
    name: str
    error: _Outcome | None = None
    is_async: bool = False
    #: Keyword names the method takes; None when it takes **kwargs (or has no signature).
    accepted: frozenset[str] | None = None
    signature: inspect.Signature | None = None

    @classmethod
    def resolve(cls, instance: Any, name: str) -> _Method:
        cls_name = type(instance).__qualname__
        # getattr_static runs no user code: a property or __getattr__ is never evaluated.
        attribute = inspect.getattr_static(instance, name, _MISSING)
        if attribute is _MISSING:
            return cls(cls_name, name, _Outcome(
                StatusCode.BAD_IMPLEMENTATION,
                f"{cls_name} has no method {name!r}; implement it as the base class declares"))
        if not _is_method_like(attribute):
            return cls(cls_name, name, _Outcome(
                StatusCode.BAD_IMPLEMENTATION,
                f"{cls_name}.{name} is a {type(attribute).__name__}, not a method"))
        method = getattr(instance, name)
        try:
            signature: inspect.Signature | None = inspect.signature(method)
        except (TypeError, ValueError):
            signature = None  # builtins and C callables: the call itself decides
        accepted = None
        if signature is not None:
            params = signature.parameters.values()
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                accepted = frozenset(
                    p.name for p in params
                    if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  inspect.Parameter.KEYWORD_ONLY))
        return cls(cls_name, name, None, inspect.iscoroutinefunction(method), accepted, signature)

    def binding_problem(self, args: list[Any], kwargs: dict[str, Any]) -> str | None:
        if self.signature is None:
            return None
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            return f"arguments do not match {self.cls_name}.{self.name}{self.signature}: {exc}"
        return None


# --- helpers ------------------------------------------------------------------------------------

_MISSING = object()


def _is_method_like(attribute: Any) -> bool:
    if isinstance(attribute, (staticmethod, classmethod)):
        return True
    if isinstance(attribute, property):
        return False
    return callable(attribute)


def _status(code: StatusCode, message: str = "") -> Status:
    return Status(code=code.value, message=message)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failed(cls_name: str, name: str, exc: BaseException) -> _Outcome:
    logger.error("%s.%s raised:\n%s", cls_name, name,
                 "".join(traceback.format_exception(exc)).rstrip())
    return _Outcome(StatusCode.MODEL_FAILED, f"{cls_name}.{name} raised {_describe(exc)}")


def _encode_result(cls_name: str, name: str, result: Any, max_send: int) -> _Outcome:
    if result is None:
        return _Outcome(StatusCode.SUCCESS)  # no methodResponse means None on the wire
    try:
        type_, value = encode_variant_value(result)
    except VariantError as exc:
        return _Outcome(StatusCode.MODEL_FAILED,
                        f"the result of {cls_name}.{name} could not be encoded: {exc}")
    except Exception as exc:  # a hostile __iter__/__float__ in user objects
        return _Outcome(StatusCode.MODEL_FAILED,
                        f"the result of {cls_name}.{name} ({type(result).__name__}) could not be "
                        f"encoded: {_describe(exc)}")
    if len(value) + _RESPONSE_OVERHEAD > max_send:
        return _Outcome(StatusCode.MODEL_FAILED,
                        f"the result of {cls_name}.{name} is {len(value)} bytes, over this host's "
                        f"--max-send-message-length of {max_send} bytes; return less data or "
                        "raise the limit")
    return _Outcome(StatusCode.SUCCESS, variant=(int(type_), value))


def _decode_arguments(arguments: list[Any], kw_arguments: list[Any]) -> tuple[
    list[Any], dict[str, Any]
]:
    args = []
    for argument in sorted(arguments, key=lambda a: a.position):
        try:
            args.append(decode_variant(argument.data))
        except VariantError as exc:
            raise VariantError(f"positional argument {argument.position}: {exc}") from None
    kwargs = {}
    for kw in kw_arguments:
        if not kw.keyword.isidentifier():
            raise VariantError(f"keyword argument {kw.keyword!r} is not a valid Python name")
        try:
            kwargs[kw.keyword] = decode_variant(kw.data)
        except VariantError as exc:
            raise VariantError(f"keyword argument {kw.keyword!r}: {exc}") from None
    return args, kwargs


async def _recv_bounded(
    stream: grpclib.server.Stream[Any, Any], message_type: type[Any], limit: int
) -> Any:
    """Receive one request, refusing it from its length prefix when it is over `limit`.

    grpclib's own `recv_message` buffers whatever length the prefix claims before decoding and has
    no size limit, so the 5-byte gRPC message prefix is read here from the HTTP/2 stream.
    """
    h2_stream = stream._stream  # grpclib.protocol.Stream; no public access to the raw frames
    prefix = await h2_stream.recv_data(5)
    if len(prefix) < 5:
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT,
                        "the request carries no complete gRPC message")
    compressed, length = struct.unpack(">?I", prefix)
    if compressed:
        raise GRPCError(GrpcStatus.UNIMPLEMENTED,
                        "compressed messages are not supported; send them uncompressed")
    if length > limit:
        raise GRPCError(GrpcStatus.RESOURCE_EXHAUSTED,
                        f"the request is {length} bytes, over this host's "
                        f"--max-receive-message-length of {limit} bytes")
    data = await h2_stream.recv_data(length)
    if len(data) != length:
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT,
                        f"the request was cut short: {len(data)} of {length} bytes arrived")
    try:
        return message_type.parse(data)
    except Exception as exc:
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT,
                        f"the request is not a valid {message_type.__name__}: {exc}") from None
