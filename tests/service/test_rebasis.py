"""Re-basis (``POST /runs/{id}/rebasis``, ``thermoledger-server rebasis``) on SQLite and
PostgreSQL: a run that ended before its project had a region is re-priced by new, superseding
ledger entries; its measured IT energy and history stay; the chain still verifies."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run
from thermoledger.service import cli as server_cli

REASON = {"reason": "the project's region was set after the run"}


def _ended_run(client: TestClient, project: Project) -> str:
    run_id = create_run(client, project)
    chunks = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
    )
    assert chunks.status_code == 200, chunks.text
    ended = client.post(f"/api/v1/runs/{run_id}/finish", headers=project.ingest)
    assert ended.status_code == 200, ended.text
    return run_id


def _entries(client: TestClient, project: Project, run_id: str) -> list[dict[str, Any]]:
    page = client.get(f"/api/v1/ledger?run_id={run_id}&limit=500", headers=project.read)
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


def _current(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["figure"]: e for e in entries if e["superseded_by"] is None}


def _price(client: TestClient, project: Project) -> None:
    accounting = {"region": "DE", "pue": "hyperscale"}
    assert (
        client.put("/api/v1/accounting", json=accounting, headers=project.admin).status_code == 200
    )
    tariff = {
        "region": "DE",
        "price": "0.12 USD/kWh",
        "valid_from": "2000-01-01T00:00:00Z",
        "source": "contract",
    }
    assert client.post("/api/v1/tariffs", json=tariff, headers=project.admin).status_code == 201


def test_a_run_ended_before_its_region_is_repriced_by_new_entries(
    client: TestClient, project: Project
) -> None:
    run_id = _ended_run(client, project)
    before = _entries(client, project, run_id)
    old = _current(before)
    assert "co2e_location" not in old
    assert "energy_cost" not in old
    _price(client, project)
    # Setting the region changes nothing already ledgered.
    assert _entries(client, project, run_id) == before

    response = client.post(f"/api/v1/runs/{run_id}/rebasis", json=REASON, headers=project.admin)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["changed"] is True
    appended = {e["figure"]: e for e in answer["entries"]}
    assert set(appended) == {"facility_energy", "co2e_location", "energy_cost"}
    it = old["it_energy"]
    facility = appended["facility_energy"]
    assert facility["provenance"]["origin"] == "rebasis"
    assert facility["provenance"]["reason"] == REASON["reason"]
    assert facility["provenance"]["supersedes"] == old["facility_energy"]["seq"]
    previous = facility["provenance"]["previous_basis"]
    assert previous["region"] is None
    assert previous["entries"] == {"facility_energy": old["facility_energy"]["seq"]}
    assert facility["provenance"]["region"] == "DE"
    assert facility["value_si"] == pytest.approx(it["value_si"] * 1.1)
    kwh = it["value_si"] * 1.1 / 3.6e6
    assert appended["energy_cost"]["value_si"] == pytest.approx(kwh * 0.12)
    assert appended["co2e_location"]["provenance"]["inputs"] == {
        "it_energy": it["seq"],
        "facility_energy": facility["seq"],
    }

    after = _entries(client, project, run_id)
    # History kept: every earlier entry unchanged but for who supersedes it; IT energy current.
    assert [e["hash"] for e in after[: len(before)]] == [e["hash"] for e in before]
    assert _current(after)["it_energy"]["seq"] == it["seq"]
    assert _current(after)["facility_energy"]["seq"] == facility["seq"]
    verdict = client.get("/api/v1/audit/verify", headers=project.admin).json()
    assert verdict["ok"] is True, verdict

    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read).json()
    assert report["accounting"]["region"] == "DE"
    assert report["accounting"]["corrections"] == []

    again = client.post(f"/api/v1/runs/{run_id}/rebasis", json=REASON, headers=project.admin)
    assert again.status_code == 200
    assert again.json() == {"run_id": run_id, "changed": False, "entries": []}
    assert len(_entries(client, project, run_id)) == len(after)


def test_refusals(client: TestClient, project: Project, other: Project) -> None:
    running = create_run(client, project)
    refused = client.post(f"/api/v1/runs/{running}/rebasis", json=REASON, headers=project.admin)
    assert refused.status_code == 409
    assert refused.json()["code"] == "conflict"
    ended = _ended_run(client, project)
    count = len(_entries(client, project, ended))
    for headers, status in ((project.read, 403), (project.ingest, 403), (other.admin, 404)):
        response = client.post(f"/api/v1/runs/{ended}/rebasis", json=REASON, headers=headers)
        assert response.status_code == status, response.text
    empty = client.post(f"/api/v1/runs/{ended}/rebasis", json={"reason": ""}, headers=project.admin)
    assert empty.status_code == 422
    assert "reason" in empty.text
    assert len(_entries(client, project, ended)) == count


def test_the_cli_rebases_like_the_api(
    database_url: str, client: TestClient, project: Project
) -> None:
    run_id = _ended_run(client, project)
    _price(client, project)

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = server_cli.main(
            ["rebasis", *argv, "--database-url", database_url], out=out, err=err
        )
        return status, out.getvalue(), err.getvalue()

    argv = ("--project", project.slug, "--run", run_id, "--reason", "region set late")
    status, out, err = run(*argv)
    assert status == 0, err
    answer = json.loads(out)
    assert answer["changed"] is True
    assert {e["figure"] for e in answer["entries"]} >= {"facility_energy", "energy_cost"}
    status, out, _ = run(*argv)
    assert status == 0
    assert json.loads(out)["changed"] is False
    running = create_run(client, project)
    status, _, err = run("--project", project.slug, "--run", running, "--reason", "x")
    assert status == 1
    assert "--run:" in err
    status, _, err = run("--project", project.slug, "--run", run_id, "--reason", " ")
    assert status == 2
    assert "--reason:" in err
    assert client.get("/api/v1/audit/verify", headers=project.admin).json()["ok"] is True
