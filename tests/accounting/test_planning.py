"""Planning against hand-computed answers: 6·N·D, Chinchilla, energy, duration, the plan."""

from __future__ import annotations

import json

import pytest

from thermoledger.accounting.carbon import (
    EmissionFactor,
    default_emission_factor,
    default_pue,
    scope2_emissions,
)
from thermoledger.accounting.cost import CloudPrice, Tariff
from thermoledger.accounting.errors import InvalidQuantity
from thermoledger.accounting.planning import (
    AttentionShape,
    ComputeSetup,
    chinchilla_check,
    estimate_energy,
    inference_flops_per_token,
    plan_training,
    rated_flop_per_j,
    training_flops,
)

WORLD = default_emission_factor("WORLD")
HYPERSCALE = default_pue("hyperscale")
TARIFF = Tariff(usd_per_kwh=0.12, source="test tariff")
N_7B, D_CHINCHILLA = 7e9, 1.4e11


# ---------------------------------------------------------------------------------------------
# FLOPs and Chinchilla


def test_training_flops_six_n_d() -> None:
    assert training_flops(N_7B, D_CHINCHILLA) == pytest.approx(5.88e21)


def test_attention_term() -> None:
    shape = AttentionShape(n_layer=32, n_ctx=4096, d_model=4096)
    extra_forward = 2 * 32 * 4096 * 4096
    assert training_flops(N_7B, 1e9, attention=shape) == pytest.approx(
        (6 * N_7B + 3 * extra_forward) * 1e9
    )
    assert inference_flops_per_token(N_7B) == pytest.approx(1.4e10)
    assert inference_flops_per_token(N_7B, attention=shape) == pytest.approx(1.4e10 + extra_forward)
    with pytest.raises(InvalidQuantity, match="n_ctx"):
        AttentionShape(n_layer=32, n_ctx=0, d_model=4096)


@pytest.mark.parametrize(
    ("n_tokens", "regime", "ratio"),
    [
        (1.4e11, "near_optimal", 1.0),
        (7e10, "near_optimal", 0.5),  # band edges are inclusive
        (7e11, "near_optimal", 5.0),
        (2e12, "over_trained", 2e12 / 1.4e11),  # Llama-2-7B-like: ≈ 286 tokens/param
        (3e10, "under_trained", 3e10 / 1.4e11),
    ],
)
def test_chinchilla_flag(n_tokens: float, regime: str, ratio: float) -> None:
    check = chinchilla_check(N_7B, n_tokens)
    assert check.optimal_tokens == pytest.approx(1.4e11)
    assert check.ratio == pytest.approx(ratio)
    assert check.regime == regime
    assert check.flagged == (regime != "near_optimal")
    assert check.tokens_per_param == pytest.approx(n_tokens / N_7B)


def test_chinchilla_custom_band() -> None:
    assert chinchilla_check(N_7B, 2e12, band=(0.5, 20.0)).regime == "near_optimal"
    with pytest.raises(InvalidQuantity, match="band"):
        chinchilla_check(N_7B, 2e12, band=(5.0, 0.5))


# ---------------------------------------------------------------------------------------------
# Energy, duration, plan


def test_energy_estimate_central_and_range() -> None:
    estimate = estimate_energy(1e21, [1e11, 4e11, 2e11])
    assert estimate.energy_j_central == pytest.approx(5e9)
    assert estimate.energy_j_low == pytest.approx(2.5e9)
    assert estimate.energy_j_high == pytest.approx(1e10)
    assert estimate.range_method == "min/max"
    assert estimate.n_samples == 3


def test_energy_estimate_percentiles() -> None:
    estimate = estimate_energy(1e21, [1e11, 2e11, 3e11, 4e11, 5e11], percentiles=(25, 75))
    assert estimate.flop_per_j_low == pytest.approx(2e11)
    assert estimate.flop_per_j_high == pytest.approx(4e11)
    assert estimate.energy_j_high == pytest.approx(5e9)
    assert estimate.range_method == "p25–p75"
    with pytest.raises(InvalidQuantity, match="percentiles"):
        estimate_energy(1e21, [1e11], percentiles=(90, 10))


@pytest.mark.parametrize("samples", [[], [1e11, 0.0], [float("nan")]])
def test_energy_estimate_refuses_bad_samples(samples: list[float]) -> None:
    with pytest.raises(InvalidQuantity, match="flop_per_j_samples"):
        estimate_energy(1e21, samples)


