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

from tests.support.builders import T0_S, batch, chunk, device
from tests.support.client import Project, TestClient, create_run, row_counts
from thermoledger.db.models import Chunk, Device
from thermoledger.db.samples import decode_samples, encode_samples
from thermoledger.service.ingest import chunk_content_hash, prepare_batch
from thermoledger.service.schemas import IngestBatchIn, IngestPublic

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
    "power-mean-below-min": (
        _each(_set("chunks.1.method", "power_avg"), _set("chunks.1.mean_power_w", 250.0)),
        "chunks[1].mean_power_w",
    ),
    "power-mean-above-max": (
        _each(_set("chunks.2.method", "power_instant"), _set("chunks.2.mean_power_w", 350.0)),
        "chunks[2].mean_power_w",
    ),
    "estimate-mean-above-max": (
        _each(_set("chunks.0.method", "estimate"), _set("chunks.0.mean_power_w", 350.0)),
        "chunks[0].mean_power_w",
    ),
    "min-above-max": (_set("chunks.1.min_power_w", 310.0), "chunks[1].min_power_w"),
    "negative-mean": (_set("chunks.1.mean_power_w", -1.0), "chunks[1].mean_power_w"),
    "energy-above-high": (_set("chunks.1.energy_high_j", 10.0), "chunks[1].energy_high_j"),
    "low-disagrees-with-terms": (_set("chunks.1.energy_low_j", 2000.0), "chunks[1].energy_low_j"),
    "sensor-term-disagrees-with-band": (
        _set("chunks.0.sensor_uncertainty_j", 90.0),
        "chunks[0].energy_low_j",
    ),
    "high-disagrees-with-terms": (_set("chunks.1.bound_above_j", 5.0), "chunks[1].energy_high_j"),
    "finite-high-but-unbounded-above": (
        _set("chunks.2.bound_above_j", "inf"),
        "chunks[2].energy_high_j",
    ),
    "unbounded-high-but-finite-above": (
        _set("chunks.2.energy_high_j", "inf"),
        "chunks[2].energy_high_j",
    ),
    "negative-sensor-term": (
        _set("chunks.0.sensor_uncertainty_j", -1.0),
        "chunks[0].sensor_uncertainty_j",
    ),
    "more-resets-than-intervals": (
        _each(_set("chunks.1.reset_count", 6), _set("chunks.1.wrap_count", 5)),
        "chunks[1].reset_count",
    ),
    "sample-above-max": (_set("chunks.1.samples.power_w.2", 320.0), "chunks[1].samples.power_w[2]"),
    "gaps-uncounted": (_set("chunks.1.gap_s", 2.0), "chunks[1].gap_count"),
    # plausibility vs the device limit (700 W: ceiling 1100 W)
    "implausible-power": (
        _each(
            _set("chunks.2.max_power_w", 1200.0),
            _set("chunks.2.mean_power_w", 1200.0),
            _set("chunks.2.min_power_w", 1200.0),
            _set("chunks.2.energy_j", 12000.0),
            _set("chunks.2.sensor_uncertainty_j", 0.0),
            _set("chunks.2.energy_low_j", 12000.0),
            _set("chunks.2.energy_high_j", 12000.0),
            _set("chunks.2.samples.power_w", [1200.0] * 10),
        ),
        "chunks[2].max_power_w",
    ),
    # a counter chunk's mean may leave [min, max], but not the device's plausible range
    "implausible-counter-mean": (
        _each(
            _set("chunks.1.mean_power_w", 1200.0),
            _set("chunks.1.energy_j", 12000.0),
            _set("chunks.1.sensor_uncertainty_j", 0.0),
            _set("chunks.1.energy_low_j", 12000.0),
            _set("chunks.1.energy_high_j", 12000.0),
        ),
        "chunks[1].mean_power_w",
    ),
    # shape of the batch
    "unknown-device": (_set("chunks.1.device_key", "node-9/gpu9"), "chunks[1].device_key"),
    "unknown-method": (_set("chunks.0.method", "none"), "chunks[0].method"),
    "bad-power-method": (_set("devices.0.power_method", "none"), "devices[0].power_method"),
    "mixed-power-method": (_set("devices.0.power_method", "mixed"), "devices[0].power_method"),
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


