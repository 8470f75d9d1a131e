"""Ledger helpers for the audit tests: metered and finished runs, accounting, factors."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from tests.support.builders import batch, chunk
from tests.support.client import OPERATOR_TOKEN, Project, TestClient, bearer

__all__ = [
    "OPERATOR",
    "add_factor",
    "configure",
    "finish_run",
    "ledger_items",
    "metered_run",
    "post_chunks",
    "region",
]

#: Headers of the services' bootstrap admin (`OPERATOR_TOKEN`).
OPERATOR = bearer(OPERATOR_TOKEN)


def region() -> str:
    """A region no other test uses (shared versions are per region)."""
    return f"T{uuid.uuid4().hex[:8].upper()}"


def metered_run(
    client: TestClient,
    project: Project,
    *,
    chunks: int,
    ended_at: datetime,
    power_w: float = 500.0,
    tags: dict[str, str] | None = None,
    tokens: int | None = None,
    finish: bool = True,
) -> str:
    """A run with ``chunks`` chunks of ``power_w`` × 720 s each (500 W: 0.1 kWh per chunk),
    its tokens declared, finished at ``ended_at``."""
    run_id = str(uuid.uuid4())
    body: dict[str, Any] = {"name": "job", "kind": "training", "started_at": "2025-01-01T00:00:00Z"}
    if tags:
        body["tags"] = tags
    response = client.put(f"/api/v1/runs/{run_id}", json=body, headers=project.ingest)
    assert response.status_code == 201, response.text
    post_chunks(client, project, run_id, range(chunks), power_w=power_w)
    if tokens is not None:
        response = client.post(
            f"/api/v1/runs/{run_id}/work", json={"tokens": tokens}, headers=project.ingest
        )
        assert response.status_code == 200, response.text
    if finish:
        finish_run(client, project, run_id, ended_at)
    return run_id


def post_chunks(
    client: TestClient, project: Project, run_id: str, seqs: range, *, power_w: float = 500.0
) -> None:
    chunks = [chunk(seq, power_w=power_w, n=10, interval_s=72.0) for seq in seqs]
    response = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch(chunks), headers=project.ingest
    )
    assert response.status_code == 200, response.text


def finish_run(client: TestClient, project: Project, run_id: str, ended_at: datetime) -> None:
    response = client.post(
        f"/api/v1/runs/{run_id}/finish",
        json={"ended_at": ended_at.isoformat(), "exit_code": 0},
        headers=project.ingest,
    )
    assert response.status_code == 200, response.text


def ledger_items(client: TestClient, project: Project, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/ledger", params=params, headers=project.read)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def configure(
    client: TestClient, project: Project, region_code: str, pue: Any = "none"
) -> dict[str, Any]:
    response = client.put(
        "/api/v1/accounting", json={"region": region_code, "pue": pue}, headers=project.admin
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def add_factor(client: TestClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"basis": "location", "source": "test grid operator", "year": 2025, **fields}
    response = client.post("/api/v1/factors", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
