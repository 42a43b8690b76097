"""Helpers of model-runner-client 0.14 that coordinators import."""
