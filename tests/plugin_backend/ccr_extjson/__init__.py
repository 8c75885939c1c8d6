"""The ``extjson`` backend: the json backend's files and semantics in a class of this
distribution, opened through the entry point ``ccr_registry.backends``.

Its own settings live in ``[store.extjson]`` (SPEC 5), which it reads and checks itself:

```toml
[store.extjson]
subdir = "sessions"   # the store's files go in data_dir/sessions (default: data_dir itself)
```
"""

from __future__ import annotations

from registry.backends._base import Clock
from registry.backends.json_file import JsonStore
from registry.config import StoreConfig

__all__ = ["NAME", "ExtJsonStore", "open_backend"]

NAME = "extjson"
KEYS = ("subdir",)


class ExtJsonStore(JsonStore):
    """A json store that reports itself as ``extjson``."""

    backend = NAME


def _subdir(config: StoreConfig) -> str | None:
    # config.error(key, ...) is a ConfigError that names the file when the file set the key.
    settings = config.backend_settings(NAME)
    unknown = sorted(str(key) for key in settings if key not in KEYS)
    if unknown:
        raise config.error(
            f"{NAME}.{unknown[0]}",
            f"unknown key {unknown[0]!r} in [store.{NAME}]; valid keys: {', '.join(KEYS)}",
        )
    value = settings.get("subdir")
    if value is None:
        return None
    # One name under data_dir: a path that could leave it is refused.
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\x00" in value:
        raise config.error(
            f"{NAME}.subdir",
            f"store.{NAME}.subdir = {value!r} is not valid: one directory name under data_dir",
        )
    return value


def open_backend(config: StoreConfig, clock: Clock) -> ExtJsonStore:
    """The entry point: a store from the [store] table (data_dir and the shared settings) and
    [store.extjson] (subdir)."""
    subdir = _subdir(config)
    return ExtJsonStore(
        config.data_dir if subdir is None else config.data_dir / subdir,
        clock=clock,
        session_ttl=config.session_ttl,
        token_ttl=config.token_ttl,
        inbox=config.inbox_settings,
        host_id=config.host_id,
        lock_timeout_s=config.lock_timeout_s,
    )
