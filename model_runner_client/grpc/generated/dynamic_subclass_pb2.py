"""Import path of model-runner-client 0.14: the messages of proto/dynamic_subclass.proto."""

from model_runner.wire.pb2.dynamic_subclass_pb2 import *  # noqa: F403
from model_runner.wire.pb2.dynamic_subclass_pb2 import DESCRIPTOR  # noqa: F401
