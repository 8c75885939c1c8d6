"""The store of a hook process on postgres: one plain connection, no pool (SPEC 4).

In-process, the store :func:`registry.backends.postgres._open_hook_store` returns is counted on
the server (``pg_stat_activity`` by ``application_name``); end to end, the real console script
records and removes a session on a postgres config without importing ``psycopg_pool``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry import RegistryError, open_store
from registry.backends.postgres import PostgresStore, _open_hook_store
from registry.config import StoreConfig
from tests.cli.conftest import SCRIPT
from tests.cli.test_cli import hook_input
from tests.cli.test_hook import imported_modules
from tests.conftest import FakeClock
from tests.postgres.test_postgres import admin, config, wait_until

__all__ = ["config"]  # the fixture, shared with test_postgres.py


def backends_of(application_name: str) -> int:
    rows = admin(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    )
    return int(rows[0][0])


@pytest.fixture
def app(config: dict[str, Any]) -> str:
    """The application_name of this test's hook store: its backends, counted on the server."""
    return f"ccr-hook-{config['postgres']['schema']}"


@pytest.fixture
def hook_store(config: dict[str, Any], app: str) -> Iterator[PostgresStore]:
    named = {**config["postgres"], "dsn": f"{config['postgres']['dsn']} application_name={app}"}
    resolved = StoreConfig.resolve({**config, "postgres": named})
    store = _open_hook_store(resolved, FakeClock())
    try:
        yield store
    finally:
        store.close()


def test_the_hook_store_runs_on_one_plain_connection(hook_store: PostgresStore, app: str) -> None:
    assert hook_store._pool is None
    hook_store.sessions.register("s1", ppid=10, cwd="/home/dev")
    with hook_store.atomic():
        hook_store.sessions.register("s2", ppid=11)
        assert hook_store.sessions.get("s1") is not None  # a read inside the unit joins it
    assert {s.session_id for s in hook_store.sessions.list_sessions()} == {"s1", "s2"}
    hook_store.sessions.touch("s1")
    hook_store.sessions.remove("s2")
    assert hook_store._pool is None
    assert backends_of(app) == 1
    hook_store.close()
    wait_until(lambda: backends_of(app) == 0, "the closed hook store's backend ends")


def test_a_unit_that_fails_keeps_nothing_and_the_connection_goes_on(
    hook_store: PostgresStore, app: str
) -> None:
    with pytest.raises(ValueError), hook_store.atomic():
        hook_store.sessions.register("gone")
        raise ValueError("the caller's own error")
    assert hook_store.sessions.get("gone") is None
    hook_store.sessions.register("kept")
    assert hook_store.sessions.get("kept") is not None
    assert backends_of(app) == 1


def test_a_connection_the_server_ended_is_replaced_by_the_next_scope(
    hook_store: PostgresStore, app: str
) -> None:
    hook_store.sessions.register("before")
    admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (app,),
    )
    wait_until(lambda: backends_of(app) == 0, "the server ends the hook store's backend")
    with pytest.raises(RegistryError, match="connection"):
        hook_store.sessions.get("before")  # not checked before use: this one fails
    assert hook_store.sessions.get("before") is not None  # connected again
    assert backends_of(app) == 1


def test_hook_session_start_and_end_on_postgres_through_the_console_script(
    config: dict[str, Any], tmp_path: Path
) -> None:
    pg = config["postgres"]
    toml = tmp_path / "ccr-registry.toml"
    toml.write_text(
        f'[store]\nbackend = "postgres"\ndata_dir = "{tmp_path / "data"}"\n\n'
        f"[store.postgres]\ndsn = {json.dumps(pg['dsn'])}\nschema = {json.dumps(pg['schema'])}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_", "TMUX", "PG"))}
    env["HOME"] = str(tmp_path / "home")

    def hook(event: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", str(SCRIPT), "--config", str(toml), "hook", event],
            input=hook_input("pg-hook", cwd="/home/dev/pigeon"),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0 and done.stdout == ""
        other = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert other == []  # no warning: the hook did its work
        return imported_modules(done.stderr)

    modules = hook("session-start")
    assert "registry.backends.postgres" in modules
    assert "psycopg_pool" not in modules  # no pool was built
    with open_store(config) as store:
        session = store.sessions.get("pg-hook")
        assert session is not None
        assert session.cwd == "/home/dev/pigeon" and session.label == "pigeon"
    assert "psycopg_pool" not in hook("session-end")
    with open_store(config) as store:
        assert store.sessions.get("pg-hook") is None
