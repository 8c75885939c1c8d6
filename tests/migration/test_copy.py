"""Copy a whole store between backends (SPEC 6 "Copy", SPEC 8 ``copy --to``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry import Store, open_store
from registry.migrate import StoreNotEmpty, copy_store, diff_stores
from tests.cli.conftest import SCRIPT
from tests.conftest import (
    USES_POSTGRES,
    FakeClock,
    backend_config,
    data_files,
    drop_schema,
    require_postgres,
)
from tests.helpers.processes import ROOT

KINDS = ["json", "postgres", "sqlite"]
PAIRS = [(a, b) for a in KINDS for b in KINDS]

Opener = Callable[[str, str], tuple[Store, dict[str, Any]]]


@pytest.fixture
def open_side(tmp_path: Path, clock: FakeClock) -> Iterator[Opener]:
    """Open a store of backend ``name`` at ``tmp_path / side``; all closed and dropped after."""
    opened: list[tuple[Store, dict[str, Any]]] = []

    def _open(name: str, side: str) -> tuple[Store, dict[str, Any]]:
        if name in USES_POSTGRES:
            require_postgres()
        config = backend_config(name, tmp_path / side)
        store = open_store(config, clock=clock)
        opened.append((store, config))
        return store, config

    yield _open
    for store, config in opened:
        store.close()
        if "postgres" in config:
            drop_schema(config["postgres"]["schema"])


def fill(store: Store, clock: FakeClock) -> None:
    """Sessions, tokens and commands in every state, at several times."""
    store.sessions.register("s-a", ppid=101, cwd="/tmp/a", label="a", notify=True)
    clock.advance(seconds=1.5)
    store.sessions.register("s-b", ppid=202, state="stopped")
    store.tokens.mint_token("s-a", 7)
    clock.advance(minutes=1)
    store.tokens.store_token("t-fixed-value-0000000001", "s-b", -42, scopes=["notify"])
    for i in range(6):
        store.inbox.enqueue(f"c-{i}", {"n": i, "text": "hé"}, session_id="s-a", chat_id=7)
        clock.advance(milliseconds=3)
    store.inbox.enqueue("c-free", {"alone": True})
    done = store.inbox.claim("worker-1")
    assert done is not None and done.command_id == "c-0"
    store.inbox.complete("c-0", "worker-1")
    failed = store.inbox.claim("worker-2")
    assert failed is not None and failed.command_id == "c-1"
    store.inbox.fail("c-1", "worker-2", "boom")  # ready again, after a backoff
    leased = store.inbox.claim("worker-3")
    assert leased is not None and leased.command_id == "c-free"  # stays leased
    # The newest command is done and cleaned up: the next seq is past every stored seq.
    store.inbox.enqueue("c-gone", {"x": 1}, session_id="s-b")
    gone = store.inbox.claim("worker-4")
    assert gone is not None and gone.command_id == "c-gone"
    store.inbox.complete("c-gone", "worker-4")
    clock.advance(hours=48)
    assert store.inbox.cleanup_inbox() == ["c-0", "c-gone"]


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_copy_keeps_every_record_and_the_seq(
    source: str, target: str, open_side: Opener, clock: FakeClock
) -> None:
    src, _ = open_side(source, "src")
    fill(src, clock)
    with src.atomic():
        next_seq = src.next_command_seq()  # type: ignore[attr-defined]
    assert next_seq > max(c.seq for c in src.inbox.list_commands())
    dst, _ = open_side(target, "dst")
    progress: list[tuple[int, int]] = []
    report = copy_store(src, dst, progress=lambda done, total: progress.append((done, total)))

    assert report.differences == ()
    assert diff_stores(src, dst) == []
    assert (report.sessions, report.tokens) == (2, 2)
    assert report.commands == len(src.inbox.list_commands()) > 0
    assert report.next_seq == next_seq
    assert dst.inbox.list_commands() == src.inbox.list_commands()
    states = {c.command_id: c.state for c in dst.inbox.list_commands()}
    assert (states["c-1"], states["c-free"], states["c-2"]) == ("ready", "leased", "ready")
    assert progress and progress[-1][0] == progress[-1][1]
    added, created = dst.inbox.enqueue("c-after", {"y": 2})
    assert created and added.seq == next_seq


@pytest.mark.parametrize("target", KINDS)
def test_a_destination_with_data_is_refused_untouched(
    target: str, open_side: Opener, clock: FakeClock
) -> None:
    src, _ = open_side("sqlite", "src")
    fill(src, clock)
    dst, config = open_side(target, "dst")
    dst.sessions.register("s-there", ppid=9)
    before_files = data_files(Path(config["data_dir"]))
    before = (dst.sessions.list_sessions(), dst.inbox.list_commands())
    with pytest.raises(StoreNotEmpty, match="already holds sessions"):
        copy_store(src, dst)
    assert (dst.sessions.list_sessions(), dst.inbox.list_commands()) == before
    assert data_files(Path(config["data_dir"])) == before_files

    other, _ = open_side(target, "dst2")
    other.inbox.enqueue("c-there", {"z": 1})
    with pytest.raises(StoreNotEmpty, match="already holds commands"):
        copy_store(src, other)
    assert [c.command_id for c in other.inbox.list_commands()] == ["c-there"]


WRITER = textwrap.dedent(
    """
    import json, sys
    from registry import open_store
    store = open_store(json.loads(sys.argv[1]))
    i = 0
    while True:
        with store.atomic():
            store.sessions.register(f"w-{i:05d}", ppid=1000 + i)
            store.tokens.store_token(f"tok-{i:05d}-xxxxxxxxxxxxxxx", f"w-{i:05d}", i + 1)
            store.inbox.enqueue(f"cmd-{i:05d}", {"i": i}, session_id=f"w-{i:05d}")
            if i > 0:
                # The unit also changes the previous unit's session: a torn read shows it.
                store.sessions.update(f"w-{i - 1:05d}", label=f"after-{i}")
        i += 1
        if i == 20:
            print("ready", flush=True)
    """
)


@pytest.mark.parametrize("source", KINDS)
def test_the_copy_is_one_snapshot_while_another_process_writes(
    source: str, open_side: Opener, tmp_path: Path
) -> None:
    src, config = open_side(source, "src")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready", writer.stderr
        dst, _ = open_side("sqlite" if source != "sqlite" else "json", "dst")
        report = copy_store(src, dst)
        assert writer.poll() is None, "the writer stopped before the copy ended"
    finally:
        writer.kill()
        writer.wait()
    assert report.differences == ()
    sessions = dst.sessions.list_sessions()
    units = len(sessions)
    assert units >= 20
    # Units are sequential: exactly the first `units` of them, each whole.
    assert sorted(s.session_id for s in sessions) == [f"w-{i:05d}" for i in range(units)]
    labels = {s.session_id: s.label for s in sessions}
    assert all(labels[f"w-{i:05d}"] == f"after-{i + 1}" for i in range(units - 1))
    assert labels[f"w-{units - 1:05d}"] is None
    assert report.tokens == report.commands == units
    assert [c.command_id for c in dst.inbox.list_commands()] == [
        f"cmd-{i:05d}" for i in range(units)
    ]


def test_cli_copy_to_another_backend(tmp_path: Path) -> None:
    env_data = tmp_path / "data"
    home = tmp_path / "home"
    env = {"HOME": str(home), "CCR_DATA_DIR": str(env_data), "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60
        )

    source = ["--data-dir", str(env_data), "--backend", "sqlite"]
    assert run(*source, "sessions", "register", "s-one", "--ppid", "4").returncode == 0
    done = run(*source, "inbox", "enqueue", "c-one", "--session", "s-one", "--payload", '{"a": 1}')
    assert done.returncode == 0, done.stderr
    target = tmp_path / "target.toml"
    target.write_text(f'[store]\nbackend = "json"\ndata_dir = "{tmp_path / "copy"}"\n')

    done = run(*source, "copy", "--to", str(target), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert (document["sessions"], document["commands"], document["differences"]) == (1, 1, [])
    assert run(*source, "verify", "--against", str(target)).returncode == 0

    again = run(*source, "copy", "--to", str(target))
    assert again.returncode == 3
    assert "already holds" in again.stderr and again.stdout == ""
    shown = run(
        "--data-dir", str(tmp_path / "copy"), "--backend", "json", "inbox", "list", "--json"
    )
    assert [c["command_id"] for c in json.loads(shown.stdout)] == ["c-one"]
