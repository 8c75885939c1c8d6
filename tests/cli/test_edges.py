"""Edges a person meets: paths the system refuses, a directory holding no store, a bad journal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import Run


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int) -> None:
    assert done.returncode == code
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize("command", [["sessions", "list"], ["tokens", "list", "s1"], ["verify"]])
def test_a_path_the_system_refuses_is_a_one_line_error(
    run: Run, tmp_path: Path, command: list[str]
) -> None:
    too_long = str(tmp_path / ("a" * 300))  # ENAMETOOLONG: one name over 255 bytes
    assert_one_line_error(run("--data-dir", too_long, *command), 3)


def test_doctor_on_a_path_the_system_refuses_reports_it(run: Run, tmp_path: Path) -> None:
    done = run("--data-dir", str(tmp_path / ("a" * 300)), "doctor")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "data dir" in done.stdout and "too long" in done.stdout


@pytest.mark.parametrize("backend", ["json", "dual"])
def test_reading_a_directory_that_holds_no_json_store_refuses_and_creates_nothing(
    run: Run, tmp_path: Path, backend: str
) -> None:
    home = tmp_path / "somewhere"
    home.mkdir()
    (home / "notes.txt").write_text("not ours")
    done = run("--backend", backend, "--data-dir", str(home), "sessions", "list")
    assert_one_line_error(done, 3)
    assert str(home) in done.stderr
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]


def test_doctor_fails_a_journal_every_command_refuses(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert (
        run("--backend", "json", "--data-dir", str(data), "sessions", "register", "s1").returncode
        == 0
    )
    (data / ".ccr-registry.journal").write_text("[")
    assert run("--backend", "json", "--data-dir", str(data), "sessions", "list").returncode == 3
    done = run("--backend", "json", "--data-dir", str(data), "doctor")
    assert done.returncode == 1
    row = next(line for line in done.stdout.splitlines() if line.startswith("journal"))
    assert "fail" in row and "unreadable commit journal" in row
