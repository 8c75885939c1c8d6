"""The one error hierarchy of ccr-registry.

Every error a caller can see is a :class:`RegistryError`; most also subclass the builtin that
fits, so ``except LookupError`` or ``except ValueError`` keeps working. Backends translate driver
errors (``sqlite3.*``, ``filelock.Timeout``, ``json.JSONDecodeError``, ``OSError`` of the data
files) into these with ``raise ... from``, so the original stays visible as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "ChatMismatch",
    "CommandNotFound",
    "ConfigError",
    "LeaseLost",
    "MigrationError",
    "RegistryError",
    "SessionNotFound",
    "StoreBusy",
    "StoreCorrupted",
    "TokenExpired",
    "TokenInvalid",
    "TokenNotFound",
    "ValidationError",
]


class RegistryError(Exception):
    """Base of every error raised by ccr-registry."""


class ValidationError(RegistryError, ValueError):
    """An argument or record breaks the data model; nothing was written."""


class SessionNotFound(RegistryError, LookupError):
    """No session with that id exists."""


class TokenInvalid(RegistryError):
    """A token cannot be used: see the subclasses for why."""


class TokenNotFound(TokenInvalid, LookupError):
    """No token with that value exists."""


class TokenExpired(TokenInvalid):
    """The token exists but its ``expires_at`` is not in the future."""


class ChatMismatch(TokenInvalid):
    """The token is live but was issued to another chat."""


class CommandNotFound(RegistryError, LookupError):
    """No command with that id exists in the inbox."""


class LeaseLost(RegistryError):
    """The command is not leased by the caller (it was never, or someone else claimed it since)."""


class StoreBusy(RegistryError, TimeoutError):
    """A lock or busy timeout ran out before the store could be used."""


class StoreCorrupted(RegistryError):
    """A data file or database cannot be read as what it should be; it was left untouched."""


class ConfigError(RegistryError, ValueError):
    """The configuration names an unknown backend or key, or holds a bad value."""


class MigrationError(RegistryError):
    """An import or export could not run (for example an unreadable legacy file)."""
