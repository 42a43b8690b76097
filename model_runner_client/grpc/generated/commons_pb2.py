"""Import path of model-runner-client 0.14: the protobuf messages of proto/commons.proto."""

from model_runner.wire.pb2.commons_pb2 import *  # noqa: F403
from model_runner.wire.pb2.commons_pb2 import DESCRIPTOR  # noqa: F401
