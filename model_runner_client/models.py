"""`ModelEndpoint`: who a model is and where it runs."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelEndpoint", "host_problem"]


@dataclass(frozen=True)
class ModelEndpoint:
    """A model as the orchestrator describes it (or as given to `from_addresses`).

    `model_id` is stable across resubmissions; `deployment_id` changes on every redeploy.
    `infos` holds the orchestrator's metadata (model_name, cruncher_id, cruncher_name, ...).
    """

    model_id: str
    ip: str
    port: int
    deployment_id: str = ""
    infos: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_address(cls, address: str) -> ModelEndpoint:
        """`host:port` or `[v6]:port`; the address doubles as model_id and model_name."""
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"model address {address!r} is not HOST:PORT "
                             "(e.g. 127.0.0.1:50051 or [::1]:50051)")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(model_id=address, ip=host, port=int(port), deployment_id=address,
                   infos={"model_name": address})

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    @property
    def model_name(self) -> str:
        return str(self.infos.get("model_name") or self.model_id)

    @property
    def cruncher_id(self) -> str:
        return str(self.infos.get("cruncher_id") or "")

    @property
    def cruncher_name(self) -> str:
        return str(self.infos.get("cruncher_name") or "")

    def __repr__(self) -> str:
        return (f"ModelEndpoint({self.model_id!r}, {self.address}, "
                f"deployment={self.deployment_id!r}, name={self.model_name!r})")


def host_problem(host: str) -> str | None:
    """Why `host` cannot be connected to, or None: an IP address or a DNS name (labels of 1 to
    63 letters, digits, '-' or '_'; 253 characters at most)."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        ascii_name = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        return f"host name {host[:80]!r} is not a valid DNS name ({exc})"
    labels = ascii_name.rstrip(".").split(".")
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"host name {host[:80]!r} is not a valid DNS name or IP address"
    return None


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
