"""Hypothesis round trips: store -> export -> import, and legacy input -> import -> export."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from registry.backends.sqlite import SqliteStore
from registry.migrate import export_json, import_json
from registry.models import Session, Token, Transport

T0 = datetime(2026, 2, 9, tzinfo=UTC)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
keys = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
)
moments = st.integers(0, 10**9).map(lambda ms: T0 + timedelta(milliseconds=ms))


@st.composite
def sessions(draw: st.DrawFn, session_id: str) -> Session:
    created = draw(moments)
    return Session(
        session_id=session_id,
        ppid=draw(st.none() | st.integers(1, 2**62)),
        pid=draw(st.none() | st.integers(1, 2**31)),
        start_time=draw(st.none() | st.integers(0, 2**40)),
        cwd=draw(st.none() | text),
        label=draw(st.none() | text),
        notify=draw(st.booleans()),
        transport=Transport(
            kind=draw(st.sampled_from(["nvim", "tmux", "pty", "unknown"])),
            details=draw(
                st.dictionaries(
                    keys.filter(lambda k: k != "kind"),
                    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
                    max_size=3,
                )
            ),
        ),
        state=draw(st.sampled_from(["running", "stopped"])),
        created_at=created,
        updated_at=created + draw(st.integers(0, 10**6)) * timedelta(milliseconds=1),
        last_seen=created + draw(st.integers(0, 10**6)) * timedelta(milliseconds=1),
        expires_at=created + timedelta(hours=24),
    )


@st.composite
def contents(draw: st.DrawFn) -> tuple[list[Session], list[Token]]:
    ids = draw(st.lists(keys, max_size=5, unique=True))
    found = [draw(sessions(sid)) for sid in ids]
    tokens: list[Token] = []
    if ids:
        for value in draw(st.lists(keys, max_size=5, unique=True)):
            created = draw(moments)
            tokens.append(
                Token(
                    token=value,
                    session_id=draw(st.sampled_from(ids)),
                    chat_id=draw(st.integers(-(2**63), 2**63 - 1)),
                    scopes=draw(st.lists(keys, max_size=2)),
                    context=draw(
                        st.dictionaries(keys, st.none() | text | st.integers(), max_size=2)
                    ),
                    created_at=created,
                    expires_at=created + timedelta(hours=1),
                )
            )
    return found, tokens


def open_db(path: Path) -> SqliteStore:
    return SqliteStore(
        path,
        clock=lambda: T0,
        session_ttl=timedelta(hours=24),
        token_ttl=timedelta(hours=24),
        lock_timeout_s=5,
    )


@given(contents())
def test_store_export_import_is_the_identity(content: tuple[list[Session], list[Token]]) -> None:
    records_in, tokens_in = content
    with tempfile.TemporaryDirectory() as root:
        base = Path(root)
        with open_db(base / "a.db") as source:
            source.load(records_in, tokens_in, {})
        export_json(base / "a.db", base / "json")
        import_json(base / "json", base / "b.db")
        with open_db(base / "b.db") as copy:
            assert copy.snapshot() == (records_in, tokens_in)


legacy_times = st.one_of(
    st.integers(0, 2**41),
    st.integers(0, 2**41).map(
        lambda ms: (T0 + timedelta(milliseconds=ms % 10**11)).isoformat(timespec="milliseconds")
    ),
)


@st.composite
def legacy_documents(draw: st.DrawFn) -> tuple[Any, dict[str, Any]]:
    """Records in either legacy shape, with optional keys left out and a few bad records."""
    records: dict[str, Any] = {}
    for sid in draw(st.lists(keys, max_size=5, unique=True)):
        record: dict[str, Any] = {"session_id": sid}
        for name in ("created_at", "updated_at", "last_seen", "expires_at"):
            if draw(st.booleans()):
                record[name] = draw(legacy_times)
        if draw(st.booleans()):
            record["ppid"] = draw(st.integers(-2, 10**6))  # 0 and below are skipped
        if draw(st.booleans()):
            record["state"] = draw(st.sampled_from(["running", "stopped", "active", "zombie"]))
        if draw(st.booleans()):
            details = draw(st.dictionaries(st.sampled_from(["pane_id", "pty_path"]), text))
            kind = draw(st.sampled_from(["tmux", "pty", "unknown"]))
            record["transport"] = (
                {"kind": kind, "details": details}
                if draw(st.booleans())
                else {"kind": kind, **details}
            )
        records[sid] = record
    tokens: dict[str, Any] = {}
    for value in draw(st.lists(keys, max_size=4, unique=True)):
        token: dict[str, Any] = {
            "session_id": draw(st.sampled_from([*records, "missing"])),
            "chat_id": draw(st.integers(-(2**63), 2**63 - 1).map(str) | st.just("x1")),
        }
        if draw(st.booleans()):
            token["created_at"] = draw(legacy_times)
        if draw(st.booleans()):
            token["expires_at"] = draw(legacy_times)
        tokens[value] = token
    wrapped = {"sessions": records} if records and draw(st.booleans()) else records
    return wrapped, tokens


@given(legacy_documents())
def test_legacy_import_export_import_is_a_fixed_point(document: tuple[Any, dict[str, Any]]) -> None:
    sessions_doc, tokens_doc = document
    with tempfile.TemporaryDirectory() as root:
        base = Path(root)
        (base / "in").mkdir()
        (base / "in" / "claude-sessions.json").write_text(json.dumps(sessions_doc))
        (base / "in" / "claude-tokens.json").write_text(json.dumps(tokens_doc))
        first = import_json(base / "in", base / "first.db")
        export_json(base / "first.db", base / "out")
        second = import_json(base / "out", base / "second.db")
        assert second.skipped == []  # what was exported is clean
        assert (second.sessions_imported, second.tokens_imported) == (
            first.sessions_imported,
            first.tokens_imported,
        )
        with open_db(base / "first.db") as a, open_db(base / "second.db") as b:
            assert a.snapshot() == b.snapshot()
        export_json(base / "second.db", base / "again")
        for name in ("claude-sessions.json", "claude-tokens.json"):
            assert (base / "out" / name).read_bytes() == (base / "again" / name).read_bytes()
