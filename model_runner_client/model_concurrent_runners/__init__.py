"""model-runner-client 0.14's concurrent runners (a thin layer over ModelRunnerClient)."""

from .dynamic_subclass_model_concurrent_runner import DynamicSubclassModelConcurrentRunner
from .model_concurrent_runner import ModelConcurrentRunner, ModelPredictResult

__all__ = ["DynamicSubclassModelConcurrentRunner", "ModelConcurrentRunner", "ModelPredictResult"]
