"""A throwaway PostgreSQL server for the test session, on a Unix socket in a temporary directory.

``initdb`` and ``pg_ctl`` come from ``PATH`` or ``/usr/lib/postgresql/<version>/bin``. The
server listens on no TCP port (``listen_addresses=''``) and runs without durability
(``fsync``, ``synchronous_commit`` and ``full_page_writes`` off): it is deleted with its
directory at the end of the session. PostgreSQL refuses to run as root, so as root every
server command runs through ``runuser -u postgres --``, and the directory is handed to that
user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian one."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(candidates[-1]).parent if candidates else None


def unavailable_reason() -> str | None:
    """Why the postgres tests cannot run here, or None when they can."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return f"psycopg 3 and psycopg_pool are not installed ({exc})"
    if find_bin_dir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start the server as another user"
    return None


class PgServer:
    """One server in a temporary directory; :meth:`stop` removes it all."""

    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server binaries")
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ccr-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.as_root = os.geteuid() == 0
        self.started = False
        self.dsn = f"host={self.socket_dir} dbname=postgres user={self._user()}"

    def _user(self) -> str:
        if self.as_root:
            return SERVER_USER
        import getpass

        return getpass.getuser()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self.as_root:
            import pwd

            user = pwd.getpwnam(SERVER_USER)
            self.root.chmod(0o755)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        try:
            self._run(
                "initdb", "-D", str(self.data), "--auth=trust", "--no-sync",
                "--encoding=UTF8", "--locale=C", f"--username={self._user()}",
            )  # fmt: skip
            self.pg_ctl("start")
        except subprocess.CalledProcessError as exc:
            log = self.log.read_text() if self.log.exists() else ""
            self.stop()
            raise RuntimeError(
                f"the test PostgreSQL server did not start: {exc.stdout}{exc.stderr}{log}"
            ) from exc
        self.started = True

    def pg_ctl(self, action: str) -> None:
        """``pg_ctl stop`` or ``start`` on the running cluster (for restart tests)."""
        if action == "start":
            options = (
                f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            self._run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.log),
                      "-o", options)  # fmt: skip
        else:
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data), check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)
