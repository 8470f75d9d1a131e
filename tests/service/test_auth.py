"""Authentication, scopes and tenancy: who may touch what."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.support.builders import batch, chunk
from tests.support.client import OPERATOR_TOKEN, Project, TestClient, bearer, create_run, row_counts
from thermoledger.db.models import ApiToken


def _unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthenticated"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer tl_000000000000_" + "A" * 43},
    ],
    ids=["missing", "empty", "basic", "no-token", "malformed", "unknown"],
)
def test_missing_or_invalid_token_is_401(client: TestClient, headers: dict[str, str]) -> None:
    _unauthenticated(client.get("/api/v1/runs", headers=headers))


def test_a_wrong_secret_with_a_real_prefix_is_401(client: TestClient, project: Project) -> None:
    real = project.read["Authorization"].removeprefix("Bearer ")
    prefix = real[: len("tl_") + 12]
    forged = prefix + "_" + "B" * 43
    assert forged != real
    _unauthenticated(client.get("/api/v1/runs", headers=bearer(forged)))


def test_revoked_token_is_401(client: TestClient, project: Project) -> None:
    assert client.get("/api/v1/runs", headers=project.read).status_code == 200
    token_id = project.token_ids["read"]
    response = client.delete(f"/api/v1/tokens/{token_id}", headers=project.admin)
    assert response.status_code == 204
    _unauthenticated(client.get("/api/v1/runs", headers=project.read))
    # revoking again is harmless
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=project.admin).status_code == 204


def test_expired_token_is_401(client: TestClient, project: Project) -> None:
    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    issued = client.post(
        f"/api/v1/projects/{project.slug}/tokens",
        json={"name": "short", "scopes": ["read"], "expires_at": expires},
        headers=project.admin,
    ).json()
    assert client.get("/api/v1/runs", headers=bearer(issued["token"])).status_code == 200
    past = datetime.now(UTC) - timedelta(seconds=1)
    issued_past = client.post(
        f"/api/v1/projects/{project.slug}/tokens",
        json={"name": "stale", "scopes": ["read"], "expires_at": past.isoformat()},
        headers=project.admin,
    ).json()
    _unauthenticated(client.get("/api/v1/runs", headers=bearer(issued_past["token"])))


def test_wrong_scope_is_403(client: TestClient, project: Project, run_id: str) -> None:
    cases = [
        ("get", "/api/v1/runs", project.ingest, None),
        ("get", f"/api/v1/runs/{run_id}/report", project.ingest, None),
        ("put", f"/api/v1/runs/{uuid.uuid4()}", project.read, {"name": "x"}),
        ("post", f"/api/v1/runs/{run_id}/chunks", project.read, batch([chunk(0)])),
        ("post", f"/api/v1/runs/{run_id}/finish", project.read, None),
        (
            "post",
            f"/api/v1/projects/{project.slug}/tokens",
            project.ingest,
            {"name": "t", "scopes": ["read"]},
        ),
        ("delete", f"/api/v1/tokens/{project.token_ids['read']}", project.ingest, None),
    ]
    for method, path, headers, body in cases:
        response = client.request(method, path, headers=headers, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["code"] == "forbidden"


def test_other_projects_runs_are_404_for_read_and_write(
    app: FastAPI, client: TestClient, project: Project, other: Project
) -> None:
    run_id = create_run(client, project)
    assert (
        client.post(
            f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
        ).status_code
        == 200
    )
    before = row_counts(app, run_id)
    for method, path, body in [
        ("get", f"/api/v1/runs/{run_id}", None),
        ("get", f"/api/v1/runs/{run_id}/report", None),
        ("post", f"/api/v1/runs/{run_id}/chunks", batch([chunk(1)])),
        ("post", f"/api/v1/runs/{run_id}/phases", {"name": "eval", "t0_s": 1.8e9}),
        ("post", f"/api/v1/runs/{run_id}/work", {"tokens": 5}),
        ("post", f"/api/v1/runs/{run_id}/finish", None),
        ("post", f"/api/v1/runs/{run_id}/fail", {"exit_code": 1}),
    ]:
        response = client.request(method, path, headers=other.every, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert run_id in response.json()["detail"]
    assert row_counts(app, run_id) == before
    listed = client.get("/api/v1/runs", headers=other.read).json()["items"]
    assert run_id not in {r["id"] for r in listed}
    # The owner still sees it untouched.
    assert client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()["status"] == "running"


def test_a_run_id_of_another_project_is_another_run(
    client: TestClient, project: Project, other: Project
) -> None:
    run_id = create_run(client, project)
    response = client.put(f"/api/v1/runs/{run_id}", json={"name": "x"}, headers=other.ingest)
    assert response.status_code == 201  # its own run: nothing says the id is used elsewhere
    assert (response.json()["project"], response.json()["name"]) == (other.slug, "x")
    mine = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    assert (mine["project"], mine["name"]) == (project.slug, "train.py")


def test_admin_tokens_are_per_project(client: TestClient, project: Project, other: Project) -> None:
    issued = client.post(
        f"/api/v1/projects/{project.slug}/tokens",
        json={"name": "meter", "scopes": ["ingest", "read"]},
        headers=project.admin,
    )
    assert issued.status_code == 201
    body = issued.json()
    assert body["token"].startswith("tl_")
    assert body["scopes"] == ["ingest", "read"]
    listed = client.get(f"/api/v1/projects/{project.slug}/tokens", headers=project.admin).json()
    assert body["id"] in {t["id"] for t in listed}
    assert all("token" not in t and "hash" not in t for t in listed)
    # Another project's admin sees neither the project nor its tokens.
    for response in (
        client.get(f"/api/v1/projects/{project.slug}/tokens", headers=other.admin),
        client.post(
            f"/api/v1/projects/{project.slug}/tokens",
            json={"name": "x", "scopes": ["read"]},
            headers=other.admin,
        ),
        client.delete(f"/api/v1/tokens/{body['id']}", headers=other.admin),
    ):
        assert response.status_code == 404, response.text
    assert client.get("/api/v1/runs", headers=bearer(body["token"])).status_code == 200


def test_projects_are_created_by_the_operator_only(client: TestClient, project: Project) -> None:
    slug = f"new-{uuid.uuid4().hex[:8]}"
    denied = client.post("/api/v1/projects", json={"slug": slug}, headers=project.admin)
    assert denied.status_code == 403
    operator = bearer(OPERATOR_TOKEN)
    created = client.post("/api/v1/projects", json={"slug": slug, "name": "New"}, headers=operator)
    assert created.status_code == 201
    assert created.json()["name"] == "New"
    again = client.post("/api/v1/projects", json={"slug": slug}, headers=operator)
    assert again.status_code == 409
    token = client.post(
        f"/api/v1/projects/{slug}/tokens",
        json={"name": "first", "scopes": ["admin", "ingest", "read"]},
        headers=operator,
    ).json()["token"]
    assert client.get("/api/v1/runs", headers=bearer(token)).json()["items"] == []
    # The operator manages projects, but reads and writes no project's data.
    assert client.get("/api/v1/runs", headers=operator).status_code == 403
    missing = client.post(
        "/api/v1/projects/no-such-project/tokens",
        json={"name": "x", "scopes": ["read"]},
        headers=operator,
    )
    assert missing.status_code == 404


def test_last_used_at_is_written_once_per_interval(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    token_id = project.token_ids["read"]

    def last_used() -> datetime | None:
        with app.state.sessionmaker() as session:
            used: datetime | None = session.get_one(ApiToken, token_id).last_used_at
            return used

    assert last_used() is None
    assert client.get("/api/v1/runs", headers=project.read).status_code == 200
    first = last_used()
    assert first is not None
    assert client.get("/api/v1/runs", headers=project.read).status_code == 200
    assert last_used() == first  # within the 60 s interval: no second write
    with app.state.engine.begin() as connection:
        connection.execute(
            sa.update(ApiToken)
            .where(ApiToken.id == token_id)
            .values(last_used_at=first - timedelta(minutes=5))
        )
    assert client.get("/api/v1/runs", headers=project.read).status_code == 200
    refreshed = last_used()
    assert refreshed is not None
    assert refreshed > first - timedelta(minutes=5)
