"""The pages' one energy format (`service.pages.render.energy`) and the value axis's headroom
(`service.pages.charts.headroom_ticks`): pure functions, analytic answers."""

from __future__ import annotations

import itertools
import math

import pytest

from thermoledger.service.pages.charts import headroom_ticks
from thermoledger.service.pages.render import energy, energy_unit


@pytest.mark.parametrize(
    ("value_j", "shown"),
    [
        (598.68, "598.7 J"),  # 1.663e-4 kWh: the figure the issue saw
        (0.0, "0 J"),
        (0.25, "0.2500 J"),
        (3599.0, "3,599 J"),
        (3600.0, "1.000 Wh"),  # 1 Wh = 3600 J
        (3.6e5, "100.0 Wh"),
        (3.5999e6, "1.000 kWh"),  # 999.97 Wh rounds to 1,000: printed as 1.000 kWh
        (3.6e6, "1.000 kWh"),
        (1.62e6, "450.0 Wh"),  # 450 W for an hour
        (5.4e8, "150.0 kWh"),
        (3.6e9, "1.000 MWh"),
        (7.2e13, "20.00 GWh"),
        (-7200.0, "-2.000 Wh"),  # a correction may be negative: unit by magnitude
    ],
)
def test_energy_picks_the_unit_by_size(value_j: float, shown: str) -> None:
    assert energy(value_j) == shown


@pytest.mark.parametrize("missing", [None, math.nan, math.inf])
def test_a_missing_energy_is_not_a_number(missing: float | None) -> None:
    assert energy(missing) == "n/a"


def test_a_band_prints_in_the_unit_of_its_central_value() -> None:
    central, low, high = 3.7e6, 3.5e6, 3.9e6  # 1.028 kWh, 972.2 Wh … 1.083 kWh alone
    assert energy(low) == "972.2 Wh"
    assert energy(low, central) == "0.9722 kWh"
    assert energy(high, central) == "1.083 kWh"
    assert energy(low, None) == energy(low)  # no central value: its own unit
    assert energy(low, math.nan) == energy(low)


def test_energy_unit_gives_the_joules_of_its_unit() -> None:
    assert energy_unit(598.68) == ("J", 1.0)
    assert energy_unit(1.62e6) == ("Wh", 3600.0)
    assert energy_unit(5.4e8) == ("kWh", 3.6e6)
    assert energy_unit(None) == ("J", 1.0)


@pytest.mark.parametrize("peak", [400.0, 425.0, 640.0, 99.9, 100.0, 0.3, 1e5, 3.7])
def test_the_value_axis_ends_above_the_peak(peak: float) -> None:
    ticks = headroom_ticks(peak)
    assert ticks[0] == 0.0
    assert ticks[-1] >= peak * 1.1  # a line at the peak is 1/11 of the height below the top
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1  # evenly spaced, round
    assert 3 <= len(ticks) <= 8


def test_a_constant_or_zero_value_gets_a_range_not_a_point() -> None:
    assert headroom_ticks(400.0, lo=400.0) == headroom_ticks(400.0)  # min == max: from 0
    zero = headroom_ticks(0.0)
    assert zero[0] == 0.0
    assert zero[-1] >= 1.0
    negative = headroom_ticks(-5.0, lo=-5.0)
    assert negative[0] <= -5.0 < 0.0 <= negative[-1]
