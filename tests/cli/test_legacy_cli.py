"""The console script on the files the legacy daemon writes, and ``migrate`` after a first start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LEGACY_SAMPLES

SCRIPT = Path(sys.executable).parent / "ccr-registry"
FILES = ("claude-sessions.json", "claude-tokens.json")
UPSERTED = "5d0c1a7e-3b2f-4c1d-9e8f-0a1b2c3d4e01"
STOPPED = "7f2e3c9a-5d4b-4e3f-9a0b-2c3d4e5f6a03"
TOUCHED = "6e1d2b8f-4c3a-4d2e-8f9a-1b2c3d4e5f02"
SUMMARY_TOKEN = "Lg7Qm2Xr9Tz4Wk1Np6Vb3A"
ORPHAN_TOKEN = "Or9Ph4An7To2Ke5Nx8Qw1C"
FIXTURE_T0_MS = 1770600000000

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The fixture files where the legacy daemon keeps them, moved to the present.

    The console script runs on the real clock: every epoch-ms timestamp (13 digits, the
    fixture's are 2026-02-09) is shifted so that the records are an hour old, not expired.
    The text is edited, not re-serialised, so every other byte stays as the legacy daemon wrote.
    """
    target = tmp_path / "legacy-checkout" / "src" / "data"
    target.mkdir(parents=True)
    shift = int(time.time() * 1000) - 3_600_000 - FIXTURE_T0_MS
    for name in FILES:
        text = (LEGACY_SAMPLES / "daemon" / name).read_text(encoding="utf-8")
        moved = re.sub(r"\b1770[0-9]{9}\b", lambda m: str(int(m.group()) + shift), text)
        (target / name).write_text(moved, encoding="utf-8")
    return target


