"""A throwaway PostgreSQL server from the OS packages, for crunch-node's workers.

It listens on 127.0.0.1 and a free port, with its socket and data in a fresh folder, and is
stopped (immediate mode) when the block ends. PostgreSQL refuses to run as root, so as root the
server runs as the `postgres` user (what Debian's package creates).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from model_runner.process import free_port


def binaries() -> Path:
    """The folder of initdb and pg_ctl: Debian's newest, else on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    pytest.fail("no PostgreSQL server binaries (initdb, pg_ctl): install the OS package "
                "(apt-get install postgresql), as .ci/run does")


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    folder: Path
    bin_dir: Path

    def psql(self, database: str, sql: str, user: str | None = None) -> str:
        """`sql`'s rows, one per line, fields separated by '|'."""
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port),
             "-U", user or self.user, "-d", database, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-c", sql],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def create_database(self, name: str, password: str) -> dict[str, str]:
        """A role and a database of that name; crunch-node's POSTGRES_* environment for them."""
        self.psql("postgres", f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        self.psql("postgres", f"CREATE DATABASE \"{name}\" OWNER \"{name}\"")
        return {"POSTGRES_HOST": self.host, "POSTGRES_PORT": str(self.port),
                "POSTGRES_USER": name, "POSTGRES_PASSWORD": password, "POSTGRES_DB": name}


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("PostgreSQL refuses to run as root and there is no `postgres` user: "
                    "install the OS package (apt-get install postgresql), which creates it")
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    # Not under pytest's tmp_path: its parents are private to root, and the server user must
    # reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="model-runner-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    bin_dir = binaries()
    subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                                    "-U", "postgres", "-E", "UTF8", "--no-sync"]),
                   check=True, capture_output=True, timeout=120)
    # -F: no fsync, a test's database outlives nothing.
    started = subprocess.run(
        _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                         "-o", f"-h 127.0.0.1 -p {port} -k {folder} -F", "-w", "-t", "60",
                         "start"]),
        capture_output=True, text=True, timeout=90)
    log = folder / "log"
    assert started.returncode == 0, started.stderr + (log.read_text() if log.exists() else "")
    try:
        yield Postgres(host="127.0.0.1", port=port, user="postgres", folder=folder,
                       bin_dir=bin_dir)
    finally:
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m",
                                        "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
