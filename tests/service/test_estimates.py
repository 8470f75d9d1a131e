"""``POST /api/v1/runs/{run_id}/estimate`` on SQLite and PostgreSQL: published figures through
the API, the ledger entries and labels an estimate leaves, and refusals that name the field and
write nothing."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run, row_counts
from tests.support.published import CASES, PublishedCase
from thermoledger.accounting.units import magnitude_in

SOURCE = {"source": "test", "document": "tests/service/test_estimates.py", "page": "1"}


def _url(run_id: str) -> str:
    return f"/api/v1/runs/{run_id}/estimate"


def _post(client: TestClient, project: Project, run_id: str, body: dict[str, Any]) -> Any:
    return client.post(_url(run_id), json=body, headers=project.ingest)


def _body(**fields: Any) -> dict[str, Any]:
    return {
        "name": "estimated",
        "devices": 8,
        "duration": "10 h",
        "mean_power": "300 W",
        "provenance": SOURCE,
        **fields,
    }


def _entries(client: TestClient, project: Project, run_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/ledger?run_id={run_id}", headers=project.every)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _case_body(case: PublishedCase) -> dict[str, Any]:
    body: dict[str, Any] = {"name": case.id, "pue": 1.0}  # the publication's own PUE, or none
    for key, value in case.inputs.items():
        if key == "note":
            continue
        body["device_time" if key == "device_hours" else key] = value
    body["provenance"] = {"source": case.id, "note": case.citation}
    return body


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_published_figures_through_the_api(
    client: TestClient, project: Project, case: PublishedCase
) -> None:
    run_id = str(uuid.uuid4())
    response = _post(client, project, run_id, _case_body(case))
    assert response.status_code == 201, response.text
    figures = {e["figure"]: e for e in response.json()["entries"]}
    if case.energy is not None:
        text, boundary = case.energy
        figure = figures["facility_energy" if boundary == "facility" else "it_energy"]
        assert figure["value_si"] == pytest.approx(magnitude_in(text, "J"), rel=case.rel)
    if case.co2e is not None:
        published_g = magnitude_in(case.co2e, "gCO2e")
        assert figures["co2e_location"]["value_si"] == pytest.approx(published_g, rel=case.rel)
    assert "co2e_market" not in figures  # an estimate's intensity is location-based only


def test_an_estimate_is_ledgered_labelled_and_ended(client: TestClient, project: Project) -> None:
    run_id = str(uuid.uuid4())
    body = _body(
        started_at="2024-01-01T00:00:00Z",
        pue=1.2,
        intensity="400 gCO2e/kWh",
        band={"duration": {"rel": 0.1}, "mean_power": {"low": "250 W", "high": "350 W"}},
        tags={"team": "nlp"},
    )
    response = _post(client, project, run_id, body)
    assert response.status_code == 201, response.text
    answer = response.json()
    run = answer["run"]
    assert run["status"] == "finished"
    assert run["ended_at"].startswith("2024-01-01T10:00:00")
    assert run["tags"] == {"team": "nlp"}
    label = run["host_info"]["estimate"]
    assert label["method"] == "estimate"
    assert label["source"] == "test"
    energy_j = 8 * 10 * 3600 * 300.0
    assert label["it_energy_j"] == pytest.approx(energy_j)
    assert label["band_low_j"] == pytest.approx(8 * 9 * 3600 * 250.0)
    assert label["band_high_j"] == pytest.approx(8 * 11 * 3600 * 350.0)
    # Wherever the run appears: read back, and in the list.
    read = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    assert read["host_info"]["estimate"]["method"] == "estimate"

    entries = {e["figure"]: e for e in _entries(client, project, run_id)}
    assert set(entries) == {"it_energy", "facility_energy", "co2e_location"}
    it = entries["it_energy"]
    assert it["source"] == "declared"
    assert it["value_si"] == pytest.approx(energy_j)
    provenance = it["provenance"]
    assert provenance["origin"] == provenance["method"] == "estimate"
    assert provenance["measurement"]["methods"] == {
        "estimate": {"devices": 8.0, "energy_j": pytest.approx(energy_j)}
    }
    assert provenance["measurement"]["band_low_j"] == pytest.approx(label["band_low_j"])
    assert provenance["source"] == {**SOURCE, "note": None}
    assert provenance["estimate"]["unstated"] == ["devices", "pue", "intensity"]
    assert entries["facility_energy"]["value_si"] == pytest.approx(energy_j * 1.2)
    assert entries["facility_energy"]["provenance"]["pue"]["value"] == 1.2
    co2e = entries["co2e_location"]
    assert co2e["value_si"] == pytest.approx(energy_j * 1.2 / 3.6e6 * 400)
    assert co2e["provenance"]["factor"]["origin"] == "estimate"
    verify = client.get("/api/v1/audit/verify", headers=project.every)
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True


def test_posting_again_is_idempotent_and_a_revision_supersedes(
    client: TestClient, project: Project
) -> None:
    run_id = str(uuid.uuid4())
    body = _body(started_at="2024-02-01T00:00:00Z")
    assert _post(client, project, run_id, body).status_code == 201
    again = _post(client, project, run_id, body)
    assert again.status_code == 200, again.text
    assert again.json()["entries"] == []
    revised = _post(client, project, run_id, {**body, "mean_power": "250 W"})
    assert revised.status_code == 200, revised.text
    new = {e["figure"]: e for e in revised.json()["entries"]}
    assert new["it_energy"]["value_si"] == pytest.approx(8 * 10 * 3600 * 250.0)
    assert new["it_energy"]["provenance"]["supersedes"] is not None
    current = [e for e in _entries(client, project, run_id) if e["superseded_by"] is None]
    assert sorted(e["figure"] for e in current) == ["facility_energy", "it_energy"]


def test_an_existing_run_is_estimated_and_keeps_its_identity(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project, kind="inference", started_at="2024-03-01T00:00:00Z")
    body = _body()
    del body["name"]
    response = _post(client, project, run_id, body)
    assert response.status_code == 200, response.text
    run = response.json()["run"]
    assert (run["name"], run["kind"], run["status"]) == ("train.py", "inference", "finished")
    assert run["ended_at"].startswith("2024-03-01T10:00:00")


def test_the_project_context_applies_when_the_estimate_states_none(
    client: TestClient, project: Project
) -> None:
    configured = client.put(
        "/api/v1/accounting", json={"region": "WORLD", "pue": "typical"}, headers=project.admin
    )
    assert configured.status_code == 200, configured.text
    run_id = str(uuid.uuid4())
    response = _post(
        client, project, run_id, _body(device="V100-SXM2-32GB", utilisation=0.5, mean_power=None)
    )
    assert response.status_code == 201, response.text
    figures = {e["figure"]: e for e in response.json()["entries"]}
    it_j = 8 * 10 * 3600 * 150.0  # the catalog's 300 W TDP × 0.5
    assert figures["it_energy"]["value_si"] == pytest.approx(it_j)
    assert figures["facility_energy"]["value_si"] == pytest.approx(it_j * 1.56)
    location = figures["co2e_location"]
    assert location["value_si"] == pytest.approx(it_j * 1.56 / 3.6e6 * 481, rel=1e-6)
    assert location["provenance"]["factor"]["region"] == "WORLD"


def test_the_estimates_pue_prices_and_emits_what_its_facility_entry_says(
    client: TestClient, project: Project
) -> None:
    """An estimate stating PUE 1.1 in a project configured with 1.56: facility energy, CO2e
    and cost all rest on 1.1 (the CO2e and cost once used the project's PUE)."""
    configured = client.put(
        "/api/v1/accounting", json={"region": "WORLD", "pue": "typical"}, headers=project.admin
    )
    assert configured.status_code == 200, configured.text
    tariff = {
        "region": "WORLD",
        "price": {"value": 100, "unit": "USD/MWh"},
        "valid_from": "2020-01-01T00:00:00Z",
        "source": "test tariff",
    }
    assert client.post("/api/v1/tariffs", json=tariff, headers=project.admin).status_code == 201
    response = _post(client, project, str(uuid.uuid4()), _body(pue=1.1))
    assert response.status_code == 201, response.text
    figures = {e["figure"]: e for e in response.json()["entries"]}
    it_j = 8 * 10 * 3600 * 300.0
    facility_kwh = it_j * 1.1 / 3.6e6
    assert figures["facility_energy"]["value_si"] == pytest.approx(it_j * 1.1)
    assert figures["co2e_location"]["value_si"] == pytest.approx(facility_kwh * 481, rel=1e-6)
    assert figures["energy_cost"]["value_si"] == pytest.approx(facility_kwh * 0.1, rel=1e-6)
    for figure in ("facility_energy", "co2e_location", "energy_cost"):
        assert figures[figure]["provenance"]["pue"]["value"] == pytest.approx(1.1)


def test_a_metered_run_cannot_be_estimated(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    stored = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
    )
    assert stored.status_code == 200, stored.text
    before = row_counts(app, run_id)
    response = _post(client, project, run_id, _body())
    assert response.status_code == 409, response.text
    assert response.json()["field"] == "run_id"
    assert row_counts(app, run_id) == before
    run = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    assert run["status"] == "running"
    assert "estimate" not in run["host_info"]
    assert _entries(client, project, run_id) == []


def test_an_estimate_without_dates_is_of_work_just_done_never_in_the_future(
    client: TestClient, project: Project
) -> None:
    run_id = str(uuid.uuid4())
    before = datetime.now(UTC)
    assert _post(client, project, run_id, _body(duration="10 h")).status_code == 201
    run = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    started = datetime.fromisoformat(run["started_at"])
    ended = datetime.fromisoformat(run["ended_at"])
    assert before <= ended <= datetime.now(UTC)
    assert ended - started == timedelta(hours=10)
    # a running run that started now cannot be estimated to have run ten more days
    running = create_run(client, project)
    refused = _post(client, project, running, _body(duration="10 day"))
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "duration"
    assert "future" in refused.json()["detail"]


def test_an_estimated_runs_report_says_it_is_an_estimate(
    client: TestClient, project: Project
) -> None:
    run_id = str(uuid.uuid4())
    assert _post(client, project, run_id, _body()).status_code == 201
    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert report.status_code == 409
    assert "is an estimate (test)" in report.json()["detail"]
    assert f"/api/v1/ledger?run_id={run_id}" in report.json()["detail"]


def test_an_estimated_run_takes_no_chunks(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = str(uuid.uuid4())
    assert _post(client, project, run_id, _body()).status_code == 201
    before = row_counts(app, run_id)
    entries = _entries(client, project, run_id)
    refused = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["field"] == "run_id"
    assert "estimate" in refused.json()["detail"]
    assert row_counts(app, run_id) == before
    assert _entries(client, project, run_id) == entries


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"duration": "-5 h"}, "duration"),
        ({"devices": -1}, "devices"),
        ({"mean_power": {"value": math.nan, "unit": "W"}}, "mean_power"),
        ({"mean_power": "5 kWh"}, "mean_power"),
        ({"mean_power": None, "tdp": "300 W", "utilisation": 1.5}, "utilisation"),
        ({"mean_power": None, "device": "Quadro X", "utilisation": 0.5}, "device"),
        ({"mean_power": None, "utilisation": 0.5}, "tdp"),
        ({"mean_power": None}, "mean_power"),
        ({"devices": None, "duration": None}, "device_time"),
        ({"device_time": "80 h"}, "devices"),
        ({"device_time": 80}, "device_time"),
        ({"pue": 0.9}, "pue"),
        ({"intensity": "400 gCO2e"}, "intensity"),
        ({"band": {"pue": {"rel": 0.1}}}, "band.pue"),
        ({"band": {"mean_power": {"low": "400 W"}}}, "band.mean_power.low"),
        ({"band": {"duration": {"rel": 2}}}, "band.duration.rel"),
        ({"provenance": None}, "provenance"),
        ({"provenance": {"source": " "}}, "provenance.source"),
        ({"name": None}, "name"),
        ({"ended_at": "2023-12-31T00:00:00Z", "started_at": "2024-01-01T00:00:00Z"}, "ended_at"),
        ({"duration": "100 year"}, "duration"),
        ({"color": "blue"}, "color"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client: TestClient, project: Project, fields: dict[str, Any], field: str
) -> None:
    run_id = str(uuid.uuid4())
    body = {k: v for k, v in {**_body(), **fields}.items() if v is not None}
    # json.dumps writes NaN as the bare token NaN, which a client can send.
    response = client.post(
        _url(run_id),
        content=json.dumps(body),
        headers={**project.ingest, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()
    assert client.get(f"/api/v1/runs/{run_id}", headers=project.read).status_code == 404


def test_the_ingest_scope_is_required(client: TestClient, project: Project) -> None:
    run_id = str(uuid.uuid4())
    response = client.post(_url(run_id), json=_body(), headers=project.read)
    assert response.status_code == 403
    assert client.post(_url(run_id), json=_body()).status_code == 401


def _stated_body(**fields: Any) -> dict[str, Any]:
    return {
        "name": "stated",
        "started_at": "2024-04-01T00:00:00Z",
        "ended_at": "2024-04-01T01:00:00Z",
        "energy": "2 kWh",
        "band": {"energy": {"rel": 0.2}},
        "pue": 1.25,
        "intensity": "500 gCO2e/kWh",
        "provenance": SOURCE,
        **fields,
    }


def test_an_energy_stated_by_the_source_is_ledgered_with_its_band(
    client: TestClient, project: Project
) -> None:
    # 2 kWh ±20 % × PUE 1.25 = 2.5 kWh; × 500 g/kWh = 1250 g (1000 … 1500 g).
    run_id = str(uuid.uuid4())
    response = _post(client, project, run_id, _stated_body())
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["estimate"]["energy_basis"] == "stated"
    assert answer["estimate"]["inputs"]["device_time_s"] is None
    label = answer["run"]["host_info"]["estimate"]
    assert label["energy_basis"] == "stated"
    assert (label["band_low_j"], label["band_high_j"]) == (
        pytest.approx(1.6 * 3.6e6),
        pytest.approx(2.4 * 3.6e6),
    )
    assert answer["run"]["ended_at"].startswith("2024-04-01T01:00:00")
    figures = {e["figure"]: e for e in answer["entries"]}
    assert figures["it_energy"]["value_si"] == pytest.approx(2 * 3.6e6)
    assert figures["facility_energy"]["value_si"] == pytest.approx(2.5 * 3.6e6)
    co2e = figures["co2e_location"]
    assert co2e["value_si"] == pytest.approx(1250.0)
    assert (co2e["provenance"]["band_low_g"], co2e["provenance"]["band_high_g"]) == (
        pytest.approx(1000.0),
        pytest.approx(1500.0),
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"energy": "0 kWh"}, "energy"),
        ({"energy": "2 W"}, "energy"),
        ({"devices": 8}, "devices"),
        ({"mean_power": "300 W"}, "mean_power"),
        ({"band": {"energy": {"rel": 0.2}, "duration": {"rel": 0.1}}}, "band.duration"),
    ],
)
def test_a_stated_energy_refuses_zero_and_device_time_inputs(
    client: TestClient, project: Project, fields: dict[str, Any], field: str
) -> None:
    run_id = str(uuid.uuid4())
    response = _post(client, project, run_id, _stated_body(**fields))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()
    assert client.get(f"/api/v1/runs/{run_id}", headers=project.read).status_code == 404


