"""An example coordinator: tick and predict every interval, score in a separate worker.

The pattern coordinators need: the predict loop only calls models and hands results over; the
scoring (CPU work) runs in a worker thread fed through a memory stream, so a slow score never
delays the next tick. A redeployed model's metrics are reset through the REDEPLOYED event.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from model_runner_client import CallResults, CallStatus, EventKind, ModelEvent, ModelRunnerClient

ASSET = "BTC"
HORIZON = 5


@dataclass
class ModelStats:
    model_id: str
    model_name: str = ""
    deployment_id: str = ""
    calls: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    latency_us_total: int = 0
    last_status: str = "-"
    last_latency_us: int = 0
    last_output: str = ""
    last_detail: str = ""
    #: Mean absolute error of the first predicted price against the price that followed.
    error_sum: float = 0.0
    scored: int = 0
    left: str = ""

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_us_total / self.successes / 1000 if self.successes else 0.0

    @property
    def mean_error(self) -> float:
        return self.error_sum / self.scored if self.scored else math.nan


@dataclass
class Board:
    """What the coordinator knows: per-model stats and the price history."""

    stats: dict[str, ModelStats] = field(default_factory=dict)
    prices: list[float] = field(default_factory=list)
    ticks: int = 0
    last_tick_ms: float = 0.0

    def model(self, model_id: str) -> ModelStats:
        return self.stats.setdefault(model_id, ModelStats(model_id))


class Coordinator:
    def __init__(self, client: ModelRunnerClient, *, interval: float = 1.0,
                 on_tick: Callable[[Board], None] | None = None, seed: int = 7) -> None:
        self.client = client
        self.interval = interval
        self.board = Board()
        self.on_tick = on_tick
        self._random = random.Random(seed)
        client.add_event_callback(self._on_event)

    def _on_event(self, event: ModelEvent) -> None:
        stats = self.board.model(event.model.model_id)
        if event.kind is EventKind.REDEPLOYED:
            # A new version: its old metrics say nothing about it.
            self.board.stats[event.model.model_id] = ModelStats(event.model.model_id)
        elif event.kind is EventKind.LEFT:
            stats.left = event.reason

    def _next_price(self) -> float:
        last = self.board.prices[-1] if self.board.prices else 100_000.0
        return round(last * math.exp(self._random.gauss(0.0, 0.002)), 2)

    async def run(self, ticks: int) -> Board:
        send, receive = anyio.create_memory_object_stream[tuple[float, CallResults]](100)
        async with anyio.create_task_group() as group:
            group.start_soon(self._score_worker, receive)
            async with send:
                for _ in range(ticks):
                    started = time.monotonic()
                    price = self._next_price()
                    self.board.prices.append(price)
                    await self.client.call("tick", {ASSET: price})
                    results = await self.client.call("predict", ASSET, HORIZON, kwargs={"step": 1})
                    self._record(results)
                    self.board.ticks += 1
                    self.board.last_tick_ms = (time.monotonic() - started) * 1000
                    await send.send((price, results))
                    if self.on_tick is not None:
                        self.on_tick(self.board)
                    await anyio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        return self.board

    def _record(self, results: CallResults) -> None:
        for result in results:
            stats = self.board.model(result.model_id)
            stats.model_name = result.model_name
            stats.deployment_id = result.deployment_id
            stats.calls += 1
            stats.last_status = result.status.value
            stats.last_detail = result.detail
            stats.last_latency_us = result.latency_us
            if result.status is CallStatus.SUCCESS:
                stats.successes += 1
                stats.latency_us_total += result.latency_us
                stats.last_output = _short(result.output)
            elif result.status is CallStatus.FAILURE:
                stats.failures += 1
                stats.last_output = ""
            else:
                stats.timeouts += 1
                stats.last_output = ""

    async def _score_worker(
        self, receive: MemoryObjectReceiveStream[tuple[float, CallResults]]
    ) -> None:
        pending: list[tuple[float, CallResults]] = []
        async with receive:
            async for price, results in receive:
                pending.append((price, results))
                if len(pending) > 1:
                    _, earlier = pending.pop(0)
                    await anyio.to_thread.run_sync(self._score, earlier, price)

    def _score(self, results: CallResults, realized: float) -> None:
        # Runs in a worker thread: real scoring is CPU work that must stay off the event loop.
        for result in results:
            if result.status is CallStatus.SUCCESS and isinstance(result.output, list) \
                    and result.output and isinstance(result.output[0], (int, float)):
                stats = self.board.model(result.model_id)
                stats.error_sum += abs(float(result.output[0]) - realized)
                stats.scored += 1


def _short(value: object, width: int = 40) -> str:
    if isinstance(value, list):
        text = "[" + ", ".join(f"{v:.1f}" if isinstance(v, float) else repr(v)
                               for v in value[:3]) + (", …]" if len(value) > 3 else "]")
    else:
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
