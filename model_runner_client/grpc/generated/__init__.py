"""The protobuf messages coordinators written for model-runner-client 0.14 import."""
