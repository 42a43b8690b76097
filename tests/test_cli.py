"""The model host command line: options, environment variables, one-line errors."""

from __future__ import annotations

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
                   "CODE_DIRECTORY", "GRPC_ADDRESS", "LOG_LEVEL", "RESOURCE_DIRECTORY"):
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
                 "MAX_SEND_MESSAGE_LENGTH"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError, match="/workspace/submission/code"):
        build_config([])
    config, _ = build_config(["--code-directory", str(GOOD)])
    assert (config.host, config.port) == ("::", 50051)
    assert config.max_receive_message_length == config.max_send_message_length == 64 * 2**20


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
