"""Carbon: Scope 2 dual reporting and SCI against hand-computed answers."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoledger.accounting.carbon import (
    J_PER_KWH,
    YEAR_S,
    EmbodiedShare,
    EmissionFactor,
    FactorKindError,
    FactorNotValid,
    FunctionalUnit,
    Pue,
    UnknownPue,
    UnknownRegion,
    default_emission_factor,
    default_emission_factors,
    default_pue,
    default_pues,
    operational_co2e_g,
    scope2_emissions,
    software_carbon_intensity,
)
from thermoledger.accounting.errors import AccountingError, DimensionMismatch, InvalidQuantity

WORLD = default_emission_factor("WORLD")
HYPERSCALE = default_pue("hyperscale")
ONE_KWH_J = 3.6e6


def market(g_per_kwh: float, source: str = "supplier PPA certificate") -> EmissionFactor:
    return EmissionFactor(region="DE", intensity_g_per_kwh=g_per_kwh, kind="market", source=source)


# ---------------------------------------------------------------------------------------------
# Built-in defaults


def test_world_default_is_ember_2023() -> None:
    assert WORLD.intensity_g_per_kwh == 481.0
    assert WORLD.kind == "location"
    assert WORLD.year == 2023
    assert "Ember" in WORLD.source


def test_every_country_of_the_reference_table_is_shipped() -> None:
    expected = {
        "WORLD": 481,
        "IN": 713,
        "CN": 582,
        "AU": 549,
        "DE": 381,
        "US": 373,
        "CA": 170,
        "DK": 152,
        "BE": 138,
        "BR": 98,
        "FI": 79,
        "FR": 56,
        "NO": 30,
    }
    factors = default_emission_factors()
    assert {k: v.intensity_g_per_kwh for k, v in factors.items()} == expected
    for factor in factors.values():
        assert factor.source
        assert factor.year is not None
        assert factor.kind == "location"


def test_unverified_default_carries_its_caveat() -> None:
    note = default_emission_factor("US").note
    assert note is not None
    assert "not re-checked" in note


def test_region_lookup_is_explicit() -> None:
    assert default_emission_factor("fr").intensity_g_per_kwh == 56.0
    with pytest.raises(UnknownRegion, match="XX") as info:
        default_emission_factor("XX")
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, AccountingError)


def test_pue_defaults() -> None:
    values = {name: p.value for name, p in default_pues().items()}
    assert values == {
        "hyperscale": 1.10,
        "typical": 1.56,
        "colocation": 1.56,
        "on_prem_unknown": 1.6,
        "none": 1.0,
    }
    assert default_pue("on_prem_unknown").is_assumption
    assert default_pue("typical").year == 2024
    with pytest.raises(UnknownPue):
        default_pue("arctic")


def test_factor_file_is_read_lazily_and_pint_is_not_imported() -> None:
    """factors.toml is read on first use, not at import; pint loads only for edge parsing."""
    code = (
        "import sys\n"
        "import thermoledger.accounting.amortisation, thermoledger.accounting.cost\n"
        "import thermoledger.accounting.carbon as carbon, thermoledger.accounting.planning\n"
        "print(carbon._factor_table.cache_info().currsize, 'pint' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["0", "False"]


# ---------------------------------------------------------------------------------------------
# Scope 2


def test_dual_reporting_hand_example() -> None:
    # 3.6 MJ = 1 kWh IT; × 1.1 = 1.1 kWh facility; × 481 g/kWh = 529.1 g.
    result = scope2_emissions(3.6e6, pue=HYPERSCALE, location_factor=WORLD)
    assert result.energy_facility_kwh == pytest.approx(1.1)
    assert result.location_co2e_g == pytest.approx(529.1)
    assert result.market_co2e_g is None
    assert result.market_unavailable_reason is not None
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert record["market_based"]["status"] == "not_available"
    assert record["market_based"]["co2e_g"] is None
    assert record["location_based"]["factor"]["source"] == WORLD.source
    assert record["pue"]["value"] == 1.1


def test_zero_market_factor_gives_zero_market_and_keeps_location() -> None:
    result = scope2_emissions(
        3.6e6, pue=HYPERSCALE, location_factor=WORLD, market_factor=market(0.0)
    )
    assert result.market_co2e_g == 0.0
    assert result.market_basis == "contractual"
    assert result.location_co2e_g == pytest.approx(529.1)


def test_residual_mix_alone_gives_market_figure() -> None:
    residual = market(400.0, source="AIB European residual mix 2023")
    result = scope2_emissions(
        3.6e6, pue=HYPERSCALE, location_factor=WORLD, residual_mix_factor=residual
    )
    assert result.market_co2e_g == pytest.approx(1.1 * 400.0)
    assert result.market_basis == "residual_mix"


def test_partial_instrument_falls_back_to_residual_mix() -> None:
    result = scope2_emissions(
        3.6e6,
        pue=HYPERSCALE,
        location_factor=WORLD,
        market_factor=market(0.0),
        market_coverage=0.5,
        residual_mix_factor=market(400.0),
    )
    assert result.market_co2e_g == pytest.approx(1.1 * (0.5 * 0.0 + 0.5 * 400.0))
    assert result.market_basis == "contractual+residual_mix"


def test_partial_instrument_without_residual_mix_is_not_available() -> None:
    result = scope2_emissions(
        3.6e6,
        pue=HYPERSCALE,
        location_factor=WORLD,
        market_factor=market(0.0),
        market_coverage=0.5,
    )
    assert result.market_co2e_g is None
    assert result.market_unavailable_reason is not None
    assert "50%" in result.market_unavailable_reason


def test_location_factor_is_never_used_as_market_factor() -> None:
    with pytest.raises(FactorKindError, match="market"):
        scope2_emissions(3.6e6, pue=HYPERSCALE, location_factor=WORLD, market_factor=WORLD)
    with pytest.raises(FactorKindError):
        scope2_emissions(3.6e6, pue=HYPERSCALE, location_factor=market(0.0))


def test_marginal_factor_is_refused_for_scope2_location_based() -> None:
    marginal = EmissionFactor(region="DE", intensity_g_per_kwh=600.0, kind="marginal", source="x")
    with pytest.raises(FactorKindError, match="location"):
        scope2_emissions(1.0, pue=HYPERSCALE, location_factor=marginal)


def test_coverage_without_instrument_is_refused() -> None:
    with pytest.raises(InvalidQuantity, match="market_coverage"):
        scope2_emissions(1.0, pue=HYPERSCALE, location_factor=WORLD, market_coverage=0.3)


def test_assumed_pue_and_factor_caveats_reach_the_notes() -> None:
    result = scope2_emissions(
        1.0, pue=default_pue("on_prem_unknown"), location_factor=default_emission_factor("US")
    )
    assert any("assumption" in n for n in result.notes)
    assert any("not re-checked" in n for n in result.notes)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_energy_is_refused(bad: float) -> None:
    with pytest.raises(InvalidQuantity, match="energy_j"):
        scope2_emissions(bad, pue=HYPERSCALE, location_factor=WORLD)


def test_pue_below_one_is_refused() -> None:
    with pytest.raises(InvalidQuantity, match="below 1"):
        Pue.measured(0.9, source="meter")
    assert Pue.measured(1.23, source="facility BMS 2024").value == 1.23


def test_factor_from_quantity_converts_and_checks_dimension() -> None:
    factor = EmissionFactor.from_quantity(
        "0.481 kgCO2e/kWh", region="WORLD", kind="location", source="Ember"
    )
    assert factor.intensity_g_per_kwh == pytest.approx(481.0)
    with pytest.raises(DimensionMismatch):
        EmissionFactor.from_quantity("481 J", region="WORLD", kind="location", source="x")


def test_factor_validity_window() -> None:
    factor = EmissionFactor(
        region="FR",
        intensity_g_per_kwh=56.0,
        kind="location",
        source="OWID",
        valid_from=date(2023, 1, 1),
        valid_to=date(2023, 12, 31),
    )
    ok = scope2_emissions(
        ONE_KWH_J, pue=default_pue("none"), location_factor=factor, at=date(2023, 6, 1)
    )
    assert ok.location_co2e_g == pytest.approx(56.0)
    with pytest.raises(FactorNotValid, match="2024-06-01"):
        scope2_emissions(1.0, pue=HYPERSCALE, location_factor=factor, at=date(2024, 6, 1))
    with pytest.raises(InvalidQuantity, match="valid_to"):
        EmissionFactor(
            region="FR",
            intensity_g_per_kwh=1.0,
            kind="location",
            source="x",
            valid_from=date(2024, 1, 1),
            valid_to=date(2023, 1, 1),
        )


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(FactorKindError):
        EmissionFactor(region="FR", intensity_g_per_kwh=1.0, kind="green", source="x")  # type: ignore[arg-type]


def test_vectorised_kernel_matches_scalar_path() -> None:
    energy_j = np.array([[0.0, 3.6e6], [7.2e6, 1.0e3]])
    grams = operational_co2e_g(energy_j, intensity_g_per_kwh=481.0, pue=1.1)
    assert grams.shape == energy_j.shape
    for e, g in zip(energy_j.ravel(), grams.ravel(), strict=True):
        expected = scope2_emissions(float(e), pue=HYPERSCALE, location_factor=WORLD)
        assert g == pytest.approx(expected.location_co2e_g)


@settings(max_examples=60, deadline=None)
@given(
    energy_j=st.floats(0.0, 1e15),
    other_j=st.floats(0.0, 1e15),
    scale=st.floats(0.0, 1e3),
    intensity=st.floats(0.0, 2000.0),
)
def test_carbon_is_linear_in_energy(
    energy_j: float, other_j: float, scale: float, intensity: float
) -> None:
    factor = EmissionFactor(region="R", intensity_g_per_kwh=intensity, kind="location", source="t")
    market_factor = market(intensity / 2)

    def both(e: float) -> tuple[float, float]:
        r = scope2_emissions(e, pue=HYPERSCALE, location_factor=factor, market_factor=market_factor)
        assert r.market_co2e_g is not None
        return r.location_co2e_g, r.market_co2e_g

    base, extra = both(energy_j), both(other_j)
    scaled, summed = both(energy_j * scale), both(energy_j + other_j)
    for i in range(2):
        assert scaled[i] == pytest.approx(scale * base[i], rel=1e-12, abs=1e-9)
        assert summed[i] == pytest.approx(base[i] + extra[i], rel=1e-12, abs=1e-9)
    assert base[0] == pytest.approx(energy_j / J_PER_KWH * 1.1 * intensity, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# SCI


def spec_example_embodied() -> EmbodiedShare:
    # SCI spec: TE 1000 kg, 4-year life, 1 h reserved, all resources -> 1e6 / 35040 ≈ 28.54 g.
    return EmbodiedShare(
        total_embodied_g=1.0e6,
        time_reserved_s=3600.0,
        expected_lifespan_s=4 * YEAR_S,
        source="SCI specification worked example",
    )


def test_sci_spec_worked_example_embodied() -> None:
    share = spec_example_embodied()
    assert share.embodied_g == pytest.approx(1.0e6 / (4 * 365 * 24))
    assert share.embodied_g == pytest.approx(28.5, abs=0.05)
    result = software_carbon_intensity(
        energy_j=0.0,
        pue=HYPERSCALE,
        intensity=WORLD,
        embodied=share,
        functional_unit=FunctionalUnit("training run"),
    )
    assert result.sci_g_per_unit == pytest.approx(share.embodied_g)


def test_sci_embodied_from_quantities() -> None:
    share = EmbodiedShare.from_quantities(
        "1000 kgCO2e", time_reserved="1 h", expected_lifespan="35040 h", source="spec"
    )
    assert share.embodied_g == pytest.approx(1.0e6 / 35040)


def test_sci_full_formula_per_functional_unit() -> None:
    # (E·I + M) per R with E = 1.1 kWh, I = 481, M = 2 of 8 GPUs of the spec example, R = 1000.
    embodied = EmbodiedShare(
        total_embodied_g=1.0e6,
        time_reserved_s=3600.0,
        expected_lifespan_s=4 * YEAR_S,
        resources_reserved=2,
        total_resources=8,
        source="spec",
        label="8-GPU node",
    )
    result = software_carbon_intensity(
        energy_j=3.6e6,
        pue=HYPERSCALE,
        intensity=WORLD,
        embodied=[embodied],
        functional_unit=FunctionalUnit("token", 1000),
        boundary="GPU node incl. facility",
    )
    m = 1.0e6 / 35040 * 0.25
    assert result.embodied_g == pytest.approx(m)
    assert result.operational_g == pytest.approx(529.1)
    assert result.total_g == pytest.approx(529.1 + m)
    assert result.sci_g_per_unit == pytest.approx((529.1 + m) / 1000)
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert record["per"] == "token"
    assert record["embodied"][0]["resource_share"] == 0.25
    assert not any("understated" in n for n in result.notes)


def test_sci_refuses_market_factor() -> None:
    with pytest.raises(FactorKindError, match=r"SCI.*market") as info:
        software_carbon_intensity(
            energy_j=3.6e6,
            pue=HYPERSCALE,
            intensity=market(0.0),
            embodied=[],
            functional_unit=FunctionalUnit("training run"),
        )
    assert isinstance(info.value, ValueError)


def test_sci_accepts_marginal_intensity() -> None:
    marginal = EmissionFactor(
        region="DE", intensity_g_per_kwh=700.0, kind="marginal", source="WattTime MOER"
    )
    result = software_carbon_intensity(
        energy_j=3.6e6,
        pue=default_pue("none"),
        intensity=marginal,
        embodied=[],
        functional_unit=FunctionalUnit("batch job", 2),
    )
    assert result.sci_g_per_unit == pytest.approx(350.0)
    assert any("understated" in n for n in result.notes)


def test_embodied_share_refuses_impossible_shares() -> None:
    with pytest.raises(InvalidQuantity, match="lifespan"):
        EmbodiedShare(
            total_embodied_g=1.0, time_reserved_s=10.0, expected_lifespan_s=5.0, source="x"
        )
    with pytest.raises(InvalidQuantity, match="resources"):
        EmbodiedShare(
            total_embodied_g=1.0,
            time_reserved_s=1.0,
            expected_lifespan_s=5.0,
            resources_reserved=9,
            total_resources=8,
            source="x",
        )


def test_functional_unit_needs_positive_count() -> None:
    with pytest.raises(InvalidQuantity):
        FunctionalUnit("token", 0)
