"""Published training footprints, reproduced from their published inputs within 0.5 %.

Each case in `tests.support.published.CASES` cites its source (title, year, table/section); the
inputs are converted by the unit registry and passed to `accounting.estimates.estimate_run`,
the public accounting function. Carbon is energy × location-based intensity with each
publication's own PUE (none where it counts dynamic consumption only, or states none).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.published import CASES, LLAMA2_INTENSITY, LLAMA31_INTENSITY, PublishedCase
from thermoledger.accounting.estimates import (
    EstimateSource,
    Interval,
    RunEstimate,
    estimate_run,
    total,
)
from thermoledger.accounting.units import magnitude_in


def _estimate(inputs: dict[str, Any], **overrides: Any) -> RunEstimate:
    """The API-style inputs of a case (quantities as text) through `estimate_run`."""
    given = {**inputs, **overrides}
    kwargs: dict[str, Any] = {}
    if "device_hours" in given:
        kwargs["device_time_s"] = magnitude_in(given["device_hours"], "s")
    if "devices" in given:
        kwargs["devices"] = float(given["devices"])
    if "duration" in given:
        kwargs["duration_s"] = magnitude_in(given["duration"], "s")
    if "mean_power" in given:
        kwargs["mean_power_w"] = magnitude_in(given["mean_power"], "W")
    if "utilisation" in given:
        kwargs["utilisation"] = given["utilisation"]
    if "device" in given:
        kwargs["device"] = given["device"]
    if "pue" in given:
        kwargs["pue"] = given["pue"]
    if "intensity" in given:
        kwargs["intensity_g_per_kwh"] = magnitude_in(given["intensity"], "gCO2e/kWh")
    return estimate_run(source=EstimateSource("test", note=given.get("note")), **kwargs)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_published_figure(case: PublishedCase) -> None:
    estimate = _estimate(case.inputs)
    assert estimate.method == "estimate"
    if case.energy is not None:
        text, boundary = case.energy
        published_j = magnitude_in(text, "J")
        got = estimate.facility_energy_j if boundary == "facility" else estimate.it_energy_j
        assert got.value == pytest.approx(published_j, rel=case.rel), case.citation
    if "energy_exact" in case.extra:
        exact_j = magnitude_in(case.extra["energy_exact"], "J")
        assert estimate.it_energy_j.value == pytest.approx(exact_j, rel=1e-9)
    if case.co2e is not None:
        assert estimate.co2e_g is not None
        published_g = magnitude_in(case.co2e, "gCO2e")
        assert estimate.co2e_g.value == pytest.approx(published_g, rel=case.rel), case.citation


def test_bloom_and_llama31_take_the_tdp_from_the_catalog() -> None:
    # BLOOM: "TDP of the A100, 400 W", at full utilisation; Llama 3.1: H100-80GB, TDP 700 W.
    bloom = _estimate(next(c for c in CASES if c.id == "bloom").inputs)
    assert bloom.power_basis == "tdp_x_utilisation"
    assert bloom.catalog_id == "nvidia-a100-sxm4-80gb"
    assert bloom.mean_power_w is not None
    assert bloom.mean_power_w.value == 400.0
    llama = _estimate(next(c for c in CASES if c.id == "llama31-405b").inputs)
    assert llama.catalog_id == "nvidia-h100-sxm5-80gb"
    assert llama.mean_power_w is not None
    assert llama.mean_power_w.value == 700.0


def test_llama2_total_is_the_sum_of_the_models() -> None:
    """Touvron et al. 2023, Table 2 (and the model card): Total 3,311,616 GPU-hours, 539.00
    tCO2eq. The intensity was derived from this total, so the check is that the four rows'
    estimates add up to it through `total` (and each row is within 0.5 %, above)."""
    rows = [_estimate(c.inputs) for c in CASES if c.id.startswith("llama2-")]
    device_time = [r.device_time_s for r in rows]
    assert all(t is not None for t in device_time)
    assert sum(t.value for t in device_time if t is not None) == pytest.approx(3_311_616 * 3600.0)
    it_j, _, co2e_g = total(rows)
    assert it_j.value == pytest.approx(1_272_729.6 * 3.6e6, rel=1e-12)
    assert co2e_g is not None
    assert co2e_g.value == pytest.approx(539.00e6, rel=0.005)


# Llama 3.1 model card rows other than 405B print their inputs to 2-3 significant figures
# (8B: 1.46M GPU-hours, 420 t; 70B: 7.0M, 2,040 t), coarser than 0.5 %: with the one intensity
# the card's total implies, 8B comes out at 423.1 t (+0.75 %) and 70B at 2,028.8 t (-0.55 %).
# Those two are checked with the band instead: the GPU-hours carry half a unit of their last
# printed digit, and the published figure (± half a unit of its own last digit) must overlap
# the estimate's range. The total and 405B, printed to 3-4 figures, meet 0.5 % (above and here).
@pytest.mark.parametrize(
    ("hours", "half_unit_h", "published_t", "half_unit_t"),
    [(1.46e6, 0.005e6, 420.0, 5.0), (7.0e6, 0.05e6, 2040.0, 5.0)],
    ids=["llama31-8b", "llama31-70b"],
)
def test_llama31_rows_agree_within_the_cards_printed_precision(
    hours: float, half_unit_h: float, published_t: float, half_unit_t: float
) -> None:
    device_time = Interval.of(
        hours * 3600.0, low=(hours - half_unit_h) * 3600.0, high=(hours + half_unit_h) * 3600.0
    )
    estimate = estimate_run(
        source=EstimateSource("Meta 2024, Llama 3.1 model card"),
        device_time_s=device_time,
        device="H100 SXM5 80GB",
        utilisation=1.0,
        intensity_g_per_kwh=magnitude_in(LLAMA31_INTENSITY, "gCO2e/kWh"),
    )
    assert estimate.co2e_g is not None
    low_t, high_t = estimate.co2e_g.low / 1e6, estimate.co2e_g.high / 1e6
    assert low_t <= published_t + half_unit_t
    assert high_t >= published_t - half_unit_t
    assert estimate.unstated == ("tdp", "utilisation", "intensity")


def test_llama31_total() -> None:
    """Meta 2024, Llama 3.1 model card: 39.3M GPU-hours in total, 11,390 t location-based; the
    three rows' estimates add up to it within 0.5 %."""
    rows = [
        _estimate(
            {
                "device_hours": f"{h} h",
                "device": "H100 SXM5 80GB",
                "utilisation": 1.0,
                "intensity": LLAMA31_INTENSITY,
            }
        )
        for h in (1.46e6, 7.0e6, 30.84e6)
    ]
    _, _, co2e_g = total(rows)
    assert co2e_g is not None
    assert co2e_g.value == pytest.approx(11_390e6, rel=0.005)


