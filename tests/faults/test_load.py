"""Load: 50 concurrent uploaders against PostgreSQL for a bounded time; exactly once, no errors.

Each uploader (a thread with its own HTTP connection and its own token, like a fleet of
sidecars) declares its own run and posts one new chunk per request, as fast as the service
answers, for `DURATION_S`; every tenth request also repeats the previous chunk, as a meter
does after a lost answer. Every request must answer 200,
every repeat must come back as a duplicate, and the database must hold seqs 0..n-1 of every
run, once each. The ingest latency percentiles are printed, never asserted (the machine is
shared).

One token per uploader on purpose: fifty uploaders sharing one token stall for 30 s, again and
again, and get 503s today. Every request updates the token's ``last_used_at`` inside its own
transaction (once per interval), so they queue on that row; the request holding it needs a
thread-pool thread for its next step while all 40 are held by requests waiting for the row or for a
connection, until the 30 s pool timeout. See the fault suite's report;
``bench/soak.py --backend postgres --uploaders 50 --shared-token`` reproduces it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.orm import Session

from tests.faults.harness import (
    LiveService,
    gaps_in_order,
    issue_tokens,
    ledger_problems,
    percentile,
    stored_seqs,
    upload_until,
)
from tests.support.client import TestClient, make_project
from thermoledger.service.deps import get_session

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

UPLOADERS = 50
DURATION_S = 6.0


@pytest.mark.postgres
def test_fifty_uploaders_store_every_chunk_once(
    postgres_service: LiveService, capsys: pytest.CaptureFixture[str]
) -> None:
    service = postgres_service
    tokens = issue_tokens(service.database_url, UPLOADERS)
    started_s = time.monotonic()
    deadline_s = started_s + DURATION_S
    with ThreadPoolExecutor(max_workers=UPLOADERS) as pool:
        results = list(
            pool.map(
                lambda i: upload_until(service.url, tokens[i], deadline_s, host=f"load-{i}"),
                range(UPLOADERS),
            )
        )
    elapsed_s = time.monotonic() - started_s

    errors = [f"{r.host}: {e}" for r in results for e in r.errors]
    assert not errors, "\n".join(errors[:10])
    for r in results:
        assert r.chunks > 0, f"{r.host} got nothing through"
        assert (r.stored, r.duplicates) == (r.chunks, r.repeats)
    stored = stored_seqs(service.database_url)
    assert not gaps_in_order(stored)
    assert {run: len(seqs) for (run, _), seqs in stored.items()} == {
        r.run_id: r.chunks for r in results
    }
    assert ledger_problems(service.database_url) == []

    latencies_ms = [1e3 * s for r in results for s in r.latencies_s]
    with capsys.disabled():
        print(
            f"\nload: {UPLOADERS} uploaders, {len(latencies_ms)} requests "
            f"({sum(r.chunks for r in results)} chunks) in {elapsed_s:.1f} s on PostgreSQL; "
            f"ingest latency p50 {percentile(latencies_ms, 50):.1f} ms, "
            f"p99 {percentile(latencies_ms, 99):.1f} ms, max {max(latencies_ms):.1f} ms"
        )


def test_a_connection_pool_timeout_is_a_retryable_503_not_a_500(app: FastAPI) -> None:
    """Under load the pool can stay exhausted past its timeout (SQLAlchemy's ``TimeoutError``,
    not an ``OperationalError``); a meter must read that as "try again later", like any 503."""

    def exhausted() -> Iterator[Session]:
        raise sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")
        yield  # pragma: no cover - a generator dependency, like the real one

    tokens = make_project(app)
    app.dependency_overrides[get_session] = exhausted
    try:
        response = TestClient(app, raise_server_exceptions=False).get(
            "/api/v1/runs", headers=tokens.read
        )
    finally:
        app.dependency_overrides.clear()
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
