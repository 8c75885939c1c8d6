"""ccr-registry: the session registry and token store of the CCR daemon.

Open a store with :func:`open_store`; it returns a :class:`Store` whose ``sessions`` and
``tokens`` follow the :class:`SessionRegistry` and :class:`TokenStore` protocols on every backend.
"""

from registry.config import StoreConfig
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
from registry.factory import open_store
from registry.models import Session, Token, Transport
from registry.protocols import SessionRegistry, Store, TokenStore

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
