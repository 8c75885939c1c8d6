"""doctor's filesystem check: a data directory on a network filesystem is warned about."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.doctor import _filesystem_check, filesystem_type


def mounts(tmp_path: Path, *lines: str) -> Path:
    table = tmp_path / "mounts"
    table.write_text("\n".join(lines) + "\n")
    return table


def test_the_longest_mount_point_above_the_path_wins(tmp_path: Path) -> None:
    table = mounts(
        tmp_path,
        "/dev/sda1 / ext4 rw 0 0",
        "server:/export /home/dev/shared nfs4 rw 0 0",
        "tmpfs /home/dev/shared-not tmpfs rw 0 0",
        "host:/x /mnt/with\\040space cifs rw 0 0",
    )
    assert filesystem_type(Path("/home/dev/shared/ccr"), table) == "nfs4"
    assert filesystem_type(Path("/home/dev/shared-not/ccr"), table) == "tmpfs"
    assert filesystem_type(Path("/home/dev/other"), table) == "ext4"
    assert filesystem_type(Path("/mnt/with space/ccr"), table) == "cifs"
    assert filesystem_type(Path("/x"), tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("kind", "status"),
    [("nfs4", "warn"), ("cifs", "warn"), ("fuse.sshfs", "warn"), ("ext4", "ok"), ("tmpfs", "ok")],
)
def test_network_filesystems_are_warned_about(tmp_path: Path, kind: str, status: str) -> None:
    table = mounts(tmp_path, "/dev/sda1 / ext4 rw 0 0", f"src /data {kind} rw 0 0")
    check = _filesystem_check(Path("/data/ccr"), table)
    assert (check.status, kind in check.detail) == (status, True)
