"""A legacy record whose id our API cannot address is one this project cannot understand.

Such an id (a control character, over 256 characters) would be listed but never found by get,
touch or remove. It is hidden and kept verbatim like any record that cannot be understood, and
the importer skips it with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry import open_store
from registry.migrate import import_json
from tests.conftest import EPOCH_START, FakeClock

MS = int(EPOCH_START.timestamp() * 1000)
BAD_IDS = ["ctl\u0001id", "x" * 257, "bell\u0007"]


def session(session_id: str) -> dict[str, object]:
    return {"session_id": session_id, "created_at": MS, "expires_at": MS + 86_400_000}


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_session_id_no_lookup_can_find_is_hidden_and_kept(tmp_path: Path, bad: str) -> None:
    records = {"good": session("good"), bad: session(bad)}
    path = tmp_path / "claude-sessions.json"
    path.write_text(json.dumps(records, indent=2))
    with open_store({"backend": "json", "data_dir": str(tmp_path)}, clock=FakeClock()) as store:
        assert [s.session_id for s in store.sessions.list_sessions()] == ["good"]
        store.sessions.register("new")
    assert json.loads(path.read_text())[bad] == records[bad]
    report = import_json(tmp_path, tmp_path / "ccr.db")
    assert report.sessions_imported == 2  # good and new
    assert [s.kind for s in report.skipped] == ["session"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_token_no_lookup_can_find_is_hidden_and_kept(tmp_path: Path, bad: str) -> None:
    (tmp_path / "claude-sessions.json").write_text(json.dumps({"s": session("s")}))
    token = {"token": bad, "session_id": "s", "chat_id": "1", "created_at": MS}
    path = tmp_path / "claude-tokens.json"
    path.write_text(json.dumps({bad: token}))
    with open_store({"backend": "json", "data_dir": str(tmp_path)}, clock=FakeClock()) as store:
        assert store.tokens.tokens_for_session("s") == []
        store.tokens.mint_token("s", 1)
    assert json.loads(path.read_text())[bad] == token
