"""Chunk ingest: validation naming the field, all-or-nothing, idempotency, reports from it."""

from __future__ import annotations

import copy
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from db.models import Chunk
from db.samples import decode_samples
from tests.service.conftest import (
    T0_S,
    Project,
    TestClient,
    batch,
    chunk,
    create_run,
    device,
    row_counts,
)

NOTHING = {"device": 0, "chunk": 0, "phase": 0}


def _post(client: TestClient, project: Project, run_id: str, body: Any) -> Any:
    if isinstance(body, bytes):
        return client.post(
            f"/api/v1/runs/{run_id}/chunks",
            content=body,
            headers={**project.ingest, "Content-Type": "application/json"},
        )
    return client.post(f"/api/v1/runs/{run_id}/chunks", json=body, headers=project.ingest)


def _two_devices(seqs: range) -> list[dict[str, Any]]:
    return [chunk(s, device_index=d, power_w=300.0 + 100 * d) for d in (0, 1) for s in seqs]


def test_a_batch_is_stored_and_acknowledged_per_chunk(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    chunks = _two_devices(range(3))
    response = _post(client, project, run_id, batch(chunks))
    assert response.status_code == 200, response.text
    ack = response.json()
    assert (ack["stored"], ack["duplicates"]) == (6, 0)
    assert [(c["device_key"], c["seq"], c["status"]) for c in ack["chunks"]] == [
        (c["device_key"], c["seq"], "stored") for c in chunks
    ]
    assert row_counts(app, run_id) == {"device": 2, "chunk": 6, "phase": 0}


def test_a_repeated_batch_is_all_duplicates_and_stores_nothing(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    body = batch(_two_devices(range(3)))
    assert _post(client, project, run_id, body).status_code == 200
    again = _post(client, project, run_id, body)
    assert again.status_code == 200
    assert (again.json()["stored"], again.json()["duplicates"]) == (0, 6)
    assert {c["status"] for c in again.json()["chunks"]} == {"duplicate"}
    # An overlapping retry: seq 2 is a duplicate, 3 and 4 are new.
    overlap = _post(client, project, run_id, batch([chunk(2), chunk(3), chunk(4)]))
    assert [c["status"] for c in overlap.json()["chunks"]] == ["duplicate", "stored", "stored"]
    # Numbers that are equal as numbers are the same content: 3000 == 3000.0.
    same = chunk(4)
    same["energy_j"] = int(same["energy_j"])
    assert _post(client, project, run_id, batch([same])).json()["duplicates"] == 1
    assert row_counts(app, run_id) == {"device": 2, "chunk": 8, "phase": 0}


def test_same_key_other_content_is_409_naming_the_key(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    assert _post(client, project, run_id, batch([chunk(0), chunk(1)])).status_code == 200
    changed = chunk(1, power_w=301.0)
    response = _post(client, project, run_id, batch([chunk(2), changed]))
    assert response.status_code == 409
    error = response.json()
    assert error["field"] == "chunks[1]"
    assert "'node-0/gpu0'" in error["detail"]
    assert "seq 1" in error["detail"]
    assert row_counts(app, run_id)["chunk"] == 2  # chunk 2 of the refused batch is not stored


def test_repeats_inside_one_batch(client: TestClient, project: Project, run_id: str) -> None:
    same = _post(client, project, run_id, batch([chunk(0), chunk(0)]))
    assert [c["status"] for c in same.json()["chunks"]] == ["stored", "duplicate"]
    differing = _post(client, project, run_id, batch([chunk(5), chunk(5, power_w=1.0)]))
    assert differing.status_code == 409
    assert differing.json()["field"] == "chunks[1]"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutation: set ``chunks.1.samples.t_s.3`` style paths in the batch."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _each(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        for m in mutations:
            m(body)

    return mutate


def _many_chunks(body: dict[str, Any]) -> None:
    body["chunks"] = [chunk(s) for s in range(51)]


def _many_samples(body: dict[str, Any]) -> None:
    body["chunks"][1] = chunk(1, n=1001, interval_s=0.01)
    body["chunks"][2] = chunk(2, t0_s=T0_S + 20.01)


BAD = {
    # finite, non-negative
    "nan-energy": (_set("chunks.1.energy_j", math.nan), "chunks[1].energy_j"),
    "inf-energy": (_set("chunks.1.energy_j", math.inf), "chunks[1].energy_j"),
    "nan-power-sample": (
        _set("chunks.1.samples.power_w.3", math.nan),
        "chunks[1].samples.power_w[3]",
    ),
    "negative-power-sample": (
        _set("chunks.2.samples.power_w.4", -1.0),
        "chunks[2].samples.power_w[4]",
    ),
    "negative-energy": (_set("chunks.0.energy_j", -5.0), "chunks[0].energy_j"),
    "nan-band": (_set("chunks.0.energy_high_j", "nan"), "chunks[0].energy_high_j"),
    "string-number": (_set("chunks.0.energy_j", "3000"), "chunks[0].energy_j"),
    # time order inside a chunk and against its summary
    "samples-backwards": (
        _set("chunks.1.samples.t_s.5", T0_S + 10 + 3.5),
        "chunks[1].samples.t_s[5]",
    ),
    "sample-after-t1": (_set("chunks.1.samples.t_s.9", T0_S + 25.0), "chunks[1].samples.t_s[9]"),
    "t1-before-t0": (_set("chunks.0.t1_s", T0_S - 1), "chunks[0].t1_s"),
    "chunks-overlap": (_set("chunks.2.t0_s", T0_S + 15.0), "chunks[2].t0_s"),
    # summary consistency
    "n-mismatch": (_set("chunks.0.n", 11), "chunks[0].n"),
    "ragged-columns": (_set("chunks.0.samples.power_w", [300.0] * 9), "chunks[0].samples"),
    "mean-below-min": (_set("chunks.1.mean_power_w", 250.0), "chunks[1].mean_power_w"),
    "energy-above-high": (_set("chunks.1.energy_high_j", 10.0), "chunks[1].energy_high_j"),
    "sample-above-max": (_set("chunks.1.samples.power_w.2", 320.0), "chunks[1].samples.power_w[2]"),
    "gaps-uncounted": (_set("chunks.1.gap_s", 2.0), "chunks[1].gap_count"),
    # plausibility vs the device limit (700 W: ceiling 1100 W)
    "implausible-power": (
        _each(
            _set("chunks.2.max_power_w", 1200.0),
            _set("chunks.2.mean_power_w", 1200.0),
            _set("chunks.2.min_power_w", 1200.0),
            _set("chunks.2.energy_j", 12000.0),
            _set("chunks.2.energy_low_j", 12000.0),
            _set("chunks.2.energy_high_j", 12000.0),
            _set("chunks.2.samples.power_w", [1200.0] * 10),
        ),
        "chunks[2].max_power_w",
    ),
    # shape of the batch
    "unknown-device": (_set("chunks.1.device_key", "node-9/gpu9"), "chunks[1].device_key"),
    "mixed-method": (_set("chunks.0.method", "mixed"), "chunks[0].method"),
    "bad-power-method": (_set("devices.0.power_method", "none"), "devices[0].power_method"),
    "bad-schema": (_set("schema", 2), "schema"),
    "too-many-chunks": (_many_chunks, "chunks"),
    "too-many-samples": (_many_samples, "chunks[1].samples"),
}


@pytest.mark.parametrize(("mutate", "field"), list(BAD.values()), ids=list(BAD))
def test_bad_input_is_4xx_naming_the_field_and_writes_nothing(
    app: FastAPI,
    client: TestClient,
    project: Project,
    run_id: str,
    mutate: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    body = batch([chunk(0), chunk(1), chunk(2)])
    mutate(body)
    raw = json.dumps(body).encode()  # NaN / Infinity literals reach the server as sent
    response = _post(client, project, run_id, raw)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field, error
    assert field in error["detail"]
    assert row_counts(app, run_id) == NOTHING


def test_a_duplicate_device_key_is_refused(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    body = batch([chunk(0)], devices=[device(0), device(0)])
    response = _post(client, project, run_id, body)
    assert response.status_code == 422
    assert response.json()["field"] == "devices[1].key"
    assert row_counts(app, run_id) == NOTHING


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b'{"schema": 1}', b"\xff\xfe"],
    ids=["empty", "truncated", "array", "partial", "not-utf8"],
)
def test_malformed_json_is_422(
    app: FastAPI, client: TestClient, project: Project, run_id: str, raw: bytes
) -> None:
    response = _post(client, project, run_id, raw)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_payload"
    assert row_counts(app, run_id) == NOTHING


def test_an_oversized_body_is_413_and_writes_nothing(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    body = batch([chunk(s, n=1000, interval_s=0.01) for s in range(20)])
    raw = json.dumps(body).encode()
    assert len(raw) > 256 * 1024
    response = _post(client, project, run_id, raw)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert row_counts(app, run_id) == NOTHING


def test_time_order_is_checked_against_stored_neighbours(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    assert _post(client, project, run_id, batch([chunk(0), chunk(1), chunk(3)])).status_code == 200
    stored = row_counts(app, run_id)
    # seq 4 starting before seq 3 ends (time going back across batches)
    early = chunk(4, t0_s=T0_S + 35.0)
    response = _post(client, project, run_id, batch([early]))
    assert response.status_code == 422
    assert response.json()["field"] == "chunks[0].t0_s"
    assert "seq 3" in response.json()["detail"]
    # a late seq 2 that runs into the stored seq 3
    late = chunk(2, n=15)
    response = _post(client, project, run_id, batch([late]))
    assert response.status_code == 422
    assert response.json()["field"] == "chunks[0].t1_s"
    assert row_counts(app, run_id) == stored
    # the right seq 2 fits in between
    assert _post(client, project, run_id, batch([chunk(2)])).json()["stored"] == 1


def test_a_device_cannot_be_registered_twice(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    assert _post(client, project, run_id, batch([chunk(0)])).status_code == 200
    moved = device(0)
    moved["index"] = 7
    moved["key"] = "node-0/gpu7"
    c = chunk(1)
    c["device_key"] = "node-0/gpu7"
    response = _post(client, project, run_id, batch([c], devices=[moved]))
    assert response.status_code == 409
    assert response.json()["field"] == "devices[0].uid"
    assert row_counts(app, run_id) == {"device": 1, "chunk": 1, "phase": 0}


def test_unknown_run_is_404_naming_it(client: TestClient, project: Project) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    response = _post(client, project, missing, batch([chunk(0)]))
    assert response.status_code == 404
    assert missing in response.json()["detail"]


# --------------------------------------------------------------------------- reports


def test_report_totals_are_the_sums_of_the_ingested_chunks(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    chunks = _two_devices(range(4)) + [chunk(s, host="node-1") for s in range(2)]
    for part in (chunks[:5], chunks[5:]):
        assert _post(client, project, run_id, batch(part)).status_code == 200
    _post(client, project, run_id, batch(chunks[:3]))  # duplicates count once
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    report = response.json()
    energy = report["energy"]
    assert energy["total"]["energy_j"] == pytest.approx(sum(c["energy_j"] for c in chunks))
    assert energy["total"]["energy_low_j"] == pytest.approx(sum(c["energy_low_j"] for c in chunks))
    assert energy["total"]["energy_high_j"] == pytest.approx(
        sum(c["energy_high_j"] for c in chunks)
    )
    by_device = {d["key"]: d for d in energy["by_device"]}
    for key, expected_j, expected_w in (
        ("node-0/GPU-node-0-0", 4 * 3000.0, 300.0),
        ("node-0/GPU-node-0-1", 4 * 4000.0, 400.0),
        ("node-1/GPU-node-1-0", 2 * 3000.0, 300.0),
    ):
        assert by_device[key]["energy_j"] == pytest.approx(expected_j)
        assert by_device[key]["peak_power_w"] == expected_w
        assert by_device[key]["samples"] == expected_j / expected_w  # 1 sample per second
    assert set(energy["by_host"]) == {"node-0", "node-1"}
    assert report["t0_s"] == T0_S
    assert report["t1_s"] == T0_S + 40.0
    assert report["run"]["id"] == run_id


def test_phase_energy_is_pro_rata_within_chunks(client: TestClient, project: Project) -> None:
    run_id = create_run(client, project)
    assert _post(client, project, run_id, batch([chunk(s) for s in range(3)])).status_code == 200
    phases = f"/api/v1/runs/{run_id}/phases"
    client.post(
        phases,
        json={"name": "warmup", "t0_s": T0_S, "t1_s": T0_S + 15.0, "flops": "1 PFLOP"},
        headers=project.ingest,
    )
    client.post(phases, json={"name": "train", "t0_s": T0_S + 15.0}, headers=project.ingest)
    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read).json()
    by_phase = {p["name"]: p for p in report["energy"]["by_phase"]}
    # 300 W throughout: energy is 300 W × the phase's time inside the measured span
    assert by_phase["warmup"]["energy_j"] == pytest.approx(300.0 * 15.0)
    assert by_phase["train"]["energy_j"] == pytest.approx(300.0 * 15.0)
    assert by_phase["train"]["t1_s"] == T0_S + 30.0  # open phase: up to the last measurement
    assert by_phase["warmup"]["flop_per_j"] == pytest.approx(1e15 / 4500.0)


def test_an_unbounded_band_is_stored_and_reported_as_unbounded(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    unbounded = chunk(0)
    unbounded["energy_high_j"] = "inf"
    unbounded["bound_above_j"] = "inf"
    body = batch([unbounded, chunk(1)])
    assert _post(client, project, run_id, body).json()["stored"] == 2
    assert _post(client, project, run_id, copy.deepcopy(body)).json()["duplicates"] == 2
    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read).json()
    assert report["energy"]["total"]["energy_j"] == pytest.approx(6000.0)
    assert report["energy"]["total"]["energy_high_j"] is None  # JSON has no inf


def test_a_report_needs_measurements(client: TestClient, project: Project, run_id: str) -> None:
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 409
    assert "no measurements" in response.json()["detail"]


def test_a_streamed_oversized_body_is_413(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    raw = json.dumps(batch([chunk(s, n=1000, interval_s=0.01) for s in range(20)])).encode()
    pieces = iter([raw[i : i + 65536] for i in range(0, len(raw), 65536)])
    response = client.post(
        f"/api/v1/runs/{run_id}/chunks",
        content=pieces,  # no Content-Length: sent chunked, counted as it arrives
        headers={**project.ingest, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert row_counts(app, run_id) == NOTHING


def test_raw_samples_are_stored_compactly_and_decode(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    sent = chunk(0, n=50, interval_s=0.1, power_w=312.5)
    sent["samples"]["energy_j"] = [1000.0 + 31.25 * i for i in range(50)]
    assert _post(client, project, run_id, batch([sent])).json()["stored"] == 1
    with app.state.engine.connect() as connection:
        blob = connection.execute(
            sa.select(Chunk.samples).where(Chunk.run_id == uuid.UUID(run_id))
        ).scalar_one()
    columns = decode_samples(blob)
    assert list(columns) == ["t_s", "power_w", "energy_j"]
    assert columns["t_s"].dtype == np.float32
    np.testing.assert_allclose(
        columns["t_s"].astype(np.float64) + sent["t0_s"], sent["samples"]["t_s"], atol=1e-5
    )
    np.testing.assert_array_equal(columns["power_w"], np.float32(312.5))
    np.testing.assert_array_equal(columns["energy_j"], sent["samples"]["energy_j"])
