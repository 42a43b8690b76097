"""The deployed system's security modes, for coordinators (import paths of model-runner-client)."""

from .credentials import SecureCredentials
from .gateway_credentials import GatewayCredentials

__all__ = ["GatewayCredentials", "SecureCredentials"]
