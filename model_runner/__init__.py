"""Model Runner: serve a submitted model over gRPC, and the wire layer both halves share."""

from .discovery import DiscoveryError, discover_class
from .host import DEFAULT_MAX_MESSAGE_LENGTH, HostConfig, ModelHost
from .wire import StatusCode, VariantError, decode_value, decode_variant, encode_value

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

__version__ = "0.1.0"
