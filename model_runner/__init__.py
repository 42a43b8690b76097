"""Model Runner: serve a submitted model over gRPC, and the wire layer both halves share.

The host's names load when first used, so `import model_runner.wire` (what the client uses)
loads no server code.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "DiscoveryError",
    "HostConfig",
    "ModelHost",
    "StatusCode",
    "VariantError",
    "decode_value",
    "decode_variant",
    "discover_class",
    "encode_value",
]

__version__ = "1.0.0"

_WHERE = {
    "DiscoveryError": ".discovery", "discover_class": ".discovery",
    "HostConfig": ".host", "ModelHost": ".host",
    "DEFAULT_MAX_MESSAGE_LENGTH": ".wire", "StatusCode": ".wire", "VariantError": ".wire",
    "decode_value": ".wire", "decode_variant": ".wire", "encode_value": ".wire",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'model_runner' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
