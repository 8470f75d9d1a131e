"""Mass-based CO2e in pounds: ``lbCO2e`` and ``lbCO2e/kWh``, exact to the definition of the lb."""

from __future__ import annotations

import pint
import pytest

from thermoledger.accounting.units import Q_, magnitude_in, parse_quantity


def test_one_pound_is_exactly_0_45359237_kg() -> None:
    assert Q_(1, "lbCO2e").to("kgCO2e").magnitude == pytest.approx(0.45359237, rel=1e-15)
    assert Q_(1, "lbCO2e").to("gCO2e").magnitude == pytest.approx(453.59237, rel=1e-15)
    assert Q_(1, "tCO2e").to("lbCO2e").magnitude == pytest.approx(1e6 / 453.59237, rel=1e-15)
    assert Q_(1, "lbCO2eq").to("lbCO2e").magnitude == 1


def test_the_emissions_pound_is_pints_avoirdupois_pound() -> None:
    # Same number as pint's mass pound, but another dimension: CO2e is not a mass of anything
    # the registry could confuse it with.
    assert Q_(1, "lb").to("kg").magnitude == pytest.approx(
        Q_(1, "lbCO2e").to("kgCO2e").magnitude, rel=1e-15
    )
    with pytest.raises(pint.DimensionalityError):
        Q_(1, "lbCO2e").to("kg")


def test_intensity_in_pounds_per_kwh() -> None:
    # Strubell et al. 2019: 0.954 lbs CO2e per kWh (EPA 2018, US average).
    assert magnitude_in("0.954 lbCO2e/kWh", "gCO2e/kWh") == pytest.approx(432.72712098, rel=1e-12)
    assert parse_quantity("0.954 lbCO2e/kWh", "carbon_intensity").magnitude == 0.954
    assert parse_quantity({"value": 192, "unit": "lbCO2e"}, "emissions").to("kgCO2e").magnitude == (
        pytest.approx(192 * 0.45359237, rel=1e-15)
    )
