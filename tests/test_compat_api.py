"""model-runner-client 0.14's API, run as an existing coordinator runs it.

The coordinator below is written the way public Crunch coordinators use the old client (a
predict worker: init, sync as a task, tick with a JSON Argument, predict with STRING/INT
Arguments, results by runner key, `model_runs=` subsets, disconnect to shut down), against real
hosts through the local orchestrator.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import pytest

from model_runner.local_orchestrator import LocalOrchestrator, ModelSpec
from model_runner_client.errors import InvalidCoordinatorUsageError
from model_runner_client.grpc.generated import commons_pb2, dynamic_subclass_pb2
from model_runner_client.grpc.generated.commons_pb2 import (
    Argument,
    KwArgument,
    Status,
    Variant,
    VariantType,
)
from model_runner_client.model_concurrent_runners import (
    DynamicSubclassModelConcurrentRunner,
    ModelPredictResult,
)
from model_runner_client.model_concurrent_runners.dynamic_subclass_model_concurrent_runner import (
    DynamicSubclassModelConcurrentRunner as ByModulePath,
)
from model_runner_client.model_concurrent_runners.model_concurrent_runner import (
    ModelConcurrentRunner,
)
from model_runner_client.model_runners import DynamicSubclassModelRunner, ModelRunner
from model_runner_client.utils.datatype_transformer import (
    decode_data,
    detect_data_type,
    encode_data,
)
from tests.hosts import BASE, EXAMPLES, SUBMISSIONS, TEST_SUBMISSIONS, until

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]

TIMEOUT = 1.0
#: What a tick may take beyond the timeout (generous: two cores shared with three hosts).
MARGIN = 1.0


def argument(position: int, type_: int, value: Any) -> Argument:
    return Argument(position=position, data=Variant(type=type_,
                                                    value=encode_data(type_, value)))


@pytest.mark.transport_independent
def test_import_paths_and_names() -> None:
    assert ByModulePath is DynamicSubclassModelConcurrentRunner
    assert issubclass(DynamicSubclassModelConcurrentRunner, ModelConcurrentRunner)
    assert issubclass(DynamicSubclassModelRunner, ModelRunner)
    assert [s.value for s in ModelPredictResult.Status] == ["SUCCESS", "FAILED", "TIMEOUT"]
    assert VariantType.JSON == 6 and VariantType.Name(VariantType.PARQUET) == "PARQUET"
    assert Status(code="SUCCESS").SerializeToString() == b"\n\x07SUCCESS"  # field 1
    request = dynamic_subclass_pb2.CallRequest(methodName="predict",
                                               methodArguments=[argument(1, VariantType.INT, 7)])
    # The same bytes our own messages make: one wire contract.
    from model_runner.wire import CallRequest
    ours = CallRequest.parse(request.SerializeToString())
    assert ours.method_name == "predict" and ours.method_arguments[0].position == 1
    assert commons_pb2.Variant.FromString(bytes(ours.method_arguments[0].data)).value == \
        (7).to_bytes(8, "little", signed=True)


@pytest.mark.parametrize("value,type_", [(None, VariantType.NONE), (1.5, VariantType.DOUBLE),
                                         (-3, VariantType.INT), ("é", VariantType.STRING),
                                         ({"a": [1, 2.5]}, VariantType.JSON),
                                         ([float("nan")], VariantType.JSON)])
@pytest.mark.transport_independent
def test_datatype_transformer_round_trips(value: Any, type_: int) -> None:
    assert detect_data_type(value) == type_
    back = decode_data(encode_data(type_, value), type_)
    assert json.dumps(back) == json.dumps(value)


@pytest.mark.transport_independent
def test_datatype_transformer_errors_say_what_to_send() -> None:
    with pytest.raises(ValueError, match="unsupported data type: set"):
        detect_data_type({1})
    with pytest.raises(ValueError, match="int64"):
        encode_data(VariantType.INT, 2**70)
    with pytest.raises(ValueError, match="JSON"):
        decode_data(b"{not json", VariantType.JSON)


@pytest.mark.transport_independent
def test_the_old_package_name_is_not_needed() -> None:
    """The compat layer imports without grpcio (the old client's transport)."""
    code = ("import sys; sys.modules['grpc'] = None; "
            "import model_runner_client.model_concurrent_runners, "
            "model_runner_client.security.credentials, "
            "model_runner_client.security.gateway_credentials, "
            "model_runner_client.utils.datatype_transformer, model_runner_client.errors")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_an_existing_coordinator_runs_unchanged() -> None:
    specs = [ModelSpec(SUBMISSIONS / "good_tracker", "good"),
             ModelSpec(SUBMISSIONS / "raising_tracker", "raising"),
             ModelSpec(TEST_SUBMISSIONS / "faulty", "hanging", env=(("FAULT", "hang"),))]
    async with LocalOrchestrator("legacy", specs, python_path=[EXAMPLES]) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        runner = DynamicSubclassModelConcurrentRunner(
            timeout=TIMEOUT, crunch_id="legacy", host="127.0.0.1", port=orchestrator.port,
            base_classname=BASE, max_consecutive_failures=3, max_consecutive_timeouts=3)
        await runner.init()
        # init() returns with every model of the first list set up: tick right away.
        assert set(runner.model_cluster.models_run) == {"good", "raising", "hanging"}
        sync = asyncio.create_task(runner.sync())

        statuses: dict[str, list[str]] = defaultdict(list)
        keys: dict[str, set[int]] = defaultdict(set)
        for tick in range(6):
            started = time.monotonic()
            market = argument(1, VariantType.JSON, {"BTC": 97000.5 + tick})
            await runner.call("tick", ([market], []))
            results = await runner.call("predict", arguments=(
                [argument(1, VariantType.STRING, "BTC"), argument(2, VariantType.INT, 60)],
                [KwArgument(keyword="step", data=Variant(type=VariantType.INT,
                                                        value=encode_data(VariantType.INT, 15)))]))
            assert time.monotonic() - started < 2 * TIMEOUT + MARGIN
            for key, result in results.items():
                assert isinstance(key, DynamicSubclassModelRunner)
                assert result.model_runner is key
                assert isinstance(result.exec_time_us, int) and result.exec_time_us > 0
                assert key.deployment_id == f"{key.model_id}-d1"
                assert key.infos["cruncher_id"] == f"cruncher-{key.model_id}"
                assert (key.ip, key.port) == ("127.0.0.1", orchestrator.models[key.model_id]
                                              .host.port)  # type: ignore[union-attr]
                statuses[key.model_id].append(result.status.value)
                keys[key.model_id].add(id(key))
                if result.status is ModelPredictResult.Status.SUCCESS:
                    trend = 0.5 if tick else 0.0  # the tracker's damped last move
                    assert result.result == [97000.5 + tick + trend * i for i in range(1, 5)]
                    assert result.detail is None
                else:
                    assert result.result is None and result.detail

        assert statuses["good"] == ["SUCCESS"] * 6
        # Three failures in a row disconnect the raising model; it is then not called again.
        assert statuses["raising"] == ["FAILED"] * 3
        assert statuses["hanging"][0] == "TIMEOUT" and set(statuses["hanging"]) == {"TIMEOUT"}
        assert all(len(ids) == 1 for ids in keys.values()), "one key object per deployment"
        await until(lambda: len(orchestrator.reports) == 2, timeout=10)
        assert {(r["model_id"], r["failure_code"]) for r in orchestrator.reports} == {
            ("raising", "MULTIPLE_FAILED"), ("hanging", "MULTIPLE_TIMEOUT")}
        assert set(runner.model_cluster.models_run) == {"good"}

        # A subset by the keys the coordinator kept, and per-model arguments.
        good = runner.model_cluster.models_run["good"]
        results = await runner.call(
            "predict", arguments=lambda model: ([argument(1, VariantType.STRING, model.model_id),
                                                 argument(2, VariantType.INT, 2)], []),
            model_runs=[good])
        assert list(results) == [good]
        assert results[good].status is ModelPredictResult.Status.SUCCESS
        assert results[good].result == [0.0, 0.0]  # the tracker has no price for "good"

        await runner.model_cluster.ws_client.disconnect()
        await asyncio.wait_for(sync, timeout=10)  # sync() returns once disconnected
        assert await runner.call("predict", ([], [])) == {}


async def test_deprecated_args_keywords_warn_and_work() -> None:
    specs = [ModelSpec(SUBMISSIONS / "good_tracker", "good")]
    async with LocalOrchestrator("legacy-args", specs, python_path=[EXAMPLES]) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        async with DynamicSubclassModelConcurrentRunner(
                timeout=TIMEOUT, crunch_id="legacy-args", host="127.0.0.1",
                port=orchestrator.port, base_classname=BASE) as runner:
            with pytest.warns(DeprecationWarning, match="arguments="):
                results = await runner.call("predict", args=[
                    argument(1, VariantType.STRING, "BTC"), argument(2, VariantType.INT, 3)])
            (result,) = results.values()
            assert result.status is ModelPredictResult.Status.SUCCESS
            assert result.result == [0.0, 0.0, 0.0]
            with pytest.raises(InvalidCoordinatorUsageError, match=r"\(list\[Argument\]"):
                await runner.call("predict", arguments=("BTC", 3))


async def test_init_and_sync_started_together_share_one_client() -> None:
    specs = [ModelSpec(SUBMISSIONS / "good_tracker", "good")]
    async with LocalOrchestrator("legacy-gather", specs, python_path=[EXAMPLES]) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        runner = DynamicSubclassModelConcurrentRunner(
            timeout=TIMEOUT, crunch_id="legacy-gather", host="127.0.0.1",
            port=orchestrator.port, base_classname=BASE)
        sync = asyncio.ensure_future(runner.sync())
        await runner.init()
        assert list(runner.model_cluster.models_run) == ["good"]
        # Internals, on purpose: the orchestrator counts its websocket clients.
        assert len(orchestrator._clients) == 1  # one client, one orchestrator link
        await runner.model_cluster.ws_client.disconnect()
        await asyncio.wait_for(sync, timeout=10)


async def test_init_raises_when_the_orchestrator_never_answers() -> None:
    runner = DynamicSubclassModelConcurrentRunner(timeout=TIMEOUT, crunch_id="nobody",
                                                  host="127.0.0.1", port=9, base_classname=BASE)
    runner.INIT_TIMEOUT = 1.0
    with pytest.raises(ConnectionError, match=r"ws://127\.0\.0\.1:9/nobody"):
        await runner.init()
    with pytest.raises(InvalidCoordinatorUsageError, match="create a new one"):
        await runner.init()


async def test_call_before_init_says_what_to_do() -> None:
    runner = DynamicSubclassModelConcurrentRunner(timeout=TIMEOUT, crunch_id="early",
                                                  host="127.0.0.1", port=9, base_classname=BASE)
    assert dict(runner.model_cluster.models_run) == {}
    with pytest.raises(InvalidCoordinatorUsageError, match="init"):
        await runner.call("predict", ([], []))
