"""The energy-to-quality, inference-aware planner and estimate pages through the app
(TestClient), on SQLite and PostgreSQL: what each says, and that its figures are the JSON API's.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI

from tests.pages.seed import (
    ESTIMATE_SOURCE,
    METRIC,
    TARGET,
    Quality,
    SeededRun,
    configure_accounting,
    seed_estimate,
    seed_quality,
)
from tests.support.client import Project, TestClient, make_project
from tests.support.signin import HTML

H100 = "nvidia-h100-sxm5-80gb"


@pytest.fixture(scope="module")
def quality(app: FastAPI, client: TestClient) -> tuple[Project, Quality, SeededRun]:
    """A project with `seed_quality`'s runs and one estimated run."""
    owner = make_project(app)
    configure_accounting(client, owner.admin)
    return owner, seed_quality(client, owner.every), seed_estimate(client, owner.every)


def _get(client: TestClient, url: str, project: Project) -> str:
    response = client.get(url, headers={**project.read, **HTML})
    assert response.status_code == 200, response.text[:3000]
    text: str = response.text
    return text


def _svg(html: str, chart: str) -> str:
    match = re.search(rf'<svg class="chart" data-chart="{re.escape(chart)}".*?</svg>', html, re.S)
    assert match, f"no {chart} chart"
    return match.group(0)


def _series(svg: str) -> dict[str, int]:
    return {
        name: int(points)
        for name, points in re.findall(
            r'<g class="series" data-series="([^"]*)" data-points="(\d+)"', svg
        )
    }


def _api(client: TestClient, url: str, project: Project) -> Any:
    response = client.get(url, headers=project.read)
    assert response.status_code == 200, response.text
    return response.json()


def test_quality_page_shows_the_front_and_the_trend(
    client: TestClient, quality: tuple[Project, Quality, SeededRun]
) -> None:
    project, seeded, _ = quality
    html = _get(client, f"/quality?metric={METRIC}&target={TARGET}", project)
    fronts = _api(client, f"/api/v1/quality/pareto?metric={METRIC}", project)
    trend = _api(client, f"/api/v1/quality/trend?metric={METRIC}&target={TARGET}", project)
    assert 'aria-current="page">Quality<' in html
    scatter = _series(_svg(html, "pareto-energy"))
    assert scatter["runs"] == len(seeded.runs)
    assert scatter["front"] == len(fronts["energy_front"]) >= 1
    assert html.count('class="point front"') == len(fronts["energy_front"])
    for run in seeded.runs:
        assert f'data-run="{run.id}"' in html
    curve = _series(_svg(html, "trend"))
    assert curve["runs"] == len(trend["runs"]) == len(seeded.runs)
    assert curve["fitted halving"] == 2
    fit = trend["fit"]
    assert fit["halving_months"] is not None
    assert f"halving every {fit['halving_months']:.3g} months" in html
    assert "Hernandez &amp; Brown 2020 measured halving every 16 months" in html


def test_quality_page_gives_its_reasons(
    client: TestClient, quality: tuple[Project, Quality, SeededRun]
) -> None:
    project, _, _ = quality
    unknown = _get(client, "/quality?metric=bleu&direction=higher&target=30", project)
    assert 'data-reason="pareto"' in unknown
    assert "No halving time: 0 run(s) reached the target" in unknown
    no_target = _get(client, f"/quality?metric={METRIC}", project)
    assert 'data-reason="trend"' in no_target
    assert 'data-chart="trend"' not in no_target
    unpriced = _get(client, f"/quality?metric={METRIC}&cost=usd", project)
    assert 'data-reason="pareto"' in unpriced  # no tariff: no run has USD
    bad = _get(client, "/quality?metric=a%20b&target=x&cost=yen", project)
    assert bad.count("<li>") >= 3
    assert "target: &#39;x&#39; is not a number" in bad


