"""Dual over the files the legacy daemon writes: both sides agree, and no foreign record is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from registry import Store, open_store
from registry.backends.dual import DualStore
from registry.migrate import diff_stores
from tests.conftest import LEGACY_SAMPLES, FakeClock

DAEMON = LEGACY_SAMPLES / "daemon"
FILES = ("claude-sessions.json", "claude-tokens.json")
UPSERTED = "5d0c1a7e-3b2f-4c1d-9e8f-0a1b2c3d4e01"
TOUCHED = "6e1d2b8f-4c3a-4d2e-8f9a-1b2c3d4e5f02"
SUMMARY_TOKEN = "Lg7Qm2Xr9Tz4Wk1Np6Vb3A"
# What neither side may show and the JSON side must keep: records that cannot be understood,
# and the orphan token.
FOREIGN = {
    "claude-sessions.json": [
        "8a3f4d0b-6e5c-4f4a-8b1c-3d4e5f6a7b04",
        "9b4a5e1c-7f6d-4a5b-9c2d-4e5f6a7b8c05",
    ],
    "claude-tokens.json": ["Or9Ph4An7To2Ke5Nx8Qw1C", "Bd2Ch5At8Id1Xy4Zq7Wv0D"],
}


def values(data_dir: Path) -> dict[str, dict[str, Any]]:
    return {name: json.loads((data_dir / name).read_bytes().decode("utf-8")) for name in FILES}


def side(data_dir: Path, backend: str, clock: FakeClock) -> Store:
    return open_store(
        {"backend": backend, "data_dir": str(data_dir), "migrate_from_json": False}, clock=clock
    )


@pytest.mark.parametrize(
    ("primary", "secondary"),
    [("json", "sqlite"), ("sqlite", "json")],
    ids=["json-sqlite", "sqlite-json"],
)
def test_dual_over_the_legacy_daemons_files(
    tmp_path: Path, clock: FakeClock, primary: str, secondary: str
) -> None:
    shutil.copytree(DAEMON, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))
    original = values(tmp_path)
    config = {
        "backend": "dual",
        "data_dir": str(tmp_path),
        "dual": {"primary": primary, "secondary": secondary, "compare_reads": True},
    }
    with open_store(config, clock=clock) as store:  # the sqlite side imports on its first start
        assert isinstance(store, DualStore)
        token = store.tokens.validate_token(SUMMARY_TOKEN, 123456789)
        assert len(token.context["summary"]) == 30_000
        assert len(store.sessions.list_sessions()) == 3
        assert store.tokens.get_session_by_token("Or9Ph4An7To2Ke5Nx8Qw1C") is None
        store.sessions.register("ours", ppid=4242, cwd="/home/dev/ours")
        minted = store.tokens.mint_token("ours", 5, context={"summary": "ü" * 30_000})
        store.sessions.touch(TOUCHED)
        store.sessions.update(UPSERTED, label="renamed")
        assert store.tokens.revoke_token("Hs4Dk8Pq1Wm5Zr2Xv7Nc0B")
        store.sessions.cleanup_expired_sessions()
        store.tokens.cleanup_expired_tokens()
        assert store.tokens.validate_token(minted.token, 5) == minted
        assert (store.mismatches, store.secondary_failures) == (0, 0)
    with side(tmp_path, "json", clock) as js, side(tmp_path, "sqlite", clock) as sq:
        assert diff_stores(js, sq) == []
    after = values(tmp_path)
    for name, keys in FOREIGN.items():
        for key in keys:
            assert after[name][key] == original[name][key], (name, key)
    # The records nobody touched are as the legacy daemon wrote them.
    assert (
        after["claude-tokens.json"][SUMMARY_TOKEN] == original["claude-tokens.json"][SUMMARY_TOKEN]
    )
    stopped = "7f2e3c9a-5d4b-4e3f-9a0b-2c3d4e5f6a03"
    assert after["claude-sessions.json"][stopped] == original["claude-sessions.json"][stopped]
