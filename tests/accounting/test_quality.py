"""accounting.quality against analytic answers: cumulative energy, joules to a target, fronts,
the halving-time fit and its t-interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thermoledger.accounting.errors import InvalidQuantity
from thermoledger.accounting.quality import (
    DAYS_PER_MONTH,
    cumulative_at,
    cumulative_energy,
    energy_to_target,
    halving_time,
    pareto_front,
    t_quantile,
)

MONTH_S = DAYS_PER_MONTH * 86_400.0


def test_cumulative_is_linear_inside_a_chunk() -> None:
    # 300 W for 10 s (3000 J) then 100 W for 10 s (1000 J).
    out = cumulative_at(
        [0.0, 10.0], [10.0, 20.0], [3000.0, 1000.0], [-1.0, 0.0, 5.0, 10.0, 15.0, 25.0]
    )
    np.testing.assert_allclose(out, [0.0, 0.0, 1500.0, 3000.0, 3500.0, 4000.0])


def test_cumulative_adds_overlapping_chunks_and_instants() -> None:
    out = cumulative_at([0.0, 5.0, 7.0], [10.0, 15.0, 7.0], [100.0, 200.0, 50.0], [6.0, 7.0, 12.0])
    np.testing.assert_allclose(out, [60.0 + 20.0, 70.0 + 40.0 + 50.0, 100.0 + 140.0 + 50.0])


def test_cumulative_refuses_chunks_out_of_order() -> None:
    with pytest.raises(InvalidQuantity, match="t1_s < t0_s"):
        cumulative_at([2.0], [1.0], [1.0], [0.0])


def test_cumulative_energy_band_rss_across_devices_and_unbounded_above() -> None:
    # Two devices, 1000 J each over [0, 10]; sensor 30 J and 40 J: RSS 50 J at the end.
    result = cumulative_energy(
        t0_s=[0.0, 0.0, 10.0],
        t1_s=[10.0, 10.0, 20.0],
        energy_j=[1000.0, 1000.0, 500.0],
        sensor_uncertainty_j=[30.0, 40.0, 0.0],
        bound_below_j=[10.0, 0.0, 0.0],
        bound_above_j=[5.0, 5.0, math.inf],
        device=["a", "b", "a"],
        at_s=[5.0, 10.0, 15.0],
    )
    np.testing.assert_allclose(result.energy_j, [1000.0, 2000.0, 2250.0])
    np.testing.assert_allclose(
        result.energy_low_j, [1000.0 - 25.0 - 5.0, 2000.0 - 50.0 - 10.0, 2250.0 - 50.0 - 10.0]
    )
    np.testing.assert_allclose(
        result.energy_high_j[:2], [1000.0 + 25.0 + 5.0, 2000.0 + 50.0 + 10.0]
    )
    assert math.isinf(result.energy_high_j[2])


def _crossing(values: list[float], energy: list[float], target: float, lower: bool = True):  # type: ignore[no-untyped-def]
    e = np.asarray(energy)
    return energy_to_target(
        values=values,
        energy_j=e,
        energy_low_j=0.9 * e,
        energy_high_j=1.1 * e,
        target=target,
        lower_is_better=lower,
    )


def test_energy_to_target_interpolates_between_points() -> None:
    crossing = _crossing([4.0, 3.0, 2.0, 1.0], [0.0, 100.0, 200.0, 300.0], 2.5)
    assert crossing is not None
    assert crossing.energy_j == pytest.approx(150.0)
    assert crossing.energy_low_j == pytest.approx(135.0)
    assert crossing.energy_high_j == pytest.approx(165.0)
    assert (crossing.index, crossing.fraction) == (2, pytest.approx(0.5))


def test_energy_to_target_first_crossing_only_and_higher_is_better() -> None:
    crossing = _crossing([3.0, 1.0, 4.0, 0.5], [10.0, 20.0, 30.0, 40.0], 2.0)
    assert crossing is not None
    assert crossing.energy_j == pytest.approx(15.0)
    up = _crossing([0.1, 0.5, 0.9], [0.0, 1000.0, 2000.0], 0.8, lower=False)
    assert up is not None
    assert up.energy_j == pytest.approx(1750.0)


def test_energy_to_target_reached_at_once_or_never() -> None:
    first = _crossing([1.0, 0.5], [7.0, 9.0], 2.0)
    assert first is not None
    assert first.energy_j == 7.0
    assert _crossing([3.0, 2.5], [1.0, 2.0], 2.0) is None


def test_pareto_front() -> None:
    cost = [100.0, 50.0, 200.0, 50.0, 300.0, math.nan]
    loss = [2.0, 3.0, 2.5, 3.0, 1.0, 0.1]
    assert pareto_front(cost, loss).tolist() == [True, True, False, False, True, False]
    accuracy = [0.5, 0.4, 0.6, 0.4, 0.9, 1.0]
    assert pareto_front(cost, accuracy, lower_is_better=False).tolist() == [
        True,
        True,
        True,
        False,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706204736), (2, 4.302652730), (3, 3.182446305), (10, 2.228138852), (30, 2.042272456)],
)
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-8)


def test_halving_time_exact_on_a_clean_trend() -> None:
    # 16-month halving (Hernandez & Brown 2020): E = 1e9 · 2^(-t/16 months).
    months = np.array([0.0, 6.0, 12.0, 24.0, 40.0])
    energy = 1e9 * 2.0 ** (-months / 16.0)
    fit = halving_time(1.6e9 + months * MONTH_S, energy)
    assert fit.halving_months == pytest.approx(16.0)
    assert fit.halving_low_months == pytest.approx(16.0)
    assert fit.halving_high_months == pytest.approx(16.0)
    assert fit.intercept_log2_j == pytest.approx(math.log2(1e9))


def test_halving_time_interval_from_the_t_distribution() -> None:
    months = np.array([0.0, 1.0, 2.0, 3.0])
    noise = np.array([0.1, -0.1, -0.1, 0.1])  # in log2 units; orthogonal to the trend
    energy = 2.0 ** (20.0 - months / 4.0 + noise)
    fit = halving_time(months * MONTH_S, energy)
    assert fit.slope_log2_per_month == pytest.approx(-0.25)
    # se = sqrt(SSR/(n-2)/Sxx) = sqrt(0.04/2/5); t(0.975, 2) = 4.302652730.
    half = 4.302652730 * math.sqrt(0.04 / 2 / 5)
    assert fit.slope_low == pytest.approx(-0.25 - half)
    assert fit.slope_high == pytest.approx(-0.25 + half)
    assert fit.halving_months == pytest.approx(4.0)
    assert fit.halving_low_months == pytest.approx(1 / (0.25 + half))
    assert fit.halving_high_months is None  # the interval reaches a flat or rising trend


def test_halving_time_refuses_too_few_points() -> None:
    with pytest.raises(InvalidQuantity, match="at least 3"):
        halving_time([0.0, 1.0], [1.0, 2.0])
    with pytest.raises(InvalidQuantity, match="same time"):
        halving_time([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])
