"""No raw token in any log record, error, report or command output (the legacy export excepted).

One scenario drives every place that logs or reports: all backends, dual with a drifted and a
failing secondary, the janitor, token errors, an import with bad tokens, and the CLI. Every token
value it mints is then searched for in everything that was written.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from registry import RegistryError, TokenInvalid, open_store
from registry.janitor import Janitor
from registry.migrate import export_json, import_json, stored_report
from tests.conftest import BACKENDS, FakeClock, backend_config

SCRIPT = Path(sys.executable).parent / "ccr-registry"


def test_no_raw_token_leaks(
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    minted: list[str] = []
    written: list[str] = []  # everything the project printed, raised or reported

    for name in BACKENDS:
        config: dict[str, Any] = backend_config(name, tmp_path / name)
        with open_store(config, clock=clock) as store:
            store.sessions.register("s1", ppid=2**22 + 5)
            token = store.tokens.mint_token("s1", 7, ttl=timedelta(minutes=5))
            minted.append(token.token)
            written.append(repr(token))
            for chat, value in ((8, token.token), (7, token.token + "x")):
                try:
                    store.tokens.validate_token(value, chat)
                except TokenInvalid as exc:
                    written.append(f"{type(exc).__name__}: {exc}")
            if hasattr(store, "secondary"):
                with open_store(
                    {**config, "backend": store.secondary.backend},
                    clock=clock,
                ) as side:
                    side.tokens.revoke_token(token.token)  # drift: the next read logs it
                store.tokens.validate_token(token.token, 7)
                store.tokens.get_session_by_token(token.token)
                monkeypatch.setattr(
                    store.secondary,
                    "save_token",
                    lambda t: (_ for _ in ()).throw(OSError(5, "EIO")),
                )
                minted.append(store.tokens.mint_token("s1", 7).token)  # logs a secondary failure
                monkeypatch.undo()
            clock.advance(minutes=10)
            with Janitor(store, is_alive=lambda pid, start: False) as janitor:
                written.extend(
                    str(r) for r in (janitor.run_dead_pass(), janitor.run_expired_pass())
                )

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    bad_tokens = {f"leak-{i}-secretvalue": {"session_id": "gone", "chat_id": "1"} for i in range(3)}
    minted.extend(bad_tokens)
    (legacy / "claude-tokens.json").write_text(json.dumps(bad_tokens))
    (legacy / "claude-sessions.json").write_text("{}")
    report = import_json(legacy, tmp_path / "imported.db")
    written.append(json.dumps(report.to_dict()))
    written.append(json.dumps(stored_report(tmp_path / "imported.db").to_dict()))  # type: ignore[union-attr]

    cli_dir = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCR_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SCRIPT), "--data-dir", str(cli_dir), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        return done

    cli("sessions", "register", "c1")
    mint = json.loads(cli("--json", "tokens", "mint", "c1", "5").stdout)
    minted.append(mint["token"])
    for args in (
        ("tokens", "list", "c1"),
        ("--json", "tokens", "list", "c1"),
        ("--json", "tokens", "validate", "--", mint["token"], "5"),
        ("--json", "tokens", "validate", "--", mint["token"], "6"),
        ("sessions", "show", "c1"),
        ("--json", "doctor"),
        ("--json", "migrate"),
        ("--json", "verify"),
        ("tokens", "revoke", "--", mint["token"]),
        ("tokens", "revoke", "--", mint["token"]),
    ):
        done = cli(*args)
        written.extend([done.stdout, done.stderr])
    with pytest.raises(RegistryError) as caught:
        open_store(
            {"backend": "json", "data_dir": str(tmp_path / "json")}, clock=clock
        ).tokens.store_token(minted[0], "no-such-session", 1)
    written.append(str(caught.value))

    written.extend(record.getMessage() for record in caplog.records)
    assert caplog.records, "the scenario logged nothing: it did not reach the logging paths"
    assert any(r.name == "registry.dual" for r in caplog.records)
    assert any(r.name == "registry.janitor" for r in caplog.records)
    for token in minted:
        for text in written:
            assert token not in text, f"a raw token leaked into: {text[:200]!r}"

    # By design, the legacy export carries the values: the legacy format has no other way.
    store_with_token = open_store({"backend": "sqlite", "data_dir": str(tmp_path / "export")})
    with store_with_token as store:
        store.sessions.register("e1")
        value = store.tokens.mint_token("e1", 1).token
    export_json(tmp_path / "export" / "ccr.db", tmp_path / "exported")
    assert value in (tmp_path / "exported" / "claude-tokens.json").read_text()
