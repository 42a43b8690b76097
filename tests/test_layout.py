"""The client is a leaf over the wire layer: importing it loads none of the host's code."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import model_runner_client
import model_runner_client.model_concurrent_runners
import model_runner_client.security.credentials
import model_runner_client.utils.datatype_transformer
ours = [m for m in sys.modules if m.startswith("model_runner.")]
server = [m for m in ours if not m.startswith("model_runner.wire")]
assert not server, server
assert "model_runner.wire" in ours
"""


def test_the_client_loads_no_server_code() -> None:
    subprocess.run([sys.executable, "-c", CHECK], check=True, timeout=60)
