"""Amortisation and planning endpoints against figures derived by hand from the run reports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from tests.pages.seed import Fleet
from tests.support.client import Project, TestClient, make_project
from thermoledger.accounting.catalog import builtin_catalog
from thermoledger.accounting.planning import rated_flop_per_j
from thermoledger.service.economics import DEFAULT_MFU

H100 = "nvidia-h100-sxm5-80gb"


def _report(client: TestClient, project: Project, run_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def _get(client: TestClient, project: Project, url: str, status: int = 200) -> Any:
    response = client.get(url, headers=project.read)
    assert response.status_code == status, response.text
    return response.json()


def test_amortisation_from_the_measured_runs(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    train_j = _report(client, project, fleet.train.id)["energy"]["total"]["energy_j"]
    serve = _report(client, project, fleet.serve.id)
    serve_j = serve["energy"]["total"]["energy_j"]
    tokens = serve["work"]["tokens"]

    answer = _get(client, project, "/api/v1/models/demo-1b/amortisation?tokens_served=1e9")

    assert answer["training"]["energy_j"] == pytest.approx(train_j)
    assert answer["inference"]["j_per_token"] == pytest.approx(serve_j / tokens)
    assert answer["inference"]["source"] == "measured"
    assert answer["tokens_served_so_far"] == tokens
    assert answer["at"]["tokens_served"] == 1e9
    assert answer["at"]["j_per_token"] == pytest.approx(train_j / 1e9 + serve_j / tokens)
    parity = answer["parity"]["energy"]
    assert parity["tokens"] == pytest.approx(train_j / (serve_j / tokens))
    assert answer["parity"]["usd"] is None  # no tariff: USD is not priced, not zero
    assert answer["at"]["usd_per_token"] is None
    # Priced in the project's own context (the ledger's and the reports'): DE, typical PUE.
    pricing = answer["pricing"]
    assert (pricing["basis"]["region"], pricing["pue"]["name"], pricing["overrides"]) == (
        "DE",
        "typical",
        [],
    )
    assert pricing["location_factor"]["region"] == "DE"
    assert answer["at"]["co2e_g_per_token"] == pytest.approx(
        answer["at"]["j_per_token"] / 3.6e6 * 1.56 * 381.0, rel=1e-9
    )
    reason = pricing["basis"]["unavailable"]["energy_cost"]
    assert f"USD figures are not available: {reason}" in answer["assumptions"]
    curve = answer["curve"]
    j = np.array(curve["j_per_token"])
    assert np.all(np.diff(j) < 0)
    assert j[-1] > curve["floor_j_per_token"]
    x = np.array(curve["tokens_served"])
    assert x[0] < tokens < x[-1]  # the grid spans what was served and the parity point
    assert x[0] < parity["tokens"] < x[-1]
    assert {r["name"] for r in answer["training"]["runs"]} == {"demo-1b-train"}


def test_amortisation_priced_and_compared(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, _ = seeded
    a = _get(client, project, "/api/v1/models/demo-1b/amortisation")
    b = _get(client, project, "/api/v1/models/demo-3b/amortisation")
    answer = _get(
        client,
        project,
        "/api/v1/models/demo-1b/amortisation?compare=demo-3b&tariff_usd_per_kwh=0.2&region=FR&pue=hyperscale",
    )
    fa, ma = a["training"]["energy_j"], a["inference"]["j_per_token"]
    fb, mb = b["training"]["energy_j"], b["inference"]["j_per_token"]
    even = answer["compare"]["break_even"]["energy"]
    if (fb - fa) / (ma - mb) > 0:
        assert even["tokens"] == pytest.approx((fb - fa) / (ma - mb))
    else:
        assert even["tokens"] is None
    assert answer["compare"]["break_even"]["usd"] is not None
    # Under one tariff and PUE the USD break-even is the energy break-even.
    assert answer["compare"]["break_even"]["usd"]["tokens"] == pytest.approx(even["tokens"])
    usd = answer["at"]["usd_per_token"]
    assert usd == pytest.approx(answer["at"]["j_per_token"] / 3.6e6 * 1.1 * 0.2, rel=1e-9)
    assert answer["pricing"]["location_factor"]["region"] == "FR"
    assert answer["pricing"]["overrides"] == ["region", "pue", "tariff"]
    overridden = [line for line in answer["assumptions"] if "[override" in line]
    assert any(line.startswith("tariff 0.2 USD/kWh") for line in overridden)
    assert any(line.startswith("PUE 1.1 (hyperscale") for line in overridden)
    assert any(line.startswith("region FR") for line in overridden)
    assert len(answer["compare"]["curve"]["j_per_token"]) == len(answer["curve"]["j_per_token"])


def test_amortisation_refusals(
    client: TestClient, seeded: tuple[Project, Fleet], other: Project
) -> None:
    project, _ = seeded
    assert _get(client, project, "/api/v1/models/unknown/amortisation", 404)["code"] == "not_found"
    assert _get(client, other, "/api/v1/models/demo-1b/amortisation", 404)["code"] == "not_found"
    bad = _get(client, project, "/api/v1/models/demo-1b/amortisation?region=XX&pue=cold", 422)
    assert [e["field"] for e in bad["errors"]] == ["region", "pue"]
    assert client.get("/api/v1/models/demo-1b/amortisation").status_code == 401


def test_a_model_not_yet_served_needs_an_assumed_j_per_token(
    app: FastAPI, client: TestClient
) -> None:
    from tests.pages.seed import seed_run

    project = make_project(app)
    seed_run(
        client,
        project.every,
        name="fresh-train",
        devices=1,
        duration_s=60.0,
        tags={"model": "fresh"},
    )
    refused = _get(client, project, "/api/v1/models/fresh/amortisation", 409)
    assert refused["field"] == "inference_j_per_token"
    answer = _get(client, project, "/api/v1/models/fresh/amortisation?inference_j_per_token=0.5")
    assert answer["inference"]["source"].startswith("assumed")
    assert answer["parity"]["energy"]["tokens"] == pytest.approx(
        answer["training"]["energy_j"] / 0.5
    )


def test_plan_rests_on_comparable_runs(client: TestClient, seeded: tuple[Project, Fleet]) -> None:
    project, fleet = seeded
    reports = [_report(client, project, r.id) for r in (fleet.train, fleet.train_large)]
    flop_per_j = sorted(r["efficiency"]["flop_per_j"] for r in reports)
    body = {"n_params": 7e9, "n_tokens": 1.4e11, "hardware": H100, "n_devices": 256}

    response = client.post("/api/v1/plan", json=body, headers=project.read)

    assert response.status_code == 200, response.text
    plan = response.json()
    flops = 6 * 7e9 * 1.4e11
    assert plan["flops"] == pytest.approx(flops)
    assert plan["basis"]["kind"] == "measured"
    assert {r["id"] for r in plan["basis"]["runs"]} == {fleet.train.id, fleet.train_large.id}
    energy = plan["energy"]
    assert energy["energy_j_central"] == pytest.approx(flops / np.median(flop_per_j))
    assert energy["energy_j_low"] == pytest.approx(flops / flop_per_j[-1])
    assert energy["energy_j_high"] == pytest.approx(flops / flop_per_j[0])
    assert plan["chinchilla"]["regime"] == "near_optimal"
    mfu = float(np.median([r["efficiency"]["mfu"] for r in reports]))
    peak = builtin_catalog().get(H100).peak("bf16")
    assert plan["duration_s"] == pytest.approx(flops / (peak * 256 * mfu))
    assert plan["mfu_source"] == "median of the comparable runs"
    low, high = plan["co2e_location_g_range"]
    assert low < plan["carbon"]["location_based"]["co2e_g"] < high
    assert plan["cost"] is None  # no tariff, no price: not priced


def test_plan_falls_back_to_the_datasheet_and_flags_chinchilla(
    app: FastAPI, client: TestClient
) -> None:
    project = make_project(app)  # no runs: nothing comparable
    body = {
        "n_params": 7e9,
        "n_tokens": 2e12,
        "hardware": H100,
        "n_devices": 64,
        "tariff_usd_per_kwh": 0.1,
        "device_hour_usd": 2.0,
    }
    response = client.post("/api/v1/plan", json=body, headers=project.read)
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["basis"]["kind"] == "datasheet"
    assert plan["basis"]["runs"] == []
    entry = builtin_catalog().get(H100)
    central = rated_flop_per_j(entry.peak("bf16"), entry.tdp_w or 0, DEFAULT_MFU)
    assert plan["energy"]["flop_per_j_central"] == pytest.approx(central)
    assert plan["chinchilla"]["regime"] == "over_trained"
    assert plan["chinchilla"]["flagged"] is True
    assert plan["cost"]["hardware_usd"] == pytest.approx(plan["device_hours"] * 2.0)
    assert plan["total_usd_range"][0] < plan["total_usd_range"][1]
    assert plan["mfu_source"].startswith("assumed")
    # No region configured nor given: no gCO2e, for the reason the ledger gives.
    assert plan["carbon"] is None
    reason = plan["pricing"]["basis"]["unavailable"]["co2e_location"]
    assert "no region configured" in reason
    assert f"gCO2e figures are not available: {reason}" in plan["assumptions"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hardware": "no-such-gpu"}, "hardware"),
        ({"hardware": "google-tpu-v4", "dtype": "fp8"}, "body"),
        ({"n_params": 0}, "n_params"),
        ({"mfu": 1.5}, "mfu"),
        ({"region": "ZZ"}, "region"),
        ({"pue": "arctic"}, "pue"),
        ({"percentiles": [90, 10]}, "percentiles"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_plan_refuses_bad_input_naming_the_field(
    client: TestClient, seeded: tuple[Project, Fleet], change: dict[str, Any], field: str
) -> None:
    project, _ = seeded
    body = {"n_params": 7e9, "n_tokens": 1.4e11, "hardware": H100, **change}
    response = client.post("/api/v1/plan", json=body, headers=project.read)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
