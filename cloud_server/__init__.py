"""The gRPC strategy service: micro-batched hypernetwork strategies, health, metrics, auth."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud_server.config import ServerConfig
    from cloud_server.embedded import EmbeddedServer
    from cloud_server.engine import EchoEngine, Engine, StrategyEngine
    from cloud_server.errors import ServiceError
    from cloud_server.server import create_server, serve, serve_async, stop_server
    from cloud_server.service import StrategyService

# Public name -> defining module; imported on first use so `chord serve --help` stays fast.
_EXPORTS = {
    "EchoEngine": "cloud_server.engine",
    "EmbeddedServer": "cloud_server.embedded",
    "Engine": "cloud_server.engine",
    "ServerConfig": "cloud_server.config",
    "ServiceError": "cloud_server.errors",
    "StrategyEngine": "cloud_server.engine",
    "StrategyService": "cloud_server.service",
    "create_server": "cloud_server.server",
    "serve": "cloud_server.server",
    "serve_async": "cloud_server.server",
    "stop_server": "cloud_server.server",
}

__all__ = [
    "EchoEngine",
    "EmbeddedServer",
    "Engine",
    "ServerConfig",
    "ServiceError",
    "StrategyEngine",
    "StrategyService",
    "create_server",
    "serve",
    "serve_async",
    "stop_server",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cloud_server' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
