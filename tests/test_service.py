"""Setup / Call / Rest through a real `python -m model_runner` subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from model_runner.wire import CallRequest, DynamicSubclassServiceStub, Empty, StatusCode
from tests.hosts import SUBMISSIONS, TEST_SUBMISSIONS, HostProcess, call, ok, set_up

pytestmark = pytest.mark.anyio


def start(path: Path, *args: str) -> HostProcess:
    return HostProcess(path, *args).start()


@pytest.fixture
def host_for(request: pytest.FixtureRequest) -> Iterator[HostProcess]:
    host = start(request.param)
    yield host
    host.stop()


# --- Setup ---------------------------------------------------------------------------------------

async def test_setup_passes_instance_arguments(toolbox: DynamicSubclassServiceStub) -> None:
    assert await ok(toolbox, "init") == {"args": [1, "two"], "kwargs": {"three": 3.0}}


async def test_second_setup_is_a_noop(toolbox: DynamicSubclassServiceStub) -> None:
    await ok(toolbox, "tick", {})
    code, message = await set_up(toolbox, "starter_challenge.tracker.TrackerBase", "other")
    assert code == "SUCCESS" and "already set up" in message
    assert await ok(toolbox, "init") == {"args": [1, "two"], "kwargs": {"three": 3.0}}
    assert (await ok(toolbox, "stats"))["calls"] == 1


async def test_empty_class_name_is_invalid(toolbox_host: HostProcess) -> None:
    async with toolbox_host.channel() as channel:
        code, message = await set_up(DynamicSubclassServiceStub(channel), "")
    assert code == "INVALID_ARGUMENT" and "className" in message


@pytest.mark.parametrize("host_for", [SUBMISSIONS / "no_subclass"], indirect=True)
async def test_no_subclass_lists_considered_classes(host_for: HostProcess) -> None:
    async with host_for.channel() as channel:
        code, message = await set_up(DynamicSubclassServiceStub(channel))
    assert code == "BAD_IMPLEMENTATION"
    assert "tracker.MyTracker" in message and "tracker.Helper" in message
    assert "starter_challenge.tracker.TrackerBase" in message


@pytest.mark.parametrize("host_for", [SUBMISSIONS / "import_error"], indirect=True)
async def test_import_failure_is_listed(host_for: HostProcess) -> None:
    async with host_for.channel() as channel:
        code, message = await set_up(DynamicSubclassServiceStub(channel))
    assert code == "BAD_IMPLEMENTATION"
    assert "failed to import" in message and "a_package_that_is_not_installed" in message
    assert "ModuleNotFoundError" in message


@pytest.mark.parametrize("host_for", [SUBMISSIONS / "raising_constructor"], indirect=True)
async def test_raising_constructor_is_setup_failed(host_for: HostProcess) -> None:
    async with host_for.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        code, message = await set_up(stub)
        assert code == "SETUP_FAILED"
        assert "RuntimeError" in message and "model.pt" in message
        # No instance was created: calls are refused, and the host keeps serving.
        assert (await call(stub, "predict", "BTC", 1))[0] == "FAILED_PRECONDITION"


async def test_unimportable_base_class(toolbox_host: HostProcess) -> None:
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await stub.rest()
        code, message = await set_up(stub, "no_such_crunch.Base")
        assert code == "BAD_IMPLEMENTATION" and "not importable" in message
        code, message = await set_up(stub, "starter_challenge.tracker.Missing")
        assert code == "BAD_IMPLEMENTATION" and "Missing" in message
        code, message = await set_up(stub, "NoDots")
        assert code == "BAD_IMPLEMENTATION" and "dotted path" in message


async def test_base_class_from_the_submission_folder(tmp_path: Path) -> None:
    (tmp_path / "base.py").write_text("class Base:\n    def f(self): ...\n")
    (tmp_path / "impl.py").write_text(
        "from base import Base\n\nclass Impl(Base):\n    def f(self):\n        return 'impl'\n")
    host = start(tmp_path)
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            assert (await set_up(stub, "base.Base"))[0] == "SUCCESS"
            assert await ok(stub, "f") == "impl"
    finally:
        host.stop()


async def test_classes_from_the_base_package_are_never_picked(good_host: HostProcess) -> None:
    # starter_challenge ships ExampleTracker(TrackerBase); the submission's class must win.
    async with good_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await stub.rest()
        await set_up(stub)
        await ok(stub, "tick", {"BTC": 5.0})
        assert await ok(stub, "predict", "BTC", 1) == [5.0]


# --- Call ----------------------------------------------------------------------------------------

async def test_call_before_setup(toolbox_host: HostProcess) -> None:
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await stub.rest()
        code, message, _ = await call(stub, "predict", "BTC", 1)
    assert code == "FAILED_PRECONDITION" and "Setup" in message


async def test_empty_and_private_method_names(toolbox: DynamicSubclassServiceStub) -> None:
    assert (await call(toolbox, ""))[0] == "INVALID_ARGUMENT"
    for name in ("_secret", "__class__", "__init__", "__dict__"):
        code, message, value = await call(toolbox, name)
        assert code == "INVALID_ARGUMENT" and "private" in message and value is None


async def test_missing_and_non_callable_attributes(toolbox: DynamicSubclassServiceStub) -> None:
    code, message, _ = await call(toolbox, "missing")
    assert code == "BAD_IMPLEMENTATION" and "missing" in message
    code, message, _ = await call(toolbox, "not_callable")
    assert code == "BAD_IMPLEMENTATION" and "not a method" in message
    code, message, _ = await call(toolbox, "prop")  # never evaluated: it would raise
    assert code == "BAD_IMPLEMENTATION" and "property" in message


async def test_model_exception_is_model_failed(toolbox: DynamicSubclassServiceStub) -> None:
    code, message, value = await call(toolbox, "fail", "bad input")
    assert code == "MODEL_FAILED" and "ValueError: bad input" in message and value is None
    code, message, _ = await call(toolbox, "exit")
    assert code == "MODEL_FAILED" and "SystemExit" in message
    code, message, _ = await call(toolbox, "async_exit")
    assert code == "MODEL_FAILED" and "SystemExit" in message
    assert await ok(toolbox, "first", 7) == 7  # still serving


async def test_unencodable_result_names_its_type(toolbox: DynamicSubclassServiceStub) -> None:
    code, message, _ = await call(toolbox, "unencodable")
    assert code == "MODEL_FAILED" and "object" in message and "encoded" in message


async def test_keyword_arguments_the_method_does_not_take_are_dropped(
    toolbox: DynamicSubclassServiceStub, toolbox_host: HostProcess
) -> None:
    assert await ok(toolbox, "only_x", x=1, y=2, z=3) == 1
    assert await ok(toolbox, "only_x", x=1, y=2, z=3) == 1
    assert toolbox_host.log.count("does not take keyword arguments y, z") == 1
    # **kwargs receives everything.
    assert await ok(toolbox, "echo", 1, a=2, b=[3]) == {"args": [1], "kwargs": {"a": 2, "b": [3]}}


async def test_arguments_that_do_not_bind_are_invalid(toolbox: DynamicSubclassServiceStub) -> None:
    code, message, _ = await call(toolbox, "only_x")
    assert code == "INVALID_ARGUMENT" and "missing a required argument" in message
    assert "Toolbox.only_x(x)" in message
    code, message, _ = await call(toolbox, "only_x", 1, 2)
    assert code == "INVALID_ARGUMENT" and "too many positional" in message


async def test_positional_arguments_follow_position(toolbox: DynamicSubclassServiceStub) -> None:
    from model_runner.wire import Argument, encode_value

    request = CallRequest(method_name="echo", method_arguments=[
        Argument(position=2, data=encode_value("c")), Argument(position=0, data=encode_value("a")),
        Argument(position=1, data=encode_value("b"))])
    response = await toolbox.call(request)
    from model_runner.wire import decode_variant
    assert decode_variant(response.method_response) == {"args": ["a", "b", "c"], "kwargs": {}}


async def test_undecodable_argument_is_invalid(toolbox: DynamicSubclassServiceStub) -> None:
    from model_runner.wire import Argument, Variant, VariantType

    request = CallRequest(method_name="first", method_arguments=[
        Argument(position=0, data=Variant(type=VariantType.INT, value=b"\x01\x02"))])
    response = await toolbox.call(request)
    assert response.status is not None
    assert response.status.code == "INVALID_ARGUMENT"
    assert "positional argument 0" in response.status.message
    assert "8 bytes" in response.status.message


async def test_none_result_has_no_method_response(toolbox: DynamicSubclassServiceStub) -> None:
    from model_runner.wire import Argument, encode_value

    response = await toolbox.call(CallRequest(
        method_name="tick", method_arguments=[Argument(position=0, data=encode_value({}))]))
    assert response.status is not None and response.status.code == "SUCCESS"
    assert response.method_response is None


# --- sizes ---------------------------------------------------------------------------------------

async def test_message_size_limits(tmp_path: Path) -> None:
    host = start(TEST_SUBMISSIONS / "toolbox", "--max-receive-message-length", "10000",
                 "--max-send-message-length", "20000")
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub)
            with pytest.raises(GRPCError) as refused:
                await call(stub, "first", "y" * 20000)
            assert refused.value.status is GrpcStatus.RESOURCE_EXHAUSTED
            assert "max-receive-message-length" in str(refused.value.message)
            code, message, _ = await call(stub, "big", 50000)
            assert code == "MODEL_FAILED" and "max-send-message-length" in message
            assert await ok(stub, "big", 100) == "x" * 100  # still serving
    finally:
        host.stop()


# --- Rest ----------------------------------------------------------------------------------------

async def test_rest_drops_the_instance_and_reimports(toolbox: DynamicSubclassServiceStub) -> None:
    loaded = await ok(toolbox, "loaded_at")
    response = await toolbox.rest(Empty())
    assert response.status is not None and response.status.code == "SUCCESS"
    assert (await call(toolbox, "init"))[0] == "FAILED_PRECONDITION"
    assert (await set_up(toolbox, "starter_challenge.tracker.TrackerBase", "fresh"))[0] == "SUCCESS"
    assert await ok(toolbox, "init") == {"args": ["fresh"], "kwargs": {}}
    assert await ok(toolbox, "loaded_at") > loaded  # the module was imported afresh


# --- bounded state ---------------------------------------------------------------------------


async def test_per_name_state_is_bounded_and_failures_are_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """20,000 distinct method names once held 16.6 MB of cache in the host, and every failed
    call logged its traceback. The model core is driven in this process: the bound on its own
    caches is what is tested."""
    import logging
    import sys

    from model_runner.model import METHODS_REMEMBERED, ModelCore
    from model_runner.wire import encode_value
    from model_runner.wire.pb2.commons_pb2 import Argument, KwArgument, Variant
    from tests.hosts import BASE, EXAMPLES

    def variant(value: object) -> Variant:
        encoded = encode_value(value)
        return Variant(type=int(encoded.type), value=encoded.value)

    sys.path.insert(0, str(EXAMPLES))
    model = ModelCore(TEST_SUBMISSIONS / "toolbox", max_send_message_length=1 << 20)
    try:
        await model.setup(BASE, ([], []), None)
        for i in range(2_000):
            await model.call(f"missing_{i}", ([], []), None)
        one = Argument(position=0, data=variant(1))
        for i in range(600):  # 600 distinct sets of keywords `first` does not take
            await model.call("first", ([one], [KwArgument(keyword=f"k{i}", data=variant(i))]),
                             None)
        remembered = model.remembered()
        assert set(remembered) == {"methods", "dropped keyword sets", "failures"}, remembered
        assert all(0 < size <= METHODS_REMEMBERED for size in remembered.values()), remembered
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="model_runner.model"):
            for _ in range(250):
                await model.call("fail", ([], []), None)
        raised = [r for r in caplog.records if "fail: MODEL_FAILED" in r.getMessage()]
        assert len(raised) == 3  # the first, with its traceback, then the 100th and 200th
        assert "Traceback" in raised[0].getMessage() and "(200 times so far)" in \
            raised[2].getMessage()
    finally:
        model.close()
        sys.path.remove(str(EXAMPLES))


async def test_requests_hold_at_most_1024_arguments_and_256_character_keywords(
        toolbox_host: HostProcess) -> None:
    """README "Requests": 1,024 positional and 1,024 keyword arguments are taken, one more is
    INVALID_ARGUMENT; a keyword of 256 characters is taken, one of 257 is not."""
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await set_up(stub)
        assert len((await ok(stub, "echo", *range(1024)))["args"]) == 1024
        echoed = await ok(stub, "echo", **{f"k{i}": i for i in range(1024)})
        assert len(echoed["kwargs"]) == 1024
        assert (await ok(stub, "echo", **{"k" * 256: 1}))["kwargs"] == {"k" * 256: 1}
        for too_many in ({"args": range(1025)}, {"kwargs": {f"k{i}": i for i in range(1025)}},
                         {"kwargs": {"k" * 257: 1}}):
            code, message, _ = await call(stub, "echo", *too_many.get("args", ()),
                                          **dict(too_many.get("kwargs", {})))
            assert code == StatusCode.INVALID_ARGUMENT, (code, message)
            assert "at most" in message, message