def test_quality_page_offers_the_metrics_recorded(
    client: TestClient, quality: tuple[Project, Quality, SeededRun]
) -> None:
    project, _, _ = quality
    names = [m["name"] for m in _api(client, "/api/v1/quality/metrics", project)["metrics"]]
    assert METRIC in names
    # no metric asked for: the one most runs recorded, and every recorded name in the list
    default = _get(client, "/quality", project)
    assert f'name="metric" value="{names[0]}"' in default
    for name in names:
        assert f'<option value="{name}">' in default
    unknown = _get(client, "/quality?metric=bleu", project)
    assert f'<a href="?metric={METRIC}" data-recorded-metric>{METRIC}</a>' in unknown


def test_run_page_charts_the_metric_against_energy(
    client: TestClient, quality: tuple[Project, Quality, SeededRun]
) -> None:
    project, seeded, _ = quality
    run = seeded.best
    html = _get(client, f"/runs/{run.id}", project)
    answer = _api(client, f"/api/v1/runs/{run.id}/metrics", project)
    loss = [p for p in answer["points"] if p["name"] == METRIC]
    svg = _svg(html, "metric-energy")
    assert _series(svg) == {METRIC: len(loss)}
    assert 'class="band"' in svg
    assert "tokens_seen" in html  # listed, not drawn beside the loss


def test_estimated_run_is_labelled_in_the_list_and_on_its_page(
    client: TestClient, quality: tuple[Project, Quality, SeededRun]
) -> None:
    project, _, estimated = quality
    listing = _get(client, "/runs", project)
    row = re.search(rf'<tr data-run="{estimated.id}">.*?</tr>', listing, re.S)
    assert row, "no row for the estimated run"
    assert "estimate" in row.group(0)
    assert ESTIMATE_SOURCE in row.group(0)
    assert "24.00 kWh" in row.group(0)
    page = _get(client, f"/runs/{estimated.id}", project)
    assert "no measurements" not in page
    assert 'data-estimate="it_energy"' in page
    assert ESTIMATE_SOURCE in page
    assert "invoice 42" in page
    assert "21.60 kWh" in page
    assert "26.40 kWh" in page


def test_plan_page_with_inference_demand_needs_no_n_or_d(
    client: TestClient, quality: tuple[Project, Quality, SeededRun]
) -> None:
    project, _, _ = quality
    query = {
        "hardware": H100,
        "n_devices": "64",
        "target_loss": "2.1",
        "inference_tokens": "2e12",
        "test_time_multiplier": "4",
        "queries": "1e9",
    }
    html = _get(client, "/plan?" + "&".join(f"{k}={v}" for k, v in query.items()), project)
    body = {k: float(v) if k != "hardware" else v for k, v in query.items()}
    body["n_devices"] = 64
    answer = client.post("/api/v1/plan", json=body, headers=project.read)
    assert answer.status_code == 200, answer.text
    aware = answer.json()["inference_aware"]
    assert 'name="n_params" value="" placeholder="7e9">' in html  # not required
    assert 'data-table="allocations"' in html
    for key in ("optimum", "chinchilla"):
        assert f'data-allocation="{key}"' in html
        cell = re.search(rf'data-cell="{key}-n">([^<]*)<', html)
        assert cell, key
        assert float(cell.group(1)) == pytest.approx(aware[key]["n_params"], rel=5e-3)
    assert 'data-allocation="given"' not in html
    assert "data-saving" in html
    assert aware["optimum"]["n_params"] < aware["chinchilla"]["n_params"]  # demand: smaller N
    assert "Sardana" in html


def test_plan_page_shows_problems_instead_of_a_500(
    client: TestClient, quality: tuple[Project, Quality, SeededRun]
) -> None:
    project, _, _ = quality
    both = _get(
        client, f"/plan?hardware={H100}&n_params=7e9&n_tokens=1e11&target_loss=2.1", project
    )
    assert 'role="alert"' in both
    assert "target_loss: give a target loss" in both
    given = _get(
        client, f"/plan?hardware={H100}&n_params=7e9&n_tokens=1.4e11&inference_tokens=1e12", project
    )
    assert 'data-allocation="given"' in given
    unpriced = _get(
        client,
        f"/plan?hardware={H100}&target_loss=2.1&inference_tokens=1e12&objective=usd",
        project,
    )
    assert "objective: no price applies" in unpriced
