"""What the exported suites need to know of a backend: :class:`Backend`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from registry import Store, open_store

__all__ = ["Backend", "OpenStore"]

OpenStore = Callable[..., Store]


@dataclass(frozen=True)
class Backend:
    """One store configuration the suites run against.

    ``config`` is the ``[store]`` table that opens it, without ``data_dir`` (each test adds its
    own). ``keeps_files``: the store keeps all its data in files under ``data_dir``, so the
    tests of file modes and damaged files apply. ``unavailable``: why it cannot run here, or
    None; its tests are then skipped with that reason (see :meth:`check`).
    Subclass to give each location more (a schema of its own) or to clean up after a test.
    """

    config: Mapping[str, Any]
    keeps_files: bool = False
    unavailable: str | None = field(default=None)

    def store_config(self, data_dir: Path) -> dict[str, Any]:
        """The [store] table of a store keeping its data at ``data_dir``; two locations never
        share data."""
        return {**self.config, "data_dir": str(data_dir)}

    def check(self) -> None:
        """Called before each test on this backend: skip (or fail) when it cannot run."""
        if self.unavailable is not None:
            pytest.skip(f"backend cannot run: {self.unavailable}")

    def open(self, store_config: Mapping[str, Any], clock: Callable[[], Any]) -> Store:
        """Open a store from the table :meth:`store_config` gave (with a test's overrides):
        :func:`registry.open_store`. Override it to run the suites on a store the factory does
        not build by configuration (the postgres hook's one-connection store)."""
        return open_store(store_config, clock=clock)

    def cleanup(self, store_config: Mapping[str, Any]) -> None:
        """Called after each test with the table :meth:`store_config` gave: drop what the store
        keeps outside ``data_dir``."""
