"""The report shows the measurement grade the run's meters sent (`meters.quality`)."""

from __future__ import annotations

from typing import Any

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run


def _quality(grade: str, *limits: str) -> dict[str, Any]:
    return {"grade": grade, "limits": list(limits), "improve": [f"fix {x}" for x in limits]}


def _report(client: TestClient, project: Project, run_id: str) -> dict[str, Any]:
    posted = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
    )
    assert posted.status_code == 200, posted.text
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_worst_grade_of_the_nodes_with_every_limit_once(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(
        client,
        project,
        host_info={
            "meter@node-0": {"pid": 1, "quality": _quality("A")},
            "meter@node-1": {"pid": 2, "quality": _quality("C", "gpu3 lost", "gpu4 instant")},
            "job@node-1": {"pid": 3},
        },
    )
    quality = _report(client, project, run_id)["quality"]
    assert quality == {
        "grade": "C",
        "limits": ["gpu3 lost", "gpu4 instant"],
        "improve": ["fix gpu3 lost", "fix gpu4 instant"],
        "meters": 2,
    }


def test_a_run_without_a_reported_grade_says_none(client: TestClient, project: Project) -> None:
    run_id = create_run(client, project, host_info={"meter@node-0": {"quality": "great"}})
    assert _report(client, project, run_id)["quality"] is None
