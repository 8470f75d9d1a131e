"""``/metrics`` under several worker processes: prometheus_client's multiprocess mode.

A real ``thermoledger-server serve --workers 2`` on loopback answers requests from both
workers; every scrape, whichever worker answers it, must report all of them. Each worker's
own share is read from its file in the metrics directory (what prometheus_client writes), so
the test knows that both workers served requests and answered scrapes, and waits for the
files rather than for time: a worker counts a request just after sending its response.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.liveserver import ROOT, free_port, migrate_and_issue_token
from tests.support import dbutil
from tests.support.client import bearer
from thermoledger.service.metrics import (
    MULTIPROC_ENV,
    ServiceMetrics,
    forget_dead_workers,
    multiprocess_directory,
)

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

WAIT_S = 60.0
ROUTE = "/api/v1/runs"
REQUESTS = "thermoledger_http_requests_total"


# --- the metrics directory -------------------------------------------------------------------


def test_a_private_directory_is_named_in_the_environment_and_removed_at_exit(
    tmp_path: Path,
) -> None:
    environ: dict[str, str] = {}
    with multiprocess_directory(environ, temp_root=tmp_path) as directory:
        assert directory.is_dir()
        assert directory.parent == tmp_path
        assert environ[MULTIPROC_ENV] == str(directory)
        (directory / "counter_123.db").write_bytes(b"\0" * 8)  # what a worker leaves
    assert not directory.exists()
    assert MULTIPROC_ENV not in environ


def test_a_private_directory_is_removed_when_the_server_fails(tmp_path: Path) -> None:
    environ: dict[str, str] = {}

    def serve() -> None:
        with multiprocess_directory(environ, temp_root=tmp_path) as directory:
            (directory / "counter_123.db").write_bytes(b"\0" * 8)
            raise OSError("port in use")

    with pytest.raises(OSError, match="port in use"):
        serve()
    assert list(tmp_path.iterdir()) == []
    assert MULTIPROC_ENV not in environ


def test_an_operators_directory_is_wiped_of_stale_files_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    for name in ("counter_1.db", "histogram_1.db", "gauge_livesum_1.db", "gauge_max_1.db"):
        (directory / name).write_bytes(b"\0" * 8)
    (directory / "README").write_text("not ours")
    environ = {MULTIPROC_ENV: str(directory)}
    with multiprocess_directory(environ, temp_root=tmp_path / "unused") as given:
        assert given == directory
        assert sorted(p.name for p in directory.iterdir()) == ["README"]
        assert environ == {MULTIPROC_ENV: str(directory)}
        (directory / "counter_2.db").write_bytes(b"\0" * 8)
    # Kept, with this run's files, until the next start.
    assert sorted(p.name for p in directory.iterdir()) == ["README", "counter_2.db"]
    assert environ == {MULTIPROC_ENV: str(directory)}


def test_an_operators_directory_is_created_when_missing(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    with multiprocess_directory({MULTIPROC_ENV: str(directory)}) as given:
        assert given == directory
        assert directory.is_dir()


def test_an_operators_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "prom"
    path.write_text("")
    directory = multiprocess_directory({MULTIPROC_ENV: str(path)})
    with pytest.raises(NotADirectoryError, match=MULTIPROC_ENV):
        directory.__enter__()


def test_workers_that_died_without_a_goodbye_leave_the_live_gauges(tmp_path: Path) -> None:
    names = [
        "gauge_livesum_111.db",
        "gauge_livemax_111.db",
        "gauge_max_111.db",
        "counter_111.db",
        "histogram_111.db",
        "gauge_livesum_222.db",
        f"gauge_livesum_{os.getpid()}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"\0" * 8)
    assert forget_dead_workers(tmp_path, alive=lambda pid: pid == 222) == [111]
    left = sorted(p.name for p in tmp_path.iterdir())
    # Counts of the dead worker stay in the totals; live gauges of the living stay too.
    assert left == sorted(set(names) - {"gauge_livesum_111.db", "gauge_livemax_111.db"})


def test_a_process_that_has_exited_counts_as_dead(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                           capture_output=True, text=True)  # fmt: skip
    gone = int(child.stdout)
    for pid in (gone, os.getpid()):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"\0" * 8)
    assert forget_dead_workers(tmp_path) == [gone]
    assert [p.name for p in tmp_path.iterdir()] == [f"gauge_livesum_{os.getpid()}.db"]


@pytest.mark.skipif(
    MULTIPROC_ENV in os.environ, reason=f"this test process was started with {MULTIPROC_ENV}"
)
def test_multiprocess_metrics_refuse_a_process_started_without_the_variable(
    tmp_path: Path,
) -> None:
    # prometheus_client chose in-memory values at import: nothing would reach the directory,
    # and /metrics would serve nothing. Say so instead.
    with pytest.raises(RuntimeError, match=MULTIPROC_ENV):
        ServiceMetrics(multiprocess_dir=tmp_path)


# --- a real server with two workers ----------------------------------------------------------


def worker_counts(directory: Path, route: str) -> dict[int, float]:
    """Each worker's own count of ``GET route`` answered 2xx, from its counter file."""
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        counts[pid] = 0.0
        # prometheus_client's multiprocess internals are untyped
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for s in family.samples:
                if s.name == REQUESTS and s.labels == {
                    "method": "GET",
                    "route": route,
                    "status_class": "2xx",
                }:
                    counts[pid] += s.value
    return counts