def test_plan_training_end_to_end() -> None:
    setup = ComputeSetup(peak_flop_per_s=989e12, n_devices=8, mfu=0.4, device="H100 SXM")
    cloud = CloudPrice(usd_per_device_hour=2.5, source="test cloud")
    plan = plan_training(
        n_params=N_7B,
        n_tokens=D_CHINCHILLA,
        flop_per_j_samples=[2e11, 3e11, 4e11],
        setup=setup,
        pue=HYPERSCALE,
        location_factor=WORLD,
        tariff=TARIFF,
        hardware=cloud,
    )
    flops = 5.88e21
    duration_s = flops / (989e12 * 8 * 0.4)
    assert plan.flops == pytest.approx(flops)
    assert plan.duration_s == pytest.approx(duration_s)
    assert plan.device_hours == pytest.approx(duration_s * 8 / 3600)
    assert plan.energy.energy_j_central == pytest.approx(flops / 3e11)
    assert plan.chinchilla.regime == "near_optimal"

    assert plan.carbon is not None
    central = scope2_emissions(flops / 3e11, pue=HYPERSCALE, location_factor=WORLD)
    assert plan.carbon.location_co2e_g == pytest.approx(central.location_co2e_g)
    assert plan.co2e_location_g_range == pytest.approx(
        (flops / 4e11 / 3.6e6 * 1.1 * 481, flops / 2e11 / 3.6e6 * 1.1 * 481)
    )
    assert plan.co2e_market_g_range is None

    assert plan.cost is not None
    hardware_usd = 2.5 * duration_s * 8 / 3600
    assert plan.cost.hardware_usd == pytest.approx(hardware_usd)
    assert plan.cost.energy_usd == pytest.approx(flops / 3e11 / 3.6e6 * 1.1 * 0.12)
    assert plan.total_usd_range == pytest.approx(
        (
            hardware_usd + flops / 4e11 / 3.6e6 * 1.1 * 0.12,
            hardware_usd + flops / 2e11 / 3.6e6 * 1.1 * 0.12,
        )
    )
    json.dumps(plan.to_dict(), allow_nan=False)


def test_plan_market_range_when_market_factor_given() -> None:
    ppa = EmissionFactor(region="NO", intensity_g_per_kwh=10.0, kind="market", source="PPA")
    plan = plan_training(
        n_params=1e9,
        n_tokens=2e10,
        flop_per_j_samples=[1e11, 2e11],
        pue=HYPERSCALE,
        location_factor=WORLD,
        market_factor=ppa,
    )
    assert plan.co2e_market_g_range is not None
    low, high = plan.co2e_market_g_range
    assert low == pytest.approx(6 * 1e9 * 2e10 / 2e11 / 3.6e6 * 1.1 * 10.0)
    assert high == pytest.approx(2 * low)


def test_plan_refuses_incomplete_inputs() -> None:
    with pytest.raises(InvalidQuantity, match="pue"):
        plan_training(n_params=1e9, n_tokens=2e10, flop_per_j_samples=[1e11], location_factor=WORLD)
    with pytest.raises(InvalidQuantity, match="setup"):
        plan_training(
            n_params=1e9,
            n_tokens=2e10,
            flop_per_j_samples=[1e11],
            hardware=CloudPrice(usd_per_device_hour=1.0, source="x"),
        )
    with pytest.raises(InvalidQuantity, match="mfu"):
        ComputeSetup(peak_flop_per_s=1e15, n_devices=1, mfu=1.5)


def test_plan_without_prices_has_only_physics() -> None:
    plan = plan_training(n_params=1e9, n_tokens=2e10, flop_per_j_samples=[1e11])
    assert plan.carbon is None
    assert plan.cost is None
    assert plan.duration_s is None
    assert plan.energy.energy_j_central == pytest.approx(1.2e20 / 1e11)


# ---------------------------------------------------------------------------------------------
# Datasheet efficiency


def test_rated_flop_per_j_is_mfu_times_peak_over_tdp() -> None:
    # H100 SXM bf16 dense 989.5 TFLOP/s at 700 W: 1.4136e12 FLOP/J at 100 % MFU.
    assert rated_flop_per_j(989.5e12, 700.0, 1.0) == pytest.approx(1.41357e12, rel=1e-5)
    assert rated_flop_per_j(989.5e12, 700.0, 0.4) == pytest.approx(0.4 * 989.5e12 / 700.0)
    with pytest.raises(InvalidQuantity, match="mfu"):
        rated_flop_per_j(989.5e12, 700.0, 0.0)
    with pytest.raises(InvalidQuantity, match="mfu"):
        rated_flop_per_j(989.5e12, 700.0, 1.5)
    with pytest.raises(InvalidQuantity, match="tdp_w"):
        rated_flop_per_j(989.5e12, -1.0, 0.5)
