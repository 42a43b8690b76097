"""A coordinator written for model-runner-client 0.14, as crunch-node-starter's predict worker
is: the old API through the orchestrator link. Runs with whichever `model_runner_client` the
venv has (the grpcio package, or ours after an upgrade in place); prints one JSON line.

    python old_api_coordinator.py ORCHESTRATOR_PORT CRUNCH_ID BASE_CLASS TICKS [CERT_DIR]

COORDINATOR_TIMEOUT sets the runner's timeout (default 10 s); the JSON line holds each tick's
statuses and its duration in seconds.
"""

import asyncio
import json
import os
import sys
import time

from model_runner_client.grpc.generated.commons_pb2 import Argument, Variant, VariantType
from model_runner_client.model_concurrent_runners.dynamic_subclass_model_concurrent_runner import (
    DynamicSubclassModelConcurrentRunner,
)
from model_runner_client.utils.datatype_transformer import encode_data


async def main(port: int, crunch_id: str, base: str, ticks: int, cert_dir: str | None) -> None:
    options = {}
    if cert_dir:
        from model_runner_client.security.credentials import SecureCredentials
        options["secure_credentials"] = SecureCredentials.from_directory(cert_dir)
    timeout = float(os.environ.get("COORDINATOR_TIMEOUT", "10"))
    runner = DynamicSubclassModelConcurrentRunner(timeout, crunch_id, "127.0.0.1", port, base,
                                                  **options)
    await asyncio.wait_for(runner.init(), 60)
    sync = asyncio.create_task(runner.sync())
    asset = Argument(position=1, data=Variant(type=VariantType.STRING,
                                              value=encode_data(VariantType.STRING, "BTC")))
    horizon = Argument(position=2, data=Variant(type=VariantType.INT,
                                                value=encode_data(VariantType.INT, 2)))
    statuses, durations = [], []
    for _ in range(ticks):
        started = time.monotonic()
        results = await runner.call("predict", ([asset, horizon], []))
        durations.append(time.monotonic() - started)
        statuses.append(sorted(r.status.value for r in results.values()))
    await runner.model_cluster.ws_client.disconnect()
    sync.cancel()
    print(json.dumps({"statuses": statuses, "durations": durations}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]),
                     sys.argv[5] if len(sys.argv) > 5 else None))
