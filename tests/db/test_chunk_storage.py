"""Chunk rows come back from the table exactly as `db.chunks.ingest_chunks` was given them.

On PostgreSQL they travel as a binary ``COPY``; on SQLite as an executemany. One batch mixes
methods, chunks with and without samples, blobs of different sizes and an unbounded band.
"""

from __future__ import annotations

import math

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.support.dbrows import gpu_run
from thermoledger.db.chunks import ingest_chunks
from thermoledger.db.models import Chunk, EnergyMethod
from thermoledger.db.records import UNBOUNDED_J, ChunkRow
from thermoledger.db.samples import decode_samples, encode_samples
from thermoledger.db.types import utcnow


def _row(k: int, device_key: str, **changes: object) -> ChunkRow:
    t0 = 1.76e9 + 10.0 * k
    n = 5 + k % 3
    samples = {
        "t_s": np.linspace(0.0, 9.0, n, dtype=np.float32),
        "power_w": np.full(n, 300.5 + k, np.float32),
    }
    values = {
        "position": k,
        "device_key": device_key,
        "seq": k,
        "t0_s": t0,
        "t1_s": t0 + 10.0,
        "n": n,
        "energy_j": 3005.0 + 0.1 * k,
        "sensor_uncertainty_j": 60.25,
        "bound_below_j": 1.5,
        "bound_above_j": 2.5e-3,
        "min_power_w": 299.0,
        "mean_power_w": 300.5,
        "max_power_w": 301.0 + k,
        "method": EnergyMethod.COUNTER if k % 2 else EnergyMethod.POWER_AVG,
        "gap_s": 0.0,
        "gap_count": 0,
        "reset_count": k % 2,
        "wrap_count": 0,
        "content_hash": f"{k:064x}",
        "samples": None,
        "blob": encode_samples(samples, compress=k % 4 == 0),
    }
    values.update(changes)
    return ChunkRow(**values)  # type: ignore[arg-type]


def test_every_column_comes_back_as_sent(session: Session) -> None:
    with session.begin():
        project_id, run_id, device = gpu_run(session, slug="storage", name="storage")
        sent = [_row(k, device.key) for k in range(9)]
        sent[3] = _row(3, device.key, blob=None)  # the meter sent no samples
        sent[5] = _row(5, device.key, bound_above_j=math.inf)  # unbounded above
        acks = ingest_chunks(
            session, project_id=project_id, run_id=run_id, devices=[device], chunks=sent
        )
    assert [a.status for a in acks] == ["stored"] * len(sent)
    stored = {
        row.seq: row
        for row in session.execute(sa.select(Chunk).where(Chunk.run_id == run_id)).scalars()
    }
    assert sorted(stored) == [c.seq for c in sent]
    for c in sent:
        row = stored[c.seq]
        for name in (
            "t0_s",
            "t1_s",
            "n",
            "energy_j",
            "sensor_uncertainty_j",
            "bound_below_j",
            "min_power_w",
            "mean_power_w",
            "max_power_w",
            "gap_s",
            "gap_count",
            "reset_count",
            "wrap_count",
            "content_hash",
        ):
            assert getattr(row, name) == getattr(c, name), (c.seq, name)
        assert row.method == c.method
        assert row.bound_above_j == min(c.bound_above_j, UNBOUNDED_J)
        assert row.samples == c.blob
        if c.blob is not None:
            assert row.samples is not None
            assert list(decode_samples(row.samples)) == ["t_s", "power_w"]
        assert abs((row.created_at - utcnow()).total_seconds()) < 3600