def scraped(text: str, name: str, **labels: str) -> list[float]:
    """The values of every series ``name`` with exactly ``labels`` in a Prometheus text."""
    return [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.labels == labels
    ]


def wait_for(
    condition: str, check: Callable[[], bool], server: subprocess.Popen[bytes], log: Path
) -> None:
    """Wait (bounded) until ``check()`` holds, failing with ``condition`` and the server log."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert server.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{condition}: {log.read_text()[-3000:]}"
        time.sleep(0.05)


def write_stale_count(directory: Path, value: float) -> None:
    """A counter file a previous run left: ``value`` requests to `ROUTE`."""
    stale = MmapedDict(str(directory / "counter_999999.db"))  # type: ignore[no-untyped-call]
    try:
        key = mmap_key(
            "thermoledger_http_requests",
            REQUESTS,
            ["method", "route", "status_class"],
            ["GET", ROUTE, "2xx"],
            "HTTP requests answered, by route template and status class",
        )
        stale.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        stale.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def stop_server() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Servers to stop whatever happens; the whole process group goes if SIGTERM is not enough."""
    servers: list[subprocess.Popen[bytes]] = []
    yield servers
    for server in servers:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=WAIT_S)


@pytest.mark.parametrize("operator_dir", [False, True], ids=["private-dir", "operator-dir"])
def test_every_scrape_counts_the_requests_of_every_worker(
    tmp_path: Path, operator_dir: bool, stop_server: list[subprocess.Popen[bytes]]
) -> None:
    url = dbutil.sqlite_url(tmp_path)
    token = migrate_and_issue_token(url)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("THERMOLEDGER_") and k.upper() != MULTIPROC_ENV
    }
    env["TMPDIR"] = str(temp_root)  # where the private directory goes, to find it
    if operator_dir:
        directory = tmp_path / "prom"
        directory.mkdir()
        write_stale_count(directory, 1000.0)
        env[MULTIPROC_ENV] = str(directory)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "thermoledger.service.cli", "serve", "--database-url", url,
             "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    stop_server.append(server)

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    wait_for("the server did not answer", answers, server, log)
    if not operator_dir:
        (directory,) = temp_root.glob("thermoledger-metrics-*")
    assert not (directory / "counter_999999.db").exists()

    # Requests on fresh connections until both workers have answered some.
    sent = 0
    deadline = time.monotonic() + WAIT_S
    while sent < 20 or len([n for n in worker_counts(directory, ROUTE).values() if n]) < 2:
        assert time.monotonic() < deadline, f"one worker answered all {sent}: {log.read_text()}"
        for _ in range(10):
            response = httpx.get(f"{base}{ROUTE}", headers=bearer(token), timeout=10.0)
            assert response.status_code == 200, response.text
            sent += 1
    shares = worker_counts(directory, ROUTE)
    wait_for(
        f"the workers did not record {sent} requests ({shares})",
        lambda: sum(worker_counts(directory, ROUTE).values()) == sent,
        server,
        log,
    )
    assert all(n < sent for n in worker_counts(directory, ROUTE).values())

    # Scrapes on fresh connections until both workers have answered one: each sees them all.
    scrapes = 0
    deadline = time.monotonic() + WAIT_S
    while scrapes < 5 or len([n for n in worker_counts(directory, "/metrics").values() if n]) < 2:
        assert time.monotonic() < deadline, f"one worker answered all {scrapes} scrapes"
        text = httpx.get(f"{base}/metrics", timeout=10.0).text
        scrapes += 1
        labels = {"method": "GET", "route": ROUTE, "status_class": "2xx"}
        assert scraped(text, REQUESTS, **labels) == [float(sent)], text
        count = "thermoledger_http_request_duration_seconds_count"
        assert scraped(text, count, method="GET", route=ROUTE) == [float(sent)], text
        assert scraped(text, "thermoledger_service_info", version="0.1.0") == [1.0], text
        # One series summed over the workers (no pid label), counting this scrape at least
        # (the previous scrape's worker may not have finished with it yet).
        (in_flight,) = scraped(text, "thermoledger_http_requests_in_flight")
        assert in_flight >= 1.0, text

    server.terminate()
    assert server.wait(timeout=WAIT_S) == 0, log.read_text()
    if operator_dir:
        # The workers marked themselves dead at shutdown; their counts stay until next start.
        left = sorted(p.name for p in directory.iterdir())
        assert not [name for name in left if name.startswith("gauge_live")], left
        assert len([name for name in left if name.startswith("counter_")]) == 2, left
    else:
        assert not directory.exists()
        assert list(temp_root.iterdir()) == []
