"""A scripted orchestrator peer for the tests of the orchestrator link."""

from __future__ import annotations

import json
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection

from model_runner_client import ModelEvent, ModelRunnerClient
from tests.clients import orchestrator_client
from tests.hosts import HostProcess, until


def entry(model_id: str, host: HostProcess | int | str, deployment: str = "d1",
          state: str = "RUNNING", ip: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    port = host.port if isinstance(host, HostProcess) else host
    return {"model_id": model_id, "deployment_id": deployment, "state": state, "ip": ip,
            "port": port, "infos": {"model_name": f"{model_id}-name", "cruncher_id": "c1",
                                    "cruncher_name": "alice", "cruncher_wallet_pubkey": "w",
                                    "cruncher_hotkey": None}, **extra}


class Peer:
    """A scripted orchestrator: sends `init` on each connection, records what clients send."""

    def __init__(self) -> None:
        self.init: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.connections: list[ServerConnection] = []
        self.server: Any = None
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        await ws.send(json.dumps({"event": "init", "data": self.init}))
        try:
            async for frame in ws:
                self.received.append(json.loads(frame))
        except websockets.ConnectionClosed:
            pass

    async def send(self, event: str, data: Any) -> None:
        await self.connections[-1].send(json.dumps({"event": event, "data": data}))

    async def send_raw(self, text: str) -> None:
        await self.connections[-1].send(text)

    async def drop(self) -> None:
        await self.connections[-1].close()

    @property
    def all_reports(self) -> list[tuple[str, str]]:
        return [(item["model_id"], item["failure_code"]) for message in self.received
                if message["event"] == "report_failure" for item in message["data"]]

    @property
    def reports(self) -> list[tuple[str, str]]:
        """The reports received, less the markers of `settle`."""
        return [r for r in self.all_reports if not r[0].startswith(MARKER)]


def client_for(peer: Peer, events: list[ModelEvent] | None = None,
               **options: Any) -> ModelRunnerClient:
    return orchestrator_client(peer.port, on_event=events.append if events is not None else None,
                               **options)


def ids(client: ModelRunnerClient) -> set[str]:
    return {m.model_id for m in client.models}


MARKER = "marker"


async def settle(peer: Peer) -> None:
    """Wait until the client has applied every frame sent so far and delivered every report it
    made: an entry at an impossible address is reported at once when its frame is applied, and
    frames are applied, and reports sent, in order. (`peer.reports` leaves markers out.)"""
    settle.count += 1  # type: ignore[attr-defined]
    marker = f"{MARKER}-{settle.count}"  # type: ignore[attr-defined]
    await peer.send("update", [entry(marker, 1, ip="-")])
    await until(lambda: (marker, "CONNECTION_FAILED") in peer.all_reports, timeout=20)


settle.count = 0  # type: ignore[attr-defined]
