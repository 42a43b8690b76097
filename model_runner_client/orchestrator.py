"""`OrchestratorLink`: the live model list from the Model Orchestrator's websocket.

Protocol (as the Model Orchestrator speaks it): `ws://host:port/<crunch_id>`, JSON text frames
`{"event", "data": [...]}`.
`init` (once per connection) is the complete list of RUNNING models; `update` messages follow.
Messages repeat and arrive out of order, so every entry is checked against what is held:

- RUNNING with a new address or deployment replaces the model; RUNNING of a deployment that was
  already replaced or STOPPED is stale and ignored.
- STOPPED / RECOVERING remove the model only if it concerns the deployment held.
- a model missing from a fresh `init` is gone.

The link reconnects forever with capped exponential backoff and jitter; meanwhile the client
keeps calling the models it holds. Failure reports wait in a queue that one task per connection
drains, in order, once per (model_id, deployment_id). No frame can stop the link: whatever
handling one raises (RecursionError from 100,000 nested brackets included) is logged and the
frame skipped; large frames are applied in slices that let ticks run in between.
"""

from __future__ import annotations

import json
import logging
import random
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import websockets
from websockets.asyncio.client import ClientConnection

from model_runner.wire.errors import describe

from .events import FailureReport
from .models import ModelEndpoint
from .sources import ModelRegistry

__all__ = ["Entry", "OrchestratorLink", "parse_entry"]

logger = logging.getLogger(__name__)

_STATES = {"RUNNING", "STOPPED", "RECOVERING"}
#: Retired deployments remembered per link (bounded: a long competition sees many redeploys).
_RETIRED_KEPT = 50_000
#: Entries applied between two yields to the event loop (10,000 at once held it for seconds).
SLICE = 200
#: Largest frame accepted: an `init` of thousands of models is several MB.
MAX_FRAME = 64 * 2**20


@dataclass(frozen=True)
class Entry:
    model_id: str
    deployment_id: str
    state: str
    ip: str
    port: int
    infos: dict[str, Any]

    def endpoint(self) -> ModelEndpoint:
        return ModelEndpoint(self.model_id, self.ip, self.port, self.deployment_id, self.infos)


def parse_entry(raw: Any) -> Entry:
    """Validate one entry of `init` / `update`; raises ValueError saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"an entry must be an object, got {type(raw).__name__}")
    missing = [k for k in ("model_id", "deployment_id", "state") if raw.get(k) in (None, "")]
    if missing:
        raise ValueError(f"entry lacks {', '.join(missing)}")
    state = str(raw["state"]).upper()
    if state not in _STATES:
        raise ValueError(f"unknown state {raw['state']!r}")
    ip, port = raw.get("ip"), raw.get("port")
    if state == "RUNNING":
        if not ip or not isinstance(ip, str):
            raise ValueError("a RUNNING entry needs an ip (address or hostname)")
        if isinstance(port, str) and port.strip().isdigit():
            port = int(port.strip())
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"a RUNNING entry needs a port from 1 to 65535, got {port!r}")
    infos = raw.get("infos") or {}
    if not isinstance(infos, dict):
        raise ValueError("infos must be an object")
    return Entry(str(raw["model_id"]), str(raw["deployment_id"]), state, str(ip or ""),
                 int(port or 0), infos)


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before reconnect attempt `attempt` (0 first): doubling from `initial`, capped at
    `maximum`, with jitter (half to all of it) so that many clients do not reconnect at once."""
    return float(min(maximum, initial * 2 ** attempt) * random.uniform(0.5, 1.0))


