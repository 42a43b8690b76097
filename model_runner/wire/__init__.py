"""The wire layer both halves share: generated messages, status codes, and the Variant codec."""

from .codes import StatusCode
from .generated.commons import Argument, KwArgument, Status, Variant, VariantType
from .generated.dynamic_subclass import (
    CallRequest,
    CallResponse,
    DynamicSubclassServiceStub,
    RestResponse,
    SetupRequest,
    SetupResponse,
)
from .generated.google.protobuf import Empty
from .variant import (
    MissingExtra,
    VariantError,
    decode_value,
    decode_variant,
    encode_as,
    encode_value,
    encode_variant_value,
)

__all__ = [
    "Argument",
    "CallRequest",
    "CallResponse",
    "DynamicSubclassServiceStub",
    "Empty",
    "KwArgument",
    "MissingExtra",
    "RestResponse",
    "SetupRequest",
    "SetupResponse",
    "Status",
    "StatusCode",
    "Variant",
    "VariantError",
    "VariantType",
    "decode_value",
    "decode_variant",
    "encode_as",
    "encode_value",
    "encode_variant_value",
]

#: The largest message existing model hosts accept and send by default: 64 MiB, as
#: crunch-model-runner's --max-*-message-length (gRPC's own default, 4 MiB, is grpcio clients').
DEFAULT_MAX_MESSAGE_LENGTH = 64 * 1024 * 1024

#: gRPC paths of the DynamicSubclassService (part of the wire contract).
SETUP_PATH = "/dynamic_subclass.DynamicSubclassService/Setup"
CALL_PATH = "/dynamic_subclass.DynamicSubclassService/Call"
REST_PATH = "/dynamic_subclass.DynamicSubclassService/Rest"
SERVICE_NAME = "dynamic_subclass.DynamicSubclassService"
