"""A local stand-in for Pyth's Hermes price API, for crunch-node's pyth feed without the network.

It answers the two requests crunch-node 0.1.101's `PythHermesClient` makes (read from
crunch_node/feeds/providers/pyth.py): `GET /v2/price_feeds` (the subjects it lists) and
`GET /v2/updates/price/latest?ids[]=...&parsed=true` (one price per asked id, published now, a
walk that moves on every answer so that candles differ).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# Pyth's BTC/USD feed id (crunch-node's default mapping for BTC).
BTC_USD = "0xe62df6c8b4a85fe1cc8b337a5f8854d9c1f5f59e4cb4ce8b063a492f6ed5b5b6"
EXPONENT = -8


@dataclass
class Hermes:
    url: str
    answered: dict[str, int] = field(default_factory=dict)  # path -> answers given
    price: int = 67_000 * 10 ** -EXPONENT
    steps: int = 0

    def next_price(self) -> int:
        # Up three steps, down two: a trend the example trackers can follow.
        self.steps += 1
        self.price += (1 if self.steps % 5 < 3 else -1) * 25 * 10 ** -EXPONENT
        return self.price


def _handler(hermes: Hermes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/v2/price_feeds":
                body: object = [{"id": BTC_USD, "attributes": {"symbol": "Crypto.BTC/USD",
                                                               "asset_type": "Crypto"}}]
            elif url.path == "/v2/updates/price/latest":
                now = int(time.time())
                body = {"binary": {"encoding": "hex", "data": []}, "parsed": [
                    {"id": feed_id,
                     "price": {"price": str(hermes.next_price()), "conf": "1000000",
                               "expo": EXPONENT, "publish_time": now},
                     "ema_price": {"price": str(hermes.price), "conf": "1000000",
                                   "expo": EXPONENT, "publish_time": now}}
                    for feed_id in parse_qs(url.query).get("ids[]", [])]}
            else:
                self.send_error(404, f"the Hermes stand-in serves no {url.path}")
                return
            hermes.answered[url.path] = hermes.answered.get(url.path, 0) + 1
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per poll would drown the test's output

    return Handler


@contextmanager
def hermes_stand_in() -> Iterator[Hermes]:
    """The stand-in on 127.0.0.1 and a free port, until the block ends."""
    hermes = Hermes(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hermes))
    hermes.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="hermes", daemon=True)
    thread.start()
    try:
        yield hermes
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
