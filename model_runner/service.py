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
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import grpclib.const
import grpclib.server
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus

from ._grpclib import peer_certificate, raw_stream
from .containment import describe
from .discovery import DiscoveryError, discover_class, unload_submission
from .serial import DeadlinePassed, ModelBusy, SerialRunner
from .wire import (
    CALL_PATH,
    REST_PATH,
    SETUP_PATH,
    CallResponse,
    RestResponse,
    SetupResponse,
    Status,
    StatusCode,
    VariantError,
    decode_value,
    encode_variant_value,
)
from .wire.codes import missing_method
from .wire.pb2.commons_pb2 import Status as _Status
from .wire.pb2.dynamic_subclass_pb2 import CallRequest, SetupRequest
from .wire.pb2.dynamic_subclass_pb2 import CallResponse as _CallResponse

__all__ = ["DynamicSubclassService"]

logger = logging.getLogger(__name__)

# Bytes a CallResponse adds around the result value: tags, lengths, and the status message.
_RESPONSE_OVERHEAD = 64
#: What one request may hold. Real methods take a handful of arguments; without a bound, a
#: request of a million empty arguments (6 MB) costs the host seconds to turn into Python values.
MAX_ARGUMENTS = 1024
MAX_KEYWORD_LENGTH = 256


@dataclass
class _Outcome:
    """What one model call produced; built on the model thread, so user code never leaks out."""

    code: StatusCode
    message: str = ""
    variant: tuple[int, bytes] | None = None
    #: A new model instance (Setup), installed by the event loop, never by the model thread.
    instance: Any = None
    #: The model's traceback, for the log (not sent to the client).
    traceback: str = ""


