"""A real thermoledger service on loopback, in a subprocess, for end-to-end tests.

`LiveServer` runs ``python -m thermoledger.service.cli serve`` on 127.0.0.1 and a free port
against a migrated database, and can be killed with SIGKILL and started again on the same port
and database (what a crash and a restart look like to a meter). Every wait is bounded.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from thermoledger.service import cli as server_cli

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def migrate_and_issue_token(database_url: str, project: str = "e2e") -> str:
    """Migrate the database and issue an ``ingest,read`` token, as an operator would."""
    out, err = io.StringIO(), io.StringIO()
    assert server_cli.main(["migrate", "--database-url", database_url], out=out, err=err) == 0
    code = server_cli.main(
        [
            "token",
            "create",
            "--project",
            project,
            "--scopes",
            "ingest,read",
            "--database-url",
            database_url,
        ],
        out=out,
        err=err,
    )
    assert code == 0, err.getvalue()
    return out.getvalue().strip().splitlines()[-1]


class LiveServer:
    """The service in a subprocess on 127.0.0.1.

    Args:
        database_url: A migrated database.
        log_path: Where the server's output goes (shown when it fails to start).
    """

    def __init__(self, database_url: str, log_path: Path, port: int | None = None) -> None:
        self.database_url = database_url
        self.log_path = log_path
        self.port = port if port is not None else free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait (bounded) until ``/healthz`` answers."""
        assert self.process is None or self.process.poll() is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOLEDGER_")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "thermoledger.service.cli",
                    "serve",
                    "--database-url",
                    self.database_url,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + WAIT_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the server did not answer: {self.log_path.read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no goodbye) and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=WAIT_S)

    def stop(self) -> None:
        """Stop the server politely (SIGTERM), killing it if it does not go."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                self.kill()
