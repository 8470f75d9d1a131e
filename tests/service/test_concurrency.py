"""Concurrent identical uploads: every request succeeds, every chunk is stored once."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run, row_counts
from thermoledger.db.chunks import _insert_chunks
from thermoledger.db.errors import Conflict
from thermoledger.db.models import Device, EnergyMethod
from thermoledger.db.records import ChunkRow
from thermoledger.service.ingest import prepare_batch
from thermoledger.service.schemas import IngestBatchIn


def test_parallel_retries_store_each_chunk_once(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    body = batch([chunk(s, device_index=d) for d in range(2) for s in range(5)])

    def upload(_: int) -> int:
        # Each thread its own client and event loop; not entered as a context manager, which
        # would run the app's shutdown (disposing the shared engine) when a thread finishes.
        own_client = TestClient(app)
        response = own_client.post(
            f"/api/v1/runs/{run_id}/chunks", json=body, headers=project.ingest
        )
        return int(response.status_code)

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(upload, range(4)))
    assert statuses == [200] * 4
    assert row_counts(app, run_id) == {"device": 2, "chunk": 10, "phase": 0}
    # The running totals count each chunk once too.
    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read).json()
    assert report["energy"]["total"]["energy_j"] == pytest.approx(10 * 3000.0)
    assert [d["samples"] for d in report["energy"]["by_device"]] == [50, 50]


def _prepared(*chunks: dict[str, object]) -> ChunkRow:
    parsed = IngestBatchIn.model_validate_json(json.dumps(batch(list(chunks))))
    return prepare_batch(parsed, max_chunks=10, max_samples_per_chunk=100).chunks[0]


def test_a_key_stored_behind_the_check_is_verified_by_hash(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    """The INSERT skips a key a concurrent request stored after this one looked; the content
    hash then tells a harmless repeat from a conflict."""
    run_id = create_run(client, project)
    stored = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
    )
    assert stored.status_code == 200
    with app.state.sessionmaker() as session, session.begin():
        device_id = session.scalars(
            sa.select(Device.id).where(Device.run_id == uuid.UUID(run_id))
        ).one()
    same = _prepared(chunk(0))
    other = _prepared(chunk(0, power_w=310.0))
    assert same.method is EnergyMethod.COUNTER
    with app.state.sessionmaker() as session, session.begin():
        _insert_chunks(session, uuid.UUID(run_id), [(device_id, same)], compress_samples=False)
    with (
        app.state.sessionmaker() as session,
        session.begin(),
        pytest.raises(Conflict, match="stored concurrently"),
    ):
        _insert_chunks(session, uuid.UUID(run_id), [(device_id, other)], compress_samples=False)
    assert row_counts(app, run_id)["chunk"] == 1
