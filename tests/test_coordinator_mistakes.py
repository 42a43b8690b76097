"""The coordinator's mistakes are the coordinator's: nothing counted or reported, `detail` says
why, one ERROR log names the likely mistake. A model's own failures still count. Both transports.

Reports reach `on_failure` in order, so "nothing reported" is checked after a sentinel report
(a model that does fail) has arrived: anything the mistakes had caused would have come first.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest

from model_runner_client import CallStatus, FailureReport, ModelEndpoint, ModelRunnerClient
from tests.clients import address_client, endpoint
from tests.hosts import SUBMISSIONS, TEST_SUBMISSIONS, HostProcess, until

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]


def client(endpoints: list[ModelEndpoint], reports: list[FailureReport],
           **options: Any) -> ModelRunnerClient:
    return address_client(endpoints, timeout=5, max_consecutive_failures=3,
                          on_failure=reports.append, **options)


def errors(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and needle in r.getMessage()]


async def test_a_method_no_model_has_is_the_coordinator_s_typo(
        good_host: HostProcess, toolbox_host: HostProcess, raising_host: HostProcess,
        caplog: pytest.LogCaptureFixture) -> None:
    reports: list[FailureReport] = []
    async with client([endpoint(good_host, "good"), endpoint(toolbox_host, "tool"),
                       endpoint(raising_host, "raising")], reports) as coordinator:
        await coordinator.wait_for_models(3, timeout=20)
        for _ in range(5):  # more than max_consecutive_failures
            results = await coordinator.call("predcit", "BTC", 1)
            assert {r.status for r in results} == {CallStatus.FAILURE}
            for result in results:
                assert "not counted" in result.detail and "check the method name" in \
                    result.detail, result.detail
        assert len(coordinator.models) == 3
        for _ in range(3):  # the sentinel: a model whose predict really raises
            await coordinator.call("predict", "BTC", 1)
        await until(lambda: bool(reports))
    assert [(r.model.model_id, r.code) for r in reports] == [("raising", "MULTIPLE_FAILED")]
    assert len(errors(caplog, "'predcit'")) == 1


async def test_one_model_lacking_a_method_the_others_have_is_that_model_s_fault(
        good_host: HostProcess, toolbox_host: HostProcess) -> None:
    reports: list[FailureReport] = []
    async with client([endpoint(good_host, "good"), endpoint(toolbox_host, "tool")],
                      reports) as coordinator:
        await coordinator.wait_for_models(2, timeout=20)
        for _ in range(3):
            results = await coordinator.call("echo", 1)
            assert results["tool"].status is CallStatus.SUCCESS
        await until(lambda: bool(reports))
    assert [(r.model.model_id, r.code) for r in reports] == [("good", "MULTIPLE_FAILED")]
    assert "has no method 'echo'" in reports[0].reason


async def test_a_base_class_no_host_can_import_reports_nobody(
        caplog: pytest.LogCaptureFixture) -> None:
    # Fresh hosts: a host already set up answers any later Setup with SUCCESS (a no-op).
    hosts = [HostProcess(SUBMISSIONS / "good_tracker").start() for _ in range(2)]
    try:
        reports: list[FailureReport] = []
        async with client([endpoint(hosts[0], "good"), endpoint(hosts[1], "other")], reports,
                          base_classname="starter_challenge.trackr.TrackerBase") as coordinator:
            await coordinator.wait_for_models(timeout=20)
            assert coordinator.models == []
        # The registry logs each report as it decides it, before it is queued for delivery.
        assert not [r for r in caplog.records if r.getMessage().startswith("reporting ")]
        assert len(errors(caplog, "no model host could import the base class")) == 1
    finally:
        for host in hosts:
            host.stop()


async def test_a_host_that_alone_cannot_import_the_base_is_reported(
        good_host: HostProcess) -> None:
    broken = HostProcess(TEST_SUBMISSIONS / "broken_base").start()
    try:
        reports: list[FailureReport] = []
        async with client([endpoint(broken, "broken"), endpoint(good_host, "good")],
                          reports) as coordinator:
            await coordinator.wait_for_models(timeout=20)
            assert [m.model_id for m in coordinator.models] == ["good"]
            await until(lambda: bool(reports))
        assert [(r.model.model_id, r.code) for r in reports] == [("broken", "BAD_IMPLEMENTATION")]
        # Reported at once if the good host answered first, or once it did.
        assert "is not importable" in reports[0].reason
    finally:
        broken.stop()


async def test_an_answer_this_client_cannot_decode_is_not_the_model_s(
        toolbox_host: HostProcess, raising_host: HostProcess,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A coordinator without the `dataframes` extra read every DataFrame as a failure."""
    reports: list[FailureReport] = []
    async with client([endpoint(toolbox_host, "tool"), endpoint(raising_host, "raising")],
                      reports) as coordinator:
        await coordinator.wait_for_models(2, timeout=20)
        monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
        for _ in range(4):
            result = (await coordinator.call("frame", models=["tool"]))[0]
            assert result.status is CallStatus.FAILURE
            assert "not counted" in result.detail
            assert "model-runner-client[dataframes]" in result.detail
        monkeypatch.delitem(sys.modules, "pyarrow")
        for _ in range(3):
            await coordinator.call("predict", "BTC", 1, models=["raising"])
        await until(lambda: bool(reports))
    assert [(r.model.model_id, r.code) for r in reports] == [("raising", "MULTIPLE_FAILED")]
    assert len(errors(caplog, "needs pyarrow")) == 1


async def test_a_bug_of_ours_is_logged_and_never_counted(
        good_host: HostProcess, raising_host: HostProcess, transport: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from model_runner_client.transports import grpclib as grpclib_transport
    from model_runner_client.transports import ngh2 as ngh2_transport

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the call path")

    reports: list[FailureReport] = []
    async with client([endpoint(good_host, "good"), endpoint(raising_host, "raising")],
                      reports) as coordinator:
        await coordinator.wait_for_models(2, timeout=20)
        with monkeypatch.context() as patch:
            transport_class = (ngh2_transport.Ngh2Transport if transport == "ngh2"
                               else grpclib_transport.GrpclibTransport)
            patch.setattr(transport_class, "finish", broken)
            for _ in range(4):
                result = (await coordinator.call("predict", "BTC", 1, models=["good"]))[0]
                assert result.status is CallStatus.FAILURE
                assert "a bug in model-runner-client" in result.detail
        for _ in range(3):
            await coordinator.call("predict", "BTC", 1, models=["raising"])
        await until(lambda: bool(reports))
    assert [(r.model.model_id, r.code) for r in reports] == [("raising", "MULTIPLE_FAILED")]
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and "bug:" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # with its traceback
