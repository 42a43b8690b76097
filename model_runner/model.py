"""`ModelCore`: one submission's model behind Setup, Call and Rest, with no network.

It finds the model's class at Setup, calls its methods one at a time on the model's own thread
(`serial.SerialRunner`), decodes arguments and encodes results (`arguments`), and turns every
model misbehaviour into an `Answer` with its `StatusCode`. The gRPC adapter (`service.py`) and
`model-runner check` drive it the same way.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arguments import Arguments, decode_arguments, encode_result
from .discovery import DiscoveryError, discover_class, unload_submission
from .methods import Method
from .recent import Recent
from .serial import DeadlinePassed, ModelBusy, SerialRunner
from .wire import StatusCode, VariantError
from .wire.errors import describe

__all__ = ["METHODS_REMEMBERED", "Answer", "DeadlinePassed", "ModelBusy", "ModelCore"]

logger = logging.getLogger(__name__)

#: Method names (and sets of dropped keywords, and distinct failures) remembered per instance.
METHODS_REMEMBERED = 256

_ALREADY_SET_UP = "already set up; Setup again after Rest to create a new instance"


@dataclass
class Answer:
    """What a Setup, Call or Rest produced, as the response's Status (and result) will say."""

    code: StatusCode
    message: str = ""
    #: The result as (Variant type, value); None when the method returned None (or failed).
    variant: tuple[int, bytes] | None = None
    #: The model's traceback, for the host's log (never sent to the client).
    traceback: str = ""


@dataclass
class _Constructed:
    """What a constructor produced on the model thread; the loop installs the instance."""

    answer: Answer
    instance: Any = None


