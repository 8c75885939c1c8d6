"""Start worker processes (tests/helpers/worker.py) and release them together."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(self, mode: str, config: dict[str, Any], worker: str, count: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.helpers.worker",
                mode,
                json.dumps(config),
                worker,
                str(count),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.acked: list[int] = []

    def expect(self, line: str) -> None:
        assert self.proc.stdout is not None
        got = self.proc.stdout.readline().strip()
        if got != line:
            raise AssertionError(f"worker said {got!r}, expected {line!r}: {self.stderr()}")

    def read_line(self) -> str:
        """The worker's next line of output."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def read_ack(self) -> bool:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line.startswith("ack "):
            self.acked.append(int(line.split()[1]))
            return True
        return False

    def finish(self, timeout: float = 120) -> None:
        out, err = self.proc.communicate(timeout=timeout)
        for line in out.splitlines():
            if line.startswith("ack "):
                self.acked.append(int(line.split()[1]))
        assert self.proc.returncode == 0, err

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        out, _ = self.proc.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith("ack "):
                self.acked.append(int(line.split()[1]))

    def stderr(self) -> str:
        self.proc.kill()
        return self.proc.communicate()[1]


def start_together(workers: list[Worker]) -> None:
    """The barrier: every worker has opened its store before any is released."""
    for worker in workers:
        worker.expect("ready")
    for worker in workers:
        worker.release()
