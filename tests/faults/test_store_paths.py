"""Where the store's files are: a symlinked database is refused, a relative data directory is
fixed at open (a later ``os.chdir`` does not move the store under a thread's feet).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from registry import RegistryError, Session, open_store
from tests.conftest import BACKENDS, FakeClock


@pytest.mark.parametrize("name", ["ccr.db", "ccr.db-wal", "ccr.db-shm"])
@pytest.mark.parametrize("target_exists", [False, True], ids=["dangling", "existing"])
def test_a_symlinked_database_file_is_refused(
    tmp_path: Path, clock: FakeClock, name: str, target_exists: bool
) -> None:
    data = tmp_path / "data"
    if name != "ccr.db":  # -wal and -shm beside an existing database
        with open_store({"backend": "sqlite", "data_dir": str(data)}, clock=clock) as store:
            store.sessions.register("s1")
    data.mkdir(exist_ok=True)
    target = tmp_path / "elsewhere" / "target"
    target.parent.mkdir()
    if target_exists:
        target.write_bytes(b"")
    os.symlink(target, data / name)
    before = sorted(p.name for p in target.parent.iterdir())
    with pytest.raises(RegistryError, match="symbolic link"):
        store = open_store({"backend": "sqlite", "data_dir": str(data)}, clock=clock)
        store.close()
    # Nothing was created or written at the link's target (and no -wal or -shm beside it).
    assert sorted(p.name for p in target.parent.iterdir()) == before
    if target_exists:
        assert target.read_bytes() == b""


@pytest.mark.parametrize("backend_name", sorted(BACKENDS))
def test_a_relative_data_dir_is_fixed_at_open(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, backend_name: str
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    monkeypatch.setenv("CCR_DATA_DIR", "relative-data")
    monkeypatch.delenv("CCR_REGISTRY_CONFIG", raising=False)
    config: dict[str, Any] = dict(BACKENDS[backend_name]["config"])  # no data_dir: the env's
    with open_store(config, clock=clock) as store:
        store.sessions.register("s1")
        monkeypatch.chdir(second)
        found: list[Session | None] = []
        # A new thread opens its own connection (sqlite) after the chdir.
        thread = threading.Thread(target=lambda: found.append(store.sessions.get("s1")))
        thread.start()
        thread.join()
        store.sessions.register("s2")
        assert found != [None] and len(found) == 1
    assert not (second / "relative-data").exists()
    with open_store({**config, "data_dir": str(first / "relative-data")}, clock=clock) as again:
        assert {s.session_id for s in again.sessions.list_sessions()} == {"s1", "s2"}
