"""ccr-registry: the session registry and token store of the CCR daemon.

Open a store with :func:`open_store`; it returns a :class:`Store` whose ``sessions`` and
``tokens`` follow the :class:`SessionRegistry` and :class:`TokenStore` protocols on every backend.

The names below are imported on first use (PEP 562), so that a short-lived hook process that
needs one backend does not pay for importing the others.
"""

from __future__ import annotations

import importlib

from registry.errors import (
    ChatMismatch,
    ConfigError,
    MigrationError,
    RegistryError,
    SessionNotFound,
    StoreBusy,
    StoreCorrupted,
    TokenExpired,
    TokenInvalid,
    TokenNotFound,
    ValidationError,
)

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from registry.config import StoreConfig
    from registry.factory import open_store
    from registry.models import Session, Token, Transport
    from registry.protocols import SessionRegistry, Store, TokenStore

_LAZY = {
    "StoreConfig": "registry.config",
    "open_store": "registry.factory",
    "Session": "registry.models",
    "Token": "registry.models",
    "Transport": "registry.models",
    "SessionRegistry": "registry.protocols",
    "Store": "registry.protocols",
    "TokenStore": "registry.protocols",
}

__all__ = [
    "ChatMismatch",
    "ConfigError",
    "MigrationError",
    "RegistryError",
    "Session",
    "SessionNotFound",
    "SessionRegistry",
    "Store",
    "StoreBusy",
    "StoreConfig",
    "StoreCorrupted",
    "Token",
    "TokenExpired",
    "TokenInvalid",
    "TokenNotFound",
    "TokenStore",
    "Transport",
    "ValidationError",
    "open_store",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
