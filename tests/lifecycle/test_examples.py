"""The examples run as a user runs them (a fresh interpreter, from the checkout) and do what
they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No configuration from the machine: home, data directory and temp files under tmp_path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_", "TMUX", "NVIM"))}
    for name in ("home", "data", "tmp"):
        (tmp_path / name).mkdir()
    clean.update(
        HOME=str(tmp_path / "home"),
        CCR_DATA_DIR=str(tmp_path / "data"),
        TMPDIR=str(tmp_path / "tmp"),
    )
    return clean


def run_example(name: str, env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


def block(lines: list[str], title: str) -> list[str]:
    """The indented lines under ``title:``."""
    start = lines.index(title) + 1
    end = start
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return [line.strip() for line in lines[start:end]]


def test_quickstart_registers_this_shell_and_validates_its_token(
    env: dict[str, str], tmp_path: Path
) -> None:
    lines = run_example("quickstart.py", env)
    assert lines[0] == "store     sqlite (SqliteStore)"
    assert "validated True" in lines
    session = re.fullmatch(r"session   (quickstart-\d+)  ppid=(\d+)  cwd=(.*)", lines[1])
    assert session is not None
    assert session[2] == str(os.getpid())  # the example's parent is this test process
    assert any(line.split()[0] == session[1] for line in block(lines, "sessions:"))
    assert (tmp_path / "data" / "ccr.db").is_file()  # the default store, in $CCR_DATA_DIR


def test_inbox_delivery_delivers_in_order_at_least_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    lines = run_example("inbox_delivery.py", env)
    text = "\n".join(lines)

    assert "tg-1001 already known, not enqueued again (seq 1)" in text
    assert "tg-1006 is dead, 'session removed'" in text
    # What reached each terminal: the command whose consumer was killed after typing is typed
    # again by the next daemon; the busy pane's retry came before the command behind it.
    assert block(lines, "terminals:") == [
        "s-api: ['run the tests', 'run the tests']",
        "s-docs: ['build the docs']",
        "s-web: ['fix the header', 'then run the linter']",
        "s-api label: 'api (main)'",
    ]
    assert block(lines, "commands:") == [
        "tg-1001 done  attempts=2 error=None",
        "tg-1002 done  attempts=2 error='pane busy (copy mode)'",
        "tg-1003 done  attempts=1 error=None",
        "tg-1004 done  attempts=1 error=None",
        "tg-1005 done  attempts=1 error='pane is gone'",
        "tg-1006 dead  attempts=0 error='session removed'",
    ]

    def at(fragment: str) -> int:
        """The simulated second of the only line holding ``fragment``."""
        found = [line for line in lines if fragment in line]
        assert len(found) == 1, (fragment, found)
        match = re.match(r"t=\s*(\d+)s", found[0])
        assert match is not None, found[0]
        return int(match[1])

    # The successor waited for the retry (5 s), and for the lease of the killed consumer (60 s).
    assert at("tg-1002 -> s-web: pane busy") == 0
    assert at("tg-1002 -> s-web: typed") == 5
    assert at("tg-1003 -> s-web: typed") == 5
    assert text.index("tg-1002 -> s-web: typed") < text.index("tg-1003 -> s-web: typed")
    assert at("tg-1001 -> s-api: claimed again (attempt 2)") == 60
    assert at("tg-1004 -> s-api: label set") == 60
    assert at("tg-1005 -> s-docs: pane is gone; dead after 3 attempts") == 3
    assert lines[-2].endswith(
        "cleanup_inbox removed tg-1001, tg-1002, tg-1003, tg-1004, tg-1005, tg-1006"
    )
    assert lines[-1].endswith("tg-1001 enqueued (seq 7)")
    assert list((tmp_path / "tmp").iterdir()) == []  # its temporary data directory is gone
    assert list((tmp_path / "data").iterdir()) == []  # and the default store was not touched
