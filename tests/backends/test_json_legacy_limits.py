"""A legacy record beyond one of our API's limits is writable, as it is readable.

The legacy daemon writes the JSON files too, without our limits (a label of any length, any number
of transport details). touch (the heartbeat hook), update and re-register change such a record
without refusing the fields nobody changed.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from registry import open_store
from registry.validation import MAX_DETAIL_KEYS, MAX_TEXT_LEN
from tests.conftest import EPOCH_START, FakeClock

BIG_LABEL = "L" * (MAX_TEXT_LEN + 904)
MANY_DETAILS = {f"k{n}": n for n in range(MAX_DETAIL_KEYS + 44)}


def write_legacy_session(data_dir: Path) -> None:
    ms = int(EPOCH_START.timestamp() * 1000)
    record = {
        "session_id": "big",
        "ppid": 4242,
        "cwd": "/home/dev",
        "label": BIG_LABEL,
        "notify": False,
        "transport": {"kind": "tmux", **MANY_DETAILS},
        "state": "running",
        "created_at": ms,
        "updated_at": ms,
        "last_seen": ms,
        "expires_at": ms + 86_400_000,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "claude-sessions.json").write_text(json.dumps({"big": record}, indent=2))


def test_touch_update_and_register_keep_what_breaks_our_limits(tmp_path: Path) -> None:
    clock = FakeClock()
    write_legacy_session(tmp_path)
    with open_store({"backend": "json", "data_dir": str(tmp_path)}, clock=clock) as store:
        clock.advance(minutes=5)
        touched = store.sessions.touch("big")
        assert touched.last_seen == clock.now
        updated = store.sessions.update("big", notify=True)
        assert updated.notify is True and updated.updated_at == clock.now
        clock.advance(minutes=5)
        again = store.sessions.register("big", cwd="/home/dev/elsewhere")
        assert again.expires_at == clock.now + timedelta(hours=24)
        for session in (touched, updated, again, store.sessions.get("big")):
            assert session is not None
            assert session.label == BIG_LABEL and dict(session.transport.details) == MANY_DETAILS
    stored = json.loads((tmp_path / "claude-sessions.json").read_text())["big"]
    assert stored["label"] == BIG_LABEL and stored["cwd"] == "/home/dev/elsewhere"
    assert {k: v for k, v in stored["transport"].items() if k != "kind"} == MANY_DETAILS
