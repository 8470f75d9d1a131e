"""Running totals (`db.models.DeviceTotal`, `PhaseTotal`) equal the sums over the chunks.

Reports read the totals, never the chunks, so every path that changes what a report should
say — ingest in any order, repeats, phases recorded before or after their chunks, an open
phase closed later — must keep them equal to what `db.totals.rebuild_totals` derives from
the chunk table.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import FastAPI

from tests.support.builders import T0_S, batch, chunk
from tests.support.client import Project, TestClient, create_run
from thermoledger.db.tokens import get_project
from thermoledger.db.totals import rebuild_totals


def _report(client: TestClient, project: Project, run_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    energy: dict[str, Any] = response.json()["energy"]
    return energy


def _rebuild(app: FastAPI, project: Project, run_id: str) -> None:
    with app.state.sessionmaker() as session, session.begin():
        project_id = get_project(session, slug=project.slug).id
        rebuild_totals(session, project_id=project_id, run_id=uuid.UUID(run_id))


def _assert_same(kept: Any, rebuilt: Any) -> None:
    if isinstance(kept, dict):
        assert kept.keys() == rebuilt.keys()
        for key in kept:
            _assert_same(kept[key], rebuilt[key])
    elif isinstance(kept, list):
        assert len(kept) == len(rebuilt)
        for a, b in zip(kept, rebuilt, strict=True):
            _assert_same(a, b)
    elif isinstance(kept, float):
        assert kept == pytest.approx(rebuilt, rel=1e-12, abs=1e-9)
    else:
        assert kept == rebuilt


def _post(client: TestClient, project: Project, run_id: str, chunks: list[dict[str, Any]]) -> None:
    response = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch(chunks), headers=project.ingest
    )
    assert response.status_code == 200, response.text


def _phase(client: TestClient, project: Project, run_id: str, **body: Any) -> None:
    response = client.post(f"/api/v1/runs/{run_id}/phases", json=body, headers=project.ingest)
    assert response.status_code in (200, 201), response.text


def test_kept_totals_match_a_rebuild_from_the_chunks(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    # Phases before any chunk: one closed, one open.
    _phase(client, project, run_id, name="warmup", t0_s=T0_S, t1_s=T0_S + 15.0)
    _phase(client, project, run_id, name="train", t0_s=T0_S + 15.0)
    unbounded = {**chunk(1, device_index=1), "bound_above_j": "inf", "energy_high_j": "inf"}
    unbounded["reset_count"] = 1
    mixed = {**chunk(3, power_w=320.0), "method": "mixed", "mean_power_w": 318.0}
    # Out of order, across batches and devices, with repeats.
    _post(client, project, run_id, [chunk(2), chunk(0, device_index=1)])
    _post(client, project, run_id, [chunk(0), unbounded, chunk(2)])
    _post(client, project, run_id, [chunk(1), mixed, chunk(0)])
    # The open phase is closed, and a phase is recorded after its chunks.
    _phase(client, project, run_id, name="train", t0_s=T0_S + 15.0, t1_s=T0_S + 33.0)
    _phase(client, project, run_id, name="late", t0_s=T0_S + 5.0, t1_s=T0_S + 38.0)
    # A chunk after all of that, inside "late", unbounded too: the totals stay at the sentinel.
    late = {**chunk(2, device_index=1, power_w=250.0), "bound_above_j": "inf"}
    _post(client, project, run_id, [{**late, "energy_high_j": "inf", "reset_count": 1}])

    kept = _report(client, project, run_id)
    _rebuild(app, project, run_id)
    rebuilt = _report(client, project, run_id)
    _assert_same(kept, rebuilt)

    by_phase = {p["name"]: p for p in kept["by_phase"]}
    # warmup [0, 15): device 0 at 300 W for 15 s; device 1 chunk 0 (300 W) and half of its
    # unbounded chunk 1 (300 W).
    assert by_phase["warmup"]["energy_j"] == pytest.approx(300.0 * 15 + 300.0 * 15)
    assert by_phase["warmup"]["energy_high_j"] is None
    # late [5, 38): device 0: 25 s at 300 W + 8 s of the 320 W mixed chunk; device 1: 15 s
    # at 300 W + the whole 250 W chunk [20, 30).
    assert by_phase["late"]["energy_j"] == pytest.approx(
        25 * 300.0 + 8 * 320.0 + 15 * 300.0 + 10 * 250.0
    )
    assert by_phase["late"]["energy_high_j"] is None
    assert by_phase["train"]["energy_high_j"] is None
    device0, device1 = sorted(kept["by_device"], key=lambda d: d["index"])
    assert (device0["method"], device0["samples"]) == ("mixed", 40)
    assert (device1["reset_count"], device1["energy_high_j"]) == (2, None)
    assert kept["total"]["energy_j"] == pytest.approx(3 * 3000.0 + 3200.0 + 2 * 3000.0 + 2500.0)


def test_parallel_phase_and_chunk_writes_keep_the_totals(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    """A phase recorded while chunks of its window are being ingested misses none of them."""
    from concurrent.futures import ThreadPoolExecutor

    run_id = create_run(client, project)
    phases = [
        {"name": f"p{k}", "t0_s": T0_S + 20.0 * k, "t1_s": T0_S + 20.0 * k + 20.0} for k in range(5)
    ]

    def work(k: int) -> int:
        own = TestClient(app)
        if k % 2:
            body = phases[k // 2]
            return int(
                own.post(
                    f"/api/v1/runs/{run_id}/phases", json=body, headers=project.ingest
                ).status_code
            )
        m = k // 2  # the chunks of phase m's window
        chunks = [chunk(s, device_index=d) for d in range(2) for s in (2 * m, 2 * m + 1)]
        return int(
            own.post(
                f"/api/v1/runs/{run_id}/chunks", json=batch(chunks), headers=project.ingest
            ).status_code
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(work, range(10)))
    assert set(statuses) <= {200, 201}
    kept = _report(client, project, run_id)
    _rebuild(app, project, run_id)
    _assert_same(kept, _report(client, project, run_id))
    assert sum(p["energy_j"] for p in kept["by_phase"]) == pytest.approx(kept["total"]["energy_j"])
