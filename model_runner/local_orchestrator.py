"""A local Model Orchestrator: model hosts as subprocesses, announced over the orchestrator's
websocket protocol. For tests, benchmarks and the demo; production runs model hosts as
containers through the real orchestrator, which the client's link speaks to the same way.

    python -m model_runner.local_orchestrator --crunch-id demo --port 9091 DIR [DIR ...]
    python -m model_runner.local_orchestrator --config models.toml

Each model host starts as production starts it, on `[::]` (IPv4 and IPv6) with the
orchestrator's environment, on a free port; it is announced RUNNING with its IPv4 address once
its health is SERVING. A
host that dies is announced RECOVERING and restarted (at most `max_restarts` times, then
STOPPED). A model reported with `report_failure` is stopped for good. `redeploy(model_id)`
starts a new deployment and retires the old one, the way the real orchestrator does.

A config file (TOML):

    crunch_id = "demo"
    python_path = ["examples"]          # put on the hosts' PYTHONPATH (e.g. the Crunch package)
    [[models]]
    code_directory = "examples/submissions/good_tracker"
    id = "good-1"                       # optional: defaults to the folder name
    name = "Trend tracker"              # optional
    cruncher = "alice"                  # optional
"""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import websockets
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from websockets.asyncio.server import Server, ServerConnection

from .eventloop import Interrupted, run_until_signalled
from .process import ModelHostProcess

__all__ = ["LocalOrchestrator", "ModelSpec", "load_config"]

logger = logging.getLogger(__name__)

#: The Crunch id of a local orchestrator started without one (the README's examples use it).
DEFAULT_CRUNCH_ID = "demo"
#: A host up this long (seconds) before dying is restarted as if for the first time.
_STABLE_AFTER = 10.0


@dataclass(frozen=True)
class ModelSpec:
    code_directory: Path
    model_id: str = ""
    name: str = ""
    cruncher: str = ""
    #: Extra command-line options for this model's host.
    host_args: tuple[str, ...] = ()
    #: Extra environment variables for this model's host.
    env: tuple[tuple[str, str], ...] = ()
    #: Extra orchestrator infos (e.g. cruncher_wallet_pubkey, cruncher_hotkey).
    infos: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return self.model_id or self.code_directory.resolve().name


@dataclass(eq=False)
class _Model:
    spec: ModelSpec
    deployment: int = 1
    state: str = "STARTING"
    host: ModelHostProcess | None = None
    #: A host `redeploy` started and announced, for the supervisor to adopt.
    adopted: ModelHostProcess | None = None
    restarts: int = 0
    failed: bool = False
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    redeploying: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def deployment_id(self) -> str:
        return f"{self.spec.id}-d{self.deployment}"

    def infos(self) -> dict[str, Any]:
        spec = self.spec
        return {"model_name": spec.name or spec.id, "cruncher_id": f"cruncher-{spec.id}",
                "cruncher_name": spec.cruncher or f"cruncher-{spec.id}",
                "cruncher_wallet_pubkey": "", "cruncher_hotkey": None, **dict(spec.infos)}

    def entry(self, state: str | None = None) -> dict[str, Any]:
        return {
            "model_id": self.spec.id, "deployment_id": self.deployment_id,
            "state": state or self.state, "ip": "127.0.0.1",
            "port": self.host.port if self.host is not None else 0,
            "infos": self.infos(),
        }

    def environment(self) -> dict[str, str]:
        """What the Model Orchestrator sets on every host it starts (empty: unknown), and the
        spec's own variables on top."""
        infos = self.infos()
        return {"SECURE": "False", "MODEL_ID": self.spec.id, "CRUNCH_ONCHAIN_ADDRESS": "",
                "CRUNCHER_WALLET_PUBKEY": infos.get("cruncher_wallet_pubkey") or "",
                "CRUNCHER_HOTKEY": infos.get("cruncher_hotkey") or "",
                "COORDINATOR_WALLET_PUBKEY": "", "COORDINATOR_CERT_HASH": "",
                "COORDINATOR_CERT_HASH_SECONDARY": "", **dict(self.spec.env)}


