"""ccr-registry: the session registry and token store of the CCR daemon.

Open a store with :func:`open_store`; it returns a :class:`Store` whose ``sessions``, ``tokens``
and ``inbox`` follow the :class:`SessionRegistry`, :class:`TokenStore` and :class:`CommandInbox`
protocols on every backend.

The names below are imported on first use (PEP 562), so that a short-lived hook process that
needs one backend does not pay for importing the others.
"""

from __future__ import annotations

import importlib

from registry.errors import (
    ChatMismatch,
    CommandNotFound,
    ConfigError,
    LeaseLost,
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
    from registry.models import Command, Session, Token, Transport
    from registry.protocols import CommandInbox, SessionRegistry, Store, TokenStore

_LAZY = {
    "StoreConfig": "registry.config",
    "open_store": "registry.factory",
    "Command": "registry.models",
    "CommandInbox": "registry.protocols",
    "Session": "registry.models",
    "Token": "registry.models",
    "Transport": "registry.models",
    "SessionRegistry": "registry.protocols",
    "Store": "registry.protocols",
    "TokenStore": "registry.protocols",
}

__all__ = [
    "ChatMismatch",
    "Command",
    "CommandInbox",
    "CommandNotFound",
    "ConfigError",
    "LeaseLost",
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
