"""Inference-aware planning (accounting.scaling) against analytic answers and brute force."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoledger.accounting.errors import InvalidQuantity
from thermoledger.accounting.scaling import (
    CHINCHILLA,
    EnergyPrices,
    LossModel,
    fit_loss_model,
    lifetime_costs,
    optimal_allocation,
    plan_inference_aware,
)

FLOP_PER_J = 2.5e11  # an H100 at ≈ 40 % MFU drawing ≈ 600 W
TARGETS = (1.9, 2.0, 2.2, 2.5, 3.0)


def test_default_constants_are_hoffmann_eq_10() -> None:
    # Hoffmann et al. 2022 (arXiv:2203.15556), Approach 3, eq. (10).
    assert (CHINCHILLA.e, CHINCHILLA.a, CHINCHILLA.b) == (1.69, 406.4, 410.7)
    assert (CHINCHILLA.alpha, CHINCHILLA.beta) == (0.34, 0.28)
    assert "2203.15556" in CHINCHILLA.source


@pytest.mark.parametrize("target", TARGETS)
def test_closed_form_compute_optimum_minimises_6nd_on_the_iso_loss_curve(target: float) -> None:
    """The analytic optimum, checked against a dense log grid of N with D = D(N)."""
    n_opt, d_opt = CHINCHILLA.compute_optimal(target)
    assert float(CHINCHILLA.loss(n_opt, d_opt)) == pytest.approx(target, rel=1e-12)
    n_min = float(CHINCHILLA.min_params(target))
    grid = n_min * np.logspace(1e-9, 6, 400_001)
    flops = 6.0 * grid * CHINCHILLA.tokens_for_loss(grid, target)
    best = int(np.argmin(flops))
    assert grid[best] == pytest.approx(float(n_opt), rel=1e-4)
    assert float(6.0 * n_opt * d_opt) <= flops.min() * (1 + 1e-12)


@pytest.mark.parametrize("target", TARGETS)
def test_zero_demand_gives_the_compute_optimal_point(target: float) -> None:
    n_opt, d_opt = CHINCHILLA.compute_optimal(target)
    plan = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J, inference_tokens=0.0, target_loss=target
    )
    assert float(plan.optimum.n_params[()]) == pytest.approx(float(n_opt), rel=1e-12)
    assert float(plan.optimum.n_tokens[()]) == pytest.approx(float(d_opt), rel=1e-12)
    assert float(plan.saving[()]) == pytest.approx(
        0.0, abs=1e-9 * float(plan.chinchilla.total.energy_j[()])
    )


def test_a_vanishing_demand_approaches_the_compute_optimal_point() -> None:
    n_opt, d_opt = CHINCHILLA.compute_optimal(2.0)
    n, d = optimal_allocation(2.0, 1e-3)
    assert float(n) == pytest.approx(float(n_opt), rel=1e-9)
    assert float(d) == pytest.approx(float(d_opt), rel=1e-9)


def test_as_demand_grows_n_falls_and_d_rises_monotonically() -> None:
    demand = np.concatenate([[0.0], np.logspace(6, 18, 2001)])
    n, d = optimal_allocation(2.1, demand)
    assert np.all(np.diff(n) <= 0.0)
    assert np.all(np.diff(d) >= 0.0)
    # strictly, on a coarse grid
    coarse_n, coarse_d = optimal_allocation(2.1, np.logspace(9, 17, 9))
    assert np.all(np.diff(coarse_n) < 0.0)
    assert np.all(np.diff(coarse_d) > 0.0)
    # every optimum reaches the target, and N stays above N_min
    assert np.allclose(CHINCHILLA.loss(n, d), 2.1, rtol=1e-12)
    assert np.all(n > CHINCHILLA.min_params(2.1))


@pytest.mark.parametrize(("target", "demand"), [(2.0, 1e11), (2.3, 1e13), (1.95, 3e14)])
def test_optimum_agrees_with_brute_force_over_n(target: float, demand: float) -> None:
    n_best, _ = optimal_allocation(target, demand)
    n_min = float(CHINCHILLA.min_params(target))
    grid = n_min * np.logspace(1e-9, 4, 400_001)
    cost = 6.0 * grid * CHINCHILLA.tokens_for_loss(grid, target) + 2.0 * grid * demand
    assert grid[int(np.argmin(cost))] == pytest.approx(float(n_best), rel=1e-3)
    n = np.asarray(n_best)
    best_cost = 6.0 * n * CHINCHILLA.tokens_for_loss(n, target) + 2.0 * n * demand
    assert float(best_cost) <= cost.min() * (1 + 1e-12)


def test_totals_are_conserved_in_every_unit() -> None:
    usd_per_j, co2e_g_per_j = 0.12 / 3.6e6 * 1.2, 50.0 / 3.6e6
    prices = EnergyPrices(usd_per_j=usd_per_j, co2e_g_per_j=400.0 / 3.6e6 * 1.2)
    inference_prices = EnergyPrices(usd_per_j=0.20 / 3.6e6, co2e_g_per_j=co2e_g_per_j)
    plan = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J,
        inference_flop_per_j=0.6 * FLOP_PER_J,
        inference_tokens=np.logspace(9, 15, 7),
        target_loss=2.1,
        test_time_multiplier=3.0,
        prices=prices,
        inference_prices=inference_prices,
        queries=1e9,
    )
    for point in (plan.optimum, plan.chinchilla):
        for unit in ("flops", "energy_j", "usd", "co2e_g"):
            training, inference, total = (
                getattr(getattr(point, phase), unit) for phase in ("training", "inference", "total")
            )
            np.testing.assert_allclose(training + inference, total, rtol=1e-15)
        np.testing.assert_allclose(point.training.flops, 6 * point.n_params * point.n_tokens)
        np.testing.assert_allclose(
            point.inference.flops, 2 * point.n_params * plan.inference_tokens * 3.0
        )
        np.testing.assert_allclose(point.training.energy_j, point.training.flops / FLOP_PER_J)
        np.testing.assert_allclose(
            point.inference.energy_j, point.inference.flops / (0.6 * FLOP_PER_J)
        )
        assert point.training.usd is not None
        assert point.inference.co2e_g is not None
        np.testing.assert_allclose(point.training.usd, point.training.energy_j * usd_per_j)
        np.testing.assert_allclose(point.inference.co2e_g, point.inference.energy_j * co2e_g_per_j)
        assert point.per_answer is not None
        np.testing.assert_allclose(point.per_answer.energy_j, point.total.energy_j / 1e9)
    assert np.all(plan.saving >= 0.0)


@pytest.mark.parametrize("target", [1.69, 1.0, 0.0])
def test_target_at_or_below_e_is_refused_naming_the_field(target: float) -> None:
    with pytest.raises(InvalidQuantity) as caught:
        plan_inference_aware(
            training_flop_per_j=FLOP_PER_J, inference_tokens=1e12, target_loss=target
        )
    assert caught.value.field == "target_loss"
    assert "1.69" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"inference_tokens": -1.0, "target_loss": 2.0}, "inference_tokens"),
        (
            {"inference_tokens": 1e12, "target_loss": 2.0, "test_time_multiplier": 0.0},
            "test_time_multiplier",
        ),
        ({"inference_tokens": 1e12, "target_loss": float("nan")}, "target_loss"),
        ({"inference_tokens": 1e12}, "target_loss"),
        (
            {"inference_tokens": 1e12, "target_loss": 2.0, "n_params": 1e9, "n_tokens": 2e10},
            "target_loss",
        ),
        ({"inference_tokens": 1e12, "target_loss": 2.0, "objective": "usd"}, "objective"),
        ({"inference_tokens": 1e12, "target_loss": 2.0, "objective": "watts"}, "objective"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidQuantity) as caught:
        plan_inference_aware(training_flop_per_j=FLOP_PER_J, **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_test_time_multiplier_is_more_served_tokens() -> None:
    """Thinking k times longer costs what serving k times the tokens costs."""
    longer = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J,
        inference_tokens=1e12,
        target_loss=2.1,
        test_time_multiplier=4.0,
    )
    more = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J, inference_tokens=4e12, target_loss=2.1
    )
    np.testing.assert_allclose(longer.optimum.n_params, more.optimum.n_params, rtol=1e-14)
    np.testing.assert_allclose(
        longer.optimum.total.energy_j, more.optimum.total.energy_j, rtol=1e-14
    )


def test_a_bigger_model_against_thinking_longer_per_answer() -> None:
    """Two ways to an answer of equal quality (the caller's claim), on energy per answer."""
    queries, tokens_per_answer = 1e9, 500.0
    bigger = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J,
        inference_tokens=queries * tokens_per_answer,
        target_loss=2.0,
        queries=queries,
    )
    thinking = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J,
        inference_tokens=queries * tokens_per_answer,
        target_loss=2.1,
        test_time_multiplier=8.0,
        queries=queries,
    )
    assert bigger.optimum.per_answer is not None
    assert thinking.optimum.per_answer is not None
    assert float(thinking.optimum.n_params) < float(bigger.optimum.n_params)
    for plan in (bigger, thinking):
        assert plan.optimum.per_answer is not None
        np.testing.assert_allclose(
            plan.optimum.per_answer.energy_j, plan.optimum.total.energy_j / queries
        )


