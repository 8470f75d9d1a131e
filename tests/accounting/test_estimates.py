"""`accounting.estimates`: the product, the band rule, and refusals that name the field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from thermoledger.accounting.errors import AccountingError, InvalidQuantity
from thermoledger.accounting.estimates import (
    EstimateSource,
    Interval,
    InvalidEstimate,
    estimate_run,
    total,
)

SOURCE = EstimateSource("unit test", document="none", page="1", note="analytic")


def test_devices_times_duration_times_power() -> None:
    # 8 devices × 1 h × 300 W = 2.4 kWh; × PUE 1.5 = 3.6 kWh; × 400 g/kWh = 1440 g.
    e = estimate_run(
        source=SOURCE,
        devices=8,
        duration_s=3600.0,
        mean_power_w=300.0,
        pue=1.5,
        intensity_g_per_kwh=400.0,
    )
    assert e.it_energy_j.value == pytest.approx(8 * 3600 * 300)
    assert e.facility_energy_kwh == pytest.approx(3.6)
    assert e.co2e_g is not None
    assert e.co2e_g.value == pytest.approx(1440.0)
    assert e.device_time_s is not None
    assert e.device_time_s.value == 8 * 3600.0
    assert e.power_basis == "measured"
    assert not e.it_energy_j.stated  # nothing carried a range


def test_device_hours_and_tdp_times_utilisation() -> None:
    e = estimate_run(source=SOURCE, device_time_s=7200.0, tdp_w=400.0, utilisation=0.5)
    assert e.mean_power_w is not None
    assert e.mean_power_w.value == 200.0
    assert e.it_energy_j.value == pytest.approx(7200 * 200)
    assert e.pue.value == 1.0
    assert not e.pue_stated
    assert e.co2e_g is None


def test_a_stated_energy_times_pue_and_intensity() -> None:
    # 1 kWh ±10 % stated by the source; × PUE 1.5 = 1.5 kWh; × 400 g/kWh = 600 g.
    e = estimate_run(
        source=SOURCE,
        energy_j=Interval.of(3.6e6, rel=0.1),
        pue=1.5,
        intensity_g_per_kwh=400.0,
        device="1 x NVIDIA A100-SXM4-40GB",
    )
    assert e.energy_basis == "stated"
    assert (e.it_energy_j.low, e.it_energy_j.high) == pytest.approx((3.24e6, 3.96e6))
    assert e.facility_energy_kwh == pytest.approx(1.5)
    assert e.co2e_g is not None
    assert (e.co2e_g.value, e.co2e_g.low, e.co2e_g.high) == pytest.approx((600.0, 540.0, 660.0))
    assert (e.device_time_s, e.mean_power_w, e.power_basis) == (None, None, None)
    assert e.unstated == ("pue", "intensity")
    record = e.to_dict()
    assert record["energy_basis"] == "stated"
    assert record["inputs"]["energy_j"] == e.it_energy_j.to_dict()
    assert record["inputs"]["device_time_s"] is None
    assert record["inputs"]["device"] == "1 x NVIDIA A100-SXM4-40GB"


def test_a_device_time_record_has_no_energy_basis_key() -> None:
    """Records of device-time estimates stay as they were ledgered before stated energies
    existed, so posting one of them again still compares equal (no new entries)."""
    record = estimate_run(source=SOURCE, device_time_s=3600.0, mean_power_w=300.0).to_dict()
    assert "energy_basis" not in record
    assert "energy_j" not in record["inputs"]


def test_band_is_the_product_of_the_ends() -> None:
    e = estimate_run(
        source=SOURCE,
        devices=10,
        duration_s=Interval.of(100.0, rel=0.1),
        tdp_w=Interval.of(300.0, low=250.0, high=300.0),
        utilisation=Interval.of(0.5, low=0.4, high=0.7),
        pue=Interval.of(1.2, low=1.1, high=1.4),
        intensity_g_per_kwh=Interval.of(400.0, rel=0.25),
    )
    assert e.it_energy_j.low == pytest.approx(10 * 90 * 250 * 0.4)
    assert e.it_energy_j.high == pytest.approx(10 * 110 * 300 * 0.7)
    assert e.facility_energy_j.low == pytest.approx(10 * 90 * 250 * 0.4 * 1.1)
    assert e.facility_energy_j.high == pytest.approx(10 * 110 * 300 * 0.7 * 1.4)
    assert e.co2e_g is not None
    assert e.co2e_g.low == pytest.approx(10 * 90 * 250 * 0.4 * 1.1 / 3.6e6 * 300)
    assert e.co2e_g.high == pytest.approx(10 * 110 * 300 * 0.7 * 1.4 / 3.6e6 * 500)
    assert e.unstated == ("devices",)
    record = e.to_dict()
    assert record["method"] == "estimate"
    assert record["provenance"] == {
        "source": "unit test",
        "document": "none",
        "page": "1",
        "note": "analytic",
    }
    assert "interval arithmetic" in record["band"]


def test_catalog_tdp_by_device_name() -> None:
    e = estimate_run(
        source=SOURCE, device_time_s=3600.0, device="Tesla V100-SXM2-32GB", utilisation=1.0
    )
    assert e.catalog_id == "nvidia-v100-sxm2-32gb"
    assert e.tdp_w is not None
    assert e.tdp_w.value == 300.0


def test_total_adds_ranges() -> None:
    a = estimate_run(
        source=SOURCE,
        device_time_s=Interval.of(10.0, rel=0.5),
        mean_power_w=1.0,
        intensity_g_per_kwh=1.0,
    )
    b = estimate_run(source=SOURCE, device_time_s=20.0, mean_power_w=1.0)
    it_j, facility_j, co2e = total([a, b])
    assert (it_j.value, it_j.low, it_j.high) == (30.0, 25.0, 35.0)
    assert facility_j.value == 30.0
    assert co2e is None  # b has no intensity


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"device_time_s": -3600.0, "mean_power_w": 300.0}, "device_time"),
        ({"device_time_s": 0.0, "mean_power_w": 300.0}, "device_time"),
        ({"device_time_s": math.inf, "mean_power_w": 300.0}, "device_time"),
        ({"device_time_s": 3600.0, "mean_power_w": math.nan}, "mean_power"),
        ({"device_time_s": 3600.0, "mean_power_w": True}, "mean_power"),
        ({"device_time_s": 3600.0, "tdp_w": 300.0, "utilisation": 1.5}, "utilisation"),
        ({"device_time_s": 3600.0, "tdp_w": 300.0, "utilisation": 0.0}, "utilisation"),
        (
            {
                "device_time_s": 3600.0,
                "tdp_w": 300.0,
                "utilisation": Interval.of(0.9, low=0.8, high=1.2),
            },
            "utilisation",
        ),
        ({"device_time_s": 3600.0, "device": "Quadro X", "utilisation": 0.5}, "device"),
        ({"device_time_s": 3600.0, "utilisation": 0.5}, "tdp"),
        ({"device_time_s": 3600.0}, "mean_power"),
        ({"mean_power_w": 300.0}, "device_time"),
        ({"devices": 8, "mean_power_w": 300.0}, "duration"),
        ({"duration_s": 60.0, "mean_power_w": 300.0}, "devices"),
        ({"device_time_s": 1.0, "devices": 8, "duration_s": 1.0, "mean_power_w": 1.0}, "devices"),
        ({"device_time_s": 1.0, "mean_power_w": 1.0, "utilisation": 0.5}, "utilisation"),
        ({"device_time_s": 1.0, "mean_power_w": 1.0, "pue": 0.9}, "pue"),
        ({"device_time_s": 1.0, "mean_power_w": 1.0, "pue": Interval(1.1, 0.95, 1.2)}, "pue"),
        ({"device_time_s": 1.0, "mean_power_w": 1.0, "intensity_g_per_kwh": -1.0}, "intensity"),
        ({"device_time_s": Interval(10.0, 11.0, 12.0), "mean_power_w": 1.0}, "device_time.low"),
        ({"device_time_s": Interval(10.0, 9.0, 8.0), "mean_power_w": 1.0}, "device_time.high"),
        ({"energy_j": 0.0}, "energy"),
        ({"energy_j": -1.0}, "energy"),
        ({"energy_j": math.nan}, "energy"),
        ({"energy_j": 1.0, "devices": 8}, "devices"),
        ({"energy_j": 1.0, "mean_power_w": 300.0}, "mean_power"),
        ({"energy_j": 1.0, "device_time_s": 3600.0}, "device_time"),
        ({"energy_j": 1.0, "pue": 0.9}, "pue"),
    ],
)
def test_bad_inputs_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEstimate) as info:
        estimate_run(source=SOURCE, **kwargs)
    assert info.value.field == field
    assert isinstance(info.value, InvalidQuantity)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AccountingError)


def test_interval_rel_checks() -> None:
    with pytest.raises(InvalidEstimate) as info:
        Interval.of(1.0, rel=1.5, field="pue")
    assert info.value.field == "pue.rel"
    with pytest.raises(InvalidEstimate):
        Interval.of(1.0, rel=0.1, low=0.9)


def test_a_source_is_required() -> None:
    with pytest.raises(InvalidEstimate) as info:
        EstimateSource("  ")
    assert info.value.field == "provenance.source"
