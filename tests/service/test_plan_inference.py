"""POST /api/v1/plan with inference-aware planning, on SQLite and PostgreSQL.

Figures are checked against `accounting.scaling` and by hand (6·N·D, FLOP/J, per-kWh prices);
bad input is a 422 naming the field, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.client import Project, TestClient
from thermoledger.accounting.carbon import default_emission_factors, default_pues
from thermoledger.accounting.catalog import builtin_catalog
from thermoledger.accounting.planning import rated_flop_per_j
from thermoledger.accounting.scaling import CHINCHILLA
from thermoledger.service.economics import DEFAULT_MFU

H100 = "nvidia-h100-sxm5-80gb"
BASE: dict[str, Any] = {"hardware": H100, "n_devices": 64}


def _plan(client: TestClient, project: Project, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/plan", json={**BASE, **body}, headers=project.read)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _datasheet_flop_per_j() -> float:
    entry = builtin_catalog().get(H100)
    assert entry.tdp_w is not None
    return rated_flop_per_j(entry.peak("bf16"), entry.tdp_w, DEFAULT_MFU)


def test_without_a_target_or_demand_the_plan_is_unchanged(
    client: TestClient, project: Project
) -> None:
    answer = _plan(client, project, n_params=7e9, n_tokens=1.4e11)
    assert answer["inference_aware"] is None
    assert answer["flops"] == pytest.approx(6 * 7e9 * 1.4e11)


def test_a_target_loss_plans_the_inference_aware_optimum(
    client: TestClient, project: Project
) -> None:
    answer = _plan(
        client,
        project,
        target_loss=2.1,
        inference_tokens=1e13,
        queries=2e10,
        region="DE",
        pue="typical",
        tariff_usd_per_kwh=0.15,
    )
    aware = answer["inference_aware"]
    best, chin = aware["optimum"], aware["chinchilla"]
    # the training plan is the optimum's
    assert answer["n_params"] == best["n_params"]
    assert answer["n_tokens"] == best["n_tokens"]
    assert answer["flops"] == pytest.approx(6 * best["n_params"] * best["n_tokens"])
    assert any("inference-aware optimum" in line for line in answer["assumptions"])
    # both points reach the target; Chinchilla's is the closed-form compute optimum
    assert best["loss"] == pytest.approx(2.1, rel=1e-12)
    assert chin["loss"] == pytest.approx(2.1, rel=1e-12)
    n_chin, d_chin = CHINCHILLA.compute_optimal(2.1)
    assert chin["n_params"] == pytest.approx(float(n_chin), rel=1e-12)
    assert chin["n_tokens"] == pytest.approx(float(d_chin), rel=1e-12)
    assert best["n_params"] < chin["n_params"]
    assert best["n_tokens"] > chin["n_tokens"]
    assert aware["saving"] > 0
    assert aware["saving"] == pytest.approx(chin["total"]["energy_j"] - best["total"]["energy_j"])
    # priced at the plan's central FLOP/J, the region's factor and the tariff, PUE included
    flop_per_j = _datasheet_flop_per_j()
    assert aware["training_flop_per_j"] == pytest.approx(flop_per_j)
    assert answer["energy"]["flop_per_j_central"] == pytest.approx(flop_per_j)
    pue = default_pues()["typical"].value
    intensity = default_emission_factors()["DE"].intensity_g_per_kwh
    for point in (best, chin):
        for unit in ("flops", "energy_j", "usd", "co2e_g"):
            assert point["training"][unit] + point["inference"][unit] == pytest.approx(
                point["total"][unit], rel=1e-14
            )
        assert point["training"]["flops"] == pytest.approx(
            6 * point["n_params"] * point["n_tokens"]
        )
        assert point["inference"]["flops"] == pytest.approx(2 * point["n_params"] * 1e13)
        assert point["total"]["energy_j"] == pytest.approx(point["total"]["flops"] / flop_per_j)
        kwh = point["total"]["energy_j"] / 3.6e6
        assert point["total"]["usd"] == pytest.approx(kwh * pue * 0.15)
        assert point["total"]["co2e_g"] == pytest.approx(kwh * pue * intensity)
        assert point["per_answer"]["energy_j"] == pytest.approx(point["total"]["energy_j"] / 2e10)
    assert aware["loss_model"]["source"] == CHINCHILLA.source
    assert aware["loss_fit"] is None


def test_a_planned_n_and_d_are_costed_beside_the_optimum(
    client: TestClient, project: Project
) -> None:
    answer = _plan(client, project, n_params=13e9, n_tokens=2.6e11, inference_tokens=2e12)
    aware = answer["inference_aware"]
    assert answer["n_params"] == 13e9  # the training plan stays the one asked for
    assert aware["target_loss"] == pytest.approx(float(CHINCHILLA.loss(13e9, 2.6e11)))
    assert aware["target_source"].startswith("the loss of the planned")
    given = aware["given"]
    assert (given["n_params"], given["n_tokens"]) == (13e9, 2.6e11)
    assert given["training"]["flops"] == pytest.approx(answer["flops"])
    assert aware["optimum"]["total"]["energy_j"] < given["total"]["energy_j"]
    assert given["total"]["usd"] is None  # no tariff, no region: not priced, not zero


def test_zero_demand_is_the_chinchilla_point_and_demand_moves_it(
    client: TestClient, project: Project
) -> None:
    points = [
        _plan(client, project, target_loss=2.2, inference_tokens=t)["inference_aware"]
        for t in (0.0, 1e11, 1e13, 1e15)
    ]
    first = points[0]
    assert first["optimum"]["n_params"] == pytest.approx(first["chinchilla"]["n_params"], rel=1e-12)
    assert first["saving"] == pytest.approx(
        0.0, abs=1e-9 * first["chinchilla"]["total"]["energy_j"]
    )
    n = [p["optimum"]["n_params"] for p in points]
    d = [p["optimum"]["n_tokens"] for p in points]
    assert np.all(np.diff(n) < 0)
    assert np.all(np.diff(d) > 0)


def test_thinking_longer_against_a_bigger_model_per_answer(
    client: TestClient, project: Project
) -> None:
    common = {"inference_tokens": 5e11, "queries": 1e9, "inference_flop_per_j": 1e11}
    bigger = _plan(client, project, target_loss=2.0, **common)["inference_aware"]
    thinking = _plan(client, project, target_loss=2.1, test_time_multiplier=8, **common)[
        "inference_aware"
    ]
    assert thinking["served_tokens"] == 4e12
    assert thinking["optimum"]["n_params"] < bigger["optimum"]["n_params"]
    for aware in (bigger, thinking):
        best = aware["optimum"]
        assert best["inference"]["energy_j"] == pytest.approx(best["inference"]["flops"] / 1e11)
        assert best["per_answer"]["energy_j"] == pytest.approx(best["total"]["energy_j"] / 1e9)
        assert any("given in the request" in a for a in aware["assumptions"])


def test_usd_and_co2e_objectives(client: TestClient, project: Project) -> None:
    body = {"target_loss": 2.1, "inference_tokens": 1e13, "region": "DE", "pue": "typical"}
    energy = _plan(client, project, **body)["inference_aware"]
    usd = _plan(client, project, **body, tariff_usd_per_kwh=0.2, objective="usd")
    co2e = _plan(client, project, **body, objective="co2e")["inference_aware"]
    assert usd["inference_aware"]["unit"] == "USD"
    assert co2e["unit"] == "gCO2e"
    # one price per joule for both phases: the same optimum whatever the unit
    for other in (usd["inference_aware"], co2e):
        assert other["optimum"]["n_params"] == pytest.approx(
            energy["optimum"]["n_params"], rel=1e-12
        )
    saving = usd["inference_aware"]["saving"]
    chin, best = usd["inference_aware"]["chinchilla"], usd["inference_aware"]["optimum"]
    assert saving == pytest.approx(chin["total"]["usd"] - best["total"]["usd"])


def test_loss_model_constants_and_a_fit(client: TestClient, project: Project) -> None:
    constants = {"e": 1.8, "a": 482.0, "b": 2085.4, "alpha": 0.3478, "beta": 0.3658}
    given = _plan(client, project, target_loss=2.3, inference_tokens=1e12, loss_model=constants)
    aware = given["inference_aware"]
    assert aware["loss_model"] == {**constants, "source": "given in the request"}
    assert aware["optimum"]["loss"] == pytest.approx(2.3, rel=1e-12)

    rng = np.random.default_rng(3)
    n = 10 ** rng.uniform(7, 10, 30)
    d = 10 ** rng.uniform(9, 12, 30)
    loss = CHINCHILLA.loss(n, d)
    rows = [
        {"n_params": float(a), "n_tokens": float(b), "loss": float(c)}
        for a, b, c in zip(n, d, loss, strict=True)
    ]
    fitted = _plan(client, project, target_loss=2.1, inference_tokens=0, loss_observations=rows)
    aware = fitted["inference_aware"]
    assert aware["loss_fit"]["n_points"] == 30
    assert aware["loss_fit"]["rms_log_residual"] < 1e-5
    assert aware["loss_model"]["alpha"] == pytest.approx(0.34, rel=1e-3)
    assert aware["loss_model"]["source"].startswith("fitted to 30")
    n_chin, _ = CHINCHILLA.compute_optimal(2.1)
    assert aware["chinchilla"]["n_params"] == pytest.approx(float(n_chin), rel=1e-2)


_OBS_SAME_N = [{"n_params": 1e9, "n_tokens": 1e10 * (k + 1), "loss": 3.0} for k in range(5)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target_loss": 1.69}, "target_loss"),
        ({"target_loss": 1.5, "inference_tokens": 1e12}, "target_loss"),
        ({"target_loss": 0}, "target_loss"),
        ({"target_loss": 2.0, "n_params": 1e9, "n_tokens": 2e10}, "target_loss"),
        ({"target_loss": 1.6900001, "inference_tokens": 1e22}, "target_loss"),
        ({"n_params": 1e9}, "n_tokens"),
        ({"n_tokens": 1e9}, "n_params"),
        ({}, "n_params"),
        ({"n_params": 1e9, "n_tokens": 2e10, "test_time_multiplier": 4}, "test_time_multiplier"),
        ({"n_params": 1e9, "n_tokens": 2e10, "loss_model": None}, "loss_model"),
        ({"target_loss": 2.0, "test_time_multiplier": 0}, "test_time_multiplier"),
        ({"target_loss": 2.0, "inference_tokens": -1}, "inference_tokens"),
        ({"target_loss": 2.0, "inference_tokens": "lots"}, "inference_tokens"),
        ({"target_loss": 2.0, "queries": 0}, "queries"),
        ({"target_loss": 2.0, "objective": "usd"}, "objective"),
        ({"target_loss": 2.0, "objective": "co2e"}, "objective"),
        ({"target_loss": 2.0, "objective": "usd", "tariff_usd_per_kwh": 0}, "objective"),
        ({"target_loss": 2.0, "objective": "watts"}, "objective"),
        ({"target_loss": 2.0, "inference_flop_per_j": 0}, "inference_flop_per_j"),
        (
            {"target_loss": 2.0, "loss_model": {"e": -1, "a": 1, "b": 1, "alpha": 1, "beta": 1}},
            "loss_model.e",
        ),
        ({"target_loss": 2.0, "loss_model": {"e": 1.0}}, "loss_model.a"),
        (
            {"target_loss": 2.0, "loss_model": {"e": 2.5, "a": 1, "b": 1, "alpha": 1, "beta": 1}},
            "target_loss",
        ),
        ({"target_loss": 2.0, "loss_observations": _OBS_SAME_N[:4]}, "loss_observations"),
        ({"target_loss": 2.0, "loss_observations": _OBS_SAME_N}, "loss_observations"),
        (
            {
                "target_loss": 2.0,
                "loss_observations": [{**o, "loss": float("nan")} for o in _OBS_SAME_N],
            },
            "loss_observations[0].loss",
        ),
        (
            {
                "target_loss": 2.0,
                "loss_model": {"e": 1.0, "a": 1, "b": 1, "alpha": 1, "beta": 1},
                "loss_observations": _OBS_SAME_N,
            },
            "loss_observations",
        ),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    client: TestClient, project: Project, body: dict[str, Any], field: str
) -> None:
    # json.dumps writes NaN as the bare token a hostile client could send
    response = client.post(
        "/api/v1/plan",
        content=json.dumps({**BASE, **body}),
        headers={**project.read, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(1.69, 1.7),
    st.sampled_from([0, -1, 1e-300, 1e300, 1e22, 2.0, 1e9, 1e12]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [
                "target_loss",
                "inference_tokens",
                "test_time_multiplier",
                "queries",
                "inference_flop_per_j",
                "n_params",
                "n_tokens",
            ]
        ),
        _NUMBERS,
        max_size=5,
    ),
    objective=st.sampled_from([None, "energy", "usd", "co2e"]),
)
# once a 500: a Chinchilla cost of 0 made the saving fraction 0/0 (a warning, an error here)
@example(
    fields={
        "inference_tokens": 0.0,
        "n_tokens": 1e-300,
        "test_time_multiplier": 1.0,
        "n_params": 1.0,
    },
    objective=None,
)
def test_hostile_numbers_are_a_200_or_a_422_never_a_500(
    client: TestClient, project: Project, fields: dict[str, float], objective: str | None
) -> None:
    body = {**BASE, **fields, "tariff_usd_per_kwh": 0.1, "region": "DE"}
    if objective is not None:
        body["objective"] = objective
    response = client.post("/api/v1/plan", json=body, headers=project.read)
    assert response.status_code in (200, 422), response.text
    answer = response.json()
    if response.status_code == 422:
        assert answer["field"]
    elif answer["inference_aware"] is not None:
        best = answer["inference_aware"]["optimum"]
        assert best["total"]["energy_j"] <= answer["inference_aware"]["chinchilla"]["total"][
            "energy_j"
        ] * (1 + 1e-9)
