"""Import path of model-runner-client 0.14 (see model_runner_client/_legacy.py)."""

from .._legacy import ArgsAndKwargsTuple, ArgumentsType, DynamicSubclassModelRunner

__all__ = ["ArgsAndKwargsTuple", "ArgumentsType", "DynamicSubclassModelRunner"]
