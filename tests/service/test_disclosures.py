"""Disclosure exports: EU AI Act, ESRS E1-5/E1-6 and SPDX 3.0.1, each anchored in the ledger.

Runs are metered with `tests.support.ledger.metered_run` (500 W × 720 s per chunk = 0.1 kWh),
so every figure has an analytic answer. The SPDX document is validated by the SPDX project's
own generated bindings (`spdx-python-model`, from the SPDX 3.0.1 SHACL model): the
deserializer refuses an unknown type or property and a value of the wrong kind, and the
serializer refuses a missing required property.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from spdx_python_model import v3_0_1 as spdx
from sqlalchemy.engine import Connection

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
from thermoledger.accounting.disclosure import boundary_of, sig_figs, union_days
from thermoledger.service import cli

END = datetime(2025, 10, 10, tzinfo=UTC)
KWH_PER_CHUNK = 0.1


def _model(client: TestClient, project: Project, tag: str, *, chunks: int = 2, **tags: str) -> str:
    return metered_run(client, project, chunks=chunks, ended_at=END, tags={"model": tag, **tags})


def _get(client: TestClient, project: Project, path: str, **params: Any) -> Any:
    response = client.get(f"/api/v1/disclosures/{path}", params=params, headers=project.read)
    assert response.status_code == 200, response.text
    return response


def _verify(client: TestClient, project: Project, anchor: dict[str, Any]) -> dict[str, Any]:
    anchors = [f"{anchor['head']['seq']}:{anchor['head']['hash']}"]
    anchors += [f"{e['seq']}:{e['hash']}" for e in anchor["entries"]]
    response = client.get("/api/v1/audit/verify", params={"anchor": anchors}, headers=project.admin)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --------------------------------------------------------------------------- pure helpers


def test_significant_figures_keep_their_zeros() -> None:
    assert sig_figs(0.0002, 3) == "0.000200"
    assert sig_figs(9.996, 3) == "10.0"
    assert sig_figs(12345.0, 3) == "12300"
    assert sig_figs(0.5, 2) == "0.50"
    with pytest.raises(ValueError, match="at least 2"):
        sig_figs(1.0, 1)


def test_wall_clock_days_count_overlaps_once() -> None:
    a = datetime(2025, 1, 1, tzinfo=UTC)
    b = datetime(2025, 1, 3, tzinfo=UTC)
    c = datetime(2025, 1, 2, tzinfo=UTC)
    d = datetime(2025, 1, 5, tzinfo=UTC)
    assert union_days([(a, b), (c, d)]) == 4.0
    assert union_days([]) == 0.0


def test_the_boundary_is_the_widest_every_run_shares() -> None:
    assert boundary_of({"gpu"}, ["measured", "published"]) == "facility"
    assert boundary_of({"gpu"}, ["measured", None]) == "accelerators"  # one run lacks a PUE
    assert boundary_of({"gpu", "cpu"}, ["definition"]) == "node"  # PUE 1: IT only
    assert boundary_of({"gpu"}, []) == "accelerators"


# --------------------------------------------------------------------------- EU AI Act


def test_eu_ai_act_reports_training_energy_in_mwh(client: TestClient, project: Project) -> None:
    tag = f"m-{uuid.uuid4().hex[:6]}"
    first = _model(client, project, tag, chunks=2)
    second = _model(client, project, tag, chunks=3)
    metered_run(client, project, chunks=1, ended_at=END, tags={"model": "other"})
    body = _get(client, project, "eu-ai-act", model=tag).json()
    energy = body["training_energy_mwh"]
    assert energy["value"] == pytest.approx(5 * KWH_PER_CHUNK / 1000, rel=1e-9)
    assert energy["text"] == "0.000500"
    assert body["boundary"] == {"kind": "accelerators", "pue": None}
    assert sorted(body["runs"]) == sorted([first, second])
    assert "2 of 2 run(s)" in body["methodology"]
    assert "Boundary: accelerators" in body["methodology"]
    assert body["training_flops"]["text"] == "N/A"
    assert "declared no FLOPs" in body["training_flops"]["reason"]
    assert body["hardware_days"] > 0
    assert body["wall_clock_days"] > 0
    # Two runs × (it_energy, facility_energy): the entries it rests on, under the head.
    anchor = body["anchor"]
    assert len(anchor["entries"]) == 4
    assert all(e["run_id"] in (first, second) for e in anchor["entries"])
    assert f"--project {project.slug}" in anchor["verify"]["cli"]


def test_eu_ai_act_with_a_facility_boundary_and_markdown(
    client: TestClient, project: Project
) -> None:
    configure(client, project, region(), pue={"value": 1.25, "source": "facility meter 2025"})
    tag = f"m-{uuid.uuid4().hex[:6]}"
    _model(client, project, tag, chunks=4)
    body = _get(client, project, "eu-ai-act", model=tag).json()
    assert body["boundary"] == {"kind": "facility", "pue": [1.25]}
    assert body["training_energy_mwh"]["value"] == pytest.approx(0.4 * 1.25 / 1000, rel=1e-9)
    markdown = _get(client, project, "eu-ai-act", model=tag, format="md")
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "| Training energy (MWh) | 0.000500 |" in markdown.text
    assert "| Boundary | facility |" in markdown.text


def test_eu_ai_act_is_not_available_while_a_run_is_unmetered(
    client: TestClient, project: Project
) -> None:
    tag = f"m-{uuid.uuid4().hex[:6]}"
    _model(client, project, tag, chunks=1)
    metered_run(client, project, chunks=1, ended_at=END, tags={"model": tag}, finish=False)
    energy = _get(client, project, "eu-ai-act", model=tag).json()["training_energy_mwh"]
    assert (energy["value"], energy["text"]) == (None, "N/A")
    assert "1 of 2 training run(s)" in energy["reason"]
    markdown = _get(client, project, "eu-ai-act", model=tag, format="md").text
    assert "| Training energy (MWh) | N/A (1 of 2 training run(s)" in markdown


def test_eu_ai_act_of_an_estimated_run_says_so(client: TestClient, project: Project) -> None:
    tag = f"m-{uuid.uuid4().hex[:6]}"
    response = client.post(
        f"/api/v1/runs/{uuid.uuid4()}/estimate",
        json={
            "name": "published",
            "devices": 8,
            "duration": "10 h",
            "mean_power": "300 W",
            "pue": 1.2,
            "started_at": "2024-01-01T00:00:00Z",
            "tags": {"model": tag},
            "provenance": {"source": "test", "document": "test_disclosures.py"},
        },
        headers=project.ingest,
    )
    assert response.status_code == 201, response.text
    body = _get(client, project, "eu-ai-act", model=tag).json()
    # 8 × 10 h × 300 W = 24 kWh of IT energy, × 1.2 at the facility.
    assert body["training_energy_mwh"]["value"] == pytest.approx(0.024 * 1.2, rel=1e-9)
    assert body["training_energy_mwh"]["text"] == "0.0288"
    assert body["boundary"] == {"kind": "facility", "pue": [1.2]}
    assert "1 run(s) are estimates" in body["methodology"]
    assert body["hardware_days"] == pytest.approx(80 / 24)
    assert body["wall_clock_days"] == pytest.approx(10 / 24)


def test_eu_ai_act_by_run_ids(client: TestClient, project: Project) -> None:
    run = _model(client, project, "by-id", chunks=1)
    body = _get(client, project, "eu-ai-act", run_id=[run]).json()
    assert body["runs"] == [run]
    assert body["training_energy_mwh"]["value"] == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({}, 422, "model"),
        ({"model": ""}, 422, "model"),
        ({"model": "no-such-model"}, 404, None),
        ({"run_id": "not-a-uuid"}, 422, "run_id"),
        ({"model": "x", "format": "pdf"}, 422, "format"),
    ],
)
def test_eu_ai_act_bad_input(
    client: TestClient,
    project: Project,
    params: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    response = client.get("/api/v1/disclosures/eu-ai-act", params=params, headers=project.read)
    assert response.status_code == status, response.text
    if field is not None:
        assert field in json.dumps(response.json())


def test_disclosures_need_the_read_scope(client: TestClient, project: Project) -> None:
    response = client.get("/api/v1/disclosures/esrs", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    response = client.get("/api/v1/disclosures/esrs", headers=project.ingest)
    assert response.status_code == 403


# --------------------------------------------------------------------------- ESRS


def test_esrs_energy_and_scope2_for_a_period(client: TestClient, project: Project) -> None:
    code = region()
    configure(client, project, code, pue={"value": 1.5, "source": "facility meter 2025"})
    add_factor(
        client,
        OPERATOR,
        region=code,
        intensity="400 gCO2e/kWh",
        valid_from="2025-01-01T00:00:00Z",
        year=2024,
    )
    metered_run(client, project, chunks=2, ended_at=END)
    metered_run(client, project, chunks=1, ended_at=datetime(2025, 12, 1, tzinfo=UTC))
    body = _get(
        client, project, "esrs", **{"from": "2025-10-01T00:00:00Z", "to": "2025-11-01T00:00:00Z"}
    ).json()
    assert body["runs"] == 1
    total = body["e1_5"]["total_energy_consumption_mwh"]
    assert total["value"] == pytest.approx(0.2 * 1.5 / 1000, rel=1e-9)
    assert body["e1_5"]["it_energy_mwh"] == pytest.approx(0.2 / 1000, rel=1e-9)
    location = body["e1_6"]["gross_scope2_location_based_tco2e"]
    assert location["value"] == pytest.approx(0.2 * 1.5 * 400 / 1e6, rel=1e-9)
    market = body["e1_6"]["gross_scope2_market_based_tco2e"]
    assert market["value"] is None
    assert "market-based" in market["reason"]
    figures = sorted(e["figure"] for e in body["anchor"]["entries"])
    assert figures == ["co2e_location", "facility_energy", "it_energy"]
    assert body["from"] == "2025-10-01T00:00:00+00:00"


def test_esrs_of_an_empty_period_says_why(client: TestClient, project: Project) -> None:
    body = _get(client, project, "esrs").json()
    total = body["e1_5"]["total_energy_consumption_mwh"]
    assert (total["value"], total["reason"]) == (None, "no ledger entries in the period")
    assert body["anchor"]["head"]["seq"] == 0


def test_esrs_refuses_an_inverted_range(client: TestClient, project: Project) -> None:
    response = client.get(
        "/api/v1/disclosures/esrs",
        params={"from": "2025-11-01T00:00:00Z", "to": "2025-10-01T00:00:00Z"},
        headers=project.read,
    )
    assert response.status_code == 422
    assert response.json()["field"] == "to"


# --------------------------------------------------------------------------- SPDX 3.0.1


def _spdx_validate(document: dict[str, Any]) -> spdx.SHACLObjectSet:
    """Deserialize with the SPDX 3.0.1 bindings, then serialize again (required properties)."""
    objects = spdx.SHACLObjectSet()
    spdx.JSONLDDeserializer().deserialize_data(document, objects)
    spdx.JSONLDSerializer().write(objects, io.BytesIO())
    return objects


def test_spdx_document_validates_and_holds_each_stage(client: TestClient, project: Project) -> None:
    tag = f"m-{uuid.uuid4().hex[:6]}"
    _model(client, project, tag, chunks=2)
    _model(client, project, tag, chunks=1, stage="fine-tuning")
    run = str(uuid.uuid4())
    response = client.put(
        f"/api/v1/runs/{run}",
        json={
            "name": "serve",
            "kind": "inference",
            "started_at": "2025-01-01T00:00:00Z",
            "tags": {"model": tag},
        },
        headers=project.ingest,
    )
    assert response.status_code == 201, response.text
    post_chunks(client, project, run, range(1), power_w=250.0)  # 0.05 kWh
    finish_run(client, project, run, END)
    response = _get(client, project, "spdx", model=tag)
    assert response.headers["content-type"].startswith("application/ld+json")
    document = response.json()
    assert document["@context"] == "https://spdx.org/rdf/3.0.1/spdx-context.jsonld"
    objects = _spdx_validate(document)
    (package,) = list(objects.foreach_type(spdx.ai_AIPackage))
    consumption = package.ai_energyConsumption
    assert isinstance(consumption, spdx.ai_EnergyConsumption)

    def stage(descriptions: Any) -> list[tuple[Any, Any]]:
        out = []
        for d in descriptions:
            assert isinstance(d, spdx.ai_EnergyConsumptionDescription)
            out.append((d.ai_energyQuantity, d.ai_energyUnit))
        return out

    kwh = spdx.ai_EnergyUnitType.kilowattHour
    assert stage(consumption.ai_trainingEnergyConsumption) == [(pytest.approx(0.2), kwh)]
    assert stage(consumption.ai_finetuningEnergyConsumption) == [(pytest.approx(0.1), kwh)]
    assert stage(consumption.ai_inferenceEnergyConsumption) == [(pytest.approx(0.05), kwh)]
    (annotation,) = list(objects.foreach_type(spdx.Annotation))
    assert isinstance(annotation, spdx.Annotation)
    assert "audit verify" in str(annotation.statement)
    assert response.headers["x-thermoledger-chain-head"].split(":")[0].isdigit()


def test_the_spdx_validator_catches_a_wrong_property_name() -> None:
    bad = {
        "@context": "https://spdx.org/rdf/3.0.1/spdx-context.jsonld",
        "@graph": [
            {
                "type": "ai_EnergyConsumption",
                "ai_trainingEnergy": [],
            }
        ],
    }
    with pytest.raises(KeyError):
        spdx.JSONLDDeserializer().deserialize_data(bad, spdx.SHACLObjectSet())


def test_spdx_unknown_model_is_404_and_no_model_is_422(
    client: TestClient, project: Project
) -> None:
    response = client.get(
        "/api/v1/disclosures/spdx", params={"model": "nope"}, headers=project.read
    )
    assert response.status_code == 404
    response = client.get("/api/v1/disclosures/spdx", headers=project.read)
    assert (response.status_code, response.json()["field"]) == (422, "model")


# --------------------------------------------------------------------------- anchoring


@contextmanager
def _attacker(app: FastAPI) -> Iterator[Connection]:
    """A committed transaction with the append-only triggers out of the way (and back)."""
    with app.state.engine.connect() as connection, connection.begin():
        saved: list[str] = []
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.exec_driver_sql("ALTER TABLE ledger_entry DISABLE TRIGGER USER")
        else:
            rows = connection.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master "
                "WHERE type = 'trigger' AND tbl_name = 'ledger_entry'"
            ).all()
            for name, sql in rows:
                connection.exec_driver_sql(f"DROP TRIGGER {name}")
                saved.append(sql)
        yield connection
        if postgres:
            connection.exec_driver_sql("ALTER TABLE ledger_entry ENABLE TRIGGER USER")
        for sql in saved:
            connection.exec_driver_sql(sql)


def _cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("export", ["eu-ai-act", "esrs", "spdx"])
def test_each_export_anchor_verifies_until_the_ledger_is_tampered(
    app: FastAPI, client: TestClient, project: Project, database_url: str, export: str
) -> None:
    tag = f"m-{uuid.uuid4().hex[:6]}"
    _model(client, project, tag, chunks=2)
    if export == "spdx":
        response = _get(client, project, "spdx", model=tag)
        statement = next(
            n["statement"] for n in response.json()["@graph"] if n["type"] == "Annotation"
        )
        head_seq, head_hash = response.headers["x-thermoledger-chain-head"].split(":")
        assert f"Chain head seq {head_seq} hash {head_hash}" in statement
        entries = [
            {"seq": int(s), "hash": h}
            for s, h in (
                p.split(":") for p in statement.split("; entries ")[1].split(". ")[0].split(", ")
            )
        ]
        anchor: dict[str, Any] = {
            "head": {"seq": int(head_seq), "hash": head_hash},
            "entries": entries,
        }
    else:
        params = {"model": tag} if export == "eu-ai-act" else {}
        anchor = _get(client, project, export, **params).json()["anchor"]
    assert anchor["entries"]
    head = f"{anchor['head']['seq']}:{anchor['head']['hash']}"
    assert _verify(client, project, anchor)["ok"] is True
    code, out = _cli(
        "audit", "verify", "--project", project.slug, "--anchor", head,
        "--database-url", database_url,
    )  # fmt: skip
    assert code == 0, out

    target = anchor["entries"][0]["seq"]
    with _attacker(app) as connection:
        connection.execute(
            sa.text(
                "UPDATE ledger_entry SET value_si = value_si * 2 WHERE seq = :seq "
                "AND project_id = (SELECT id FROM project WHERE slug = :slug)"
            ),
            {"seq": target, "slug": project.slug},
        )
    verdict = _verify(client, project, anchor)
    assert verdict["ok"] is False
    assert ("modified", target) in {(p["kind"], p["seq"]) for p in verdict["problems"]}
    code, out = _cli(
        "audit", "verify", "--project", project.slug, "--anchor", head,
        "--database-url", database_url,
    )  # fmt: skip
    assert code == 1
    assert f"seq {target} " in out
    assert "modified" in out
