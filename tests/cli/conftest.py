"""Fixtures of the CLI tests: a clean environment and the real console script."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(sys.executable).parent / "ccr-registry"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_", "TMUX", "NVIM"))}
    clean["HOME"] = str(tmp_path / "home")
    clean["CCR_DATA_DIR"] = str(tmp_path / "data")
    clean["TMUX_TMPDIR"] = str(tmp_path / "no-tmux-server")
    return clean


@pytest.fixture
def run(env: dict[str, str]) -> Run:
    def _run(*args: str, stdin: str = "", extra_env: dict[str, str] | None = None) -> Any:
        return subprocess.run(
            [str(SCRIPT), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**env, **(extra_env or {})},
            timeout=60,
        )

    return _run
