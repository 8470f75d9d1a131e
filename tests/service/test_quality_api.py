"""Energy to quality through the API, on SQLite and PostgreSQL: metric points (idempotent by
(run, name, step), all or nothing, 409 and 422 naming the point), the cumulative energy at each
point, the Pareto fronts and the joules-to-target trend with its halving time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.support.builders import T0_S, batch, chunk
from tests.support.client import Project, TestClient, create_run
from tests.support.waiting import wait_until
from thermoledger.accounting.quality import DAYS_PER_MONTH
from thermoledger.db.models import RunMetric
from thermoledger.meters.api import Meter
from thermoledger.meters.backends import SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.control import ControlStore
from thermoledger.meters.spool import Spool
from thermoledger.meters.uploader import Uploader


def _metrics(client: TestClient, project: Project, run_id: str, points: list[Any]) -> Any:
    return client.post(
        f"/api/v1/runs/{run_id}/metrics", json={"points": points}, headers=project.ingest
    )


def _point(step: int, value: float, t_s: float = T0_S, name: str = "eval_loss") -> dict[str, Any]:
    return {"name": name, "step": step, "value": value, "t_s": t_s}


def _stored(app: FastAPI, run_id: str) -> int:
    with app.state.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count())
                .select_from(RunMetric)
                .where(RunMetric.run_id == uuid.UUID(run_id))
            ).scalar_one()
        )


def _chunks(client: TestClient, project: Project, run_id: str, count: int = 10) -> None:
    # 300 W on one GPU, 10 s per chunk from T0_S: 3000 J per chunk, band ±2 % (sensor).
    response = client.post(
        f"/api/v1/runs/{run_id}/chunks",
        json=batch([chunk(s) for s in range(count)]),
        headers=project.ingest,
    )
    assert response.status_code == 200, response.text


def test_points_are_stored_once_and_read_back_with_energy(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    _chunks(client, project, run_id)
    points = [
        _point(0, 3.0, T0_S + 5.0),
        _point(1, 2.5, T0_S + 25.0),
        _point(1, 9e9, T0_S, "tokens_seen"),
    ]
    first = _metrics(client, project, run_id, points)
    assert first.status_code == 201, first.text
    assert first.json() == {"stored": 3, "duplicates": 0}
    again = _metrics(client, project, run_id, points)
    assert again.status_code == 200
    assert again.json() == {"stored": 0, "duplicates": 3}
    assert _stored(app, run_id) == 3
    read = client.get(
        f"/api/v1/runs/{run_id}/metrics", params={"name": "eval_loss"}, headers=project.read
    )
    assert read.status_code == 200, read.text
    body = read.json()
    assert body["energy_reason"] is None
    assert [(p["step"], p["value"]) for p in body["points"]] == [(0, 3.0), (1, 2.5)]
    energies = [p["energy_j"] for p in body["points"]]
    assert energies == [pytest.approx(1500.0), pytest.approx(7500.0)]
    assert body["points"][1]["energy_low_j"] == pytest.approx(7500.0 * 0.98)
    assert body["points"][1]["energy_high_j"] == pytest.approx(7500.0 * 1.02)
    # A point before the first chunk: nothing measured yet, 0 J (not "no chunks").
    assert (
        _metrics(client, project, run_id, [_point(0, 5.0, T0_S - 10.0, "early")]).status_code == 201
    )
    early = client.get(
        f"/api/v1/runs/{run_id}/metrics", params={"name": "early"}, headers=project.read
    ).json()
    assert early["points"][0]["energy_j"] == 0.0
    assert early["energy_reason"] is None


def test_a_different_value_under_a_stored_key_is_409_and_nothing_is_written(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    assert _metrics(client, project, run_id, [_point(0, 3.0)]).status_code == 201
    response = _metrics(client, project, run_id, [_point(1, 2.0), _point(0, 2.9)])
    assert response.status_code == 409, response.text
    assert response.json()["field"] == "points[1].value"
    assert _stored(app, run_id) == 1


@pytest.mark.parametrize(
    ("point", "field"),
    [
        ({"name": "eval loss", "step": 0, "value": 1.0, "t_s": T0_S}, "points[0].name"),
        ({"name": "x" * 65, "step": 0, "value": 1.0, "t_s": T0_S}, "points[0].name"),
        ({"name": "loss", "step": -1, "value": 1.0, "t_s": T0_S}, "points[0].step"),
        ({"name": "loss", "step": 0, "value": "NaN", "t_s": T0_S}, "points[0].value"),
        ({"name": "loss", "step": 0, "value": "1e400", "t_s": T0_S}, "points[0].value"),
        ({"name": "loss", "step": 0, "value": 1.0, "t_s": -5.0}, "points[0].t_s"),
    ],
)
def test_bad_points_are_422_naming_the_field(
    client: TestClient, project: Project, run_id: str, point: dict[str, Any], field: str
) -> None:
    response = client.post(
        f"/api/v1/runs/{run_id}/metrics",
        content=f'{{"points": [{_json(point)}]}}',
        headers={**project.ingest, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def _json(point: dict[str, Any]) -> str:
    # Written by hand so NaN and 1e400 reach the service as a client would send them.
    value = point["value"]
    text = value if isinstance(value, str) else repr(value)
    return (
        f'{{"name": "{point["name"]}", "step": {point["step"]}, "value": {text}, '
        f'"t_s": {point["t_s"]!r}}}'
    )


def test_two_different_points_under_one_key_in_a_batch_are_422(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    response = _metrics(client, project, run_id, [_point(0, 3.0), _point(0, 2.0)])
    assert response.status_code == 422
    assert response.json()["field"] == "points[1]"
    assert _stored(app, run_id) == 0


def test_scopes_and_tenancy(
    client: TestClient, project: Project, other: Project, run_id: str
) -> None:
    url = f"/api/v1/runs/{run_id}/metrics"
    assert (
        client.post(url, json={"points": [_point(0, 1.0)]}, headers=project.read).status_code == 403
    )
    assert (
        client.post(url, json={"points": [_point(0, 1.0)]}, headers=other.ingest).status_code == 404
    )
    assert client.get(url, headers=other.read).status_code == 404


def test_points_before_any_chunk_say_why_they_have_no_energy(
    client: TestClient, project: Project, run_id: str
) -> None:
    assert _metrics(client, project, run_id, [_point(0, 3.0)]).status_code == 201
    body = client.get(f"/api/v1/runs/{run_id}/metrics", headers=project.read).json()
    assert body["points"][0]["energy_j"] is None
    assert body["energy_reason"] == "the run has no measured chunks yet"


def _trend_run(client: TestClient, project: Project, month: float) -> tuple[str, float]:
    """A run started ``month`` months after 2024-01 that reaches loss 2.0 after
    80·2^(-month/16) s at 300 W: joules-to-target halve every 16 months."""
    started = 1_704_067_200.0 + month * DAYS_PER_MONTH * 86_400.0
    run_id = create_run(client, project, started_at=_iso(started))
    _chunks(client, project, run_id)
    reach_s = 80.0 * 2.0 ** (-month / 16.0)
    points = [_point(0, 3.0, T0_S), _point(1, 2.0, T0_S + reach_s), _point(2, 1.5, T0_S + 95.0)]
    assert _metrics(client, project, run_id, points).status_code == 201
    return run_id, 300.0 * reach_s


def _iso(t_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t_s, UTC).isoformat()


def test_trend_fits_the_halving_time(client: TestClient, project: Project) -> None:
    expected = dict(_trend_run(client, project, m) for m in (0.0, 8.0, 16.0, 30.0))
    never = create_run(client, project)
    assert _metrics(client, project, never, [_point(0, 2.9)]).status_code == 201
    response = client.get(
        "/api/v1/quality/trend", params={"metric": "eval_loss", "target": 2.0}, headers=project.read
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["run_id"] for r in body["runs"]] == list(expected)
    for record in body["runs"]:
        assert record["energy_j"] == pytest.approx(expected[record["run_id"]])
        assert record["energy_low_j"] == pytest.approx(0.98 * expected[record["run_id"]])
        assert record["step"] == 1
    assert body["not_reached"] == 1
    assert body["fit"]["halving_months"] == pytest.approx(16.0, rel=1e-6)
    assert body["fit"]["halving_low_months"] == pytest.approx(16.0, rel=1e-6)
    assert "16 months" in body["reference"]


def test_trend_without_enough_runs_says_why(client: TestClient, project: Project) -> None:
    _trend_run(client, project, 0.0)
    body = client.get(
        "/api/v1/quality/trend", params={"metric": "eval_loss", "target": 2.0}, headers=project.read
    ).json()
    assert body["fit"] is None
    assert "a fit needs 3" in body["fit_reason"]


def test_pareto_front_of_best_value_against_energy(client: TestClient, project: Project) -> None:
    runs = {}
    # (best loss, seconds of 300 W to reach it): the second is dominated by the first.
    for label, best, reach_s in (("a", 2.0, 10.0), ("b", 2.5, 30.0), ("c", 1.0, 60.0)):
        run_id = create_run(client, project, name=label)
        _chunks(client, project, run_id)
        points = [
            _point(0, 4.0, T0_S),
            _point(1, best, T0_S + reach_s),
            _point(2, best + 1, T0_S + 90),
        ]
        assert _metrics(client, project, run_id, points).status_code == 201
        runs[label] = run_id
    response = client.get(
        "/api/v1/quality/pareto", params={"metric": "eval_loss"}, headers=project.read
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["energy_front"] == [runs["a"], runs["c"]]
    by_name = {r["name"]: r for r in body["runs"]}
    assert by_name["b"]["on_energy_front"] is False
    assert by_name["c"]["best_value"] == 1.0
    assert by_name["c"]["energy_j"] == pytest.approx(18_000.0)
    assert [r["name"] for r in body["runs"]] == ["a", "b", "c"]
    if body["usd_front"] == []:
        assert "usd" in body["unpriced"]
    higher = client.get(
        "/api/v1/quality/pareto",
        params={"metric": "eval_loss", "direction": "higher"},
        headers=project.read,
    ).json()
    # Higher is better: each run's best is its first point (4.0), reached at 0 J.
    assert {r["name"]: r["best_value"] for r in higher["runs"]} == {"a": 4.0, "b": 4.0, "c": 4.0}
    assert [r["energy_j"] for r in higher["runs"]] == [0.0, 0.0, 0.0]
    assert len(higher["energy_front"]) == 1


def test_quality_queries_are_checked(client: TestClient, project: Project) -> None:
    bad = client.get(
        "/api/v1/quality/trend",
        params={"metric": "eval_loss", "target": "nan"},
        headers=project.read,
    )
    assert bad.status_code == 422
    assert bad.json()["field"] == "target"
    assert (
        client.get(
            "/api/v1/quality/pareto", params={"metric": "a b"}, headers=project.read
        ).status_code
        == 422
    )


def _sealed(m: Meter, n: int) -> Callable[[], bool]:
    return lambda: m.summary().devices[0].chunks_sealed >= n


def test_a_meters_points_reach_the_service_with_their_energy(
    client: TestClient, project: Project, tmp_path: Path
) -> None:
    """Meter → spool → uploader → the real service: the points come back with the run's
    cumulative energy, which grows with them."""
    run_id = str(uuid.uuid4())
    backend = SimulatedBackend([SimulatedDevice(steady(300.0))])
    with Meter(
        "quality",
        run_id=run_id,
        spool_dir=tmp_path,
        env={},
        backend=backend,
        interval_s=0.01,
        chunk_s=0.05,
    ) as m:
        for step in range(3):
            wait_until(_sealed(m, step + 1), "a chunk")
            assert m.record_metric("eval_loss", 3.0 - step, step=step, tokens=1000 * step)
    token = project.ingest["Authorization"].removeprefix("Bearer ")
    with Spool.in_directory(tmp_path) as spool, ControlStore.in_directory(tmp_path) as control:
        push = Uploader(
            spool,
            control,
            api_url="http://testserver/api/v1",
            token=token,
            transport=client._transport,
        )
        assert push.drain(timeout_s=10.0).complete
        push.close()
    body = client.get(f"/api/v1/runs/{run_id}/metrics", headers=project.read).json()
    losses = [p for p in body["points"] if p["name"] == "eval_loss"]
    assert [p["value"] for p in losses] == [3.0, 2.0, 1.0]
    energies = [p["energy_j"] for p in losses]
    assert energies[0] > 0
    assert energies == sorted(energies)
    assert [p["value"] for p in body["points"] if p["name"] == "tokens_seen"] == [
        0.0,
        1000.0,
        2000.0,
    ]


def test_fronts_and_trends_read_only_the_projects_own_runs(
    client: TestClient, project: Project, other: Project
) -> None:
    _trend_run(client, other, 0.0)
    for path, params in (
        ("/api/v1/quality/pareto", {"metric": "eval_loss"}),
        ("/api/v1/quality/trend", {"metric": "eval_loss", "target": 2.0}),
    ):
        body = client.get(path, params=params, headers=project.read).json()
        assert body["runs"] == []
        assert client.get(path, params=params, headers=project.ingest).status_code == 403


def test_metric_names_list_what_the_projects_runs_recorded(
    client: TestClient, project: Project, other: Project
) -> None:
    assert client.get("/api/v1/quality/metrics", headers=project.read).json() == {
        "metrics": [],
        "truncated": False,
    }
    for name, points in (("a", ["eval_loss", "tokens_seen"]), ("b", ["eval_loss"])):
        run_id = create_run(client, project, name=name)
        batch_ = [_point(s, 1.0 + s, T0_S + s, name=p) for p in points for s in range(3)]
        assert _metrics(client, project, run_id, batch_).status_code == 201
    elsewhere = create_run(client, other, name="theirs")
    assert _metrics(client, other, elsewhere, [_point(0, 1.0, name="bleu")]).status_code == 201
    body = client.get("/api/v1/quality/metrics", headers=project.read).json()
    assert body["truncated"] is False
    assert [(m["name"], m["runs"], m["points"]) for m in body["metrics"]] == [
        ("eval_loss", 2, 6),
        ("tokens_seen", 1, 3),
    ]
    assert body["metrics"][0]["last_t_s"] == T0_S + 2
    assert client.get("/api/v1/quality/metrics", headers=project.ingest).status_code == 403