def test_a_cheaper_inference_flop_moves_the_optimum_towards_chinchilla() -> None:
    same = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J, inference_tokens=1e13, target_loss=2.1
    )
    cheap = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J,
        inference_flop_per_j=10 * FLOP_PER_J,
        inference_tokens=1e13,
        target_loss=2.1,
    )
    chin = float(same.chinchilla.n_params)
    assert float(same.optimum.n_params) < float(cheap.optimum.n_params) < chin


def test_usd_objective_weighs_each_phase_at_its_price() -> None:
    prices = EnergyPrices(usd_per_j=1e-7)
    dear = EnergyPrices(usd_per_j=4e-7)
    energy = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J,
        inference_tokens=1e12,
        target_loss=2.1,
        test_time_multiplier=4.0,
    )
    usd = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J,
        inference_tokens=1e12,
        target_loss=2.1,
        prices=prices,
        inference_prices=dear,
        objective="usd",
    )
    # inference 4× dearer per joule is the same trade-off as 4× the tokens at one price
    np.testing.assert_allclose(usd.optimum.n_params, energy.optimum.n_params, rtol=1e-14)
    assert usd.optimum.total.usd is not None


def test_a_given_plan_is_costed_beside_the_optimum_at_its_own_loss() -> None:
    plan = plan_inference_aware(
        training_flop_per_j=FLOP_PER_J, inference_tokens=2e12, n_params=13e9, n_tokens=260e9
    )
    assert plan.given is not None
    assert float(plan.target_loss) == pytest.approx(float(CHINCHILLA.loss(13e9, 260e9)))
    np.testing.assert_allclose(plan.optimum.loss, plan.target_loss, rtol=1e-12)
    assert float(plan.optimum.total.energy_j) < float(plan.given.total.energy_j)
    assert float(plan.optimum.total.energy_j) <= float(plan.chinchilla.total.energy_j)


