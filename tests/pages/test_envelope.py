"""Power envelopes: bounded buckets whatever the run's length, and spikes that survive them."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.support.builders import T0_S, batch, chunk
from tests.support.client import Project, TestClient, create_run
from thermoledger.db.envelope import MAX_BUCKETS, power_envelope
from thermoledger.db.errors import InvalidInput, NotFound
from thermoledger.db.models import Chunk
from thermoledger.db.tokens import get_project

SPIKE_W = 1000.0
BASE_W = 300.0


def _post(client: TestClient, project: Project, run_id: str, chunks: list[dict[str, Any]]) -> None:
    for start in range(0, len(chunks), 50):
        response = client.post(
            f"/api/v1/runs/{run_id}/chunks",
            json=batch(chunks[start : start + 50]),
            headers=project.ingest,
        )
        assert response.status_code == 200, response.text


def _spiked(seq: int, *, at: int, n: int = 10, samples: bool = True, **kw: Any) -> dict[str, Any]:
    """A constant 300 W chunk whose sample ``at`` reads 1000 W (one sample in the whole run)."""
    c = chunk(seq, n=n, power_w=BASE_W, **kw)
    c["max_power_w"] = SPIKE_W
    if samples:
        c["samples"]["power_w"][at] = SPIKE_W
    else:
        del c["samples"]
    return c


def _envelope(app: FastAPI, project: Project, run_id: str, **kw: Any) -> Any:
    with app.state.sessionmaker() as session, session.begin():
        project_id = get_project(session, slug=project.slug).id
        return power_envelope(session, project_id=project_id, run_id=uuid.UUID(run_id), **kw)


def test_short_run_uses_samples_and_keeps_a_single_sample_spike(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    # 2 devices × 30 chunks × 10 samples at 1 s: 300 s; chunks (30) are coarser than 100 buckets.
    chunks = [chunk(s, device_index=d) for d in range(2) for s in range(30) if (d, s) != (1, 17)]
    chunks.append(_spiked(17, at=4, device_index=1))
    _post(client, project, run_id, chunks)

    envelope = _envelope(app, project, run_id, buckets=100)

    assert envelope.source == "samples"
    assert envelope.buckets <= 100
    assert envelope.bucket_s >= 1.0  # never finer than the sampling interval
    quiet, spiky = envelope.devices
    assert quiet.max_power_w.max() == pytest.approx(BASE_W)
    assert spiky.max_power_w.max() == pytest.approx(SPIKE_W)
    assert np.count_nonzero(spiky.max_power_w > BASE_W) == 1  # one bucket holds the spike
    hit = int(np.argmax(spiky.max_power_w))
    spike_t = T0_S + 17 * 10 + 4
    start = envelope.start_s(spiky)[hit]
    assert start <= spike_t < start + envelope.bucket_s
    np.testing.assert_allclose(spiky.min_power_w, BASE_W)
    assert spiky.mean_power_w[hit] < SPIKE_W  # the mean alone would have hidden it


def test_long_run_uses_summaries_with_bounded_buckets(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    # 400 chunks of 100 s without raw samples (as after raw arrays expired): 11 h of data.
    chunks = [chunk(s, n=100, power_w=BASE_W) for s in range(400) if s != 271]
    for c in chunks:
        del c["samples"]
    chunks.append(_spiked(271, at=0, n=100, samples=False))
    _post(client, project, run_id, chunks)

    envelope = _envelope(app, project, run_id, buckets=50)

    assert envelope.source == "summaries"
    assert envelope.buckets == 50
    (device,) = envelope.devices
    assert len(device) == 50  # every bucket has data: no false gaps
    assert device.max_power_w.max() == pytest.approx(SPIKE_W)
    assert np.count_nonzero(device.max_power_w > BASE_W) == 1
    np.testing.assert_allclose(device.mean_power_w, BASE_W)
    hit = int(np.argmax(device.max_power_w))
    start = envelope.start_s(device)[hit]
    assert start <= T0_S + 271 * 100 < start + envelope.bucket_s


def test_buckets_cap_even_when_asked_for_more_than_the_data_resolves(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    _post(client, project, run_id, [chunk(s) for s in range(5)])  # 50 s at 1 s
    envelope = _envelope(app, project, run_id, buckets=MAX_BUCKETS)
    assert envelope.source == "samples"
    assert envelope.buckets <= 50  # a bucket is never finer than the sampling interval
    (device,) = envelope.devices
    assert len(device) == envelope.buckets


def test_a_sampling_gap_shows_as_missing_buckets(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    # chunks 0-9 and 20-29 of one device: chunks 10-19 are missing (a 100 s outage)
    chunks = [chunk(s) for s in range(10)]
    chunks += [chunk(s) for s in range(20, 30)]
    chunks[9]["t1_s"] = chunks[10]["t0_s"]  # the chunk before the outage bridges it (a gap)
    chunks[9]["gap_s"], chunks[9]["gap_count"] = 100.0, 1
    _post(client, project, run_id, chunks)
    envelope = _envelope(app, project, run_id, buckets=60)
    (device,) = envelope.devices
    starts = envelope.start_s(device) - envelope.t0_s
    assert not np.any((starts > 101) & (starts < 199))
    assert np.max(np.diff(device.bucket)) > 3


def test_envelope_is_scoped_to_the_project(
    app: FastAPI, client: TestClient, project: Project, other: Project, run_id: str
) -> None:
    _post(client, project, run_id, [chunk(0)])
    with pytest.raises(NotFound):
        _envelope(app, other, run_id)
    with pytest.raises(InvalidInput, match="buckets"):
        _envelope(app, project, run_id, buckets=0)


def test_run_without_chunks_has_an_empty_envelope(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    envelope = _envelope(app, project, run_id)
    assert envelope.devices == ()
    assert envelope.to_dict()["devices"] == []


def test_a_damaged_sample_blob_falls_back_to_its_chunk_summary(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    _post(client, project, run_id, [chunk(s) for s in range(4)] + [_spiked(4, at=3)])
    with app.state.engine.begin() as connection:
        connection.execute(
            sa.update(Chunk)
            .where(Chunk.run_id == uuid.UUID(run_id), Chunk.seq == 4)
            .values(samples=b"\x01\x03not zlib")
        )
    envelope = _envelope(app, project, run_id, buckets=100)
    (device,) = envelope.devices
    assert envelope.source == "samples"
    assert device.max_power_w.max() == pytest.approx(SPIKE_W)  # from the chunk's max_power_w
