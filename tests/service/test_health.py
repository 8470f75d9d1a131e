"""Probes and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.support import dbutil
from tests.support.client import TestClient, clean_settings
from thermoledger.db import migrate
from thermoledger.service.app import create_app


def test_healthz_answers_without_the_database(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_the_schema_head(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "revision": migrate.head()}


@pytest.mark.parametrize("backend", dbutil.BACKENDS)
def test_readyz_is_503_until_migrated(backend: str, tmp_path: Path) -> None:
    with dbutil.database_url(backend, tmp_path) as url:
        app: FastAPI = create_app(clean_settings(database_url=url))
        with TestClient(app) as client:
            before = client.get("/readyz")
            assert before.status_code == 503
            assert before.json()["code"] == "not_ready"
            assert "thermoledger-server migrate" in before.json()["detail"]
            migrate.upgrade(url)
            assert client.get("/readyz").status_code == 200


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "thermoledger.db"
    app = create_app(clean_settings(database_url=f"sqlite:///{missing}"))
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["code"] == "not_ready"


def test_openapi_lists_every_route_and_the_ingest_body(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/chunks",
        "/api/v1/runs/{run_id}/phases",
        "/api/v1/runs/{run_id}/report",
        "/api/v1/projects",
        "/api/v1/tokens/{token_id}",
    ):
        assert path in paths
    body = paths["/api/v1/runs/{run_id}/chunks"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    components = schema["components"]["schemas"]
    assert ref.rsplit("/", 1)[1] in components
    assert "ChunkIn" in components
    ack = paths["/api/v1/runs/{run_id}/chunks"]["post"]["responses"]["200"]["content"]
    assert ack["application/json"]["schema"]["$ref"].endswith("/IngestPublic")
    # every section of the docs is described, in reading order (not route-matching order)
    operations = [op for path in paths.values() for op in path.values() if "responses" in op]
    assert all(op.get("tags") for op in operations)
    used = {tag for op in operations for tag in op["tags"]}
    described = [tag["name"] for tag in schema["tags"]]
    assert used == set(described)
    assert described.index("runs") < described.index("chunks")
    assert client.get("/docs").status_code == 200