def test_vectorised_answers_equal_one_at_a_time() -> None:
    targets = np.array([1.9, 2.0, 2.4, 2.8])
    demand = np.array([0.0, 1e10, 1e13, 1e16])
    n, d = optimal_allocation(targets[:, None], demand[None, :])
    assert n.shape == d.shape == (4, 4)
    for i, t in enumerate(targets):
        for j, x in enumerate(demand):
            one_n, one_d = optimal_allocation(t, x)
            assert n[i, j] == one_n
            assert d[i, j] == one_d


def test_lifetime_costs_of_a_grid() -> None:
    costs = lifetime_costs(
        [1e9, 7e9], [2e10, 1.4e11], 1e12, training_flop_per_j=FLOP_PER_J, queries=[1e6, 1e6]
    )
    np.testing.assert_allclose(costs.training.flops, [1.2e20, 5.88e21])
    np.testing.assert_allclose(costs.inference.flops, [2e21, 1.4e22])
    assert costs.item(1)["tokens_per_param"] == pytest.approx(20.0)


@settings(max_examples=150, deadline=None)
@given(
    target=st.floats(1.75, 4.0),
    log_demand=st.floats(0.0, 18.0),
    log_ratio=st.floats(-2.0, 2.0),
    multiplier=st.floats(0.25, 64.0),
)
def test_property_optimum_is_a_minimum_on_the_iso_loss_curve(
    target: float, log_demand: float, log_ratio: float, multiplier: float
) -> None:
    demand, ratio = 10.0**log_demand, 10.0**log_ratio
    n_best, d_best = optimal_allocation(
        target, demand, test_time_multiplier=multiplier, cost_ratio=ratio
    )
    assert float(CHINCHILLA.loss(n_best, d_best)) == pytest.approx(target, rel=1e-9)
    n_chin, _ = CHINCHILLA.compute_optimal(target)
    assert float(CHINCHILLA.min_params(target)) < float(n_best) <= float(n_chin) * (1 + 1e-12)

    def cost(n: float) -> float:
        d = float(CHINCHILLA.tokens_for_loss(n, target))
        return float(6.0 * n * d + 2.0 * n * demand * multiplier * ratio)

    best = cost(float(n_best))
    for factor in (0.999, 1.001, 0.9, 1.1):
        neighbour = float(n_best) * factor
        if neighbour > float(CHINCHILLA.min_params(target)):
            assert best <= cost(neighbour) * (1 + 1e-12)