def test_a_body_naming_another_project_is_refused(
    client: TestClient, project: Project, other: Project
) -> None:
    run_id = str(uuid.uuid4())
    refused = _post(client, project, run_id, _stated_body(project=other.slug))
    assert refused.status_code == 409, refused.text
    assert refused.json()["field"] == "project"
    assert f"belongs to project {project.slug!r}, not {other.slug!r}" in refused.json()["detail"]
    assert client.get(f"/api/v1/runs/{run_id}", headers=project.read).status_code == 404
    accepted = _post(client, project, run_id, _stated_body(project=project.slug))
    assert accepted.status_code == 201, accepted.text


def test_without_supersede_the_same_estimate_is_a_no_op_and_another_a_conflict(
    client: TestClient, project: Project
) -> None:
    run_id = str(uuid.uuid4())
    body = _stated_body(supersede=False)
    assert _post(client, project, run_id, body).status_code == 201
    entries = _entries(client, project, run_id)
    again = _post(client, project, run_id, body)
    assert again.status_code == 200, again.text
    assert again.json()["entries"] == []
    other = _post(client, project, run_id, {**body, "energy": "3 kWh"})
    assert other.status_code == 409, other.text
    assert other.json()["field"] == "run_id"
    assert "already has another estimate" in other.json()["detail"]
    assert _entries(client, project, run_id) == entries
    replaced = _post(client, project, run_id, {**body, "energy": "3 kWh", "supersede": True})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["entries"][0]["provenance"]["supersedes"] is not None
