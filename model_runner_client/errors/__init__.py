"""Import path of model-runner-client 0.14 (see model_runner_client/_legacy.py)."""

from .._legacy import InvalidCoordinatorUsageError

__all__ = ["InvalidCoordinatorUsageError"]
