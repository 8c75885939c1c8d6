"""A pytest plug-in that opens every postgres store on one plain connection (the hook's store).

Not collected (no ``test_`` prefix), not loaded by default: it runs the contract suite against
the store :func:`registry.backends.postgres._open_hook_store` builds, on demand::

    python -m pytest tests/contract -k "postgres and not dual" -p tests.postgres.single_connection

It replaces the backend's entry point function before any store is opened, so every store the
suite opens through ``open_store`` has ``single_connection=True``; each one checks at close that
it never built a pool.
"""

from __future__ import annotations

from typing import Any

import registry.backends.postgres as pg

_open_backend = pg.open_backend
_close = pg.PostgresStore._close


def _single(config: Any, clock: Any, *, single_connection: bool = True) -> pg.PostgresStore:
    return _open_backend(config, clock, single_connection=True)


def _checked_close(self: pg.PostgresStore) -> None:
    if not self._single or self._pool is not None:
        raise AssertionError(f"{self!r} is not a one-connection store")
    _close(self)


pg.open_backend = _single  # type: ignore[assignment]
pg.PostgresStore._close = _checked_close  # type: ignore[method-assign]
