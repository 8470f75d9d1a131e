"""Issue 13, item 1 (and item 8's header timeout, item 3's disconnects): slow and
unauthenticated clients must not stall the service, on a live server.

As found: fifteen connections trickling a body one byte every 5 s, with no token, to
``/login`` or ``PUT /api/v1/runs/{id}``, held every in-flight slot, and every route and
``/readyz`` timed out; 8 MiB bodies without a token were read and parsed before the 401; a
client that disconnected mid-body was logged as a 500 with a traceback; and a connection
could take as long as it liked over its request headers.

The attack runs from raw sockets (`SlowAttack`, one thread, one ``select`` loop), against the
real server (``thermoledger-server serve``) on SQLite and on PostgreSQL. The p99 test is the
one test of the suite with a wall-clock bound, as the issue asks: an authenticated client's
p99 over 100 requests stays within `P99_LIMIT_S` while the attack holds its connections, and
the test ends within `TEST_LIMIT_S`.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.e2e.liveserver import ROOT, LiveServer, free_port, migrate_and_issue_token
from tests.faults.harness import (
    WAIT_S,
    LiveService,
    fingerprint,
    ledger_problems,
    percentile,
    wait_until,
)
from tests.support import dbutil
from tests.support.client import clean_settings
from thermoledger.db import migrate
from thermoledger.db.engine import make_engine
from thermoledger.service.app import create_app
from thermoledger.service.server import H11HeaderTimeout, HttpToolsHeaderTimeout

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

#: The issue's bound on the authenticated client's p99 during the attack, s.
P99_LIMIT_S = 1.0
#: The issue's bound on the whole test, s.
TEST_LIMIT_S = 60.0
EIGHT_MIB = 8 * 1024 * 1024
#: Slow clients without credentials: the issue asks for at least 20 holding connections.
SLOW_LOGINS = 24
SLOW_API = 8
BIG_BODIES = 4


@dataclass
class _Client:
    kind: str
    request: bytes
    sock: socket.socket | None = None
    next_s: float = 0.0
    sent: int = 0
    answer: bytes = b""


@dataclass
class SlowAttack:
    """Raw-socket clients without credentials, in one thread.

    * ``login``: ``POST /login`` announcing 10,000 bytes, sending one every `interval_s`;
    * ``api``: ``PUT /api/v1/runs/{id}`` the same way;
    * ``big``: ``PUT /api/v1/runs/{id}`` announcing 8 MiB and sending it as fast as it can.

    A client the server answers or closes comes back on a new connection (at once for the
    logins, whose deadline is the server's; after `pause_s` for the others). `answers` counts
    the status lines received; `holding` says how many slow clients are connected right now.
    """

    port: int
    interval_s: float = 2.0
    pause_s: float = 0.5
    answers: Counter[str] = field(default_factory=Counter)
    _clients: list[_Client] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)

    def start(self) -> SlowAttack:
        def request(method: str, path: str, length: int, kind: str) -> _Client:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            )
            return _Client(kind, head.encode("ascii"))

        self._clients = (
            [request("POST", "/login", 10_000, "login") for _ in range(SLOW_LOGINS)]
            + [
                request("PUT", f"/api/v1/runs/{uuid.uuid4()}", 10_000, "api")
                for _ in range(SLOW_API)
            ]
            + [
                request("PUT", f"/api/v1/runs/{uuid.uuid4()}", EIGHT_MIB, "big")
                for _ in range(BIG_BODIES)
            ]
        )
        now = time.monotonic()
        for i, client in enumerate(self._clients):  # staggered, so deadlines are too
            client.next_s = now + i * self.interval_s / len(self._clients)
        self._thread = threading.Thread(target=self._run, name="slow-attack", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WAIT_S)
        for client in self._clients:
            self._close(client)

    def holding(self) -> int:
        """Slow clients (``login``, ``api``) connected now, their request unanswered."""
        return sum(1 for c in self._clients if c.kind != "big" and c.sock is not None)

    def _close(self, client: _Client) -> None:
        if client.sock is not None:
            client.sock.close()
            client.sock = None

    def _connect(self, client: _Client) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S)
        sock.sendall(client.request)
        sock.setblocking(False)
        client.sock, client.sent, client.answer = sock, 0, b""

    def _run(self) -> None:
        filler = b"x" * 65536
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for client in self._clients:
                    if client.sock is None:
                        if now >= client.next_s:
                            self._connect(client)
                            client.next_s = now + (self.interval_s if client.kind != "big" else 0)
                        continue
                    if now >= client.next_s:
                        try:
                            if client.kind == "big":
                                client.sent += client.sock.send(filler)
                            else:
                                client.sock.send(b" ")
                                client.next_s = now + self.interval_s
                        except BlockingIOError:
                            pass
                        except OSError:  # the server closed it: come back later
                            self._gone(client, now)
                self._read_answers()
        except Exception as e:  # reported by the test
            self.errors.append(repr(e))

    def _read_answers(self) -> None:
        socks = {c.sock: c for c in self._clients if c.sock is not None}
        readable, _, _ = select.select(list(socks), [], [], 0.02)
        for sock in readable:
            client = socks[sock]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            client.answer += data
            if not data or b"\r\n\r\n" in client.answer:
                self._gone(client, time.monotonic())

    def _gone(self, client: _Client, now: float) -> None:
        status = client.answer[9:12].decode("ascii", "replace") or "closed"
        self.answers[f"{client.kind} {status}"] += 1
        self._close(client)
        client.next_s = now if client.kind == "login" else now + self.pause_s


def _no_traceback(service: LiveService) -> None:
    log = service.server.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert " 500" not in log, log[-3000:]
    metrics = httpx.get(f"{service.url}/metrics", timeout=WAIT_S).text
    assert 'status_class="5xx"' not in metrics


def test_slow_unauthenticated_clients_do_not_stall_an_authenticated_one(
    service: LiveService,
) -> None:
    started = time.monotonic()
    client = httpx.Client(base_url=service.url, headers=service.headers, timeout=WAIT_S)
    attack = SlowAttack(service.server.port).start()
    try:
        wait_until(lambda: attack.holding() >= SLOW_LOGINS, "the slow clients")
        latencies: list[float] = []
        holding: list[int] = []
        ready: list[int] = []
        run_ids: list[str] = []
        for i in range(100):
            holding.append(attack.holding())
            t0 = time.perf_counter()
            if i % 2 == 0:
                run_ids.append(str(uuid.uuid4()))
                response = client.put(f"/api/v1/runs/{run_ids[-1]}", json={"name": f"r{i}"})
                assert response.status_code == 201, response.text
            else:
                response = client.get(f"/api/v1/runs/{run_ids[-1]}")
                assert response.status_code == 200, response.text
            latencies.append(time.perf_counter() - t0)
            if i % 10 == 9:
                ready.append(httpx.get(f"{service.url}/readyz", timeout=WAIT_S).status_code)
            time.sleep(0.05)  # spread over several of the logins' 5 s deadlines
    finally:
        attack.stop()
        client.close()
    p99 = percentile(latencies, 99)
    assert not attack.errors, attack.errors
    assert min(holding) >= 20, (holding, attack.answers)
    assert ready == [200] * 10
    assert p99 <= P99_LIMIT_S, (p99, sorted(latencies)[-5:], attack.answers)
    # The API clients were refused from their headers; the 8 MiB ones too, their connection
    # closed under them (the 401 itself may be lost to the reset the unread body causes).
    assert attack.answers["api 401"] > 0, attack.answers
    assert attack.answers["login 408"] > 0, attack.answers  # the login deadline came by
    assert {k.split()[1] for k in attack.answers} <= {"401", "408", "closed"}, attack.answers
    _no_traceback(service)
    assert time.monotonic() - started < TEST_LIMIT_S


def _request_head(method: str, path: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode("ascii")


def _answer(sock: socket.socket) -> bytes:
    """The response until the server closes the connection (bounded)."""
    sock.settimeout(WAIT_S)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    "token", [None, "not-a-token", "tl_000000000000_" + "A" * 43], ids=["none", "bad", "unknown"]
)
def test_an_8_mib_body_without_a_valid_token_is_refused_before_it_is_sent(
    service: LiveService, token: str | None
) -> None:
    """The 401 (413 for the login form) comes back on the headers alone, the connection
    closed: not a byte of the body was needed."""
    run = f"/api/v1/runs/{uuid.uuid4()}"
    for method, path, status in (
        ("PUT", run, b"401"),
        ("POST", f"{run}/chunks", b"401"),
        ("POST", "/login", b"413"),
    ):
        with socket.create_connection(("127.0.0.1", service.server.port), timeout=WAIT_S) as sock:
            sock.sendall(_request_head(method, path, EIGHT_MIB, token))
            answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
        assert b"connection: close" in answer.lower()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_fifteen_8_mib_bodies_without_a_token_leave_the_memory_alone(service: LiveService) -> None:
    """As found: memory went from 214 to 873 MB. Now the bodies are never read."""
    assert service.server.process is not None
    pid = service.server.process.pid
    for _ in range(5):  # warm up: first requests import and cache what later ones use
        httpx.get(f"{service.url}/api/v1/runs", headers=service.headers, timeout=WAIT_S)
    before = _rss_bytes(pid)
    errors: list[str] = []

    def send() -> None:
        try:
            with socket.create_connection(("127.0.0.1", service.server.port), timeout=WAIT_S) as s:
                s.sendall(_request_head("PUT", f"/api/v1/runs/{uuid.uuid4()}", EIGHT_MIB))
                body = b"[" + b"1," * (EIGHT_MIB // 2 - 1) + b"1"
                try:
                    s.sendall(body)
                    answer = _answer(s)
                except OSError:
                    return  # closed under it after the 401, the body unread: as it should be
                if not answer.startswith(b"HTTP/1.1 401"):
                    errors.append(answer[:100].decode("latin-1"))
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=send) for _ in range(15)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT_S)
    assert not errors, errors
    assert _rss_bytes(pid) - before < 64 * 1024 * 1024


def test_a_client_gone_mid_body_is_no_500_and_writes_nothing(service: LiveService) -> None:
    engine = make_engine(service.database_url)
    before = fingerprint(engine)
    run = f"/api/v1/runs/{uuid.uuid4()}"
    partial = b'{"name": "half a run", "kind": "train'
    for method, path in (
        ("PUT", run),
        ("POST", f"{run}/chunks"),
        ("POST", f"{run}/phases"),
        ("POST", "/login"),
    ):
        with socket.create_connection(("127.0.0.1", service.server.port), timeout=WAIT_S) as sock:
            sock.sendall(_request_head(method, path, 1000, service.token) + partial)
            time.sleep(0.2)  # let the server start reading; then vanish
    # Bounded wait until the server has seen all four go (they are counted as 4xx).
    wait_until(
        lambda: _counted_4xx(service) >= 4, "the server to count the disconnects", timeout_s=WAIT_S
    )
    _no_traceback(service)
    assert httpx.get(f"{service.url}{run}", headers=service.headers).status_code == 404
    try:
        assert fingerprint(engine) == before
    finally:
        engine.dispose()
    assert ledger_problems(service.database_url) == []


def _counted_4xx(service: LiveService) -> float:
    metrics = httpx.get(f"{service.url}/metrics", timeout=WAIT_S).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("thermoledger_http_requests_total{") and 'status_class="4xx"' in line
    )


class TunedServer(LiveServer):
    """`LiveServer` with ``THERMOLEDGER_*`` settings of the test's own in its environment."""

    def __init__(self, database_url: str, log_path: Path, env: dict[str, str]) -> None:
        super().__init__(database_url, log_path)
        self.env = env

    def start(self) -> None:
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
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env={**env, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, "the server to answer")

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture
def tuned(tmp_path: Path) -> Iterator[tuple[TunedServer, str]]:
    """A server with a 1 s header timeout and a 1 s body deadline, and an ingest token."""
    with dbutil.database_url("sqlite", tmp_path) as url:
        token = migrate_and_issue_token(url, project="slow")
        server = TunedServer(
            url,
            tmp_path / "server.log",
            {"THERMOLEDGER_HEADER_TIMEOUT_S": "1", "THERMOLEDGER_BODY_TIMEOUT_S": "1"},
        )
        server.start()
        try:
            yield server, token
        finally:
            server.stop()


def _closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bytes:
    """Send ``trickle`` a byte at a time (0.2 s apart) until the server closes the
    connection; returns what it answered. Fails if the whole trickle got through."""
    sock.settimeout(0.2)
    for byte in trickle:
        try:
            sock.send(bytes([byte]))
            if data := sock.recv(65536):
                return data + _answer(sock)
        except TimeoutError:
            continue
        except OSError:
            return b""
    try:
        return _answer(sock)
    except OSError:
        return b""


def _response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_connection_slow_to_send_its_headers_is_closed_while_others_are_served(
    tuned: tuple[TunedServer, str],
) -> None:
    server, token = tuned
    address = ("127.0.0.1", server.port)
    silent = socket.create_connection(address, timeout=WAIT_S)
    partial = socket.create_connection(address, timeout=WAIT_S)
    partial.sendall(b"GET /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    # A keep-alive connection: one request served, the next one started and left hanging.
    kept = socket.create_connection(address, timeout=WAIT_S)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _response(kept).startswith(b"HTTP/1.1 200")
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=WAIT_S) as client:
        for _ in range(3):
            assert client.get("/api/v1/runs").status_code == 200  # others are served meanwhile
    trickling = socket.create_connection(address, timeout=WAIT_S)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 40 + b"\r\n\r\n"
    trickled = _closed_by_server(trickling, request)
    assert trickled.startswith(b"HTTP/1.1 408"), trickled[:100]
    assert trickled.endswith(b"within 1 s\n")  # THERMOLEDGER_HEADER_TIMEOUT_S
    assert _answer(partial).startswith(b"HTTP/1.1 408")
    assert _answer(kept).startswith(b"HTTP/1.1 408")
    assert _answer(silent) == b""  # nothing to answer: just closed
    for sock in (silent, partial, kept, trickling):
        sock.close()
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_a_slow_authenticated_body_is_refused_at_its_deadline(
    tuned: tuple[TunedServer, str],
) -> None:
    server, token = tuned
    run = f"/api/v1/runs/{uuid.uuid4()}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(_request_head("PUT", run, 100, token) + b'{"name": ')
        answer = _closed_by_server(sock, b'"slow", "kind": "training"' + b" " * 60)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"body_timeout"' in answer
    response = httpx.get(f"{server.url}{run}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "protocol", [HttpToolsHeaderTimeout, H11HeaderTimeout], ids=["httptools", "h11"]
)
def test_either_protocol_takes_its_header_timeout_from_the_app(
    tmp_path: Path, protocol: type[HttpToolsHeaderTimeout | H11HeaderTimeout]
) -> None:
    """uvicorn in a thread with the app's ``header_timeout_s`` (through the lifespan state),
    over uvicorn's own parser and over h11."""
    with dbutil.database_url("sqlite", tmp_path) as url:
        migrate.upgrade(url)
        app = create_app(clean_settings(database_url=url, header_timeout_s=0.5))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, http=protocol, log_config=None, lifespan="on"
            )
        )
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started, "uvicorn to start")
            partial = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            silent = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            answer = _answer(partial)
            assert answer.startswith(b"HTTP/1.1 408")
            assert answer.endswith(b"within 0.5 s\n")  # the app's setting, not the default
            assert _answer(silent) == b""
            partial.close()
            silent.close()
        finally:
            server.should_exit = True
            thread.join(timeout=WAIT_S)
            app.state.engine.dispose()
