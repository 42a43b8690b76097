"""A coordinator typed end to end: mypy (strict) checks the client's keywords and that
`returns=list[float]` makes every `output` a `list[float]` (tests/test_typing.py).

    python examples/typed_coordinator.py HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import asyncio
import sys

from model_runner_client import CallResults, CallStatus, ModelRunnerClient


async def tick(addresses: list[str]) -> dict[str, float]:
    client = ModelRunnerClient.from_addresses(
        addresses, base_classname="starter_challenge.tracker.TrackerBase", timeout=2.0,
        max_consecutive_failures=5)
    async with client:
        await client.wait_for_models(timeout=30)
        results: CallResults[list[float]] = await client.call("predict", "BTC", 3,
                                                              returns=list[float])
        # `output` is a list[float] here: no cast, no Any.
        return {r.model_id: sum(r.output) for r in results if r.status is CallStatus.SUCCESS}


if __name__ == "__main__":
    print(asyncio.run(tick(sys.argv[1:])))
