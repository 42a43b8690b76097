"""Import path of model-runner-client 0.14 (see model_runner_client/_legacy.py)."""

from .._legacy import DynamicSubclassModelConcurrentRunner

__all__ = ["DynamicSubclassModelConcurrentRunner"]