def test_strubell_transformer_base_within_its_printed_digits() -> None:
    """Strubell et al. 2019, Table 3, Transformer_base (P100x8, 1415.78 W, 12 h): printed as
    27 kWh-PUE and 26 lbs, whole numbers, so 0.5 % is finer than the table. The formula gives
    26.84 kWh and 25.61 lbs, which round to the printed figures."""
    estimate = _estimate(
        {
            "devices": 1,
            "duration": "12 h",
            "mean_power": "1415.78 W",
            "pue": 1.58,
            "intensity": "0.954 lbCO2e/kWh",
        }
    )
    assert round(estimate.facility_energy_kwh) == 27
    assert estimate.co2e_g is not None
    assert round(magnitude_in(f"{estimate.co2e_g.value!r} gCO2e", "lbCO2e")) == 26


def test_strubell_formula_term_by_term() -> None:
    """p_t = 1.58·t·(p_c + p_r + g·p_g)/1000 kWh and CO2e = 0.954·p_t lbs (Strubell et al. 2019,
    eqs. 1-2): the estimate is the same product for any split of the node's power."""
    p_c, p_r, p_g, g, t = 120.0, 30.0, 250.0, 8, 84.0
    estimate = _estimate(
        {
            "devices": 1,
            "duration": f"{t} h",
            "mean_power": f"{p_c + p_r + g * p_g} W",
            "pue": 1.58,
            "intensity": "0.954 lbCO2e/kWh",
        }
    )
    p_t = 1.58 * t * (p_c + p_r + g * p_g) / 1000
    assert estimate.facility_energy_kwh == pytest.approx(p_t, rel=1e-12)
    assert estimate.co2e_g is not None
    assert estimate.co2e_g.value == pytest.approx(0.954 * p_t * 453.59237, rel=1e-12)


def test_llama2_intensity_is_derived_not_stated() -> None:
    # The derivation the cases' comment states: 539.00 t over 1,272,729.6 kWh.
    assert magnitude_in(LLAMA2_INTENSITY, "gCO2e/kWh") == pytest.approx(423.50, abs=0.01)
