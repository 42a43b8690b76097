"""The protobuf messages under model-runner-client 0.14's import path (model_runner.wire.pb2)."""
