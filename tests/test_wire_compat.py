"""Byte compatibility with the grpcio/protobuf ecosystem, built from the same .proto files."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_runner.wire import (
    Argument,
    CallRequest,
    CallResponse,
    KwArgument,
    Status,
    Variant,
    encode_value,
)
from tests.hosts import BASE, ROOT, HostProcess

pytestmark = pytest.mark.usefixtures("transport")


PROTO = ROOT / "proto"


@pytest.fixture(scope="session")
def pb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModuleType]]:
    """protobuf/grpcio modules generated from proto/ with grpc_tools (the old ecosystem's way)."""
    out = tmp_path_factory.mktemp("grpcio_gen")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
                    f"--python_out={out}", f"--grpc_python_out={out}",
                    "commons.proto", "dynamic_subclass.proto"], check=True, cwd=PROTO)
    sys.path.insert(0, str(out))
    try:
        yield {name: importlib.import_module(name) for name in
               ("commons_pb2", "dynamic_subclass_pb2", "dynamic_subclass_pb2_grpc")}
    finally:
        sys.path.remove(str(out))


variants = st.builds(Variant, type=st.integers(0, 6), value=st.binary(max_size=40))
arguments = st.builds(Argument, position=st.integers(0, 2**32 - 1), data=st.none() | variants)
kw_arguments = st.builds(KwArgument, keyword=st.text(max_size=10), data=st.none() | variants)
call_requests = st.builds(CallRequest, method_name=st.text(max_size=20),
                          method_arguments=st.lists(arguments, max_size=4),
                          method_kw_arguments=st.lists(kw_arguments, max_size=4))
call_responses = st.builds(CallResponse,
                           status=st.none() | st.builds(Status, code=st.text(max_size=10),
                                                        message=st.text(max_size=20)),
                           method_response=st.none() | variants)


@pytest.mark.transport_independent
@given(request=call_requests)
def test_call_request_bytes_match_protobuf(pb: dict[str, ModuleType], request: CallRequest) -> None:
    reference = pb["dynamic_subclass_pb2"].CallRequest.FromString(bytes(request))
    assert reference.SerializeToString() == bytes(request)
    assert CallRequest.parse(reference.SerializeToString()) == request


@pytest.mark.transport_independent
@given(response=call_responses)
def test_call_response_bytes_match_protobuf(pb: dict[str, ModuleType],
                                            response: CallResponse) -> None:
    reference = pb["dynamic_subclass_pb2"].CallResponse.FromString(bytes(response))
    assert reference.SerializeToString() == bytes(response)


@pytest.mark.transport_independent
def test_enum_numbers_match(pb: dict[str, ModuleType]) -> None:
    reference = pb["commons_pb2"].VariantType
    assert {name: reference.Value(name) for name in reference.keys()} == {
        "NONE": 0, "DOUBLE": 1, "INT": 2, "STRING": 3, "PARQUET": 4, "ARROW": 5, "JSON": 6}


def _pb_variant(pb: dict[str, ModuleType], value: Any) -> Any:
    variant = encode_value(value)
    return pb["commons_pb2"].Variant(type=int(variant.type), value=variant.value)


@pytest.mark.transport_independent
def test_grpcio_client_against_our_server(
    pb: dict[str, ModuleType], toolbox_host: HostProcess
) -> None:
    messages, grpc_stubs = pb["dynamic_subclass_pb2"], pb["dynamic_subclass_pb2_grpc"]
    commons = pb["commons_pb2"]
    with grpc.insecure_channel(toolbox_host.address) as channel:
        stub = grpc_stubs.DynamicSubclassServiceStub(channel)
        from google.protobuf import empty_pb2

        assert stub.Rest(empty_pb2.Empty(), timeout=10).status.code == "SUCCESS"
        response = stub.Setup(messages.SetupRequest(
            className=BASE,
            instanceArguments=[commons.Argument(position=0, data=_pb_variant(pb, 5))],
            instanceKwArguments=[commons.KwArgument(keyword="k", data=_pb_variant(pb, "v"))]),
            timeout=30)
        assert response.status.code == "SUCCESS"
        response = stub.Call(messages.CallRequest(methodName="init"), timeout=10)
        assert response.status.code == "SUCCESS"
        assert response.methodResponse.type == commons.JSON
        assert response.methodResponse.value == b'{"args":[5],"kwargs":{"k":"v"}}'
        response = stub.Call(messages.CallRequest(
            methodName="first", methodArguments=[commons.Argument(position=0,
                                                                  data=_pb_variant(pb, 2.5))]),
            timeout=10)
        assert (response.methodResponse.type, response.methodResponse.value) == (
            commons.DOUBLE, encode_value(2.5).value)
        response = stub.Call(messages.CallRequest(methodName="fail"), timeout=10)
        assert response.status.code == "MODEL_FAILED"
        assert not response.HasField("methodResponse")


@pytest.mark.anyio
async def test_our_client_against_a_grpcio_server(pb: dict[str, ModuleType]) -> None:
    """A server built with grpcio from the same .proto, answering like an older host would."""
    from concurrent import futures

    from model_runner_client import CallStatus, ModelRunnerClient

    messages, grpc_stubs = pb["dynamic_subclass_pb2"], pb["dynamic_subclass_pb2_grpc"]
    commons = pb["commons_pb2"]
    seen: list[Any] = []

    class Servicer(grpc_stubs.DynamicSubclassServiceServicer):  # type: ignore[misc,name-defined]
        def Setup(self, request: Any, context: Any) -> Any:
            seen.append(request)
            return messages.SetupResponse()  # older hosts: success carries no Status

        def Call(self, request: Any, context: Any) -> Any:
            seen.append(request)
            if request.methodName == "fail":
                context.abort(grpc.StatusCode.INTERNAL, "The model raised an exception: boom")
            if request.methodName == "none":
                return messages.CallResponse()
            value = b'{"asset":"' + request.methodArguments[0].data.value + b'"}'
            return messages.CallResponse(
                status=commons.Status(code="SUCCESS"),
                methodResponse=commons.Variant(type=commons.JSON, value=value))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    grpc_stubs.add_DynamicSubclassServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = ModelRunnerClient.from_addresses([f"127.0.0.1:{port}"], base_classname=BASE,
                                                  instance_args=[7], timeout=5)
        async with client:
            await client.wait_for_models(1, timeout=20)
            results = await client.call("predict", "BTC", 60, kwargs={"step": 5})
            assert results[0].status is CallStatus.SUCCESS and results[0].output == {
                "asset": "BTC"}
            results = await client.call("fail")
            assert results[0].status is CallStatus.FAILURE and "boom" in results[0].detail
            results = await client.call("none")
            assert results[0].status is CallStatus.SUCCESS and results[0].output is None
    finally:
        server.stop(None)
    setup, call = seen[0], seen[1]
    assert setup.className == BASE
    assert [(a.position, a.data.type, a.data.value) for a in setup.instanceArguments] == [
        (0, commons.INT, (7).to_bytes(8, "little"))]
    assert call.methodName == "predict"
    assert [(a.position, a.data.value) for a in call.methodArguments] == [
        (0, b"BTC"), (1, (60).to_bytes(8, "little"))]
    assert [(k.keyword, k.data.value) for k in call.methodKwArguments] == [
        ("step", (5).to_bytes(8, "little"))]
