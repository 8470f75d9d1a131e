"""Runs: idempotent create-or-merge, listing, ending, declared work and phases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from tests.support.builders import T0_S
from tests.support.client import Project, TestClient, create_run, row_counts

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _put(client: TestClient, project: Project, run_id: str, **body: Any) -> Any:
    fields = {"name": "train.py", "kind": "training", **body}
    return client.put(f"/api/v1/runs/{run_id}", json=fields, headers=project.ingest)


def test_put_is_idempotent(client: TestClient, project: Project) -> None:
    run_id = str(uuid.uuid4())
    body = {"started_at": START.isoformat(), "tags": {"model": "llama-7b"}}
    first = _put(client, project, run_id, **body)
    assert first.status_code == 201
    second = _put(client, project, run_id, **body)
    assert second.status_code == 200
    assert second.json() == first.json()
    assert first.json()["id"] == run_id
    assert first.json()["project"] == project.slug
    assert first.json()["status"] == "running"


def test_put_from_another_node_merges(client: TestClient, project: Project) -> None:
    run_id = str(uuid.uuid4())
    _put(
        client,
        project,
        run_id,
        started_at=START.isoformat(),
        tags={"model": "a"},
        host_info={"node-0": {"gpus": 4}},
    )
    later = (START + timedelta(seconds=3)).isoformat()
    merged = _put(
        client,
        project,
        run_id,
        started_at=later,
        tags={"node": "1"},
        host_info={"node-1": {"gpus": 4}},
    ).json()
    assert merged["started_at"] == START.isoformat().replace("+00:00", "Z")
    assert merged["tags"] == {"model": "a", "node": "1"}
    assert set(merged["host_info"]) == {"node-0", "node-1"}


def test_put_with_another_kind_is_409(client: TestClient, project: Project) -> None:
    run_id = create_run(client, project)
    response = _put(client, project, run_id, kind="inference")
    assert response.status_code == 409
    assert response.json()["field"] == "kind"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "training"}, "name"),
        ({"name": "x", "kind": "sleeping"}, "kind"),
        ({"name": "x", "started_at": "2026-03-01T12:00:00"}, "started_at"),
        ({"name": "x", "tags": {"a=b": "c"}}, "tags.a=b.[key]"),
        ({"name": "x", "surprise": 1}, "surprise"),
    ],
    ids=["no-name", "bad-kind", "naive-time", "bad-tag-key", "unknown-field"],
)
def test_put_refuses_bad_bodies(
    client: TestClient, project: Project, body: dict[str, Any], field: str
) -> None:
    run_id = str(uuid.uuid4())
    response = client.put(f"/api/v1/runs/{run_id}", json=body, headers=project.ingest)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert client.get(f"/api/v1/runs/{run_id}", headers=project.read).status_code == 404


def test_unknown_run_is_404_naming_it(client: TestClient, project: Project) -> None:
    run_id = str(uuid.uuid4())
    response = client.get(f"/api/v1/runs/{run_id}", headers=project.read)
    assert response.status_code == 404
    assert run_id in response.json()["detail"]
    assert client.get("/api/v1/runs/not-a-uuid", headers=project.read).status_code == 422


def test_list_filters_and_pages(client: TestClient, project: Project) -> None:
    ids = []
    for i in range(5):
        ids.append(
            create_run(
                client,
                project,
                kind="training" if i % 2 == 0 else "inference",
                started_at=(START + timedelta(hours=i)).isoformat(),
                tags={"team": "a" if i < 3 else "b"},
            )
        )
    newest_first = ids[::-1]

    def listed(**params: Any) -> list[str]:
        response = client.get("/api/v1/runs", params=params, headers=project.read)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["items"]]

    assert listed() == newest_first
    assert listed(kind="inference") == [ids[3], ids[1]]
    assert listed(tag="team=b") == [ids[4], ids[3]]
    assert listed(tag=["team=a", "team=b"]) == []
    assert listed(
        started_after=(START + timedelta(hours=1)).isoformat(),
        started_before=(START + timedelta(hours=3)).isoformat(),
    ) == [ids[2], ids[1]]
    assert listed(status="finished") == []

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/runs", params=params, headers=project.read).json()
        seen.extend(r["id"] for r in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first

    for params, field in (
        ({"cursor": "garbage"}, "cursor"),
        ({"tag": "no-equals-sign"}, "tag[0]"),
        ({"limit": 0}, "limit"),
        ({"started_after": "2026-03-01T12:00:00"}, "started_after"),
    ):
        response = client.get("/api/v1/runs", params=params, headers=project.read)
        assert response.status_code == 422, params
        assert response.json()["field"] == field


def test_finish_and_fail(client: TestClient, project: Project) -> None:
    run_id = create_run(client, project, started_at=START.isoformat())
    end = (START + timedelta(hours=1)).isoformat()
    finished = client.post(
        f"/api/v1/runs/{run_id}/finish",
        json={"ended_at": end, "exit_code": 0},
        headers=project.ingest,
    )
    assert finished.status_code == 200
    assert finished.json()["status"] == "finished"
    assert finished.json()["ended_at"] == end.replace("+00:00", "Z")
    again = client.post(
        f"/api/v1/runs/{run_id}/finish", json={"exit_code": 0}, headers=project.ingest
    )
    assert again.status_code == 200
    assert again.json() == finished.json()
    conflict = client.post(
        f"/api/v1/runs/{run_id}/fail", json={"exit_code": 1}, headers=project.ingest
    )
    assert conflict.status_code == 409

    failing = create_run(client, project, started_at=START.isoformat())
    failed = client.post(
        f"/api/v1/runs/{failing}/fail", json={"exit_code": 137}, headers=project.ingest
    )
    assert failed.json()["status"] == "failed"
    assert failed.json()["exit_code"] == 137

    early = create_run(client, project, started_at=START.isoformat())
    before_start = (START - timedelta(seconds=1)).isoformat()
    response = client.post(
        f"/api/v1/runs/{early}/finish", json={"ended_at": before_start}, headers=project.ingest
    )
    assert response.status_code == 422
    assert response.json()["field"] == "ended_at"
    assert client.get(f"/api/v1/runs/{early}", headers=project.read).json()["status"] == "running"


def test_declared_work_is_unit_checked(client: TestClient, project: Project, run_id: str) -> None:
    body = {
        "flops": {"value": 3.2, "unit": "EFLOP"},
        "dtype": "bf16",
        "tokens": "2e9 token",
        "model_params": 7_000_000_000,
    }
    response = client.post(f"/api/v1/runs/{run_id}/work", json=body, headers=project.ingest)
    assert response.status_code == 200, response.text
    declared = response.json()["declared"]
    assert declared == {
        "flops": pytest.approx(3.2e18),
        "flops_dtype": "bf16",
        "tokens": 2_000_000_000,
        "model_params": 7_000_000_000,
    }


def test_a_wrong_dimension_is_422_naming_field_and_dimensions(
    client: TestClient, project: Project, run_id: str
) -> None:
    response = client.post(
        f"/api/v1/runs/{run_id}/work",
        json={"flops": {"value": 3.6, "unit": "MJ"}},
        headers=project.ingest,
    )
    assert response.status_code == 422
    error = response.json()
    assert error["code"] == "dimension_mismatch"
    assert error["field"] == "flops"
    assert "[compute]" in error["detail"]
    assert "[mass] * [length] ** 2 / [time] ** 2" in error["detail"]
    assert (
        client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()["declared"]["flops"]
        is None
    )


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"tokens": {"value": 5, "unit": "J"}}, "tokens", "dimension_mismatch"),
        ({"tokens": -5}, "tokens", "invalid_quantity"),
        ({"tokens": 2.5}, "tokens", "invalid_quantity"),
        ({"flops": 1e15}, "flops", "invalid_quantity"),
        ({"flops": {"value": 1, "unit": "zorkmid"}}, "flops", "invalid_quantity"),
        ({"flops": {"value": -1, "unit": "FLOP"}}, "flops", "invalid_quantity"),
        ({"model_params": "7e9 W"}, "model_params", "dimension_mismatch"),
    ],
)
def test_bad_work_is_422(
    client: TestClient, project: Project, run_id: str, body: dict[str, Any], field: str, code: str
) -> None:
    response = client.post(f"/api/v1/runs/{run_id}/work", json=body, headers=project.ingest)
    assert response.status_code == 422, response.text
    assert (response.json()["field"], response.json()["code"]) == (field, code)


def test_phases_are_recorded_closed_and_guarded(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    url = f"/api/v1/runs/{run_id}/phases"
    opened = client.post(
        url, json={"name": "epoch-1", "t0_s": T0_S + 100.0}, headers=project.ingest
    )
    assert opened.status_code == 201
    assert opened.json()["t1_s"] is None
    closed = client.post(
        url,
        json={
            "name": "epoch-1",
            "t0_s": T0_S + 100.0,
            "t1_s": T0_S + 160.0,
            "flops": {"value": 2, "unit": "PFLOP"},
            "dtype": "bf16",
            "tokens": 1000,
        },
        headers=project.ingest,
    )
    assert closed.status_code == 200
    assert closed.json()["flops"] == pytest.approx(2e15)
    assert closed.json()["tokens"] == 1000
    assert closed.json()["id"] == opened.json()["id"]
    changed = client.post(
        url,
        json={"name": "epoch-1", "t0_s": T0_S + 100.0, "t1_s": T0_S + 170.0},
        headers=project.ingest,
    )
    assert changed.status_code == 409
    assert changed.json()["field"] == "t1_s"
    for body, field in (
        ({"name": "x", "t0_s": T0_S + 10.0, "t1_s": T0_S + 5.0}, "t1_s"),
        ({"name": "x", "t0_s": -1.0}, "t0_s"),
        ({"name": "x", "t0_s": T0_S, "flops": {"value": 1, "unit": "kWh"}}, "flops"),
        ({"name": "x", "t0_s": T0_S, "tokens": {"value": 1, "unit": "USD"}}, "tokens"),
    ):
        response = client.post(url, json=body, headers=project.ingest)
        assert response.status_code == 422, body
        assert response.json()["field"] == field
    assert row_counts(app, run_id)["phase"] == 1
