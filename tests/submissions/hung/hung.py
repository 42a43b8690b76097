"""A model whose `predict` never returns, in the way HUNG_MODE names: `sleep` (a `def` that
sleeps), `spin` (a `def` that computes), `await` (an `async def` that awaits forever), or
`async_spin` (an `async def` that computes and never awaits)."""

import asyncio
import os
import time

from starter_challenge.tracker import TrackerBase

MODE = os.environ.get("HUNG_MODE", "sleep")


def spin_forever():
    while True:
        time.monotonic()


if MODE in ("sleep", "spin"):
    class Hung(TrackerBase):
        def tick(self, data):
            return None

        def predict(self, asset, horizon, step=1):
            if MODE == "sleep":
                time.sleep(3600)
            spin_forever()

else:
    class Hung(TrackerBase):
        def tick(self, data):
            return None

        async def predict(self, asset, horizon, step=1):
            if MODE == "await":
                await asyncio.Event().wait()
            spin_forever()
