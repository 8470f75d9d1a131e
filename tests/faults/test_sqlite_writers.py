"""SQLite under concurrent writers: no client ever sees "database is locked".

Two service processes share one SQLite file (as two ``serve`` commands on one laptop would),
each with a dozen uploaders posting as fast as they are answered, readers fetching reports, and
a third process that takes SQLite's write lock and sits on it for a second, twice — what a
backup, a ``VACUUM`` or an operator's ``sqlite3`` shell does. Every request must answer 200
(SQLite's busy timeout makes writers queue for the lock instead of failing), every repeat must
be a duplicate, and the file must hold every chunk once.

The first process gets more uploaders than its route thread pool has threads (40): without the
service's in-flight cap (`service.guard.RequestGuard`), a request holding the write lock could
wait for a thread that every other request holds while it waits for that lock, until the 30 s
busy timeout turned into "database is locked" (503); ``bench/soak.py --backend sqlite
--uploaders 45`` reproduces that load for longer. In-process retries of one batch are
``tests/service/test_concurrency.py``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.liveserver import LiveServer
from tests.faults.harness import (
    WAIT_S,
    LiveService,
    gaps_in_order,
    ledger_problems,
    stored_seqs,
    upload_until,
)
from tests.support.client import bearer

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

#: Uploaders on the first and on the second process: the first over the 40-thread pool.
UPLOADERS = (44, 4)
READERS = 4
DURATION_S = 5.0
LOCK_HELD_S = 1.0


def _hold_the_write_lock(path: str, stop: threading.Event, held: list[float]) -> None:
    """Take SQLite's write lock (``BEGIN IMMEDIATE``) for `LOCK_HELD_S`, twice, 0.5 s apart.

    Both holds happen even if the clients are done by then (a loaded machine can make the lock
    wait long): ``stop`` only shortens the pause before the second.
    """
    connection = sqlite3.connect(path, timeout=WAIT_S, isolation_level=None)
    try:
        for _ in range(2):
            stop.wait(0.5)
            connection.execute("BEGIN IMMEDIATE")
            started_s = time.monotonic()
            time.sleep(LOCK_HELD_S)
            connection.execute("COMMIT")
            held.append(time.monotonic() - started_s)
    finally:
        connection.close()


def _read_reports(base_url: str, token: str, deadline_s: float, problems: list[str]) -> int:
    """List runs and fetch a report, over and over; returns how many requests were made."""
    made = 0
    headers = bearer(token)
    with httpx.Client(base_url=f"{base_url}/api/v1", headers=headers, timeout=WAIT_S) as client:
        while time.monotonic() < deadline_s:
            runs = client.get("/runs", params={"limit": 5})
            made += 1
            if runs.status_code != 200:
                problems.append(f"GET runs: {runs.status_code} {runs.text[:200]}")
                return made
            for run in runs.json()["items"][:1]:
                report = client.get(f"/runs/{run['id']}/report")
                made += 1
                if report.status_code not in (200, 409):  # 409: no chunk stored yet
                    problems.append(f"GET report: {report.status_code} {report.text[:200]}")
                    return made
    return made


def test_concurrent_writers_on_one_sqlite_file_never_see_it_locked(
    sqlite_service: LiveService, tmp_path: Path
) -> None:
    first = sqlite_service
    second = LiveServer(first.database_url, tmp_path / "second.log")
    second.start()
    try:
        path = sa.make_url(first.database_url).database
        assert path is not None
        stop, held = threading.Event(), list[float]()
        locker = threading.Thread(target=_hold_the_write_lock, args=(path, stop, held))
        deadline_s = time.monotonic() + DURATION_S
        reader_problems: list[str] = []
        locker.start()
        try:
            with ThreadPoolExecutor(max_workers=sum(UPLOADERS) + READERS) as pool:
                uploads = [
                    pool.submit(upload_until, url, first.token, deadline_s, host=f"w{k}-{i}")
                    for k, (url, count) in enumerate(
                        zip((first.url, second.url), UPLOADERS, strict=True)
                    )
                    for i in range(count)
                ]
                readers = [
                    pool.submit(_read_reports, url, first.token, deadline_s, reader_problems)
                    for url in (first.url, second.url) * (READERS // 2)
                ]
                results = [u.result() for u in uploads]
                reads = sum(r.result() for r in readers)
        finally:
            stop.set()
            locker.join(WAIT_S)
    finally:
        second.stop()

    assert len(held) == 2  # the lock was really held while the clients wrote
    errors = [f"{r.host}: {e}" for r in results for e in r.errors] + reader_problems
    assert not errors, "\n".join(errors[:10])
    assert not any("locked" in e for e in errors)
    assert reads > 0
    for r in results:
        assert r.chunks > 0, f"{r.host} got nothing through"
        assert (r.stored, r.duplicates) == (r.chunks, r.repeats)
    stored = stored_seqs(first.database_url)
    assert not gaps_in_order(stored)
    assert {run: len(seqs) for (run, _), seqs in stored.items()} == {
        r.run_id: r.chunks for r in results
    }
    assert ledger_problems(first.database_url) == []
