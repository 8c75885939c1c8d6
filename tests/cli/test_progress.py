"""The progress line long commands draw on a terminal's stderr."""

from __future__ import annotations

import os
import pty
import sys
from pathlib import Path

import pytest

from registry.cli import progress_reporter


def test_no_progress_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with (tmp_path / "log").open("w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        assert progress_reporter("verify") is None


def read_all(master: int) -> str:
    """Everything the closed terminal's other side was given: one read may return only part
    of it; Linux ends the stream with EIO once the slave side is closed and drained."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_progress_redraws_one_line_at_most_every_fifth_of_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    master, slave = pty.openpty()
    now = [100.0]
    try:
        with os.fdopen(slave, "w", closefd=True) as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            report = progress_reporter("verify", clock=lambda: now[0])
            assert report is not None
            report(1, 4)
            now[0] += 0.05
            report(2, 4)  # too soon: not drawn
            now[0] += 0.2
            report(3, 4)
            report(4, 4)  # the last one is always drawn, and ends the line
        written = read_all(master)
    finally:
        os.close(master)
    lines = written.replace("\r\n", "\n")
    assert lines == "\rverify: 1/4  25%\rverify: 3/4  75%\rverify: 4/4 100%\n"