class LocalOrchestrator:
    def __init__(
        self,
        crunch_id: str,
        models: Sequence[ModelSpec],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        python_path: Sequence[Path] = (),
        max_restarts: int = 3,
        host_args: Sequence[str] = ("--log-level", "WARNING"),
        health_ssl: ssl.SSLContext | None = None,
    ) -> None:
        ids = [m.id for m in models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids must be unique: {ids}")
        self.crunch_id = crunch_id
        self.listen_host = host
        self.listen_port = port
        self.python_path = list(python_path)
        self.max_restarts = max_restarts
        self.host_args = list(host_args)
        #: TLS for the health probe, when the hosts serve TLS (see client_tls_context).
        self.health_ssl = health_ssl
        self.models = {m.id: _Model(m) for m in models}
        self.reports: list[dict[str, Any]] = []
        self._clients: set[ServerConnection] = set()
        self._server: Server | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._changed = anyio.Event()
        self._spawned: set[ModelHostProcess] = set()
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> LocalOrchestrator:
        self._server = await websockets.serve(self._serve_client, self.listen_host,
                                              self.listen_port, max_size=16 * 2**20)
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        for model in self.models.values():
            self._group.start_soon(self._supervise, model)
        logger.info("local orchestrator for %r on ws://%s:%d/%s", self.crunch_id,
                    self.listen_host, self.port, self.crunch_id)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._group is not None and self._server is not None
        self._group.cancel_scope.cancel()
        try:
            await self._group.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                for host in self._spawned:
                    host.kill()  # all at once, then wait for each without blocking the loop
                for host in self._spawned:
                    await host.stop_async()
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://{self.listen_host}:{self.port}/{self.crunch_id}"

    def ports(self) -> dict[str, int]:
        """Each model's current host port (by model id), whatever its state."""
        return {model_id: model.host.port for model_id, model in self.models.items()
                if model.host is not None}

    async def wait_running(self, count: int | None = None, timeout: float = 60.0) -> None:
        """Wait until `count` models (default all) are RUNNING."""
        want = len(self.models) if count is None else count
        with anyio.fail_after(timeout):
            while sum(m.state == "RUNNING" for m in self.models.values()) < want:
                await self._changed.wait()

    # --- websocket side ------------------------------------------------------------------------

    async def _serve_client(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        if path.strip("/") != self.crunch_id:
            await ws.close(4004, f"unknown crunch {path.strip('/')!r}; this is {self.crunch_id!r}")
            return
        self._clients.add(ws)
        try:
            running = [m.entry() for m in self.models.values() if m.state == "RUNNING"]
            await ws.send(json.dumps({"event": "init", "data": running}))
            async for frame in ws:
                await self._on_client_message(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)

    async def _on_client_message(self, frame: str | bytes) -> None:
        try:
            message = json.loads(frame)
            assert message["event"] == "report_failure" and isinstance(message["data"], list)
        except (ValueError, KeyError, TypeError, AssertionError):
            logger.warning("ignoring a client message that is not a report_failure: %.200r",
                           frame)
            return
        for item in message["data"]:
            model = self.models.get(str(item.get("model_id"))) if isinstance(item, dict) else None
            if model is None:
                logger.warning("report_failure for an unknown model: %.200r", item)
                continue
            self.reports.append(item)
            logger.warning("model %s reported as %s (%s): stopping it", model.spec.id,
                           item.get("failure_code"), item.get("failure_reason"))
            model.failed = True
            model.scope.cancel()

    async def broadcast(self, entries: list[dict[str, Any]]) -> None:
        text = json.dumps({"event": "update", "data": entries})
        for ws in list(self._clients):
            try:
                await ws.send(text)
            except websockets.ConnectionClosed:
                self._clients.discard(ws)

    # --- model hosts -----------------------------------------------------------------------------

    async def _supervise(self, model: _Model) -> None:
        while not model.failed:
            started = anyio.current_time()
            with model.scope:
                await self._run_once(model)
            if anyio.current_time() - started > _STABLE_AFTER:
                model.restarts = 0  # it ran fine for a while: not a crash loop
            if model.failed:
                break
            if model.adopted is not None:
                continue  # redeploy() handed over a new host: not a restart
            model.restarts += 1
            if model.restarts > self.max_restarts:
                break
            model.scope = anyio.CancelScope()
            await anyio.sleep(min(5.0, 0.2 * 2 ** model.restarts))
        await self._stop(model)

    def _new_host(self, model: _Model) -> ModelHostProcess:
        host = ModelHostProcess(model.spec.code_directory,
                                [*self.host_args, *model.spec.host_args],
                                python_path=self.python_path, env=model.environment())
        # Every host spawned is kept until it exits, and all are stopped on exit: whatever
        # interleaving of crashes, restarts and redeploys, none outlives the orchestrator.
        # (poll() also reaps the ones that exited; kill() ends what they forked.)
        for old in [h for h in self._spawned if h.proc is not None and h.proc.poll() is not None]:
            old.kill()
            self._spawned.discard(old)
        self._spawned.add(host)
        return host

    async def _start_host(self, host: ModelHostProcess) -> None:
        """Spawn and wait until it listens and its health is SERVING (RuntimeError if not)."""
        host.spawn()
        while not host.poll_ready():  # noqa: ASYNC110 - the host's log offers no event to await
            await anyio.sleep(0.05)
        await self._wait_serving(host)

    async def _run_once(self, model: _Model) -> None:
        if model.adopted is not None:  # started and announced by redeploy()
            host, model.adopted = model.adopted, None
        else:
            host = model.host = self._new_host(model)
            try:
                await self._start_host(host)
            except RuntimeError as exc:
                logger.error("model %s did not start: %s", model.spec.id, str(exc)[-500:])
                await host.stop_async()
                return
            except BaseException:
                host.kill()  # cancelled while starting (a report, or shutdown): no orphan
                raise
            if host is not model.host:
                await host.stop_async()  # a redeploy replaced this restart while it started
                return
            await self.broadcast([model.entry("RUNNING")])
            logger.info("model %s RUNNING on port %d (pid %d)", model.deployment_id, host.port,
                        host.pid)
        self._set_state(model, "RUNNING")
        while host is model.host and host.proc is not None and host.proc.poll() is None:  # noqa: ASYNC110
            await anyio.sleep(0.1)  # a child process offers no awaitable exit
        if host is not model.host:
            return  # replaced by redeploy(), which stops it; the supervisor adopts the new one
        logger.warning("model host %s exited with %s; recovering", model.deployment_id,
                       host.proc.returncode if host.proc else None)
        self._set_state(model, "RECOVERING")
        await self.broadcast([model.entry()])

    async def _wait_serving(self, host: ModelHostProcess) -> None:
        channel = Channel("127.0.0.1", host.port, ssl=self.health_ssl)
        try:
            with anyio.fail_after(30):
                while True:
                    if host.proc is not None and host.proc.poll() is not None:
                        raise RuntimeError(f"exited with {host.proc.returncode} before SERVING")
                    try:
                        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=2)
                        if reply is not None and reply.status == HealthCheckResponse.SERVING:
                            return
                    except Exception as exc:  # not serving yet, whatever the transport says
                        logger.debug("health check of port %d: %r", host.port, exc)
                    await anyio.sleep(0.05)
        except TimeoutError:
            raise RuntimeError("health never turned SERVING within 30s") from None
        finally:
            channel.close()

    def _set_state(self, model: _Model, state: str) -> None:
        model.state = state
        self._changed.set()
        self._changed = anyio.Event()

    async def _stop(self, model: _Model) -> None:
        with anyio.CancelScope(shield=True):
            previous = model.state
            self._set_state(model, "STOPPED")
            for host in (model.host, model.adopted):
                if host is not None:
                    await host.stop_async()
            if previous != "STOPPED":
                await self.broadcast([model.entry()])

    # --- controls used by tests and the demo ----------------------------------------------------

    async def redeploy(self, model_id: str) -> None:
        """A new deployment of the model: its RUNNING is announced before the old STOPPED,
        as the real orchestrator often does."""
        model = self.models[model_id]
        async with model.redeploying:  # one redeploy of a model at a time
            await self._redeploy(model)

    async def _redeploy(self, model: _Model) -> None:
        new_host = self._new_host(model)
        try:
            await self._start_host(new_host)
        except BaseException:
            new_host.kill()
            raise
        old, old_host = model.entry("STOPPED"), model.host
        model.deployment += 1
        # The supervisor sees the swap, stops watching the old host and adopts this one.
        model.host = model.adopted = new_host
        await self.broadcast([model.entry("RUNNING")])
        await self.broadcast([old])
        if old_host is not None:
            await old_host.stop_async()

    def kill(self, model_id: str) -> None:
        """Kill a model's host process (it will be RECOVERING, then restarted).

        The model stops counting as RUNNING at once, so that `wait_running()` right after a kill
        waits for the restart instead of racing the supervisor's next look at the process."""
        model = self.models[model_id]
        if model.host is not None:
            model.host.kill()
            if model.state == "RUNNING":
                self._set_state(model, "RECOVERING")


def load_config(path: Path) -> tuple[str, list[ModelSpec], list[Path]]:
    """Read a TOML config: (crunch_id, models, python_path); paths relative to the file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from None
    base = path.resolve().parent
    models = []
    for i, raw in enumerate(data.get("models", [])):
        if "code_directory" not in raw:
            raise ValueError(f"{path}: models[{i}] needs a code_directory")
        models.append(ModelSpec(base / raw["code_directory"], str(raw.get("id", "")),
                                str(raw.get("name", "")), str(raw.get("cruncher", ""))))
    return (str(data.get("crunch_id", DEFAULT_CRUNCH_ID)), models,
            [base / p for p in data.get("python_path", [])])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="model-runner-local-orchestrator",
        description="Run model hosts for local submissions and announce them over the Model "
                    "Orchestrator's websocket protocol (ws://HOST:PORT/CRUNCH_ID). For "
                    "development, tests and demos; production runs hosts as containers.")
    parser.add_argument("code_directories", nargs="*", type=Path,
                        help="submission folders, one model each (its id: the folder's name)")
    parser.add_argument("--config", type=Path,
                        help="a TOML file listing the models (format: python -m "
                             "model_runner.local_orchestrator's module docstring)")
    parser.add_argument("--crunch-id", default=None,
                        help="the Crunch id clients connect with (default: the config's, "
                             "else %(default)s)".replace("%(default)s", DEFAULT_CRUNCH_ID))
    parser.add_argument("--host", default="127.0.0.1",
                        help="where the websocket listens (default %(default)s)")
    parser.add_argument("--port", type=int, default=9091,
                        help="the websocket's port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--python-path", type=Path, action="append", default=[],
                        help="a folder to put on the model hosts' PYTHONPATH, e.g. the "
                             "Crunch's package (repeatable)")
    parser.add_argument("--max-restarts", type=int, default=3,
                        help="restarts of a host that keeps dying before it is STOPPED "
                             "(default %(default)s)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    crunch_id, python_path = DEFAULT_CRUNCH_ID, list(options.python_path)
    specs: list[ModelSpec] = []
    try:
        if options.config is not None:
            crunch_id, specs, extra = load_config(options.config)
            python_path += extra
        specs += [ModelSpec(d) for d in options.code_directories]
    except ValueError as exc:
        parser.exit(2, f"local_orchestrator: error: {exc}\n")
    ids = [s.id for s in specs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        parser.exit(2, f"local_orchestrator: error: model ids must be unique; repeated: "
                       f"{', '.join(repeated)} (a folder named twice, or two folders with "
                       "one name: give them ids in a --config)\n")
    missing = [str(s.code_directory) for s in specs if not s.code_directory.is_dir()]
    if not specs or missing:
        parser.exit(2, "local_orchestrator: error: "
                    + (f"no such folders: {', '.join(missing)}" if missing
                       else "name submission folders or a --config") + "\n")
    crunch_id = options.crunch_id or crunch_id

    async def serve() -> None:
        orchestrator = LocalOrchestrator(crunch_id, specs, host=options.host, port=options.port,
                                         python_path=python_path,
                                         max_restarts=options.max_restarts)
        async with orchestrator:
            print(f"serving {orchestrator.url}", flush=True)
            await anyio.sleep_forever()

    try:
        run_until_signalled(serve)
    except Interrupted as exc:
        print(f"local_orchestrator: {exc}; every model host stopped", file=sys.stderr)
        sys.exit(128 + exc.signum)


if __name__ == "__main__":
    main()
