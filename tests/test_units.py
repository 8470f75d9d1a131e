"""The one registry: custom units, dimension checks, parsing at the edges."""

from __future__ import annotations

import math

import pint
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thermoledger.accounting.errors import AccountingError
from thermoledger.accounting.units import (
    Q_,
    DimensionMismatch,
    InvalidQuantity,
    dimension_of,
    magnitude_in,
    parse_quantity,
    ureg,
)


def test_flop_per_joule_with_prefixes() -> None:
    efficiency = (Q_(1e15, "FLOP") / Q_(3e3, "J")).to("GFLOP/J")
    assert efficiency.magnitude == pytest.approx(1e15 / 3e3 / 1e9)
    assert Q_(1, "PFLOP").to("GFLOP").magnitude == pytest.approx(1e6)


def test_energy_units() -> None:
    assert Q_(3.6, "MJ").to("kWh").magnitude == pytest.approx(1.0)
    assert Q_(1, "Wh").to("J").magnitude == pytest.approx(3600.0)
    assert (Q_(300, "W") * Q_(10, "s")).to("J").magnitude == pytest.approx(3000.0)


def test_emissions_scale() -> None:
    assert Q_(1, "tCO2e").to("kgCO2e").magnitude == pytest.approx(1000.0)
    assert Q_(1, "kgCO2e").to("gCO2e").magnitude == pytest.approx(1000.0)
    intensity = Q_(481, "gCO2e/kWh")
    assert (intensity * Q_(3.6, "MJ")).to("gCO2e").magnitude == pytest.approx(481.0)


@pytest.mark.parametrize(("source", "target"), [("J", "USD"), ("FLOP", "J"), ("token", "FLOP")])
def test_incompatible_dimensions_refuse_to_convert(source: str, target: str) -> None:
    with pytest.raises(pint.DimensionalityError):
        Q_(1, source).to(target)


def test_landauer_units_compose() -> None:
    k_b = Q_(1, "boltzmann_constant")
    per_bit = (k_b * Q_(300, "K") * math.log(2)).to("J")
    assert per_bit.magnitude == pytest.approx(2.871e-21, rel=1e-3)


@pytest.mark.parametrize(
    "raw", [{"value": 3.6, "unit": "MJ"}, "3.6 MJ", " 3.6   MJ ", Q_(1, "kWh"), "1 kWh"]
)
def test_parse_energy_forms(raw: object) -> None:
    assert magnitude_in(raw, "J") == pytest.approx(3.6e6)


def test_parse_by_dimension_name() -> None:
    assert parse_quantity("2 USD", "currency").to("USD").magnitude == 2
    assert parse_quantity("400 gCO2e/kWh", "carbon_intensity").magnitude == 400


def test_mismatch_names_both_dimensions_and_field() -> None:
    with pytest.raises(DimensionMismatch) as info:
        parse_quantity({"value": 3, "unit": "J"}, "currency", field="cost")
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, AccountingError)
    assert err.field == "cost"
    assert "[currency]" in err.expected
    assert "[length]" in err.given
    assert "cost" in str(err)


@pytest.mark.parametrize(
    "raw",
    [
        "three joules",
        "3 parsecs_per_fortnight_xyz",
        {"value": "3", "unit": "J"},
        {"value": 3},
        {"value": True, "unit": "J"},
        {"value": float("nan"), "unit": "J"},
        "inf J",
        42,
        None,
    ],
)
def test_bad_input_is_invalid_quantity(raw: object) -> None:
    with pytest.raises(InvalidQuantity):
        parse_quantity(raw, "energy", field="energy")


def test_dimension_of() -> None:
    assert dimension_of("FLOP/s") == "[compute] / [time]"
    assert dimension_of(ureg.Unit("dimensionless")) == "dimensionless"


@given(
    value=st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False),
    unit=st.sampled_from(["J", "kJ", "MJ", "Wh", "kWh", "GWh", "mJ", "eV"]),
)
def test_energy_round_trip(value: float, unit: str) -> None:
    joules = magnitude_in({"value": value, "unit": unit}, "J")
    back = Q_(joules, "J").to(unit).magnitude
    assert back == pytest.approx(value, rel=1e-12, abs=1e-300)


@given(
    value=st.floats(min_value=0, max_value=1e25, allow_nan=False),
    unit=st.sampled_from(["FLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"]),
)
def test_compute_round_trip(value: float, unit: str) -> None:
    flop = magnitude_in(f"{value!r} {unit}", "FLOP")
    assert Q_(flop, "FLOP").to(unit).magnitude == pytest.approx(value, rel=1e-12)
