"""Reading a host's answers into Outcomes: a model call's CallResponse, a SetupResponse, a
health check's answer. What the host's bytes say, never what a transport raised (that is
transports/errors.py).
"""

from __future__ import annotations

from grpclib.health.v1.health_pb2 import HealthCheckResponse

from model_runner.wire import MissingExtra, StatusCode, VariantError
from model_runner.wire.codes import names_missing_method, names_unimportable_base
from model_runner.wire.errors import describe
from model_runner.wire.variant import check_value

from .encoding import ResultDecoder
from .lean import parse_call_response, parse_setup_response
from .outcomes import Kind, Outcome
from .results import DeferredOutput

__all__ = ["read_call_answer", "read_health_answer", "read_setup_answer"]


def read_call_answer(raw: bytes, latency_us: int, decoder: ResultDecoder, *, defer: bool = False,
                check: bool = True) -> Outcome:
    """The outcome of an answer. With `defer`, the value is left for CallResult.output to
    decode, after a cheap check (`check`) or none."""
    try:
        answer = parse_call_response(raw)
    except ValueError as exc:
        return Outcome(Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=f"unreadable response: {exc}")
    # Older hosts send no Status on success; their errors arrive as gRPC statuses instead.
    if answer.code and answer.code != StatusCode.SUCCESS:
        if answer.code == StatusCode.FAILED_PRECONDITION:
            return Outcome(Kind.NEEDS_SETUP, latency_us=latency_us,
                           detail=f"not answered: the host has no model instance (it restarted; "
                                  f"setting it up again): {answer.message}")
        if answer.code == StatusCode.BAD_IMPLEMENTATION and \
                names_missing_method(answer.message):
            kind = Kind.MISSING_METHOD
        else:
            kind = Kind.MODEL_FAILURE
        return Outcome(kind, latency_us=latency_us,
                       detail=f"{answer.code or 'no status'}: {answer.message}")
    try:
        if defer:
            if check and answer.variant_type is not None:
                check_value(answer.variant_type, answer.value)
            output: object = DeferredOutput(decoder, answer.variant_type, answer.value)
        else:
            output = decoder(answer.variant_type, answer.value)
    except MissingExtra as exc:
        return Outcome(Kind.COORDINATOR, latency_us=latency_us,
                       detail=f"not counted: the model answered, but this client cannot read "
                              f"the answer: {exc}")
    except VariantError as exc:
        return Outcome(Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=f"unreadable result: {exc}")
    except ValueError as exc:
        return Outcome(Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=str(exc))
    return Outcome(Kind.SUCCESS, output, latency_us)


def read_setup_answer(raw: bytes) -> Outcome:
    """The outcome of a Setup answer (a SetupResponse; older hosts send no Status on success)."""
    try:
        code, message = parse_setup_response(raw)
    except ValueError as exc:
        return Outcome(Kind.MODEL_FAILURE, detail=f"unreadable Setup answer: {exc}")
    if code in (StatusCode.SUCCESS, ""):
        return Outcome(Kind.SUCCESS)
    detail = f"Setup answered {code}: {message}"
    if code == StatusCode.BAD_IMPLEMENTATION and names_unimportable_base(message):
        return Outcome(Kind.MISSING_BASE_CLASS, detail=detail)
    if code in (StatusCode.BAD_IMPLEMENTATION, StatusCode.SETUP_FAILED):
        return Outcome(Kind.MODEL_FAILURE, detail=detail)
    # INVALID_ARGUMENT and the like: the instance arguments or base_classname we sent.
    return Outcome(Kind.COORDINATOR, detail=f"{detail}; check base_classname and the "
                                            "instance arguments")


def read_health_answer(raw: bytes) -> Outcome:
    """A health probe's answer: SUCCESS when the host serves the model service; NEEDS_SETUP
    when it answers without serving it (it restarted, or is still loading)."""
    try:
        status = HealthCheckResponse.FromString(raw).status
    except Exception as exc:  # the host's bytes
        return Outcome(Kind.MODEL_FAILURE, detail=f"unreadable health answer: {describe(exc)}")
    if status == HealthCheckResponse.SERVING:
        return Outcome(Kind.SUCCESS)
    return Outcome(Kind.NEEDS_SETUP,
                   detail=f"health answered {HealthCheckResponse.ServingStatus.Name(status)}")
