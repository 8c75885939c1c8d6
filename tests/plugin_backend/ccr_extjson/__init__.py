"""The ``extjson`` backend: the json backend's files and semantics in a class of this
distribution, opened through the entry point ``ccr_registry.backends``."""

from __future__ import annotations

from registry.backends._base import Clock
from registry.backends.json_file import JsonStore
from registry.config import StoreConfig

__all__ = ["ExtJsonStore", "open_backend"]


class ExtJsonStore(JsonStore):
    """A json store that reports itself as ``extjson``."""

    backend = "extjson"


def open_backend(config: StoreConfig, clock: Clock) -> ExtJsonStore:
    """The entry point: a store from the [store] table (data_dir and the shared settings)."""
    return ExtJsonStore(
        config.data_dir,
        clock=clock,
        session_ttl=config.session_ttl,
        token_ttl=config.token_ttl,
        inbox=config.inbox_settings,
        host_id=config.host_id,
        lock_timeout_s=config.lock_timeout_s,
    )