def test_time_order_is_checked_against_the_nearest_stored_seq_across_holes(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    assert _post(client, project, run_id, batch([chunk(0), chunk(10)])).status_code == 200
    into_next = _post(client, project, run_id, batch([chunk(5, t0_s=T0_S + 95.0)]))
    assert into_next.status_code == 422
    assert into_next.json()["field"] == "chunks[0].t1_s"
    assert "seq 10" in into_next.json()["detail"]
    into_previous = _post(client, project, run_id, batch([chunk(5, t0_s=T0_S + 5.0)]))
    assert into_previous.status_code == 422
    assert into_previous.json()["field"] == "chunks[0].t0_s"
    assert "seq 0" in into_previous.json()["detail"]
    assert _post(client, project, run_id, batch([chunk(5)])).json()["stored"] == 1


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
    by_device = {d["key"]: d for d in energy["by_device"]}
    for key, expected_j, expected_w in (
        ("node-0/GPU-node-0-0", 4 * 3000.0, 300.0),
        ("node-0/GPU-node-0-1", 4 * 4000.0, 400.0),
        ("node-1/GPU-node-1-0", 2 * 3000.0, 300.0),
    ):
        assert by_device[key]["energy_j"] == pytest.approx(expected_j)
        # Within a device the ±2 % sensor term adds linearly (systematic).
        assert by_device[key]["energy_low_j"] == pytest.approx(0.98 * expected_j)
        assert by_device[key]["energy_high_j"] == pytest.approx(1.02 * expected_j)
        assert by_device[key]["peak_power_w"] == expected_w
        assert by_device[key]["samples"] == expected_j / expected_w  # 1 sample per second
    # Across devices: root-sum-square of 240, 320 and 120 J.
    rss_j = math.hypot(240.0, 320.0, 120.0)
    assert energy["total"]["energy_low_j"] == pytest.approx(34000.0 - rss_j)
    assert energy["total"]["energy_high_j"] == pytest.approx(34000.0 + rss_j)
    assert energy["by_host"]["node-1"]["energy_high_j"] == pytest.approx(6000.0 + 120.0)
    assert set(energy["by_host"]) == {"node-0", "node-1"}
    assert report["t0_s"] == T0_S
    assert report["t1_s"] == T0_S + 40.0
    assert report["run"]["id"] == run_id


def _with_terms(
    c: dict[str, Any], *, sensor_j: float, below_j: float = 0.0, above_j: float = 0.0
) -> dict[str, Any]:
    """``c`` with these band terms and the band they imply."""
    energy_j = c["energy_j"]
    return {
        **c,
        "sensor_uncertainty_j": sensor_j,
        "bound_below_j": below_j,
        "bound_above_j": above_j,
        "energy_low_j": max(energy_j - sensor_j - below_j, 0.0),
        "energy_high_j": energy_j + sensor_j + above_j,
    }


def test_report_band_combines_sensor_errors_rss_and_bounds_linearly(
    client: TestClient, project: Project
) -> None:
    """Hand check: device 0 has 2 × 60 J = 120 J of sensor error, device 1 has 2 × 80 J =
    160 J; across the two they combine to √(120² + 160²) = 200 J, not 280 J. Bounds add
    linearly: 10 J below on device 0, 2 × 25 J above on device 1."""
    run_id = create_run(client, project)
    chunks = [
        _with_terms(chunk(0, device_index=0), sensor_j=60.0, below_j=10.0),
        _with_terms(chunk(1, device_index=0), sensor_j=60.0),
        _with_terms(chunk(0, device_index=1), sensor_j=80.0, above_j=25.0),
        _with_terms(chunk(1, device_index=1), sensor_j=80.0, above_j=25.0),
    ]
    assert _post(client, project, run_id, batch(chunks)).json()["stored"] == 4
    energy = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read).json()["energy"]
    assert energy["total"]["energy_j"] == pytest.approx(12000.0)
    assert energy["total"]["energy_low_j"] == pytest.approx(12000.0 - 200.0 - 10.0)
    assert energy["total"]["energy_high_j"] == pytest.approx(12000.0 + 200.0 + 50.0)
    by_device = {d["index"]: d for d in energy["by_device"]}
    assert by_device[0]["energy_low_j"] == pytest.approx(6000.0 - 120.0 - 10.0)
    assert by_device[1]["energy_high_j"] == pytest.approx(6000.0 + 160.0 + 50.0)