@pytest.fixture
def run(tmp_path: Path, data: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_", "TMUX", "NVIM"))}
    env["HOME"] = str(tmp_path / "home")
    env["TMUX_TMPDIR"] = str(tmp_path / "no-tmux-server")

    def _run(*args: str, stdin: str = "") -> Any:
        done = subprocess.run(
            [str(SCRIPT), "--data-dir", str(data), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    return _run


def values(data: Path) -> dict[str, dict[str, Any]]:
    return {name: json.loads((data / name).read_bytes().decode("utf-8")) for name in FILES}


def hook_input(session_id: str) -> str:
    return json.dumps(
        {
            "session_id": session_id,
            "cwd": "/home/dev/projects/daemon",
            "transcript_path": "/home/dev/.claude/projects/x.jsonl",
            "hook_event_name": "SessionStart",
        }
    )


def test_every_command_works_on_the_legacy_daemons_files_and_keeps_its_records(
    run: Run, data: Path
) -> None:
    (data / "ccr-registry.toml").write_text('[store]\nbackend = "json"\n')
    original = values(data)
    listed = run("--json", "sessions", "list")
    assert listed.returncode == 0, listed.stderr
    assert {s["session_id"] for s in json.loads(listed.stdout)} >= {UPSERTED, STOPPED}
    assert run("sessions", "show", UPSERTED).returncode == 0
    validated = run("--json", "tokens", "validate", SUMMARY_TOKEN, "123456789")
    assert validated.returncode == 0, validated.stderr
    assert len(json.loads(validated.stdout)["context"]["summary"]) == 30_000
    assert run("tokens", "validate", ORPHAN_TOKEN, "123456789").returncode == 1
    assert run("tokens", "list", UPSERTED).returncode == 0

    hooked = run("hook", "session-start", stdin=hook_input("hooked-session"))
    assert (hooked.returncode, hooked.stdout, hooked.stderr) == (0, "", "")
    assert run("sessions", "show", "hooked-session").returncode == 0

    assert run("sessions", "register", "by-hand", "--label", "x").returncode == 0
    assert run("sessions", "update", "by-hand", "--label", "y").returncode == 0
    minted = run("tokens", "mint", "by-hand", "5")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert run("tokens", "validate", "--", token, "5").returncode == 0
    assert run("tokens", "revoke", "--", token).returncode == 0
    assert run("sessions", "remove", "by-hand").returncode == 0
    assert run("cleanup", "--expired").returncode == 0
    ended = run("hook", "session-end", stdin=hook_input("hooked-session"))
    assert (ended.returncode, ended.stdout) == (0, "")
    assert run("sessions", "show", "hooked-session").returncode == 1
    assert run("config", "show").returncode == 0
    assert run("doctor").returncode in (0, 1)  # it reports; it does not break

    after = values(data)
    for name, records in original.items():
        for key, value in records.items():
            assert after[name][key] == value, (name, key)
    assert set(after["claude-sessions.json"]) == set(original["claude-sessions.json"])

    # The dead-session cleanup removes the running sessions whose agents are gone (none of
    # the fixture's pids runs here) with their tokens, and nothing it cannot read.
    cleaned = run("--json", "cleanup", "--dead")
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout)["dead_sessions"] == sorted([UPSERTED, TOUCHED])
    after = values(data)
    gone = {UPSERTED, TOUCHED, SUMMARY_TOKEN, "Hs4Dk8Pq1Wm5Zr2Xv7Nc0B"}
    for name, records in original.items():
        assert set(after[name]) == set(records) - gone
        for key in after[name]:
            assert after[name][key] == records[key], (name, key)


def test_migrate_after_the_first_start_imported(run: Run, data: Path) -> None:
    # Any first command on sqlite imports the legacy files by itself.
    assert run("sessions", "register", "first-command").returncode == 0
    assert (data / "ccr.db").exists()

    again = run("migrate")
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout and "skipped 4" in again.stdout
    document = json.loads(run("--json", "migrate").stdout)
    assert document["status"] == "unchanged" and document["sessions_imported"] == 3
    assert set(document["sources"]) == set(FILES)

    # The legacy daemon writes on: the sources change.
    assert run("--backend", "json", "sessions", "register", "legacy-wrote").returncode == 0
    changed = run("migrate")
    assert changed.returncode == 1
    assert "claude-sessions.json" in changed.stderr and "--reimport" in changed.stderr
    assert len(changed.stderr.splitlines()) == 1

    reimported = run("--json", "migrate", "--reimport")
    assert reimported.returncode == 0, reimported.stderr
    report = json.loads(reimported.stdout)
    assert report["status"] == "reimported" and Path(report["backup"]).exists()
    assert report["sessions_imported"] == 4
    assert run("migrate").returncode == 0
    assert run("verify").returncode == 0
    assert run("sessions", "show", "legacy-wrote").returncode == 0
    assert run("sessions", "show", "first-command").returncode == 1  # only in the backup


def test_migrate_over_a_database_no_import_built(run: Run, data: Path) -> None:
    (data / "ccr-registry.toml").write_text("[store]\nmigrate_from_json = false\n")
    assert run("sessions", "register", "x").returncode == 0
    refused = run("migrate")
    assert refused.returncode == 1 and "not built by an import" in refused.stderr
    assert run("migrate", "--reimport").returncode == 0
    assert run("sessions", "show", UPSERTED).returncode == 0


def test_export_rolls_back_into_the_legacy_daemons_files(run: Run, data: Path) -> None:
    original = values(data)
    assert run("migrate").returncode == 0
    assert (
        run("--backend", "sqlite", "sessions", "update", UPSERTED, "--label", "p4").returncode == 0
    )
    assert run("export", "--out", str(data)).returncode == 0
    after = values(data)
    assert after["claude-sessions.json"][UPSERTED]["label"] == "p4"
    for name, records in original.items():
        for key, value in records.items():
            if key != UPSERTED:
                assert after[name][key] == value, (name, key)
    assert run("verify").returncode == 0


def test_migrate_and_export_show_progress_on_a_terminal(
    tmp_path: Path, data: Path, run: Run
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCR_")}
    env["HOME"] = str(tmp_path / "home")
    shown: dict[str, str] = {}
    for label, args in (("import", ["migrate"]), ("export", ["export", "--out", str(data)])):
        main, secondary = os.openpty()
        try:
            done = subprocess.run(
                [str(SCRIPT), "--data-dir", str(data), *args],
                stdout=subprocess.PIPE,
                stderr=secondary,
                env=env,
                timeout=60,
            )
            os.close(secondary)
            assert done.returncode == 0
            chunks = []
            while True:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the terminal's other end is closed: all read
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            shown[label] = b"".join(chunks).decode()
        finally:
            os.close(main)
    assert "import: 9/9 100%" in shown["import"]  # the fixture's 5 + 4 records, all read
    assert "export: 10/10 100%" in shown["export"]  # 3 + 2 records read, then written
    assert run("migrate", "--reimport").stderr == ""  # off a terminal: no progress line
