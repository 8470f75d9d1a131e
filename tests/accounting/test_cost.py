"""Cost: energy at a tariff, hardware amortisation or rental, and explicit currency conversion."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pytest

from thermoledger.accounting.carbon import default_pue
from thermoledger.accounting.cost import (
    HOURS_PER_YEAR,
    CloudPrice,
    CurrencyMismatch,
    ExchangeRate,
    OwnedHardware,
    PriceNotValid,
    Tariff,
    energy_cost_usd,
    run_cost,
)
from thermoledger.accounting.errors import AccountingError, DimensionMismatch, InvalidQuantity

TEN_KWH_J = 10 * 3.6e6
TARIFF = Tariff(usd_per_kwh=0.12, source="utility invoice, 2025-01")
EUR_RATE = ExchangeRate(currency="EUR", usd_per_unit=1.08, as_of=date(2025, 1, 2), source="ECB")


def test_energy_cost_hand_example() -> None:
    cost = run_cost(energy_j=TEN_KWH_J, tariff=TARIFF)
    assert cost.energy_usd == pytest.approx(1.20)
    assert cost.total_usd == pytest.approx(1.20)
    assert cost.hardware_usd is None
    assert cost.pue is None
    assert any("no PUE" in n for n in cost.notes)


def test_energy_cost_with_pue_bills_facility_energy() -> None:
    cost = run_cost(energy_j=TEN_KWH_J, tariff=TARIFF, pue=default_pue("typical"))
    assert cost.energy_billed_j == pytest.approx(TEN_KWH_J * 1.56)
    assert cost.energy_usd == pytest.approx(1.20 * 1.56)


def test_amortisation_30k_over_5_years_for_one_device_hour() -> None:
    gpu = OwnedHardware.over_years(30_000.0, 5, source="purchase order")
    assert HOURS_PER_YEAR == 8760.0
    assert gpu.usd_per_device_hour == pytest.approx(30_000.0 / (5 * 8760))
    cost = run_cost(energy_j=TEN_KWH_J, tariff=TARIFF, hardware=gpu, device_hours=1.0)
    assert cost.hardware_usd == pytest.approx(0.684931506849315)
    assert cost.total_usd == pytest.approx(1.20 + 0.684931506849315)
    record = json.loads(json.dumps(cost.to_dict(), allow_nan=False))
    assert record["hardware"]["basis"] == "amortised"
    assert record["hardware"]["lifetime_h"] == pytest.approx(43_800.0)


def test_utilisation_spreads_price_over_busy_hours_only() -> None:
    gpu = OwnedHardware(purchase_usd=30_000.0, lifetime_h=43_800.0, source="po", utilisation=0.5)
    assert gpu.usd_per_device_hour == pytest.approx(2 * 30_000.0 / 43_800.0)
    with pytest.raises(InvalidQuantity, match="utilisation"):
        OwnedHardware(purchase_usd=1.0, lifetime_h=1.0, source="po", utilisation=0.0)


def test_cloud_price_and_double_count_warning() -> None:
    price = CloudPrice(usd_per_device_hour=2.5, source="provider on-demand list price")
    alone = run_cost(hardware=price, device_hours=8.0)
    assert alone.hardware_usd == pytest.approx(20.0)
    assert alone.energy_usd is None
    assert alone.notes == ()
    both = run_cost(energy_j=TEN_KWH_J, tariff=TARIFF, hardware=price, device_hours=8.0)
    assert both.total_usd == pytest.approx(21.2)
    assert any("twice" in n for n in both.notes)


def test_hardware_price_needs_device_hours() -> None:
    with pytest.raises(InvalidQuantity, match="device_hours"):
        run_cost(hardware=CloudPrice(usd_per_device_hour=1.0, source="x"))


def test_unpriced_parts_are_named_not_silently_zero() -> None:
    cost = run_cost(energy_j=TEN_KWH_J, device_hours=3.0)
    assert cost.energy_usd is None
    assert cost.hardware_usd is None
    assert len(cost.notes) == 2


def test_tariff_from_quantity_accepts_usd_only() -> None:
    assert Tariff.from_quantity("120 USD/MWh", source="x").usd_per_kwh == pytest.approx(0.12)
    with pytest.raises(InvalidQuantity, match="EUR"):
        Tariff.from_quantity("0.30 EUR/kWh", source="x")
    with pytest.raises(DimensionMismatch):
        Tariff.from_quantity("0.12 USD/s", source="x")


def test_foreign_currency_needs_an_explicit_dated_rate() -> None:
    tariff = Tariff.in_currency(0.25, currency="EUR", rate=EUR_RATE, source="Stadtwerke 2025")
    assert tariff.usd_per_kwh == pytest.approx(0.27)
    assert tariff.exchange_rate == EUR_RATE
    assert tariff.to_dict()["exchange_rate"]["as_of"] == "2025-01-02"
    hardware = OwnedHardware.in_currency(
        27_000.0, currency="EUR", rate=EUR_RATE, lifetime_h=43_800.0, source="po"
    )
    assert hardware.purchase_usd == pytest.approx(29_160.0)
    cloud = CloudPrice.in_currency(2.0, currency="EUR", rate=EUR_RATE, source="eu cloud")
    assert cloud.usd_per_device_hour == pytest.approx(2.16)


def test_mismatched_or_undated_rates_are_refused() -> None:
    with pytest.raises(CurrencyMismatch, match="GBP") as info:
        Tariff.in_currency(0.25, currency="GBP", rate=EUR_RATE, source="x")
    assert isinstance(info.value, AccountingError)
    with pytest.raises(InvalidQuantity, match="as_of"):
        ExchangeRate(currency="EUR", usd_per_unit=1.08, as_of="2025-01-02")  # type: ignore[arg-type]
    with pytest.raises(InvalidQuantity, match="USD"):
        ExchangeRate(currency="USD", usd_per_unit=1.0, as_of=date(2025, 1, 2))
    with pytest.raises(InvalidQuantity, match="ISO 4217"):
        ExchangeRate(currency="euro", usd_per_unit=1.08, as_of=date(2025, 1, 2))
    with pytest.raises(InvalidQuantity, match="usd_per_unit"):
        ExchangeRate(currency="EUR", usd_per_unit=0.0, as_of=date(2025, 1, 2))


def test_price_validity_window() -> None:
    tariff = Tariff(
        usd_per_kwh=0.12, source="x", valid_from=date(2025, 1, 1), valid_to=date(2025, 12, 31)
    )
    assert run_cost(energy_j=TEN_KWH_J, tariff=tariff, at=date(2025, 3, 1)).energy_usd == (
        pytest.approx(1.2)
    )
    with pytest.raises(PriceNotValid, match="2026-01-01"):
        run_cost(energy_j=TEN_KWH_J, tariff=tariff, at=date(2026, 1, 1))


def test_vectorised_energy_cost() -> None:
    energy_j = np.array([0.0, TEN_KWH_J, 2 * TEN_KWH_J])
    usd = energy_cost_usd(energy_j, usd_per_kwh=0.12, pue=1.5)
    np.testing.assert_allclose(usd, [0.0, 1.8, 3.6])
    with pytest.raises(InvalidQuantity, match="energy_j"):
        energy_cost_usd([-1.0], usd_per_kwh=0.12)


@pytest.mark.parametrize("bad", [-0.01, float("nan")])
def test_bad_tariff_is_refused(bad: float) -> None:
    with pytest.raises(InvalidQuantity, match="usd_per_kwh"):
        Tariff(usd_per_kwh=bad, source="x")
