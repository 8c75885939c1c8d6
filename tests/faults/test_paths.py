"""Hostile and racy paths: one data directory created by many processes, files planted in it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from registry import RegistryError, open_store
from tests.conftest import FILE_BACKENDS

ROOT = Path(__file__).resolve().parents[2]


def test_many_processes_creating_one_data_dir_all_succeed(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from registry.paths import ensure_private_dir; "
        "ensure_private_dir(Path(sys.argv[1]))"
    )
    for attempt in range(10):
        target = tmp_path / f"round{attempt}" / "nested" / "data"
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(target)], stderr=subprocess.PIPE)
            for _ in range(6)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
        assert stat.S_IMODE(target.stat().st_mode) == 0o700


@pytest.mark.parametrize("backend_name", FILE_BACKENDS)
def test_data_dir_that_is_a_file_is_refused(store_config: dict[str, Any], data_dir: Path) -> None:
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.write_text("I am a file")
    with pytest.raises(RegistryError, match="not a directory"):
        open_store(store_config)
    assert data_dir.read_text() == "I am a file"


def plant(data_dir: Path, name: str, tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("untouched")
    data_dir.mkdir(exist_ok=True)
    os.symlink(victim, data_dir / name)
    return victim


def test_planted_lock_symlink_is_refused_not_followed(data_dir: Path, tmp_path: Path) -> None:
    victim = plant(data_dir, ".ccr-registry.lock", tmp_path)
    with pytest.raises(RegistryError, match="cannot lock"):
        open_store({"backend": "json", "data_dir": str(data_dir)})
    assert victim.read_text() == "untouched"


def test_planted_temp_symlink_is_removed_not_followed(data_dir: Path, tmp_path: Path) -> None:
    victim = plant(data_dir, ".ccr-tmp-claude-sessions.json-planted", tmp_path)
    with open_store({"backend": "json", "data_dir": str(data_dir)}) as store:
        with store.atomic():
            store.sessions.register("s1")
            store.tokens.mint_token("s1", 1)
        assert store.sessions.get("s1") is not None
    assert victim.read_text() == "untouched"
    assert not (data_dir / ".ccr-tmp-claude-sessions.json-planted").exists()


def test_planted_data_file_symlink_is_replaced_not_written_through(
    data_dir: Path, tmp_path: Path
) -> None:
    victim = plant(data_dir, "claude-tokens.json", tmp_path)
    victim.write_text("{}")
    with open_store({"backend": "json", "data_dir": str(data_dir)}) as store:
        store.sessions.register("s1")
        store.tokens.mint_token("s1", 1)
    assert victim.read_text() == "{}"  # os.replace swapped the link itself
    assert not (data_dir / "claude-tokens.json").is_symlink()


def without_dac_override() -> list[str]:
    """A command prefix under which file permission bits apply to this process.

    An unprivileged user is bound by them already. Root is not (CAP_DAC_OVERRIDE): it runs the
    child with those capabilities dropped from its bounding set, as root still, so the child can
    read the interpreter and the clone wherever they live (a 0700 parent directory included).
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root needs util-linux's setpriv to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_read_only_data_dir_gives_a_registry_error(tmp_path: Path) -> None:
    """A directory without write permission refuses writes cleanly, with nothing created."""
    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(0o555)
    script = (
        "import sys, json; from registry import open_store, RegistryError\n"
        "for backend in ('json', 'sqlite'):\n"
        "    try:\n"
        "        s = open_store({'backend': backend, 'data_dir': sys.argv[1]})\n"
        "        s.sessions.register('x')\n"
        "    except RegistryError as e:\n"
        "        print(backend, 'RegistryError')\n"
        "    else:\n"
        "        print(backend, 'wrote')\n"
    )
    try:
        done = subprocess.run(
            [*without_dac_override(), sys.executable, "-c", script, str(data)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
    finally:
        data.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["json RegistryError", "sqlite RegistryError"]
    assert list(data.iterdir()) == []
