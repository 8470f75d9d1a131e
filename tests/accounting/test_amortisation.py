"""Amortisation against hand-computed answers, plus the laws it must obey: F/x + m, the parity
volume F/m, the break-even between two options."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoledger.accounting.amortisation import (
    ServingOption,
    amortisation_curve,
    amortised_per_token,
    break_even,
    inference_parity,
    volume_grid,
)
from thermoledger.accounting.carbon import default_emission_factor, default_pue
from thermoledger.accounting.cost import Tariff
from thermoledger.accounting.errors import InvalidQuantity

WORLD = default_emission_factor("WORLD")
HYPERSCALE = default_pue("hyperscale")
TARIFF = Tariff(usd_per_kwh=0.12, source="test tariff")


# ---------------------------------------------------------------------------------------------
# Amortisation and break-even


def test_amortised_j_per_token_decreases_to_inference_floor() -> None:
    option = ServingOption("7B", training_energy_j=1e12, inference_energy_j_per_token=0.3)
    tokens = np.logspace(6, 20, 15)
    curve = amortisation_curve(option, tokens)
    assert curve.j_per_token[0] == pytest.approx(1e12 / 1e6 + 0.3)
    assert np.all(np.diff(curve.j_per_token) < 0)
    assert np.all(curve.j_per_token > 0.3)
    assert curve.j_per_token[-1] == pytest.approx(0.3, rel=1e-7)
    assert curve.usd_per_token is None
    record = json.loads(json.dumps(curve.to_dict(), allow_nan=False))
    assert record["floor_j_per_token"] == 0.3
    assert len(record["j_per_token"]) == 15


def test_from_energy_prices_both_sides_with_pue() -> None:
    option = ServingOption.from_energy(
        "7B",
        training_energy_j=3.6e12,
        inference_energy_j_per_token=0.36,
        pue=HYPERSCALE,
        tariff=TARIFF,
        factor=WORLD,
        training_hardware_usd=1000.0,
    )
    # 3.6e12 J = 1e6 kWh IT → 1.1e6 kWh facility.
    assert option.training_usd == pytest.approx(1.1e6 * 0.12 + 1000.0)
    assert option.training_co2e_g == pytest.approx(1.1e6 * 481)
    assert option.inference_usd_per_token == pytest.approx(1e-7 * 1.1 * 0.12)
    assert option.inference_co2e_g_per_token == pytest.approx(1e-7 * 1.1 * 481)
    curve = amortisation_curve(option, [1e9, 1e12])
    assert curve.usd_per_token is not None
    assert curve.co2e_g_per_token is not None
    assert curve.co2e_g_per_token[1] == pytest.approx(1.1e6 * 481 / 1e12 + 1e-7 * 1.1 * 481)
    assert any("Ember" in a for a in option.assumptions)


def test_serving_option_figures_come_in_pairs() -> None:
    with pytest.raises(InvalidQuantity, match="training_usd"):
        ServingOption("x", training_energy_j=1.0, inference_energy_j_per_token=1.0, training_usd=5)


@pytest.mark.parametrize("tokens", [[0.0], [-5.0], [1.0, float("inf")]])
def test_amortisation_needs_positive_volumes(tokens: list[float]) -> None:
    with pytest.raises(InvalidQuantity, match="tokens_served"):
        amortised_per_token(1.0, 1.0, tokens)


def test_break_even_hand_solution() -> None:
    # Larger model trained longer: more training energy, cheaper per token (a); smaller model (b).
    # 1e12 + 0.1·x = 2e11 + 0.3·x  →  x = 8e11 / 0.2 = 4e12 tokens, both at 1.4e12 J.
    large = ServingOption("large", training_energy_j=1e12, inference_energy_j_per_token=0.1)
    small = ServingOption("small", training_energy_j=2e11, inference_energy_j_per_token=0.3)
    result = break_even(large, small)
    assert result.tokens == pytest.approx(4e12)
    assert result.cost_at_break_even == pytest.approx(1.4e12)
    assert result.cheaper_below == "small"
    assert result.cheaper_above == "large"
    assert result.unit == "J"
    assert break_even(small, large).tokens == pytest.approx(4e12)
    assert json.loads(json.dumps(result.to_dict()))["tokens"] == pytest.approx(4e12)


def test_no_break_even_when_one_option_dominates() -> None:
    good = ServingOption("good", training_energy_j=1e11, inference_energy_j_per_token=0.1)
    bad = ServingOption("bad", training_energy_j=2e11, inference_energy_j_per_token=0.3)
    result = break_even(good, bad)
    assert result.tokens is None
    assert result.cost_at_break_even is None
    assert "every positive volume" in result.reason
    assert result.cheaper_below == result.cheaper_above == "good"


def test_no_break_even_for_parallel_or_identical_options() -> None:
    a = ServingOption("a", training_energy_j=1e11, inference_energy_j_per_token=0.2)
    b = ServingOption("b", training_energy_j=3e11, inference_energy_j_per_token=0.2)
    parallel = break_even(a, b)
    assert parallel.tokens is None
    assert "same inference cost" in parallel.reason
    assert parallel.cheaper_above == "a"
    same = break_even(
        a, ServingOption("a2", training_energy_j=1e11, inference_energy_j_per_token=0.2)
    )
    assert same.tokens is None
    assert "identical" in same.reason


def test_no_break_even_beyond_representable_volume() -> None:
    # x = (0 - 1e15) / (0 - 5e-324) overflows to +inf.
    a = ServingOption("a", training_energy_j=1e15, inference_energy_j_per_token=0.0)
    b = ServingOption("b", training_energy_j=0.0, inference_energy_j_per_token=5e-324)
    result = break_even(a, b)
    assert result.tokens is None
    assert result.cheaper_below == "b"
    json.dumps(result.to_dict(), allow_nan=False)


def test_break_even_in_usd_needs_prices() -> None:
    a = ServingOption("a", training_energy_j=1.0, inference_energy_j_per_token=1.0)
    with pytest.raises(InvalidQuantity, match="usd"):
        break_even(a, a, metric="usd")
    with pytest.raises(InvalidQuantity, match="metric"):
        break_even(a, a, metric="joy")  # type: ignore[arg-type]


_costs = st.floats(0.0, 1e15, allow_nan=False, allow_infinity=False)
_rates = st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    fixed=_costs,
    per_token=_rates,
    tokens=st.lists(st.floats(1e-3, 1e18), min_size=2, max_size=30),
)
def test_amortised_value_is_non_increasing_in_tokens(
    fixed: float, per_token: float, tokens: list[float]
) -> None:
    values = amortised_per_token(fixed, per_token, np.sort(np.array(tokens)))
    assert np.all(np.diff(values) <= 0.0)
    assert np.all(values >= per_token)


@settings(max_examples=60, deadline=None)
@given(fa=_costs, fb=_costs, ma=_rates, mb=_rates)
def test_break_even_equalises_totals(fa: float, fb: float, ma: float, mb: float) -> None:
    a = ServingOption("a", training_energy_j=fa, inference_energy_j_per_token=ma)
    b = ServingOption("b", training_energy_j=fb, inference_energy_j_per_token=mb)
    result = break_even(a, b)
    if result.tokens is None:
        # No positive crossing: the option named cheaper is never dearer at any volume.
        if result.cheaper_below is not None:
            cheap, dear = (a, b) if result.cheaper_below == "a" else (b, a)
            for x in (1.0, 1e6, 1e12):
                cheap_total = cheap.training_energy_j + cheap.inference_energy_j_per_token * x
                dear_total = dear.training_energy_j + dear.inference_energy_j_per_token * x
                assert cheap_total <= dear_total * (1 + 1e-12)
    else:
        total_a = fa + ma * result.tokens
        total_b = fb + mb * result.tokens
        assert total_a == pytest.approx(total_b, rel=1e-9, abs=1e-6)


def test_volume_grid_is_log_spaced_with_exact_ends() -> None:
    grid = volume_grid(1e3, 1e9, 7)
    assert grid[0] == 1e3
    assert grid[-1] == 1e9
    np.testing.assert_allclose(np.diff(np.log10(grid)), 1.0)
    with pytest.raises(InvalidQuantity, match="high_tokens"):
        volume_grid(1e9, 1e3)
    with pytest.raises(InvalidQuantity, match="points"):
        volume_grid(1.0, 10.0, 1)
    with pytest.raises(InvalidQuantity, match="low_tokens"):
        volume_grid(0.0, 10.0)


def test_inference_parity_hand_solution() -> None:
    # 1 TJ of training, 0.25 J per served token: parity at 4e12 tokens, where F/x = m.
    option = ServingOption("7B", training_energy_j=1e12, inference_energy_j_per_token=0.25)
    parity = inference_parity(option)
    assert parity.tokens == pytest.approx(4e12)
    assert parity.per_token_at_parity == pytest.approx(0.5)
    assert parity.unit == "J"
    assert parity.tokens is not None
    at = amortised_per_token(1e12, 0.25, [parity.tokens])[0]
    assert at == pytest.approx(parity.per_token_at_parity)
    assert json.loads(json.dumps(parity.to_dict()))["tokens"] == pytest.approx(4e12)


def test_inference_parity_edge_cases_say_why() -> None:
    free_training = ServingOption("a", training_energy_j=0.0, inference_energy_j_per_token=0.2)
    assert inference_parity(free_training).tokens is None
    assert "nothing to amortise" in inference_parity(free_training).reason
    free_serving = ServingOption("b", training_energy_j=1e9, inference_energy_j_per_token=0.0)
    assert inference_parity(free_serving).tokens is None
    assert "every volume" in inference_parity(free_serving).reason
    tiny = ServingOption("c", training_energy_j=1e300, inference_energy_j_per_token=1e-300)
    assert inference_parity(tiny).tokens is None
    assert "representable" in inference_parity(tiny).reason


def test_inference_parity_in_usd_needs_prices() -> None:
    option = ServingOption("a", training_energy_j=1.0, inference_energy_j_per_token=1.0)
    with pytest.raises(InvalidQuantity, match="usd"):
        inference_parity(option, metric="usd")
    priced = ServingOption.from_energy(
        "p",
        training_energy_j=3.6e9,  # 1 MWh
        inference_energy_j_per_token=3.6,  # 1 mWh
        pue=default_pue("none"),
        tariff=TARIFF,
    )
    parity = inference_parity(priced, metric="usd")
    assert parity.tokens == pytest.approx(1e9)  # same energy ratio under one tariff
    assert parity.unit == "USD"


@pytest.mark.parametrize(
    ("module", "other"), [("amortisation", "planning"), ("planning", "amortisation")]
)
def test_amortisation_and_planning_stand_apart(module: str, other: str) -> None:
    """Neither module imports the other (no cycle, and amortisation needs no FLOP model)."""
    path = Path(importlib.import_module(f"thermoledger.accounting.{module}").__file__ or "")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {name for name in imported if name.split(".")[-1] == other}