class DynamicSubclassService:
    """Serves one submission: finds its class at Setup and calls its methods one at a time."""

    def __init__(
        self,
        code_directory: Path,
        *,
        model_status: ServiceStatus,
        max_receive_message_length: int,
        max_send_message_length: int,
        authorize: Callable[[Mapping[str, str], Callable[[], bytes | None]], str | None]
        | None = None,
    ) -> None:
        self._code_directory = code_directory
        #: Given a call's metadata and a getter of the client's TLS certificate (DER), returns
        #: why the call is refused (UNAUTHENTICATED), or None to accept it.
        self._authorize = authorize
        self._model_status = model_status
        self._max_receive = max_receive_message_length
        self._max_send = max_send_message_length
        self._runner = SerialRunner()
        self._instance: Any = None
        #: Bumped by every Rest: a Setup that started before a Rest must not install its instance.
        self._generation = 0
        # Per instance: method name -> how to call it (resolved once, cleared by Setup and Rest).
        # Bounded: a caller naming 20,000 methods once held 16.6 MB here.
        self._methods: _Recent[str, _Method] = _Recent(METHODS_REMEMBERED)
        #: Sets of dropped keyword names already logged, per method: logged once each.
        self._dropped_logged: _Recent[tuple[str, frozenset[str]], bool] = _Recent(
            METHODS_REMEMBERED)
        #: How often each distinct call failure was seen (see _log_failure).
        self._failures_logged: _Recent[tuple[str, StatusCode, str], int] = _Recent(
            METHODS_REMEMBERED)
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
            refusal = self._authorize(cast(Mapping[str, str], stream.metadata or {}),
                                      lambda: peer_certificate(stream))
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
        class_name = request.className.strip()
        if not class_name:
            return SetupResponse(status=_status(
                StatusCode.INVALID_ARGUMENT,
                "className is empty; send the base class's full dotted path"))
        try:
            args, kwargs = _decode_arguments(request.instanceArguments,
                                             request.instanceKwArguments)
        except VariantError as exc:
            return SetupResponse(status=_status(StatusCode.INVALID_ARGUMENT, str(exc)))
        if self._instance is not None:
            # Answered here, not on the model's turn: a coordinator that restarts must not wait
            # behind a call the model is stuck in.
            return SetupResponse(status=_status(StatusCode.SUCCESS, _ALREADY_SET_UP))
        generation = self._generation
        try:
            # The instance is installed when the constructor returns, even if this caller has
            # given up by then (a slow constructor must not run again on the client's retry).
            outcome = await self._runner.run_sync(
                lambda: self._create_instance(class_name, args, kwargs),
                what=f"Setup ({class_name})", expires_at=expires_at,
                then=lambda done: self._install(done, generation))
        except DeadlinePassed:
            raise GRPCError(GrpcStatus.DEADLINE_EXCEEDED,
                            "deadline passed before Setup ran") from None
        except ModelBusy as exc:
            raise GRPCError(GrpcStatus.RESOURCE_EXHAUSTED, str(exc)) from None
        if outcome.instance is not None and generation != self._generation:
            outcome = _Outcome(StatusCode.FAILED_PRECONDITION,
                               "a Rest arrived while the constructor ran, so its instance was "
                               "dropped; call Setup again")
        return SetupResponse(status=_status(outcome.code, outcome.message))

    def _create_instance(
        self, class_name: str, args: list[Any], kwargs: dict[str, Any]
    ) -> _Outcome:
        # Runs on the model thread and writes no state: the loop installs what it returns.
        if self._instance is not None:  # set up by a Setup that was queued before this one
            return _Outcome(StatusCode.SUCCESS, _ALREADY_SET_UP)
        try:
            cls = discover_class(self._code_directory, class_name)
        except DiscoveryError as exc:
            logger.error("Setup failed: %s", exc)
            return _Outcome(StatusCode.BAD_IMPLEMENTATION, str(exc))
        except BaseException as exc:  # discovery runs user code at import time
            logger.exception("Setup failed while looking for %s", class_name)
            return _Outcome(StatusCode.BAD_IMPLEMENTATION, describe(exc))
        try:
            instance = cls(*args, **kwargs)
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the model's
            logger.exception("the constructor of %s raised", cls.__qualname__)
            return _Outcome(StatusCode.SETUP_FAILED,
                            f"{cls.__qualname__}() raised {describe(exc)}")
        logger.info("model %s.%s is set up", cls.__module__, cls.__qualname__)
        return _Outcome(StatusCode.SUCCESS, instance=instance)

    def _install(self, outcome: _Outcome, generation: int) -> None:
        """On the loop, once a constructor returned: the first instance since the last Rest
        wins; one from before a Rest is dropped."""
        if outcome.instance is None or generation != self._generation:
            return
        if self._instance is None:
            self._instance = outcome.instance
            self._methods.clear()
            self._dropped_logged.clear()
            self._model_status.set(True)

    # --- Rest ----------------------------------------------------------------------------------

    async def rest(self, request: Empty, expires_at: float | None) -> RestResponse:
        # Deliberately not queued behind calls: a hung method must not make the host unresettable.
        had_instance = self._instance is not None
        self._generation += 1
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
            self._log_failure(request.methodName, outcome)
        # protobuf's C encoder: betterproto2's took ~60 µs of a no-op call's ~640 (py-spy).
        response = _CallResponse(status=_Status(code=outcome.code.value, message=outcome.message))
        if outcome.variant is not None:
            type_, response.methodResponse.value = outcome.variant
            response.methodResponse.type = cast(Any, type_)  # an int, as protobuf's enums are
        return response.SerializeToString()  # type: ignore[no-any-return]

    async def _call(self, request: CallRequest, expires_at: float | None) -> _Outcome:
        name = request.methodName
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
            info = _Method.resolve(instance, name)
            self._methods.put(name, info)
        if info.error is not None:
            return info.error
        method = getattr(instance, name)  # binds a function: runs no user code
        try:
            args, kwargs = _decode_arguments(request.methodArguments,
                                             request.methodKwArguments)
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
                        raise  # the host is stopping (SerialRunner.close): not the model's fault
                    except BaseException as exc:  # KeyboardInterrupt too: the model raised it
                        return failed(exc)
                    return _encode_result(cls_name, name, result, max_send)

                return await self._runner.run_async(invoke_async, what=name,
                                                    expires_at=expires_at)

            def invoke() -> _Outcome:
                try:
                    result = method(*args, **kwargs)
                except BaseException as exc:  # KeyboardInterrupt, SystemExit, os._exit too
                    return failed(exc)
                # Encoding runs here too: a large DataFrame must not stall the event loop.
                return _encode_result(cls_name, name, result, max_send)

            return await self._runner.run_sync(invoke, what=name, expires_at=expires_at)
        except DeadlinePassed:
            raise GRPCError(GrpcStatus.DEADLINE_EXCEEDED,
                            f"deadline passed while {name} waited for an earlier call") from None
        except ModelBusy as exc:
            # As the deployed host answers a call that finds its model busy: clients count it
            # as a timeout at once, instead of waiting their deadline behind an abandoned call.
            raise GRPCError(GrpcStatus.RESOURCE_EXHAUSTED, str(exc)) from None

    def _log_failure(self, name: str, outcome: _Outcome) -> None:
        """Each distinct failure in full once (with the model's traceback), then a count every
        100th time: a model failing every tick for months must not fill the disk."""
        key = (name, outcome.code, outcome.message)
        seen = (self._failures_logged.get(key) or 0) + 1
        self._failures_logged.put(key, seen)
        if seen == 1:
            logger.warning("Call %s: %s %s%s", name, outcome.code, outcome.message,
                           f"\n{outcome.traceback}" if outcome.traceback else "")
        elif seen % 100 == 0:
            logger.warning("Call %s: %s %s (%d times so far)", name, outcome.code,
                           outcome.message, seen)

    def _drop_unaccepted(
        self, name: str, accepted: frozenset[str], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        dropped = frozenset(kwargs) - accepted
        if not dropped:
            return kwargs
        if self._dropped_logged.get((name, dropped)) is None:
            self._dropped_logged.put((name, dropped), True)
            logger.warning("%s does not take keyword arguments %s; dropping them",
                           name, ", ".join(sorted(dropped)))
        return {k: v for k, v in kwargs.items() if k in accepted}


_ALREADY_SET_UP = "already set up; Setup again after Rest to create a new instance"

#: Method names (and sets of dropped keywords) remembered per instance.
METHODS_REMEMBERED = 256

K = TypeVar("K")
V = TypeVar("V")


class _Recent(Generic[K, V]):
    """The `size` most recently used entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


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
                missing_method(cls_name, name)))
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


def _failed(cls_name: str, name: str, exc: BaseException) -> _Outcome:
    return _Outcome(StatusCode.MODEL_FAILED, f"{cls_name}.{name} raised {describe(exc)}",
                    traceback="".join(traceback.format_exception(exc)).rstrip())


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
                        f"encoded: {describe(exc)}")
    if len(value) + _RESPONSE_OVERHEAD > max_send:
        return _Outcome(StatusCode.MODEL_FAILED,
                        f"the result of {cls_name}.{name} is {len(value)} bytes, over this host's "
                        f"--max-send-message-length of {max_send} bytes; return less data or "
                        "raise the limit")
    return _Outcome(StatusCode.SUCCESS, variant=(int(type_), value))


def _decode_arguments(arguments: Sequence[Any], kw_arguments: Sequence[Any]) -> tuple[
    list[Any], dict[str, Any]
]:
    """Arguments of a parsed (protobuf) request as Python values; raises VariantError."""
    for what, items in (("positional", arguments), ("keyword", kw_arguments)):
        if len(items) > MAX_ARGUMENTS:  # counted before any is looked at
            raise VariantError(f"the request holds {len(items)} {what} arguments; a model host "
                               f"accepts at most {MAX_ARGUMENTS}: pass a list or a dict instead")
    args = []
    for argument in sorted(arguments, key=lambda a: a.position):
        try:
            args.append(decode_value(argument.data.type, argument.data.value))
        except VariantError as exc:
            raise VariantError(f"positional argument {argument.position}: {exc}") from None
    kwargs = {}
    for kw in kw_arguments:
        keyword = kw.keyword
        if len(keyword) > MAX_KEYWORD_LENGTH or not keyword.isidentifier():
            raise VariantError(f"keyword argument {keyword[:80]!r} is not a valid Python name "
                               f"(of at most {MAX_KEYWORD_LENGTH} characters)")
        try:
            kwargs[keyword] = decode_value(kw.data.type, kw.data.value)
        except VariantError as exc:
            raise VariantError(f"keyword argument {keyword!r}: {exc}") from None
    return args, kwargs


async def _recv_bounded(
    stream: grpclib.server.Stream[Any, Any], message_type: type[Any], limit: int
) -> Any:
    """Receive one request, refusing it from its length prefix when it is over `limit`.

    grpclib's own `recv_message` buffers whatever length the prefix claims before decoding and has
    no size limit, so the 5-byte gRPC message prefix is read here from the HTTP/2 stream.
    """
    h2_stream = raw_stream(stream)
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
    # protobuf's C parser: linear in the request's size whatever its bytes (betterproto2 took
    # 60 s of CPU on a 1 MiB argument of zero bytes; this rejects it in microseconds).
    try:
        return message_type.FromString(data)
    except Exception as exc:  # DecodeError, and anything a hostile message provokes
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT,
                        f"the request is not a valid {message_type.__name__}: {exc}") from None