class OrchestratorLink:
    """A `ModelSource`: feeds the client from the orchestrator and carries failure reports."""

    def __init__(
        self,
        crunch_id: str,
        host: str = "localhost",
        port: int = 9091,
        *,
        report_failure: bool = True,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        open_timeout: float = 10.0,
    ) -> None:
        if not crunch_id:
            raise ValueError("crunch_id must name the Crunch, e.g. 'bird-game'")
        self.url = f"ws://{host}:{port}/{crunch_id}"
        self.report_failure = report_failure
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self.connections = 0
        #: Why the link is down, or None while it is up (shown by wait_for_models' error).
        self.problem: str | None = None
        self._outbox: deque[dict[str, Any]] = deque()
        self._outbox_changed: anyio.Event | None = None
        self._reported: set[tuple[str, str]] = set()
        self._retired: OrderedDict[tuple[str, str], None] = OrderedDict()

    # --- reports ---------------------------------------------------------------------------

    async def report(self, report: FailureReport) -> None:
        """Queue a failure report (the client's on_failure); sent at once if connected."""
        model = report.model
        key = (model.model_id, model.deployment_id)
        if key in self._reported:
            return
        self._reported.add(key)
        if not self.report_failure:
            logger.warning("report_failure=False: not reporting %s as %s (%s)", model,
                           report.code, report.reason)
            return
        self._outbox.append({"model_id": model.model_id, "failure_code": report.code,
                             "failure_reason": report.reason, "ip": model.ip})
        if self._outbox_changed is not None:
            self._outbox_changed.set()

    async def _send_reports(self, ws: ClientConnection) -> None:
        """The one sender of reports on a connection: a report leaves the queue only once sent
        (then it is not sent again); if the connection drops first, the next one sends it."""
        while True:
            self._outbox_changed = anyio.Event()
            while self._outbox:
                item = self._outbox[0]
                await ws.send(json.dumps({"event": "report_failure", "data": [item]}))
                self._outbox.popleft()
                logger.info("reported %s as %s", item["model_id"], item["failure_code"])
            await self._outbox_changed.wait()

    # --- the link --------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"OrchestratorLink({self.url!r})"

    async def run(self, registry: ModelRegistry) -> None:
        attempt = 0
        while True:
            frames = 0
            try:
                async with websockets.connect(self.url, open_timeout=self.open_timeout,
                                              max_size=MAX_FRAME, proxy=None) as ws:
                    logger.info("connected to the orchestrator at %s", self.url)
                    self.connections += 1
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._send_reports, ws)
                        async for frame in ws:
                            if not frames:
                                attempt = 0  # the orchestrator took us: back off from scratch
                                self._set_problem(None)
                            frames += 1
                            await self.handle(frame, registry)
                        group.cancel_scope.cancel()
                self._set_problem(self._closed_by_orchestrator(ws.close_code, ws.close_reason))
            # except*: the reader and the report sender share a task group, which raises
            # its tasks' errors as a group.
            except* websockets.ConnectionClosed as group:
                closed = group.exceptions[0]
                assert isinstance(closed, websockets.ConnectionClosed)
                rcvd = closed.rcvd
                self._set_problem(self._closed_by_orchestrator(
                    rcvd.code if rcvd else None, rcvd.reason if rcvd else ""))
            except* (OSError, TimeoutError, websockets.WebSocketException) as group:
                exc = group.exceptions[0]
                self._set_problem(f"cannot reach the orchestrator at {self.url} "
                                  f"({describe(exc)})")
            finally:
                self._outbox_changed = None
            # A link refused before any frame backs off like any failure (it once retried every
            # 0.4 s forever after a wrong crunch id).
            delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max)
            attempt = min(attempt + 1, 30)
            await anyio.sleep(delay)

    def _closed_by_orchestrator(self, code: int | None, reason: str | None) -> str:
        if reason:  # the orchestrator said why (e.g. an unknown crunch)
            return f"the orchestrator at {self.url} closed the link: {reason} (code {code})"
        return f"the orchestrator at {self.url} closed the link (code {code})"

    def _set_problem(self, problem: str | None) -> None:
        """Log a new reason once, at WARNING; the same reason again only at DEBUG."""
        if problem is not None:
            level = logging.DEBUG if problem == self.problem else logging.WARNING
            logger.log(level, "%s; reconnecting with backoff", problem)
        self.problem = problem

    async def handle(self, frame: str | bytes, registry: ModelRegistry) -> None:
        """Apply one frame; anything malformed is logged and skipped, and nothing raised while
        handling it stops the link."""
        try:
            await self._handle(frame, registry)
        except Exception as exc:  # RecursionError, MemoryError on absurd frames, our bugs
            logger.error("skipping a frame that could not be handled (%s: %s): %.200r",
                         type(exc).__name__, exc, frame)

    async def _handle(self, frame: str | bytes, registry: ModelRegistry) -> None:
        try:
            message = json.loads(frame)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            logger.warning("skipping a frame that is not JSON (%s): %.200r", exc, frame)
            return
        if not isinstance(message, dict) or not isinstance(message.get("data"), list):
            logger.warning("skipping a frame without an event and a data list: %.200r", frame)
            return
        event = message.get("event")
        if event not in ("init", "update"):
            logger.warning("skipping unknown event %r", event)
            return
        entries: list[Entry] = []
        for index, raw in enumerate(message["data"]):
            try:
                entries.append(parse_entry(raw))
            except ValueError as exc:
                logger.warning("skipping an entry of %r: %s: %.200r", event, exc, raw)
            if index % SLICE == SLICE - 1:
                await anyio.lowlevel.checkpoint()
        if event == "init":
            running = {e.model_id for e in entries if e.state == "RUNNING"}
            for model_id in registry.model_ids() - running:
                registry.remove(model_id, "not in the orchestrator's list after reconnecting")
        for index, entry in enumerate(entries):
            self._apply(entry, registry)
            if index % SLICE == SLICE - 1:
                await anyio.lowlevel.checkpoint()  # ticks and health probes run between slices
        if event == "init":
            registry.listed()

    def _apply(self, entry: Entry, registry: ModelRegistry) -> None:
        key = (entry.model_id, entry.deployment_id)
        if entry.state == "RUNNING":
            if key in self._retired:
                logger.info("ignoring RUNNING of %s deployment %s: already replaced or stopped",
                            entry.model_id, entry.deployment_id)
                return
            held = registry.deployment_of(entry.model_id)
            if held is not None and held != entry.deployment_id:
                self._retire((entry.model_id, held))  # replaced by a newer deployment
            registry.upsert(entry.endpoint())
        else:
            if entry.state == "STOPPED":
                self._retire(key)  # final for this deployment; RECOVERING may come back
            registry.remove(entry.model_id, f"{entry.state.lower()} by the orchestrator",
                            deployment_id=entry.deployment_id)

    def _retire(self, key: tuple[str, str]) -> None:
        self._retired[key] = None
        self._retired.move_to_end(key)
        while len(self._retired) > _RETIRED_KEPT:
            self._retired.popitem(last=False)
