"""`OrchestratorLink`: the live model list from the Model Orchestrator's websocket.

Protocol (SPEC.md): `ws://host:port/<crunch_id>`, JSON text frames `{"event", "data": [...]}`.
`init` (once per connection) is the complete list of RUNNING models; `update` messages follow.
Messages repeat and arrive out of order, so every entry is checked against what is held:

- RUNNING with a new address or deployment replaces the model; RUNNING of a deployment that was
  already replaced or STOPPED is stale and ignored.
- STOPPED / RECOVERING remove the model only if it concerns the deployment held.
- a model missing from a fresh `init` is gone.

The link reconnects forever with capped exponential backoff and jitter; meanwhile the client
keeps calling the models it holds. Failure reports wait in a queue for the next connection and
are sent once per (model_id, deployment_id).
"""

from __future__ import annotations

import json
import logging
import random
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import anyio
import websockets
from websockets.asyncio.client import ClientConnection

from .events import FailureReport
from .models import ModelEndpoint
from .sources import ModelRegistry

__all__ = ["Entry", "OrchestratorLink", "parse_entry"]

logger = logging.getLogger(__name__)

_STATES = {"RUNNING", "STOPPED", "RECOVERING"}
#: Retired deployments remembered per link (bounded: a long competition sees many redeploys).
_RETIRED_KEPT = 50_000


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
        self._ws: ClientConnection | None = None
        self._outbox: deque[dict[str, Any]] = deque()
        self._reported: set[tuple[str, str]] = set()
        self._retired: OrderedDict[tuple[str, str], None] = OrderedDict()

    # --- reports ---------------------------------------------------------------------------

    async def report(self, report: FailureReport) -> None:
        """Queue a failure report (the client's on_failure); sent now if connected."""
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
        await self._flush()

    async def _flush(self) -> None:
        ws = self._ws
        while ws is not None and self._outbox:
            item = self._outbox[0]
            try:
                await ws.send(json.dumps({"event": "report_failure", "data": [item]}))
            except websockets.ConnectionClosed:
                return  # stays queued for the next connection
            self._outbox.popleft()
            logger.info("reported %s as %s", item["model_id"], item["failure_code"])

    # --- the link --------------------------------------------------------------------------

    async def run(self, registry: ModelRegistry) -> None:
        attempt = 0
        while True:
            try:
                async with websockets.connect(self.url, open_timeout=self.open_timeout,
                                              max_size=64 * 2**20, proxy=None) as ws:
                    logger.info("connected to the orchestrator at %s", self.url)
                    attempt = 0
                    self.connections += 1
                    self._ws = ws
                    await self._flush()
                    async for frame in ws:
                        self.handle(frame, registry)
                logger.warning("the orchestrator closed the link; reconnecting")
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                logger.warning("orchestrator link to %s down (%s: %s); reconnecting", self.url,
                               type(exc).__name__, exc)
            finally:
                self._ws = None
            delay = min(self.backoff_max, self.backoff_initial * 2 ** attempt)
            attempt = min(attempt + 1, 30)
            await anyio.sleep(delay * random.uniform(0.5, 1.0))

    def handle(self, frame: str | bytes, registry: ModelRegistry) -> None:
        """Apply one frame; anything malformed is logged and skipped."""
        try:
            message = json.loads(frame)
        except (ValueError, UnicodeDecodeError) as exc:
            logger.warning("skipping a frame that is not JSON (%s): %.200r", exc, frame)
            return
        if not isinstance(message, dict) or not isinstance(message.get("data"), list):
            logger.warning("skipping a frame without an event and a data list: %.200r", frame)
            return
        event = message.get("event")
        entries: list[Entry] = []
        for raw in message["data"]:
            try:
                entries.append(parse_entry(raw))
            except ValueError as exc:
                logger.warning("skipping an entry of %r: %s: %.200r", event, exc, raw)
        if event == "init":
            self._apply_init(entries, registry)
        elif event == "update":
            for entry in entries:
                self._apply(entry, registry)
        else:
            logger.warning("skipping unknown event %r", event)

    def _apply_init(self, entries: list[Entry], registry: ModelRegistry) -> None:
        running = {e.model_id for e in entries if e.state == "RUNNING"}
        for model_id in registry.model_ids() - running:
            registry.remove(model_id, "not in the orchestrator's list after reconnecting")
        for entry in entries:
            self._apply(entry, registry)
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
