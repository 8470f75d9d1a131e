"""An ``admin`` token also reads its own project (and only its own), on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.support.client import Project, TestClient, create_run


def test_an_admin_token_reads_its_project(
    client: TestClient, project: Project, run_id: str
) -> None:
    listed = client.get("/api/v1/runs", headers=project.admin)
    assert listed.status_code == 200, listed.text
    assert run_id in {item["id"] for item in listed.json()["items"]}
    assert client.get(f"/api/v1/runs/{run_id}", headers=project.admin).status_code == 200
    assert client.get("/api/v1/accounting", headers=project.admin).status_code == 200


def test_an_admin_token_reads_nothing_of_another_project(
    client: TestClient, project: Project, other: Project
) -> None:
    theirs = create_run(client, other)
    assert client.get(f"/api/v1/runs/{theirs}", headers=project.admin).status_code == 404
    listed = client.get("/api/v1/runs", headers=project.admin).json()
    assert theirs not in {item["id"] for item in listed["items"]}


def test_admin_still_does_not_ingest(client: TestClient, project: Project) -> None:
    response = client.put(
        f"/api/v1/runs/{create_run(client, project)}", headers=project.admin, json={"name": "x"}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
