"""A chunk's ``mem_busy_frac`` on the wire (JSON and binary), at ingest, in the totals and the
report, on SQLite and PostgreSQL.

Old meters never send the field: their batches are stored as before, with the same content
hashes (golden values computed with the code before the field existed). A value outside [0, 1]
(or NaN) is a 422 naming the field, and nothing is stored. The running totals keep the
decomposition's inputs equal to what `db.totals.rebuild_totals` derives from the chunks.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run, row_counts
from thermoledger.db.models import Chunk, DeviceTotal
from thermoledger.db.tokens import get_project
from thermoledger.db.totals import rebuild_totals
from thermoledger.meters.wire import (
    BATCH_BINARY,
    BINARY_CONTENT_TYPE,
    OPTIONAL_COLUMNS,
    dumps_batch,
    loads_binary_batch,
    split_binary_batch,
)
from thermoledger.service.ingest import prepare_batch
from thermoledger.service.schemas import IngestBatchIn

LIMITS: dict[str, Any] = {"max_chunks": 1000, "max_samples_per_chunk": 1000}
#: `service.ingest` content hashes of ``chunk(0)`` and ``chunk(1, power_w=412.5)`` as computed
#: by the code before ``mem_busy_frac`` existed: a chunk without it must keep its digest.
GOLDEN = (
    "05ea47569f760c78d80937123a18d6e41fb218fb125f8bbae8dfcb75fc53e6da",
    "a1cb0ede4d74de5e532113294ecaf1db77cb113ce8dc2d162ac309cc0046bfc9",
)


def _busy(seq: int, fraction: float | None, **kwargs: Any) -> dict[str, Any]:
    c = chunk(seq, **kwargs)
    if fraction is not None:
        c["mem_busy_frac"] = fraction
    return c


# --------------------------------------------------------------------------- the wire


def test_the_binary_form_carries_the_column_only_when_a_chunk_has_it() -> None:
    old = batch([chunk(0), chunk(1)])
    header, _ = split_binary_batch(
        dumps_batch(old["devices"], old["chunks"], samples_encoding="binary")
    )
    assert "mem_busy_frac" not in json.loads(header)["chunks"]
    new = batch([_busy(0, 0.25), _busy(1, None), _busy(2, 1.0)])
    body = dumps_batch(new["devices"], new["chunks"], samples_encoding=BATCH_BINARY)
    header, _ = split_binary_batch(body)
    assert json.loads(header)["chunks"]["mem_busy_frac"] == [0.25, None, 1.0]
    assert OPTIONAL_COLUMNS == ("mem_busy_frac",)
    back = loads_binary_batch(body)["chunks"]
    assert [c.get("mem_busy_frac") for c in back] == [0.25, None, 1.0]
    assert "mem_busy_frac" not in back[1]
    for encoding in ("json", "f64le-base64"):
        text = json.loads(dumps_batch(new["devices"], new["chunks"], samples_encoding=encoding))
        assert [c.get("mem_busy_frac") for c in text["chunks"]] == [0.25, None, 1.0]


def test_chunks_without_the_field_keep_their_content_hash() -> None:
    body = batch([chunk(0), chunk(1, power_w=412.5)])
    rows = prepare_batch(IngestBatchIn.model_validate_json(json.dumps(body)), **LIMITS).chunks
    assert tuple(row.content_hash for row in rows) == GOLDEN
    assert [row.mem_busy_frac for row in rows] == [None, None]
    # with the field the content differs, so a resend with another value is a conflict
    with_busy = batch([_busy(0, 0.5)])
    (row,) = prepare_batch(
        IngestBatchIn.model_validate_json(json.dumps(with_busy)), **LIMITS
    ).chunks
    assert row.content_hash != GOLDEN[0]
    assert row.mem_busy_frac == 0.5


# --------------------------------------------------------------------------- ingest


def _post(
    client: TestClient, project: Project, run_id: str, body: dict[str, Any], form: str
) -> Any:
    if form == "json":
        return client.post(f"/api/v1/runs/{run_id}/chunks", json=body, headers=project.ingest)
    data = dumps_batch(body["devices"], body["chunks"], samples_encoding=BATCH_BINARY)
    return client.post(
        f"/api/v1/runs/{run_id}/chunks",
        content=data,
        headers={**project.ingest, "Content-Type": BINARY_CONTENT_TYPE},
    )


def _stored(app: FastAPI, run_id: str) -> dict[int, float | None]:
    with app.state.engine.connect() as connection:
        rows = connection.execute(
            sa.select(Chunk.seq, Chunk.mem_busy_frac)
            .where(Chunk.run_id == uuid.UUID(run_id))
            .order_by(Chunk.seq)
        ).all()
    return dict(rows)


@pytest.mark.parametrize("form", ["json", "binary"])
def test_ingest_stores_the_fraction_and_null_where_absent(
    app: FastAPI, client: TestClient, project: Project, form: str
) -> None:
    run_id = create_run(client, project)
    body = batch([_busy(0, 0.125), _busy(1, None), _busy(2, 0.0), _busy(3, 1.0)])
    response = _post(client, project, run_id, body, form)
    assert response.status_code == 200, response.text
    assert _stored(app, run_id) == {0: 0.125, 1: None, 2: 0.0, 3: 1.0}
    # a repeat in the other form is the same content: a duplicate
    other = "binary" if form == "json" else "json"
    again = _post(client, project, run_id, body, other)
    assert again.status_code == 200, again.text
    assert again.json()["duplicates"] == 4


@pytest.mark.parametrize("form", ["json", "binary"])
@pytest.mark.parametrize("bad", [1.5, -0.01, math.nan, math.inf])
def test_a_fraction_outside_0_1_is_a_422_naming_the_field(
    app: FastAPI, client: TestClient, project: Project, form: str, bad: float
) -> None:
    run_id = create_run(client, project)
    body = batch([_busy(0, 0.5), _busy(1, bad)])
    if form == "json":  # json.dumps writes NaN and Infinity as the JS literals: refused too
        response = client.post(
            f"/api/v1/runs/{run_id}/chunks",
            content=json.dumps(body),
            headers={**project.ingest, "Content-Type": "application/json"},
        )
    else:
        response = _post(client, project, run_id, body, form)
    assert response.status_code == 422, response.text
    assert "mem_busy_frac" in response.text
    assert row_counts(app, run_id) == {"device": 0, "chunk": 0, "phase": 0}


# --------------------------------------------------------------------------- totals and report


def _report(client: TestClient, project: Project, run_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _totals(app: FastAPI, run_id: str) -> tuple[Any, ...]:
    columns = (
        DeviceTotal.quiet_power_w,
        DeviceTotal.quiet_power_high_w,
        DeviceTotal.mem_busy_s,
        DeviceTotal.mem_observed_s,
    )
    with app.state.engine.connect() as connection:
        (row,) = connection.execute(
            sa.select(*columns).where(DeviceTotal.run_id == uuid.UUID(run_id))
        ).all()
    return tuple(row)


def test_totals_keep_the_quietest_chunk_and_the_busy_time_in_any_order(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    powers = [520.0, 310.0, 480.0, 310.0, 650.0]
    busy = [0.5, None, 0.25, 0.75, 1.0]
    chunks = [_busy(i, b, power_w=p) for i, (p, b) in enumerate(zip(powers, busy, strict=True))]
    chunks[3]["sensor_uncertainty_j"] *= 0.5  # a tie on 310 W: the lower top wins
    chunks[3]["energy_low_j"] = chunks[3]["energy_j"] - chunks[3]["sensor_uncertainty_j"]
    chunks[3]["energy_high_j"] = chunks[3]["energy_j"] + chunks[3]["sensor_uncertainty_j"]
    for group in ([chunks[4], chunks[1]], [chunks[3], chunks[0]], [chunks[2]]):
        response = _post(client, project, run_id, batch(group), "json")
        assert response.status_code == 200, response.text
    report = _report(client, project, run_id)
    (device,) = report["energy_decomposition"]["devices"]
    assert device["pi0_w"] == pytest.approx(310.0)
    assert device["pi0_high_w"] == pytest.approx(310.0 * 1.01)
    assert device["pi0_provenance"] == "measured_lowest_sustained"
    assert device["mem_busy_s"] == pytest.approx(10.0 * (0.5 + 0.25 + 0.75 + 1.0))
    assert device["mem_observed_s"] == pytest.approx(40.0)
    assert device["mem_coverage"] == pytest.approx(0.8)
    kept = _totals(app, run_id)
    with app.state.sessionmaker() as session, session.begin():
        project_id = get_project(session, slug=project.slug).id
        rebuild_totals(session, project_id=project_id, run_id=uuid.UUID(run_id))
    assert _totals(app, run_id) == kept  # re-derived from the chunks: the same, exactly
    assert (
        _report(client, project, run_id)["energy_decomposition"] == report["energy_decomposition"]
    )


def test_the_report_splits_the_energy_with_the_counters_q(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    chunks = [_busy(i, 0.4, power_w=400.0) for i in range(6)]
    assert _post(client, project, run_id, batch(chunks), "json").status_code == 200
    work = client.post(
        f"/api/v1/runs/{run_id}/work",
        json={"flops": "1e16 FLOP", "dtype": "bf16"},
        headers=project.ingest,
    )
    assert work.status_code in (200, 201), work.text
    report = _report(client, project, run_id)
    decomposition = report["energy_decomposition"]
    parts = decomposition["components"]
    span_s = 60.0
    assert parts["constant"]["energy_j"] == pytest.approx(400.0 * span_s)  # constant power
    assert parts["memory"]["status"] == "available"
    # Q·ε_mem = busy·(TDP − π0): 0.4·60 s × (700 − 400) W
    assert parts["memory"]["energy_j"] == pytest.approx(0.4 * span_s * 300.0)
    assert parts["unexplained"]["energy_j"] < 0  # the upper bounds over-explain a steady board
    assert decomposition["notes"]
    roofline = report["bounds"]["energy_roofline"]
    assert roofline["bytes_moved"] == pytest.approx(decomposition["bytes_moved"])
    assert "memory-activity counters" in roofline["assumptions"]["bytes_moved"]


def test_an_old_meters_run_has_no_memory_part_and_says_why(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    assert (
        _post(client, project, run_id, batch([chunk(i) for i in range(3)]), "binary").status_code
        == 200
    )
    parts = _report(client, project, run_id)["energy_decomposition"]["components"]
    assert parts["memory"]["energy_j"] is None
    assert "memory-activity counter" in parts["memory"]["reason"]
    assert parts["constant"]["status"] == "available"
