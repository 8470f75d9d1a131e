"""A run is identified within its project; a run's limits hold across requests; an ended run's
identity is frozen (issue 13, items 2 and 4). On SQLite and PostgreSQL.

Run ids are made by clients and are often predictable (``uuid5`` of a Slurm job id). Before,
they were unique across the service: another project could register an id first, the owner's
meter then got 409 forever (its chunks stuck in the spool), and the 409 told the squatter that
the id existed. Now each project has its own namespace of run ids.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI

from tests.support.client import Project, TestClient, make_project
from tests.support.ledger import finish_run, post_chunks

ENDED = datetime(2025, 1, 2, tzinfo=UTC)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def _put(client: TestClient, project: Project, run_id: str, **fields: Any) -> Any:
    body = {"name": "job", "kind": "training", "started_at": "2025-01-01T00:00:00Z", **fields}
    return client.put(f"/api/v1/runs/{run_id}", json=body, headers=project.ingest)


def _energy(client: TestClient, project: Project, run_id: str) -> float:
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    return float(response.json()["energy"]["total"]["energy_j"])


# -- item 2: run ids per project ------------------------------------------------------------


def test_a_squatted_id_is_another_run_and_the_owner_meters_as_if_nobody_had_it(
    app: FastAPI, client: TestClient
) -> None:
    owner, squatter = make_project(app), make_project(app)
    run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "slurm:cluster:4242"))  # predictable
    # the squatter registers it first, and uploads into it
    assert _put(client, squatter, run_id, name="squat").status_code == 201
    post_chunks(client, squatter, run_id, range(2), power_w=100.0)
    # the owner's meter is not told anything: it creates its run and uploads as usual
    created = _put(client, owner, run_id, name="train")
    assert created.status_code == 201, created.text
    assert created.json()["id"] == run_id
    assert created.json()["project"] == owner.slug
    post_chunks(client, owner, run_id, range(3), power_w=500.0)
    # each project sees its own run under the same id, with its own figures
    assert client.get(f"/api/v1/runs/{run_id}", headers=owner.read).json()["name"] == "train"
    assert client.get(f"/api/v1/runs/{run_id}", headers=squatter.read).json()["name"] == "squat"
    assert _energy(client, owner, run_id) == pytest.approx(3 * 500.0 * 720)
    assert _energy(client, squatter, run_id) == pytest.approx(2 * 100.0 * 720)
    for project, name in ((owner, "train"), (squatter, "squat")):
        listed = client.get("/api/v1/runs", headers=project.read).json()["items"]
        assert [(r["id"], r["name"]) for r in listed] == [(run_id, name)]


def test_registering_an_id_another_project_holds_looks_like_any_new_id(
    app: FastAPI, client: TestClient
) -> None:
    owner, prober = make_project(app), make_project(app)
    taken, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    assert _put(client, owner, taken).status_code == 201
    answers = [_put(client, prober, run_id) for run_id in (taken, fresh)]
    assert [a.status_code for a in answers] == [201, 201]
    volatile = {"id", "created_at", "updated_at"}
    shapes = [{k: v for k, v in a.json().items() if k not in volatile} for a in answers]
    assert shapes[0] == shapes[1]
    # and the prober cannot read, end or upload into the owner's run: it only has its own
    client.post(f"/api/v1/runs/{taken}/finish", json={"exit_code": 3}, headers=prober.ingest)
    owners = client.get(f"/api/v1/runs/{taken}", headers=owner.read).json()
    assert (owners["status"], owners["exit_code"]) == ("running", None)


def test_each_projects_ledger_names_its_run_by_the_id_it_knows_and_both_chains_verify(
    app: FastAPI, client: TestClient
) -> None:
    first, second = make_project(app), make_project(app)
    run_id = str(uuid.uuid4())
    for project in (first, second):
        assert _put(client, project, run_id).status_code == 201
        post_chunks(client, project, run_id, range(1), power_w=500.0)
        finish_run(client, project, run_id, ENDED)
    for project in (first, second):
        entries = client.get("/api/v1/ledger", headers=project.read).json()["items"]
        assert entries
        assert {e["run_id"] for e in entries} == {run_id}
        entries = client.get(
            "/api/v1/ledger", params={"run_id": run_id}, headers=project.read
        ).json()["items"]
        assert entries
        assert {e["run_id"] for e in entries} == {run_id}
        verdict = client.get("/api/v1/audit/verify", headers=project.admin).json()
        assert verdict["ok"] is True, verdict
        exported = client.get(
            "/api/v1/audit/export", params={"format": "csv"}, headers=project.read
        )
        assert exported.status_code == 200, exported.text
        assert {r["run_id"] for r in csv.DictReader(io.StringIO(exported.text))} == {run_id}


# -- item 4: limits per run, ended runs frozen ------------------------------------------------


def _tags(prefix: str, n: int) -> dict[str, str]:
    return {f"{prefix}{i}": "v" for i in range(n)}


def test_tags_cannot_grow_past_the_limit_by_repeating_the_put(
    app: FastAPI, client: TestClient
) -> None:
    project = make_project(app)
    run_id = str(uuid.uuid4())
    assert _put(client, project, run_id, tags=_tags("a", 60)).status_code == 201
    assert _put(client, project, run_id, tags=_tags("a", 64)).status_code == 200  # same keys
    refused = _put(client, project, run_id, tags=_tags("b", 5))
    assert refused.status_code == 422, refused.text
    assert "tags" in refused.text
    assert "64" in refused.text
    stored = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    assert stored["tags"] == _tags("a", 64)  # nothing of the refused request


def test_host_info_cannot_grow_past_the_limit_by_repeating_the_put(
    app: FastAPI, client: TestClient
) -> None:
    project = make_project(app)
    run_id = str(uuid.uuid4())
    limit = app.state.settings.max_host_info_bytes
    part = "x" * (limit // 3)
    assert _put(client, project, run_id, host_info={"a": part}).status_code == 201
    assert _put(client, project, run_id, host_info={"b": part}).status_code == 200
    refused = _put(client, project, run_id, host_info={"c": part, "d": part})
    assert refused.status_code == 422, refused.text
    assert "host_info" in refused.text
    one_request = _put(client, project, str(uuid.uuid4()), host_info={"a": "x" * (limit + 1)})
    assert one_request.status_code == 422
    assert "host_info" in one_request.text
    stored = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    assert set(stored["host_info"]) == {"a", "b"}


def test_an_ended_runs_name_and_start_are_final(app: FastAPI, client: TestClient) -> None:
    project = make_project(app)
    run_id = str(uuid.uuid4())
    assert _put(client, project, run_id, name="train").status_code == 201
    # before it ends, a later registration may still rename it and move its start earlier
    assert _put(client, project, run_id, name="train").status_code == 200
    finish_run(client, project, run_id, ENDED)
    renamed = _put(client, project, run_id, name="=HYPERLINK(1)")
    assert renamed.status_code == 409
    assert "name" in renamed.text
    earlier = _put(client, project, run_id, name="train", started_at="2024-01-01T00:00:00Z")
    assert earlier.status_code == 409
    assert "started_at" in earlier.text
    # a retried registration that changes neither still succeeds; a later start changes nothing
    assert _put(client, project, run_id, name="train").status_code == 200
    later = _put(client, project, run_id, name="train", started_at="2025-01-01T12:00:00Z")
    assert later.status_code == 200
    stored = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    assert (stored["name"], stored["started_at"]) == ("train", "2025-01-01T00:00:00Z")