class ModelCore:
    """Serves one submission: finds its class at Setup and calls its methods one at a time.

    `setup` and `call` raise `DeadlinePassed` (the caller's deadline passed while the call waited
    its turn) and `ModelBusy` (the model still runs a call nobody waits for); both say what
    happened. Everything else, the model's faults and the caller's, is an `Answer`.
    """

    def __init__(self, code_directory: Path, *, max_send_message_length: int,
                 on_instance: Callable[[bool], None] | None = None) -> None:
        self._code_directory = code_directory
        self._max_send = max_send_message_length
        #: Told True when an instance is installed, False when Rest drops it (health).
        self._on_instance = on_instance or (lambda set_up: None)
        self._runner = SerialRunner()
        self._instance: Any = None
        #: Bumped by every Rest: a Setup that started before a Rest must not install its instance.
        self._generation = 0
        #: Per instance: method name -> how to call it (resolved once, cleared by Setup and Rest).
        self._methods: Recent[str, Method] = Recent(METHODS_REMEMBERED)
        #: Sets of dropped keyword names already logged, per method: logged once each.
        self._dropped_logged: Recent[tuple[str, frozenset[str]], bool] = Recent(
            METHODS_REMEMBERED)
        #: How often each distinct call failure was seen (see _log_failure).
        self._failures_logged: Recent[tuple[str, StatusCode, str], int] = Recent(
            METHODS_REMEMBERED)

    def close(self) -> None:
        """Stop the model's thread (the host is stopping); calls still waiting are cancelled."""
        self._runner.close()

    def remembered(self) -> dict[str, int]:
        """How many entries each per-name cache holds (each at most METHODS_REMEMBERED)."""
        return {"methods": len(self._methods), "dropped keyword sets": len(self._dropped_logged),
                "failures": len(self._failures_logged)}

    # --- Setup ---------------------------------------------------------------------------------

    async def setup(self, class_name: str, arguments: Arguments,
                    expires_at: float | None) -> Answer:
        """Create the model instance from the first concrete subclass of `class_name`."""
        class_name = class_name.strip()
        if not class_name:
            return Answer(StatusCode.INVALID_ARGUMENT,
                          "className is empty; send the base class's full dotted path")
        try:
            args, kwargs = decode_arguments(*arguments)
        except VariantError as exc:
            return Answer(StatusCode.INVALID_ARGUMENT, str(exc))
        if self._instance is not None:
            # Answered here, not on the model's turn: a coordinator that restarts must not wait
            # behind a call the model is stuck in.
            return Answer(StatusCode.SUCCESS, _ALREADY_SET_UP)
        generation = self._generation
        try:
            # The instance is installed when the constructor returns, even if this caller has
            # given up by then (a slow constructor must not run again on the client's retry).
            constructed = await self._runner.run_sync(
                lambda: self._construct(class_name, args, kwargs),
                what=f"Setup ({class_name})", expires_at=expires_at,
                then=lambda done: self._install(done, generation))
        except DeadlinePassed:
            raise DeadlinePassed("deadline passed before Setup ran") from None
        if constructed.instance is not None and generation != self._generation:
            return Answer(StatusCode.FAILED_PRECONDITION,
                          "a Rest arrived while the constructor ran, so its instance was "
                          "dropped; call Setup again")
        return constructed.answer

    def _construct(self, class_name: str, args: list[Any], kwargs: dict[str, Any]
                   ) -> _Constructed:
        # Runs on the model thread and writes no state: the loop installs what it returns.
        if self._instance is not None:  # set up by a Setup that was queued before this one
            return _Constructed(Answer(StatusCode.SUCCESS, _ALREADY_SET_UP))
        try:
            cls = discover_class(self._code_directory, class_name)
        except DiscoveryError as exc:
            logger.error("Setup failed: %s", exc)
            return _Constructed(Answer(StatusCode.BAD_IMPLEMENTATION, str(exc)))
        except BaseException as exc:  # discovery runs user code at import time
            logger.exception("Setup failed while looking for %s", class_name)
            return _Constructed(Answer(StatusCode.BAD_IMPLEMENTATION, describe(exc)))
        try:
            instance = cls(*args, **kwargs)
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the model's
            logger.exception("the constructor of %s raised", cls.__qualname__)
            return _Constructed(Answer(StatusCode.SETUP_FAILED,
                                       f"{cls.__qualname__}() raised {describe(exc)}"))
        logger.info("model %s.%s is set up", cls.__module__, cls.__qualname__)
        return _Constructed(Answer(StatusCode.SUCCESS), instance)

    def _install(self, constructed: _Constructed, generation: int) -> None:
        """On the loop, once a constructor returned: the first instance since the last Rest
        wins; one from before a Rest is dropped."""
        if constructed.instance is None or generation != self._generation:
            return
        if self._instance is None:
            self._instance = constructed.instance
            self._methods.clear()
            self._dropped_logged.clear()
            self._on_instance(True)

    # --- Rest ----------------------------------------------------------------------------------

    def rest(self) -> Answer:
        """Drop the instance and unload the submission's modules."""
        # Deliberately not queued behind calls: a hung method must not make the host unresettable.
        had_instance = self._instance is not None
        self._generation += 1
        self._instance = None
        self._methods.clear()
        self._dropped_logged.clear()
        self._on_instance(False)
        dropped = unload_submission(self._code_directory)
        logger.info("Rest: instance %s, %d submission modules unloaded",
                    "dropped" if had_instance else "was not set", dropped)
        return Answer(StatusCode.SUCCESS)

    # --- Call ----------------------------------------------------------------------------------

    async def call(self, name: str, arguments: Arguments, expires_at: float | None) -> Answer:
        """Call the instance's method `name`; failures are logged (throttled) as well."""
        answer = await self._call(name, arguments, expires_at)
        if answer.code is not StatusCode.SUCCESS:
            self._log_failure(name, answer)
        return answer

    async def _call(self, name: str, arguments: Arguments, expires_at: float | None) -> Answer:
        if not name:
            return Answer(StatusCode.INVALID_ARGUMENT,
                          "methodName is empty; name a method of the base class")
        if name.startswith("_"):
            return Answer(StatusCode.INVALID_ARGUMENT,
                          f"method {name!r} is private (starts with '_') and cannot be called; "
                          "call a public method of the base class")
        instance = self._instance
        if instance is None:
            return Answer(StatusCode.FAILED_PRECONDITION,
                          "no model instance: call Setup with the base class first")
        info = self._methods.get(name)
        if info is None:
            info = Method.resolve(instance, name)
            self._methods.put(name, info)
        if info.error is not None:
            return Answer(StatusCode.BAD_IMPLEMENTATION, info.error)
        method = getattr(instance, name)  # binds a function: runs no user code
        try:
            args, kwargs = decode_arguments(*arguments)
        except VariantError as exc:
            return Answer(StatusCode.INVALID_ARGUMENT, str(exc))
        if kwargs and info.accepted is not None:
            kwargs = self._drop_unaccepted(name, info.accepted, kwargs)

        what, max_send = f"{info.cls_name}.{name}", self._max_send

        def failed(exc: BaseException) -> Answer:
            # A TypeError may be the caller's: arguments that do not fit the signature.
            problem = info.binding_problem(args, kwargs) if isinstance(exc, TypeError) else None
            if problem is not None:
                return Answer(StatusCode.INVALID_ARGUMENT, problem)
            return Answer(StatusCode.MODEL_FAILED, f"{what} raised {describe(exc)}",
                          traceback="".join(traceback.format_exception(exc)).rstrip())

        def answered(result: Any) -> Answer:
            encoded = encode_result(what, result, max_send)
            if isinstance(encoded, str):
                return Answer(StatusCode.MODEL_FAILED, encoded)
            return Answer(StatusCode.SUCCESS, variant=encoded)

        try:
            if info.is_async:
                async def invoke_async() -> Answer:
                    try:
                        result = await method(*args, **kwargs)
                    except asyncio.CancelledError:
                        raise  # the host is stopping (SerialRunner.close): not the model's fault
                    except BaseException as exc:  # KeyboardInterrupt too: the model raised it
                        return failed(exc)
                    return answered(result)

                return await self._runner.run_async(invoke_async, what=name,
                                                    expires_at=expires_at)

            def invoke() -> Answer:
                try:
                    result = method(*args, **kwargs)
                except BaseException as exc:  # KeyboardInterrupt, SystemExit, os._exit too
                    return failed(exc)
                # Encoding runs here too: a large DataFrame must not stall the event loop.
                return answered(result)

            return await self._runner.run_sync(invoke, what=name, expires_at=expires_at)
        except DeadlinePassed:
            raise DeadlinePassed(
                f"deadline passed while {name} waited for an earlier call") from None

    def _log_failure(self, name: str, answer: Answer) -> None:
        """Each distinct failure in full once (with the model's traceback), then a count every
        100th time: a model failing every tick for months must not fill the disk."""
        key = (name, answer.code, answer.message)
        seen = (self._failures_logged.get(key) or 0) + 1
        self._failures_logged.put(key, seen)
        if seen == 1:
            logger.warning("Call %s: %s %s%s", name, answer.code, answer.message,
                           f"\n{answer.traceback}" if answer.traceback else "")
        elif seen % 100 == 0:
            logger.warning("Call %s: %s %s (%d times so far)", name, answer.code,
                           answer.message, seen)

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