def test_counter_resets_surface_in_the_report(client: TestClient, project: Project) -> None:
    run_id = create_run(client, project)
    reset = _with_terms(chunk(1), sensor_j=60.0, above_j=700.0)
    reset["reset_count"] = 1
    wrapped = _with_terms(chunk(0, device_index=1), sensor_j=60.0)
    wrapped["wrap_count"] = 2  # a wrap is ordinary counter arithmetic: no note
    unbounded = {**chunk(2), "bound_above_j": "inf", "energy_high_j": "inf", "reset_count": 1}
    body = batch([chunk(0), reset, wrapped, unbounded])
    assert _post(client, project, run_id, body).json()["stored"] == 4
    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read).json()
    notes = report["notes"]
    assert "node-0/GPU-node-0-0: 2 counter reset(s); the band bounds the loss" in notes
    assert any("GPU-node-0-0: energy is unbounded above" in note for note in notes)
    assert not any("GPU-node-0-1" in note and "reset" in note for note in notes)
    by_device = {d["index"]: d for d in report["energy"]["by_device"]}
    assert (by_device[0]["reset_count"], by_device[1]["reset_count"]) == (2, 0)
    assert by_device[0]["energy_high_j"] is None
    assert report["energy"]["total"]["energy_high_j"] is None


def test_a_counter_chunk_mean_outside_the_sensor_range_is_stored_as_sent(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    """Counter energy / time is 306 W while the lagging power sensor read 300 W throughout."""
    counter = chunk(0)
    counter["mean_power_w"] = 306.0
    power = chunk(1)
    power["method"] = "power_avg"
    power["mean_power_w"] = 300.0 + 1e-10  # float rounding: accepted, clipped into [min, max]
    assert _post(client, project, run_id, batch([counter, power])).json()["stored"] == 2
    with app.state.engine.connect() as connection:
        means = connection.execute(
            sa.select(Chunk.seq, Chunk.mean_power_w)
            .where(Chunk.run_id == uuid.UUID(run_id))
            .order_by(Chunk.seq)
        ).all()
    assert [tuple(row) for row in means] == [(0, 306.0), (1, 300.0)]


def test_a_mixed_chunk_is_accepted_and_labels_its_device(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    mixed = chunk(1)
    mixed["method"] = "mixed"
    mixed["mean_power_w"] = 295.0  # partly from the counter: outside [min, max] is allowed
    assert _post(client, project, run_id, batch([chunk(0), mixed])).json()["stored"] == 2
    with app.state.engine.connect() as connection:
        methods = connection.execute(
            sa.select(Chunk.method).where(Chunk.run_id == uuid.UUID(run_id)).order_by(Chunk.seq)
        ).scalars()
        assert [m.value for m in methods] == ["counter", "mixed"]
    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read).json()
    assert report["energy"]["by_device"][0]["method"] == "mixed"


def test_every_device_the_meter_describes_is_accepted_with_its_mig_flag(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    """The device vocabulary is the meter's: `meters.chunker.device_payload` for every backend
    power method, with and without a counter; a device it labels "none" is never sent."""
    from thermoledger.meters.backends.base import DeviceInfo, Method
    from thermoledger.meters.chunker import device_payload

    run_id = create_run(client, project)
    devices: list[dict[str, Any]] = []
    chunks: list[dict[str, Any]] = []
    for method in Method:
        for has_counter in (False, True):
            index = len(devices)
            info = DeviceInfo(
                backend="simulated",
                index=index,
                uid=f"SIM-{index}",
                name="NVIDIA H100 80GB HBM3",
                power_limit_w=700.0,
                has_energy_counter=has_counter,
                power_method=method,
                mig=index % 2 == 0,
            )
            payload = dict(device_payload(info, host="node-0"))
            if payload["power_method"] == "none":
                continue
            devices.append(payload)
            chunks.append({**chunk(0), "device_key": payload["key"]})
    assert {d["power_method"] for d in devices} == {
        "counter",
        "power_avg",
        "power_instant",
        "estimate",
    }
    response = _post(client, project, run_id, batch(chunks, devices=devices))
    assert response.status_code == 200, response.text
    with app.state.engine.connect() as connection:
        stored = connection.execute(
            sa.select(Device.uuid, Device.mig, Device.power_method).where(
                Device.run_id == uuid.UUID(run_id)
            )
        ).all()
    assert {(uid, mig, m.value) for uid, mig, m in stored} == {
        (d["uid"], d["mig"], d["power_method"]) for d in devices
    }


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
    # One device, ±2 % throughout: each phase carries ±2 % of its share.
    assert by_phase["warmup"]["energy_low_j"] == pytest.approx(0.98 * 4500.0)
    assert by_phase["train"]["energy_high_j"] == pytest.approx(1.02 * 4500.0)


def test_a_whole_run_phase_has_the_totals_band(client: TestClient, project: Project) -> None:
    """Phase bands combine devices like the total (sensor errors root-sum-square)."""
    run_id = create_run(client, project)
    chunks = _two_devices(range(2))
    assert _post(client, project, run_id, batch(chunks)).status_code == 200
    client.post(
        f"/api/v1/runs/{run_id}/phases", json={"name": "all", "t0_s": T0_S}, headers=project.ingest
    )
    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read).json()
    (phase,) = report["energy"]["by_phase"]
    total = report["energy"]["total"]
    for key in ("energy_j", "energy_low_j", "energy_high_j"):
        assert phase[key] == pytest.approx(total[key])
    assert total["energy_high_j"] - total["energy_j"] == pytest.approx(math.hypot(120.0, 160.0))


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


def test_batch_hashes_match_the_reference_definition() -> None:
    """`prepare_batch` hashes from the batch's tables; `chunk_content_hash` is the definition."""
    unbounded = {**chunk(1), "bound_above_j": "inf", "energy_high_j": "inf"}
    counter = chunk(2, n=7, interval_s=0.3)
    counter["samples"]["energy_j"] = [5e6 + 90.0 * i for i in range(7)]
    bare = {**chunk(3), "samples": None}
    power = {**chunk(4, power_w=250.0), "method": "power_avg"}
    body = batch([chunk(0), unbounded, counter, bare, power, chunk(5, n=7), chunk(6)])
    parsed = IngestBatchIn.model_validate_json(json.dumps(body))
    rows = prepare_batch(parsed, max_chunks=10, max_samples_per_chunk=100).chunks
    for row, c in zip(rows, parsed.chunks, strict=True):
        columns: list[tuple[str, Any]] = []
        if c.samples is not None:
            columns = [
                (name, np.asarray(getattr(c.samples, name), np.float64))
                for name in ("t_s", "power_w", "energy_j")
                if getattr(c.samples, name) is not None
            ]
        assert row.content_hash == chunk_content_hash(c, columns)
    assert len({row.content_hash for row in rows}) == 7


@pytest.mark.parametrize("compress", [False, True])
def test_batch_blobs_are_each_chunks_own_encoding(compress: bool) -> None:
    """The blobs are encoded a group of alike chunks at a time; each must be its own."""
    counter = chunk(2, n=7, interval_s=0.3)
    counter["samples"]["energy_j"] = [5e6 + 90.0 * i for i in range(7)]
    body = batch([chunk(0), counter, {**chunk(3), "samples": None}, chunk(4, n=5), chunk(5)])
    parsed = IngestBatchIn.model_validate_json(json.dumps(body))
    rows = prepare_batch(
        parsed, max_chunks=10, max_samples_per_chunk=100, compress_samples=compress
    ).chunks
    for row, sent in zip(rows, body["chunks"], strict=True):
        if sent["samples"] is None:
            assert row.blob is None
            continue
        assert row.blob is not None
        columns = decode_samples(row.blob)
        assert row.blob == encode_samples(columns, compress=compress)
        assert list(columns) == ["t_s", "power_w", *(["energy_j"] if row.seq == 2 else [])]
        np.testing.assert_allclose(
            columns["t_s"].astype(np.float64) + sent["t0_s"], sent["samples"]["t_s"], atol=1e-5
        )
        np.testing.assert_array_equal(columns["power_w"], np.float32(sent["samples"]["power_w"]))


def test_the_acknowledgement_is_valid_json_of_its_documented_shape(
    client: TestClient, project: Project, run_id: str
) -> None:
    """The acks are written as JSON by hand (speed): keys needing escapes must survive."""
    host = 'nö"de\\1\t'
    sent = [chunk(0, host=host), chunk(1, host=host), chunk(0, device_index=1)]
    first = _post(client, project, run_id, batch(sent))
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    again = _post(client, project, run_id, batch([sent[1], chunk(2, host=host)]))
    for response, statuses in ((first, ["stored"] * 3), (again, ["duplicate", "stored"])):
        ack = IngestPublic.model_validate_json(response.content)
        assert ack.run_id == uuid.UUID(run_id)
        assert [c.status for c in ack.chunks] == statuses
        assert ack.stored == statuses.count("stored")
        assert ack.duplicates == statuses.count("duplicate")
    assert [
        (c.device_key, c.seq) for c in IngestPublic.model_validate_json(first.content).chunks
    ] == [
        (f"{host}/gpu0", 0),
        (f"{host}/gpu0", 1),
        ("node-0/gpu1", 0),
    ]
