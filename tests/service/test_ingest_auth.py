"""Chunk ingest authenticates inside its own thread-pool hop (`service.routes.chunks`): the
same answers as the routes that use the `service.deps` dependencies."""

from __future__ import annotations

from fastapi import FastAPI

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, row_counts


def test_a_revoked_token_the_gate_remembers_is_refused_by_ingest_at_once(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    path = f"/api/v1/runs/{run_id}/chunks"
    assert client.post(path, json=batch([chunk(0)]), headers=project.ingest).status_code == 200
    token_id = project.token_ids["ingest"]
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=project.admin).status_code == 204
    response = client.post(path, json=batch([chunk(1)]), headers=project.ingest)
    assert response.status_code == 401, response.text
    assert response.json()["detail"] == "token revoked"
    assert row_counts(app, run_id)["chunk"] == 1


def test_a_token_without_the_ingest_scope_is_403_before_the_path_is_checked(
    client: TestClient, project: Project
) -> None:
    response = client.post(
        "/api/v1/runs/not-a-uuid/chunks", json=batch([chunk(0)]), headers=project.read
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"


def test_a_refused_batch_rolls_back_what_ingest_wrote_before_the_refusal(
    app: FastAPI, client: TestClient, project: Project, run_id: str
) -> None:
    # The devices are inserted before the chunks' time order is checked against the batch.
    path = f"/api/v1/runs/{run_id}/chunks"
    refused = batch([chunk(0), chunk(0, power_w=310.0)])
    assert client.post(path, json=refused, headers=project.ingest).status_code == 409
    assert row_counts(app, run_id)["device"] == 0
