"""The model host command line: options, environment variables, one-line errors."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from model_runner.cli import UsageError, build_config, parse_address
from tests.hosts import SUBMISSIONS, host_env

GOOD = SUBMISSIONS / "good_tracker"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model_runner", *args], capture_output=True,
                          text=True, timeout=30, env=host_env(env))


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_lists_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("--code-directory", "--address", "--log-level", "--max-receive-message-length",
                   "--max-send-message-length", "--resource-directory", "--grace-period",
                   "--has-gpu", "--main-file", "--auth-delegation", "--gateway-keys",
                   "--model-id", "CODE_DIRECTORY", "GRPC_ADDRESS", "LOG_LEVEL",
                   "RESOURCE_DIRECTORY", "HAS_GPU", "MAIN_FILE",
                   "GRPC_MAX_RECEIVE_MESSAGE_LENGTH", "GRPC_MAX_SEND_MESSAGE_LENGTH"):
        assert option in result.stdout


def test_console_script_is_installed() -> None:
    script = shutil.which("model-runner", path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--code-directory" in result.stdout


def test_missing_folder(tmp_path: Path) -> None:
    result = run_cli("--code-directory", str(tmp_path / "nope"), "--address", "127.0.0.1:0")
    assert_one_line_error(result, "does not exist", "nope")


def test_empty_folder(tmp_path: Path) -> None:
    result = run_cli("--code-directory", str(tmp_path), "--address", "127.0.0.1:0")
    assert_one_line_error(result, "no Python files")


@pytest.mark.parametrize("address", ["foo", "127.0.0.1:99999", "::1:50051", "host:", "unix:"])
def test_malformed_address(address: str) -> None:
    result = run_cli("--code-directory", str(GOOD), "--address", address)
    assert_one_line_error(result, "--address")


def test_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--code-directory", str(GOOD), "--address", f"127.0.0.1:{port}")
    assert_one_line_error(result, "cannot listen", str(port))


@pytest.mark.parametrize("option,value", [("--max-receive-message-length", "-1"),
                                          ("--max-send-message-length", "lots"),
                                          ("--grace-period", "soon"),
                                          ("--log-level", "LOUD")])
def test_bad_values(option: str, value: str) -> None:
    result = run_cli("--code-directory", str(GOOD), "--address", "127.0.0.1:0", option, value)
    assert_one_line_error(result, option)



def test_environment_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODE_DIRECTORY", str(GOOD))
    monkeypatch.setenv("GRPC_ADDRESS", "[::1]:6000")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    monkeypatch.setenv("MAX_RECEIVE_MESSAGE_LENGTH", "1000")
    monkeypatch.setenv("MAX_SEND_MESSAGE_LENGTH", "2000")
    monkeypatch.setenv("RESOURCE_DIRECTORY", str(tmp_path))
    config, level = build_config([])
    assert (config.code_directory, config.host, config.port) == (GOOD, "::1", 6000)
    assert level == "WARNING"
    assert config.max_receive_message_length == 1000
    assert config.max_send_message_length == 2000
    assert config.resource_directory == tmp_path
    assert config.grace_period == 10.0


def test_defaults_follow_existing_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CODE_DIRECTORY", "GRPC_ADDRESS", "MAX_RECEIVE_MESSAGE_LENGTH",
                 "MAX_SEND_MESSAGE_LENGTH", "GRPC_MAX_RECEIVE_MESSAGE_LENGTH",
                 "GRPC_MAX_SEND_MESSAGE_LENGTH", "HAS_GPU", "MAIN_FILE", "RESOURCE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError, match="/workspace/submission/code"):
        build_config([])
    config, _ = build_config(["--code-directory", str(GOOD)])
    assert (config.host, config.port) == ("::", 50051)
    assert config.max_receive_message_length == config.max_send_message_length == 64 * 2**20
    assert (config.has_gpu, config.main_file) == (False, "main.py")
    assert config.resource_directory == Path("/workspace/resources")


@pytest.mark.parametrize("text,expected", [
    ("[::]:50051", ("::", 50051, None)),
    ("127.0.0.1:0", ("127.0.0.1", 0, None)),
    ("localhost:8080", ("localhost", 8080, None)),
    (":7000", (None, 7000, None)),
    ("unix:/tmp/m.sock", (None, 0, "/tmp/m.sock")),
    ("unix:///tmp/m.sock", (None, 0, "/tmp/m.sock")),
])
def test_parse_address(text: str, expected: tuple[object, ...]) -> None:
    assert parse_address(text) == expected


# --- the options of crunch-model-runner 0.4.2, as orchestrators pass them ------------------------

@pytest.mark.parametrize("word,expected", [("true", True), ("TRUE", True), ("1", True),
                                           ("Yes", True), ("on", True), ("false", False),
                                           ("False", False), ("0", False), ("NO", False),
                                           ("off", False)])
def test_has_gpu_takes_boolean_words(word: str, expected: bool,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_config(["--code-directory", str(GOOD), "--has-gpu", word])[0].has_gpu is expected
    monkeypatch.setenv("HAS_GPU", word)
    assert build_config(["--code-directory", str(GOOD)])[0].has_gpu is expected


def test_has_gpu_refuses_other_words() -> None:
    result = run_cli("--code-directory", str(GOOD), "--address", "127.0.0.1:0",
                     "--has-gpu", "maybe")
    assert_one_line_error(result, "--has-gpu", "maybe", "true or false")


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical", "CRITICAL"])
def test_log_level_in_any_case(level: str) -> None:
    assert build_config(["--code-directory", str(GOOD), "--log-level", level])[1] == level.upper()


def test_deployed_message_length_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_MAX_RECEIVE_MESSAGE_LENGTH", "4096")
    monkeypatch.setenv("GRPC_MAX_SEND_MESSAGE_LENGTH", "8192")
    monkeypatch.setenv("MAX_RECEIVE_MESSAGE_LENGTH", "1")  # our alias: the deployed name wins
    config, _ = build_config(["--code-directory", str(GOOD)])
    assert (config.max_receive_message_length, config.max_send_message_length) == (4096, 8192)
    config, _ = build_config(["--code-directory", str(GOOD),
                              "--max-receive-message-length", "5000"])
    assert config.max_receive_message_length == 5000  # the flag wins over the environment
    monkeypatch.delenv("GRPC_MAX_RECEIVE_MESSAGE_LENGTH")
    assert build_config(["--code-directory", str(GOOD)])[0].max_receive_message_length == 1


EXISTING_RUNNER_OPTIONS = {
    "--address": ("GRPC_ADDRESS", "127.0.0.1:0"),
    "--code-directory": ("CODE_DIRECTORY", str(GOOD)),
    "--resource-directory": ("RESOURCE_DIRECTORY", "/tmp"),
    "--has-gpu": ("HAS_GPU", "True"),
    "--main-file": ("MAIN_FILE", "tracker.py"),
    "--log-level": ("LOG_LEVEL", "info"),
    "--max-send-message-length": ("GRPC_MAX_SEND_MESSAGE_LENGTH", "8192"),
    "--max-receive-message-length": ("GRPC_MAX_RECEIVE_MESSAGE_LENGTH", "4096"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["flags", "environment"])
async def test_host_serves_with_every_option_of_the_existing_runner(how: str) -> None:
    """Started as orchestrators start crunch-model-runner; the 4 kB limit holds (an 8 kB
    request is refused, a small one answered) and the compatibility options are logged. (The
    test launcher passes --code-directory and --address itself; their variables are covered by
    test_environment_defaults.)"""
    from grpclib.const import Status as GrpcStatus
    from grpclib.exceptions import GRPCError

    from model_runner.wire import DynamicSubclassServiceStub
    from tests.hosts import HostProcess, call, set_up

    args: list[str] = []
    env: dict[str, str] = {}
    for option, (variable, value) in EXISTING_RUNNER_OPTIONS.items():
        if how == "flags":
            args += [option, value]
        elif option not in ("--address", "--code-directory"):
            env[variable] = value
    host = HostProcess(GOOD, *args, env=env).start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            assert (await set_up(stub))[0] == "SUCCESS"
            with pytest.raises(GRPCError) as refused:
                await call(stub, "predict", "B" * 8000, 3)
            assert refused.value.status is GrpcStatus.RESOURCE_EXHAUSTED
            assert (await call(stub, "predict", "BTC", 3))[0] == "SUCCESS"
    finally:
        host.stop()
    assert "has_gpu=True main_file=tracker.py resource_directory=/tmp" in host.log


def test_model_runner_uvloop_0_keeps_the_default_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from model_runner import eventloop
    monkeypatch.setenv("MODEL_RUNNER_UVLOOP", "0")
    assert not eventloop.uvloop_enabled()

    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(loop_type()).startswith("asyncio")
    monkeypatch.setenv("MODEL_RUNNER_UVLOOP", "1")
    assert eventloop.uvloop_enabled()  # installed with the test extra
    assert eventloop.run(loop_type()).startswith("uvloop")
