"""``thermoledger import codecarbon`` through the real service, on SQLite and PostgreSQL: the runs
of CodeCarbon files (three versions' column sets) become estimated runs with CodeCarbon's
energy, intensity, PUE and provenance in the ledger; importing again stores nothing; a changed
run is a conflict unless replaced; a token of another project is refused before anything is
written."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from tests.support.client import Project, TestClient, in_process, row_counts
from tests.support.signin import HTML
from thermoledger.meters.codecarbon import import_codecarbon, read_emissions_csv, run_uuid

DATA = Path(__file__).parents[1] / "meters" / "data" / "codecarbon"
V1, V2, V3 = (DATA / f"emissions_v{n}.csv" for n in (1, 2, 3))
J_PER_KWH = 3.6e6


def _import(
    client: TestClient, project: Project, path: Path, *, slug: str | None = None, **options: Any
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = import_codecarbon(
        path,
        project=slug or project.slug,
        api_url="http://testserver/api/v1",
        token=project.ingest["Authorization"].removeprefix("Bearer "),
        out=out,
        err=err,
        transport=in_process(client),
        **options,
    )
    return code, out.getvalue(), err.getvalue()


def _entries(client: TestClient, project: Project, run_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/ledger?run_id={run_id}", headers=project.every)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _current(client: TestClient, project: Project, run_id: str) -> dict[str, dict[str, Any]]:
    return {e["figure"]: e for e in _entries(client, project, run_id) if e["superseded_by"] is None}


def _ids(project: Project, path: Path) -> dict[str, str]:
    """CodeCarbon run id → the thermoledger run id, for the runs the file does not refuse."""
    return {
        r.run_id: str(run_uuid(project.slug, r))
        for r in read_emissions_csv(path.read_text())
        if r.refused is None
    }


def test_a_codecarbon_file_becomes_estimated_runs_with_its_provenance(
    client: TestClient, project: Project
) -> None:
    code, out, err = _import(client, project, V2, kind="training")
    assert code == 1, err  # two runs refused, the others imported
    assert "4 run(s) in 5 row(s)" in out
    assert "imported: 2\n" in out
    assert "refused: 2\n" in out
    assert "line 3 (run_id 11111111-2222-4333-8444-555555555555): energy_consumed is 0" in out
    assert "line 6 (run_id 22222222-3333-4444-8555-666666666666): energy_consumed is empty" in out
    ids = _ids(project, V2)
    a = ids["6f1d2c3e-0a4b-4c8d-9e2f-3a4b5c6d7e8f"]
    b = ids["9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"]

    run = client.get(f"/api/v1/runs/{a}", headers=project.read).json()
    assert (run["status"], run["kind"], run["name"]) == (
        "finished",
        "training",
        "llm-finetune 6f1d2c3e",
    )
    assert run["started_at"].startswith("2024-05-27T09:49:55")
    assert run["ended_at"].startswith("2024-05-27T10:49:55")
    assert run["tags"]["source"] == "codecarbon"
    label = run["host_info"]["estimate"]
    assert (label["method"], label["energy_basis"]) == ("estimate", "stated")
    assert (label["source"], label["document"]) == ("CodeCarbon 2.4.2", "emissions_v2.csv")
    assert label["page"] == "line 4, run_id 6f1d2c3e-0a4b-4c8d-9e2f-3a4b5c6d7e8f"

    # the run's total (line 4), not its flush (line 2); PUE 1: IT = facility = energy_consumed
    figures = _current(client, project, a)
    energy_j = 0.3238125 * J_PER_KWH
    it = figures["it_energy"]
    assert it["value_si"] == pytest.approx(energy_j)
    assert it["provenance"]["method"] == "estimate"
    assert it["provenance"]["source"]["source"] == "CodeCarbon 2.4.2"
    note = it["provenance"]["source"]["note"]
    assert "tracking_mode machine" in note
    assert "Singapore, SGP" in note
    assert "last of 2 rows" in note
    band = it["provenance"]["measurement"]
    rel = (0.0425 * 0.5 + 0.25 * 0.05 + 0.0313125 * 0.5) / 0.3238125
    assert band["band_low_j"] == pytest.approx(energy_j * (1 - rel))
    assert band["band_high_j"] == pytest.approx(energy_j * (1 + rel))
    assert figures["facility_energy"]["value_si"] == pytest.approx(energy_j)
    # CodeCarbon's own emissions, through its implied intensity (408 gCO2e/kWh)
    co2e = figures["co2e_location"]
    assert co2e["value_si"] == pytest.approx(0.1321155 * 1000)
    factor = co2e["provenance"]["factor"]
    assert factor["origin"] == "estimate"
    assert factor["source"] == "CodeCarbon 2.4.2"
    assert factor["intensity_g_per_kwh"] == pytest.approx(408.0)
    assert "co2e_market" not in figures

    # CodeCarbon's PUE 1.2 is in its energy_consumed: IT 0.05 kWh, facility 0.06 kWh
    other = _current(client, project, b)
    assert other["it_energy"]["value_si"] == pytest.approx(0.05 * J_PER_KWH)
    assert other["facility_energy"]["value_si"] == pytest.approx(0.06 * J_PER_KWH)
    assert other["facility_energy"]["provenance"]["pue"]["value"] == pytest.approx(1.2)
    assert other["co2e_location"]["value_si"] == pytest.approx(0.00336 * 1000)
    assert other["it_energy"]["provenance"]["measurement"]["band_low_j"] == pytest.approx(
        0.025 * J_PER_KWH
    )

    verify = client.get("/api/v1/audit/verify", headers=project.every)
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True


def test_an_imported_run_shows_as_an_estimate_with_codecarbons_provenance(
    client: TestClient, project: Project
) -> None:
    assert _import(client, project, V3)[0] == 0
    (run_id,) = _ids(project, V3).values()
    report = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert report.status_code == 409
    assert "is an estimate (CodeCarbon 3.0.1)" in report.json()["detail"]
    page = client.get(f"/runs/{run_id}", headers={**project.read, **HTML})
    assert page.status_code == 200, page.text[:2000]
    assert "data-estimate-badge" in page.text
    assert "the energy as its source states it" in page.text
    assert "CodeCarbon 3.0.1 (emissions_v3.csv, line 2, run_id 3c4d5e6f" in page.text
    listing = client.get("/runs", headers={**project.read, **HTML})
    assert "CodeCarbon 3.0.1" in listing.text


def test_importing_again_stores_nothing_new(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    assert _import(client, project, V1)[0] == 0
    ids = list(_ids(project, V1).values())
    before = {i: (_entries(client, project, i), row_counts(app, i)) for i in ids}
    code, out, err = _import(client, project, V1)
    assert code == 0, err
    assert "imported: 0\n" in out
    assert "already there: 2\n" in out
    assert {i: (_entries(client, project, i), row_counts(app, i)) for i in ids} == before


def test_a_changed_run_is_a_conflict_unless_replaced(
    client: TestClient, project: Project, tmp_path: Path
) -> None:
    assert _import(client, project, V3)[0] == 0
    (run_id,) = _ids(project, V3).values()
    entries = _entries(client, project, run_id)
    # the same run flushed again later: a larger total on a new last row
    lines = V3.read_text().splitlines()
    later = lines[1].replace("2025-03-10T14:00:00", "2025-03-10T15:00:00")
    later = later.replace(",1.36125,", ",1.5,")
    changed = tmp_path / "emissions_v3.csv"
    changed.write_text("\n".join([*lines, later]) + "\n")
    code, out, _ = _import(client, project, changed)
    assert code == 1
    assert "conflicts: 1 (import again with --replace)" in out
    assert "already has another estimate" in out
    assert _entries(client, project, run_id) == entries

    code, out, err = _import(client, project, changed, replace=True)
    assert code == 0, err
    assert "replaced (--replace; the old entries superseded): 1" in out
    it = _current(client, project, run_id)["it_energy"]
    assert it["value_si"] == pytest.approx(1.5 / 1.1 * J_PER_KWH)
    assert it["provenance"]["supersedes"] is not None


def test_a_token_of_another_project_is_refused_before_anything_is_written(
    client: TestClient, project: Project, other: Project
) -> None:
    code, out, err = _import(client, project, V1, slug=other.slug)
    assert code == 2
    assert f"belongs to project {project.slug!r}, not {other.slug!r}" in err
    assert "stopped after 0 of 2 run(s)" in out
    runs = client.get("/api/v1/runs", headers=project.read).json()["items"]
    assert not [r for r in runs if r["tags"].get("source") == "codecarbon"]


def test_a_refused_token_stops_at_once(client: TestClient, project: Project) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = import_codecarbon(
        V1,
        project=project.slug,
        api_url="http://testserver/api/v1",
        token=project.read["Authorization"].removeprefix("Bearer "),  # no ingest scope
        out=out,
        err=err,
        transport=in_process(client),
    )
    assert code == 1
    assert "refused the token (HTTP 403" in err.getvalue()
    assert "stopped after 0 of 2 run(s)" in out.getvalue()
