"""The pure parts of a call's ending, without a network: the grpc-timeout header, the gRPC status
read from headers and trailers, what each error a transport lets out means (`outcome_of_error`,
`setup_outcome_of_error`), and whose fault a tick's outcomes are (`blame.attribute`)."""

from __future__ import annotations

import logging
import re
import ssl

import pytest
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from hypothesis import given
from hypothesis import strategies as st

from model_runner_client import ModelEndpoint
from model_runner_client.blame import attribute
from model_runner_client.outcomes import Kind, Outcome
from model_runner_client.transport_security import UntrustedHost
from model_runner_client.transports import ResponseTooLarge
from model_runner_client.transports.call import grpc_status, grpc_timeout
from model_runner_client.transports.errors import outcome_of_error, setup_outcome_of_error

ENDPOINT = ModelEndpoint("m", "127.0.0.1", 1, "d")

# --- grpc-timeout ----------------------------------------------------------------------------


@given(st.floats(min_value=0.0, max_value=1e12, allow_nan=False))
def test_grpc_timeout_is_at_most_8_digits_and_never_shorter_than_asked(seconds: float) -> None:
    header = grpc_timeout(seconds).decode()
    match = re.fullmatch(r"(\d{1,8})([mS])", header)
    assert match is not None, header
    value = int(match[1]) / (1000 if match[2] == "m" else 1)
    assert value >= min(seconds, 99_999_999) or value == 99_999_999
    assert value > 0  # a deadline of zero would expire the call before it is sent


def test_grpc_timeout_in_milliseconds_then_seconds() -> None:
    assert grpc_timeout(0.0) == b"1m"
    assert grpc_timeout(1.5) == b"1500m"
    assert grpc_timeout(60.0) == b"60000m"
    assert grpc_timeout(200_000.0) == b"200000S"
    assert grpc_timeout(1e12) == b"99999999S"


# --- grpc-status -----------------------------------------------------------------------------


def test_the_trailers_status_wins_over_the_headers() -> None:
    headers = [(b":status", b"200"), (b"grpc-status", b"0")]
    trailers = [(b"grpc-status", b"8"), (b"grpc-message", b"Server%20busy")]
    assert grpc_status(headers, trailers) == (GrpcStatus.RESOURCE_EXHAUSTED, "Server busy")


def test_a_trailers_only_answer_is_read_from_the_headers() -> None:
    headers = [(b":status", b"200"), (b"grpc-status", b"16"), (b"grpc-message", b"no")]
    assert grpc_status(headers, None) == (GrpcStatus.UNAUTHENTICATED, "no")


@pytest.mark.parametrize(("http", "status"), [
    (b"503", GrpcStatus.UNAVAILABLE), (b"404", GrpcStatus.UNIMPLEMENTED),
    (b"401", GrpcStatus.UNAUTHENTICATED), (b"200", GrpcStatus.UNKNOWN),
    (b"", GrpcStatus.UNKNOWN)])
def test_without_grpc_status_the_http_status_decides(http: bytes, status: GrpcStatus) -> None:
    got, message = grpc_status([(b":status", http)], None)
    assert got is status
    assert "without a gRPC status" in message


@given(st.binary(max_size=16), st.binary(max_size=64))
def test_any_bytes_make_a_status_and_a_message_never_an_exception(raw: bytes,
                                                                  message: bytes) -> None:
    status, text = grpc_status([(b":status", b"200")],
                               [(b"grpc-status", raw), (b"grpc-message", message)])
    assert isinstance(status, GrpcStatus) and isinstance(text, str)


# --- what each error means -------------------------------------------------------------------


