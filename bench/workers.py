"""Worker processes released together: the harness of the benchmarks' multi-process runs."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def release_together(commands: list[list[str]], *, timeout: float) -> list[dict[str, Any]]:
    """Start one process per command; once every one has printed ``ready``, tell them all to go
    (one line on stdin), and return the JSON object each printed last. A failed worker fails the
    run."""
    children = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for command in commands
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    reports = []
    for command, child in zip(commands, children, strict=True):
        out, _ = child.communicate(timeout=timeout)
        assert child.returncode == 0, f"worker {command[2:]} failed"
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def wall_s(reports: list[dict[str, Any]]) -> float:
    """Seconds from the first worker's start to the last one's end (one monotonic clock)."""
    return (max(r["ended"] for r in reports) - min(r["started"] for r in reports)) / 1e9
