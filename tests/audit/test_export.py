"""The auditor's export: every figure traces to its run, method, factor and hash."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime
from uuid import UUID

from tests.support.client import Project, TestClient
from tests.support.ledger import (
    OPERATOR,
    add_factor,
    configure,
    finish_run,
    metered_run,
    post_chunks,
    region,
)
from thermoledger.db.chain import EntryContent, entry_hash
from thermoledger.db.rollups import EXPORT_COLUMNS
from thermoledger.service.csv_writer import FORMULA_LEADS, unguard


def _scenario(client: TestClient, project: Project) -> tuple[str, dict[str, object]]:
    code = region()
    configure(client, project, code, pue="hyperscale")
    factor = add_factor(
        client,
        OPERATOR,
        region=code,
        intensity="300 gCO2e/kWh",
        valid_from="2025-01-01T00:00:00Z",
        year=2024,
    )
    run_id = metered_run(client, project, chunks=1, ended_at=datetime(2025, 10, 10, tzinfo=UTC))
    response = client.post(
        "/api/v1/ledger",
        json={"figure": "embodied", "quantity": "5 gCO2e", "run_id": run_id, "reference": "LCA"},
        headers=project.admin,
    )
    assert response.status_code == 201
    metered_run(client, project, chunks=1, ended_at=datetime(2025, 12, 10, tzinfo=UTC))
    return run_id, factor


def test_the_csv_export_traces_every_figure(client: TestClient, project: Project) -> None:
    run_id, factor = _scenario(client, project)
    response = client.get(
        "/api/v1/audit/export",
        params={"format": "csv", "from": "2025-10-01T00:00:00Z", "to": "2025-11-01T00:00:00Z"},
        headers=project.read,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["x-thermoledger-chain-ok"] == "true"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    # October only: run A's it_energy, facility_energy, co2e_location and the embodied entry.
    assert [r["figure"] for r in rows] == [
        "it_energy",
        "facility_energy",
        "co2e_location",
        "embodied",
    ]
    assert {r["run_id"] for r in rows} == {run_id}
    it, facility, carbon, embodied = rows
    assert (it["method"], it["source"], it["value_si"], it["unit_si"]) == (
        "counter",
        "measured",
        "360000.0",
        "J",
    )
    assert float(it["band_low_j"]) < 360000.0 < float(it["band_high_j"])
    assert (facility["pue"], facility["pue_name"], facility["pue_kind"]) == (
        "1.1",
        "hyperscale",
        "published",
    )
    assert "Google" in facility["pue_source"]
    assert carbon["factor_id"] == str(factor["id"])
    assert (carbon["factor_value"], carbon["factor_unit"], carbon["factor_year"]) == (
        "300",
        "gCO2e/kWh",
        "2024",
    )
    assert (carbon["factor_basis"], carbon["factor_rate"], carbon["factor_builtin"]) == (
        "location",
        "average",
        "false",
    )
    assert carbon["factor_source"] == "test grid operator"
    assert (carbon["method"], carbon["band_low_j"]) == ("counter", it["band_low_j"])
    assert carbon["factor_valid_from"].startswith("2025-01-01")
    assert json.loads(carbon["inputs"]) == {
        "it_energy": int(it["seq"]),
        "facility_energy": int(facility["seq"]),
    }
    # 0.1 kWh × 1.1 × 300 g/kWh = 33 g
    assert abs(float(carbon["value_si"]) - 33.0) < 1e-12
    assert embodied["reference"] == "LCA"
    # Each hash can be recomputed from its row alone.
    for row in rows:
        content = EntryContent(
            seq=int(row["seq"]),
            project=row["project"],
            run=UUID(row["run_id"]) if row["run_id"] else None,
            kind=row["kind"],
            value_si=float(row["value_si"]),
            unit_si=row["unit_si"],
            value_given=float(row["value_given"]),
            unit_given=row["unit_given"],
            source=row["source"],
            provenance=json.loads(row["provenance_json"]),
            created_at=datetime.fromisoformat(row["created_at"]),
        )
        assert entry_hash(row["prev_hash"], content) == row["hash"], row["seq"]


def test_the_json_export_carries_the_chain_head_and_superseded_entries(
    client: TestClient, project: Project
) -> None:
    run_id, _ = _scenario(client, project)
    it = client.get(
        "/api/v1/ledger", params={"figure": "it_energy", "run_id": run_id}, headers=project.read
    ).json()["items"][0]
    fix = client.post(
        "/api/v1/ledger",
        json={
            "figure": "it_energy",
            "quantity": "0.12 kWh",
            "run_id": run_id,
            "supersedes": it["seq"],
            "reference": "PDU",
        },
        headers=project.admin,
    )
    assert fix.status_code == 201
    document = client.get("/api/v1/audit/export", headers=project.read).json()
    assert document["chain"]["ok"] is True
    head = document["chain"]["head"]
    assert head == {"seq": fix.json()["seq"], "hash": fix.json()["hash"]}
    assert "SHA-256" in document["hash_rule"]
    entries = {e["seq"]: e for e in document["entries"]}
    assert entries[it["seq"]]["superseded_by"] == fix.json()["seq"]
    assert entries[fix.json()["seq"]]["supersedes"] == it["seq"]
    assert entries[fix.json()["seq"]]["provenance"]["origin"] == "manual"
    # 3 figures × 2 runs (it, facility, location; no tariff, so no cost) + embodied + the fix
    assert len(entries) == 8


def _cells(text: str) -> list[str]:
    return [value for row in csv.reader(io.StringIO(text, newline="")) for value in row]


def test_both_exports_neutralise_a_formula_in_a_run_name(
    client: TestClient, project: Project
) -> None:
    name = '=HYPERLINK("http://x","y")'
    run_id = str(uuid.uuid4())
    response = client.put(
        f"/api/v1/runs/{run_id}",
        json={"name": name, "kind": "training", "started_at": "2025-01-01T00:00:00Z"},
        headers=project.ingest,
    )
    assert response.status_code == 201, response.text
    post_chunks(client, project, run_id, range(2))
    finish_run(client, project, run_id, datetime(2025, 10, 10, tzinfo=UTC))
    report = client.get(f"/api/v1/runs/{run_id}/report.csv", headers=project.read)
    export = client.get("/api/v1/audit/export", params={"format": "csv"}, headers=project.read)
    for response in (report, export):
        assert response.status_code == 200, response.text
        assert response.text.endswith("\r\n")
        rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
        assert rows
        assert {row["run_name"] for row in rows} == {"'" + name}
        assert unguard(rows[0]["run_name"]) == name
        # No cell reads as a formula: one that starts like one is a number the writer wrote.
        for value in _cells(response.text):
            if value.startswith(FORMULA_LEADS):
                float(value)