def test_fit_recovers_the_constants_from_exact_losses() -> None:
    rng = np.random.default_rng(7)
    n = 10 ** rng.uniform(7, 10, 40)
    d = 10 ** rng.uniform(9, 12, 40)
    fit = fit_loss_model(n, d, CHINCHILLA.loss(n, d))
    model = fit.model
    assert model.alpha == pytest.approx(0.34, rel=1e-3)
    assert model.beta == pytest.approx(0.28, rel=1e-3)
    assert model.e == pytest.approx(1.69, rel=1e-3)
    assert model.a == pytest.approx(406.4, rel=2e-2)
    assert model.b == pytest.approx(410.7, rel=2e-2)
    assert fit.rms_log_residual < 1e-5
    assert fit.n_points == 40


def test_fit_is_robust_to_an_outlying_run() -> None:
    rng = np.random.default_rng(11)
    n = 10 ** rng.uniform(7, 10, 60)
    d = 10 ** rng.uniform(9, 12, 60)
    loss = CHINCHILLA.loss(n, d) * np.exp(rng.normal(0.0, 0.002, 60))
    loss[5] *= 1.5  # a diverged run
    model = fit_loss_model(n, d, loss).model
    assert model.alpha == pytest.approx(0.34, abs=0.03)
    assert model.beta == pytest.approx(0.28, abs=0.03)
    assert model.e == pytest.approx(1.69, abs=0.05)
    # the fitted model plans as the true one does
    true_n, _ = CHINCHILLA.compute_optimal(2.2)
    fit_n, _ = model.compute_optimal(2.2)
    assert float(fit_n) == pytest.approx(float(true_n), rel=0.25)


@pytest.mark.parametrize(
    ("n", "d", "loss", "field"),
    [
        ([1e9] * 4, [1e10, 2e10, 3e10, 4e10], [3.0] * 4, "loss"),
        ([1e9] * 5, [1e10, 2e10, 3e10, 4e10, 5e10], [3.0] * 5, "n_params"),
        ([1e8, 1e9, 1e10, 1e11, 1e12], [1e10] * 5, [3.0] * 5, "n_tokens"),
        ([1e8, 1e9, 1e10, 1e11, 1e12], [1e10] * 5, [3.0] * 4, "loss"),
        ([1e8, 1e9, 1e10, 1e11, -1.0], [1e10] * 5, [3.0] * 5, "n_params"),
    ],
)
def test_fit_refuses_what_cannot_be_fitted(
    n: list[float], d: list[float], loss: list[float], field: str
) -> None:
    with pytest.raises(InvalidQuantity) as caught:
        fit_loss_model(n, d, loss)
    assert caught.value.field == field


@pytest.mark.parametrize(("name", "value"), [("e", -0.1), ("a", 0.0), ("alpha", math.inf)])
def test_loss_model_constants_are_checked(name: str, value: float) -> None:
    constants: dict[str, Any] = {"e": 1.69, "a": 406.4, "b": 410.7, "alpha": 0.34, "beta": 0.28} | {
        name: value
    }
    with pytest.raises(InvalidQuantity) as caught:
        LossModel(**constants)
    assert caught.value.field == name