@pytest.mark.parametrize(("error", "kind"), [
    (TimeoutError(), Kind.TIMEOUT),
    (GRPCError(GrpcStatus.DEADLINE_EXCEEDED, "late"), Kind.TIMEOUT),
    (GRPCError(GrpcStatus.RESOURCE_EXHAUSTED, "Server busy: the model is still running x"),
     Kind.BUSY),
    (GRPCError(GrpcStatus.RESOURCE_EXHAUSTED, "too big"), Kind.TIMEOUT),
    (GRPCError(GrpcStatus.CANCELLED), Kind.TIMEOUT),
    (GRPCError(GrpcStatus.UNAUTHENTICATED, "token"), Kind.REFUSED),
    (GRPCError(GrpcStatus.PERMISSION_DENIED), Kind.REFUSED),
    (GRPCError(GrpcStatus.UNAVAILABLE, "draining"), Kind.UNREACHABLE),
    (GRPCError(GrpcStatus.INTERNAL, "boom"), Kind.MODEL_FAILURE),
    (GRPCError(GrpcStatus.UNIMPLEMENTED), Kind.MODEL_FAILURE),
    (UntrustedHost("wrong wallet"), Kind.UNTRUSTED),
    (ResponseTooLarge("over the limit"), Kind.MODEL_FAILURE),
    (ssl.SSLError("bad handshake"), Kind.REFUSED),
    (ConnectionRefusedError(111, "refused"), Kind.UNREACHABLE),
    (ConnectionResetError(), Kind.UNREACHABLE),
    (EOFError(), Kind.UNREACHABLE),
])
def test_each_error_a_transport_lets_out_has_one_meaning(error: BaseException,
                                                         kind: Kind) -> None:
    outcome = outcome_of_error(ENDPOINT, error, 1234)
    assert outcome.kind is kind, outcome
    assert outcome.latency_us == 1234 and outcome.detail


def test_any_other_exception_is_a_bug_of_ours_never_the_models(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="model_runner_client"):
        outcome = outcome_of_error(ENDPOINT, KeyError("oops"), 5)
    assert outcome.kind is Kind.CLIENT_BUG
    assert "not counted" in outcome.detail and "please report it" in outcome.detail
    assert "bug: the call to" in caplog.text and "KeyError" in caplog.text


def test_a_setup_answered_by_no_model_host_is_tried_again() -> None:
    """A gRPC error other than INTERNAL on Setup comes from something that is not a model host
    (a proxy, another server): UNREACHABLE, retried. INTERNAL is an older host's constructor
    failing: the model's fault."""
    assert setup_outcome_of_error(ENDPOINT, GRPCError(GrpcStatus.UNIMPLEMENTED)).kind \
        is Kind.UNREACHABLE
    internal = setup_outcome_of_error(ENDPOINT, GRPCError(GrpcStatus.INTERNAL, "raised"))
    assert internal.kind is Kind.MODEL_FAILURE and "Setup failed" in internal.detail
    assert setup_outcome_of_error(ENDPOINT, TimeoutError()).kind is Kind.TIMEOUT


# --- whose fault ----------------------------------------------------------------------------


def test_everyone_unreachable_is_the_coordinators_network() -> None:
    outcomes = [Outcome(Kind.UNREACHABLE), Outcome(Kind.UNREACHABLE)]
    counted, countable, mistake = attribute("predict", outcomes)
    assert counted == outcomes and not countable
    assert mistake is not None and "network is likely down" in mistake.message
    # One model alone unreachable is that model's.
    assert attribute("predict", [Outcome(Kind.UNREACHABLE)])[1:] == (True, None)


def test_a_method_no_model_that_answered_has_is_a_typo() -> None:
    outcomes = [Outcome(Kind.MISSING_METHOD, detail="no prdict"), Outcome(Kind.TIMEOUT),
                Outcome(Kind.MISSING_METHOD, detail="no prdict")]
    counted, countable, mistake = attribute("prdict", outcomes)
    assert countable and mistake is not None and mistake.key == "method:prdict"
    assert [o.kind for o in counted] == [Kind.COORDINATOR, Kind.TIMEOUT, Kind.COORDINATOR]
    assert "not counted" in counted[0].detail and "no prdict" in counted[0].detail


def test_a_missing_method_beside_a_model_that_has_it_is_that_models() -> None:
    outcomes = [Outcome(Kind.MISSING_METHOD), Outcome(Kind.SUCCESS, 1.0)]
    assert attribute("predict", outcomes) == (outcomes, True, None)


def test_an_answer_the_client_cannot_decode_is_reported_once() -> None:
    outcomes = [Outcome(Kind.COORDINATOR, detail="install pandas"), Outcome(Kind.SUCCESS)]
    _, countable, mistake = attribute("predict", outcomes)
    assert countable and mistake is not None and mistake.key == "decode:predict"
    assert mistake.message == "install pandas"
