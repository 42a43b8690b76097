"""model-runner-client 0.14's model runners: here, the keys of call results."""

from .dynamic_subclass_model_runner import (
    ArgsAndKwargsTuple,
    ArgumentsType,
    DynamicSubclassModelRunner,
)
from .model_runner import ModelRunner

__all__ = ["ArgsAndKwargsTuple", "ArgumentsType", "DynamicSubclassModelRunner", "ModelRunner"]
