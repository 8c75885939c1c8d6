"""Open the default store (sqlite under the data directory), register this shell, mint a token.

python examples/quickstart.py            # data directory: $CCR_DATA_DIR or ~/.ccr
"""

from __future__ import annotations

import os

import psutil

from registry import Transport, open_store


def main() -> None:
    with open_store() as store:  # no config: $CCR_REGISTRY_CONFIG, ccr-registry.toml, defaults
        shell = psutil.Process(os.getppid())
        session = store.sessions.register(
            f"quickstart-{shell.pid}",
            ppid=shell.pid,
            start_time=int(shell.create_time()),
            cwd=os.getcwd(),
            label="quickstart",
            notify=True,
            transport=Transport(kind="pty", details={"pty_path": os.ttyname(0)})
            if os.isatty(0)
            else None,
        )
        token = store.tokens.mint_token(session.session_id, chat_id=123456789)
        print(f"store     {store.backend} ({type(store).__name__})")
        print(f"session   {session.session_id}  ppid={session.ppid}  cwd={session.cwd}")
        print(f"          expires {session.expires_at.isoformat()}")
        print(
            f"token     {token.token}  chat={token.chat_id}  expires {token.expires_at.isoformat()}"
        )
        print(f"validated {store.tokens.validate_token(token.token, 123456789) == token}")
        print("sessions:")
        for listed in store.sessions.list_sessions(active_only=True):
            print(f"  {listed.session_id:<40} {listed.state:<8} {listed.cwd}")


if __name__ == "__main__":
    main()
