"""Cost accounting in USD: energy at a tariff, plus hardware time (amortised or rented).

The model
---------
- **Energy**: ``energy_usd = energy_j / 3.6e6 × PUE × usd_per_kwh``. The PUE is optional: a
  tariff billed on facility energy (colocation, on-prem) wants one; without it the metered IT
  energy is priced as it is, and the breakdown says so.
- **Hardware**, per device-hour, one of:
  `OwnedHardware` — straight-line amortisation, ``purchase_usd / (lifetime_h × utilisation)``
  (``utilisation`` = the fraction of its life the device is expected to be busy with billable
  work; 1.0, the default, spreads the price over every hour of the lifetime);
  `CloudPrice` — a rental price per device-hour. Cloud prices normally include power and
  facility, so pricing energy on top of a cloud price is flagged as a likely double count.
- **Currency**: USD only. A price in another currency enters only through an explicit, dated
  `ExchangeRate` (``in_currency`` constructors), and the rate is carried into the breakdown. No
  currency is ever converted implicitly, and the unit registry has no other currency to convert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _econ_checks as chk
from .carbon import J_PER_KWH, YEAR_S, Pue
from .errors import AccountingError, InvalidQuantity

__all__ = [
    "HOURS_PER_YEAR",
    "CloudPrice",
    "CostBreakdown",
    "CurrencyMismatch",
    "ExchangeRate",
    "HardwarePrice",
    "OwnedHardware",
    "PriceNotValid",
    "Tariff",
    "energy_cost_usd",
    "run_cost",
]

#: Hours in a 365-day year (the convention `accounting.carbon.YEAR_S` uses too).
HOURS_PER_YEAR = YEAR_S / 3600.0

_CURRENCY_CODE = re.compile(r"[A-Z]{3}")


class CurrencyMismatch(ValueError, AccountingError):
    """A price in one currency was paired with an exchange rate for another."""


class PriceNotValid(ValueError, AccountingError):
    """A tariff or price's validity window does not cover the date being accounted."""


@dataclass(frozen=True, slots=True)
class ExchangeRate:
    """An explicit, dated conversion from one currency to USD.

    Attributes:
        currency: ISO 4217 code of the foreign currency (``"EUR"``); not ``"USD"``.
        usd_per_unit: USD per one unit of ``currency`` (> 0).
        as_of: The date the rate applies to.
        source: Where the rate comes from.
    """

    currency: str
    usd_per_unit: float
    as_of: date
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not _CURRENCY_CODE.fullmatch(self.currency):
            raise InvalidQuantity(
                f"currency must be an ISO 4217 code such as 'EUR', got {self.currency!r}",
                field="currency",
            )
        if self.currency == "USD":
            raise InvalidQuantity("USD needs no exchange rate", field="currency")
        if not isinstance(self.as_of, date):
            raise InvalidQuantity(f"as_of must be a date, got {self.as_of!r}", field="as_of")
        object.__setattr__(self, "usd_per_unit", chk.positive(self.usd_per_unit, "usd_per_unit"))

    def to_usd(self, amount: float, currency: str) -> float:
        """Convert ``amount`` of ``currency`` to USD.

        Raises:
            CurrencyMismatch: ``currency`` is not the currency of this rate.
        """
        if currency != self.currency:
            raise CurrencyMismatch(
                f"an amount in {currency!r} cannot be converted with a {self.currency}→USD rate"
            )
        return chk.finite(amount, "amount") * self.usd_per_unit

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "currency": self.currency,
            "usd_per_unit": self.usd_per_unit,
            "as_of": self.as_of.isoformat(),
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class Tariff:
    """An electricity price with its provenance.

    Attributes:
        usd_per_kwh: Price per kWh, USD (≥ 0).
        source: Where the price comes from.
        region: Where it applies, if stated.
        valid_from: First day it applies, if time-bounded.
        valid_to: Last day it applies, if time-bounded.
        exchange_rate: The rate used when the price was given in another currency.
    """

    usd_per_kwh: float
    source: str
    region: str | None = None
    valid_from: date | None = None
    valid_to: date | None = None
    exchange_rate: ExchangeRate | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "usd_per_kwh", chk.non_negative(self.usd_per_kwh, "usd_per_kwh"))
        chk.non_empty(self.source, "tariff.source")
        chk.check_window(self.valid_from, self.valid_to, "tariff.valid_to")

    @classmethod
    def from_quantity(
        cls,
        price: Any,
        *,
        source: str,
        region: str | None = None,
        valid_from: date | None = None,
        valid_to: date | None = None,
    ) -> Tariff:
        """Build from an edge quantity in USD per energy (``"0.12 USD/kWh"``, ``"120 USD/MWh"``).

        Raises:
            DimensionMismatch: Not currency per energy.
            InvalidQuantity: Malformed quantity, or a unit the registry lacks (another currency).
        """
        from .units import magnitude_in  # pint stays out of this module's import

        return cls(
            usd_per_kwh=magnitude_in(price, "USD/kWh", field="tariff"),
            source=source,
            region=region,
            valid_from=valid_from,
            valid_to=valid_to,
        )

    @classmethod
    def in_currency(
        cls,
        price_per_kwh: float,
        *,
        currency: str,
        rate: ExchangeRate,
        source: str,
        region: str | None = None,
        valid_from: date | None = None,
        valid_to: date | None = None,
    ) -> Tariff:
        """A tariff given in another currency per kWh, converted with an explicit rate.

        Raises:
            CurrencyMismatch: ``rate`` is for another currency.
        """
        return cls(
            usd_per_kwh=rate.to_usd(chk.non_negative(price_per_kwh, "price_per_kwh"), currency),
            source=source,
            region=region,
            valid_from=valid_from,
            valid_to=valid_to,
            exchange_rate=rate,
        )

    def covers(self, when: date) -> bool:
        """Whether the validity window (open ends unbounded) includes ``when``."""
        return chk.window_covers(self.valid_from, self.valid_to, when)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe provenance record."""
        return {
            "usd_per_kwh": self.usd_per_kwh,
            "source": self.source,
            "region": self.region,
            "valid_from": chk.iso(self.valid_from),
            "valid_to": chk.iso(self.valid_to),
            "exchange_rate": None if self.exchange_rate is None else self.exchange_rate.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class OwnedHardware:
    """A purchased device, amortised straight-line over its service life.

    Attributes:
        purchase_usd: Price of one device, USD (≥ 0).
        lifetime_h: Service life, hours (> 0).
        source: Where the price comes from.
        utilisation: Fraction of the lifetime the device is expected to do billable work, in
            (0, 1]; the price is spread over ``lifetime_h × utilisation`` device-hours.
        exchange_rate: The rate used when the price was given in another currency.
    """

    purchase_usd: float
    lifetime_h: float
    source: str
    utilisation: float = 1.0
    exchange_rate: ExchangeRate | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "purchase_usd", chk.non_negative(self.purchase_usd, "purchase"))
        object.__setattr__(self, "lifetime_h", chk.positive(self.lifetime_h, "lifetime_h"))
        utilisation = chk.fraction(self.utilisation, "utilisation")
        if utilisation == 0.0:
            raise InvalidQuantity("must be > 0", field="utilisation")
        object.__setattr__(self, "utilisation", utilisation)
        chk.non_empty(self.source, "hardware.source")

    @classmethod
    def over_years(
        cls, purchase_usd: float, years: float, *, source: str, utilisation: float = 1.0
    ) -> OwnedHardware:
        """Amortise ``purchase_usd`` over ``years`` of 365 days."""
        return cls(
            purchase_usd=purchase_usd,
            lifetime_h=chk.positive(years, "years") * HOURS_PER_YEAR,
            source=source,
            utilisation=utilisation,
        )

    @classmethod
    def in_currency(
        cls,
        price: float,
        *,
        currency: str,
        rate: ExchangeRate,
        lifetime_h: float,
        source: str,
        utilisation: float = 1.0,
    ) -> OwnedHardware:
        """A purchase price in another currency, converted with an explicit rate.

        Raises:
            CurrencyMismatch: ``rate`` is for another currency.
        """
        return cls(
            purchase_usd=rate.to_usd(chk.non_negative(price, "price"), currency),
            lifetime_h=lifetime_h,
            source=source,
            utilisation=utilisation,
            exchange_rate=rate,
        )

    @property
    def basis(self) -> Literal["amortised"]:
        """How the hourly price was obtained."""
        return "amortised"

    @property
    def usd_per_device_hour(self) -> float:
        """purchase_usd / (lifetime_h × utilisation), USD per device-hour."""
        return self.purchase_usd / (self.lifetime_h * self.utilisation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "basis": self.basis,
            "usd_per_device_hour": self.usd_per_device_hour,
            "purchase_usd": self.purchase_usd,
            "lifetime_h": self.lifetime_h,
            "utilisation": self.utilisation,
            "source": self.source,
            "exchange_rate": None if self.exchange_rate is None else self.exchange_rate.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class CloudPrice:
    """A rental price per device-hour (e.g. an on-demand GPU price).

    Attributes:
        usd_per_device_hour: Price, USD per device-hour (≥ 0).
        source: Where the price comes from (provider, instance type, region).
        valid_from: First day it applies, if time-bounded.
        valid_to: Last day it applies, if time-bounded.
        exchange_rate: The rate used when the price was given in another currency.
    """

    usd_per_device_hour: float
    source: str
    valid_from: date | None = None
    valid_to: date | None = None
    exchange_rate: ExchangeRate | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "usd_per_device_hour",
            chk.non_negative(self.usd_per_device_hour, "usd_per_device_hour"),
        )
        chk.non_empty(self.source, "cloud_price.source")
        chk.check_window(self.valid_from, self.valid_to, "cloud_price.valid_to")

    @classmethod
    def in_currency(
        cls,
        price_per_device_hour: float,
        *,
        currency: str,
        rate: ExchangeRate,
        source: str,
        valid_from: date | None = None,
        valid_to: date | None = None,
    ) -> CloudPrice:
        """A rental price in another currency, converted with an explicit rate.

        Raises:
            CurrencyMismatch: ``rate`` is for another currency.
        """
        return cls(
            usd_per_device_hour=rate.to_usd(
                chk.non_negative(price_per_device_hour, "price_per_device_hour"), currency
            ),
            source=source,
            valid_from=valid_from,
            valid_to=valid_to,
            exchange_rate=rate,
        )

    @property
    def basis(self) -> Literal["cloud"]:
        """How the hourly price was obtained."""
        return "cloud"

    def covers(self, when: date) -> bool:
        """Whether the validity window (open ends unbounded) includes ``when``."""
        return chk.window_covers(self.valid_from, self.valid_to, when)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "basis": self.basis,
            "usd_per_device_hour": self.usd_per_device_hour,
            "source": self.source,
            "valid_from": chk.iso(self.valid_from),
            "valid_to": chk.iso(self.valid_to),
            "exchange_rate": None if self.exchange_rate is None else self.exchange_rate.to_dict(),
        }


HardwarePrice: TypeAlias = OwnedHardware | CloudPrice


def energy_cost_usd(
    energy_j: ArrayLike, *, usd_per_kwh: float, pue: float = 1.0
) -> NDArray[np.float64]:
    """Vectorised energy cost: energy_j / 3.6e6 × PUE × usd_per_kwh.

    Args:
        energy_j: IT energy per element, J (any shape, ≥ 0).
        usd_per_kwh: Tariff, USD/kWh.
        pue: Facility overhead multiplier (≥ 1); 1.0 prices the IT energy as metered.

    Returns:
        Cost per element, USD, same shape as ``energy_j``.
    """
    energy = np.asarray(energy_j, dtype=np.float64)
    if not np.all(np.isfinite(energy)) or np.any(energy < 0.0):
        raise InvalidQuantity("must hold finite values ≥ 0", field="energy_j")
    price = chk.non_negative(usd_per_kwh, "usd_per_kwh")
    facility = chk.finite(pue, "pue")
    if facility < 1.0:
        raise InvalidQuantity(f"PUE cannot be below 1, got {facility!r}", field="pue")
    result: NDArray[np.float64] = energy / J_PER_KWH * facility * price
    return result


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """What a run cost, part by part, with the prices used.

    Attributes:
        energy_it_j: IT energy priced, J.
        energy_billed_j: Energy the tariff was applied to (IT × PUE when a PUE was given), J.
        pue: The PUE applied, or None when the IT energy was priced as metered.
        tariff: The tariff, or None when energy was not priced.
        energy_usd: Energy cost, USD, or None when no tariff was given.
        hardware: The hourly hardware price, or None.
        device_hours: Device-hours charged.
        hardware_usd: Hardware cost, USD, or None when no hardware price was given.
        notes: Parts left out and assumptions, for the reader.
    """

    energy_it_j: float
    energy_billed_j: float
    pue: Pue | None
    tariff: Tariff | None
    energy_usd: float | None
    hardware: HardwarePrice | None
    device_hours: float
    hardware_usd: float | None
    notes: tuple[str, ...] = ()

    @property
    def total_usd(self) -> float:
        """Sum of the parts that were priced, USD (see ``notes`` for those that were not)."""
        return (self.energy_usd or 0.0) + (self.hardware_usd or 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe breakdown."""
        return {
            "total_usd": self.total_usd,
            "energy_usd": self.energy_usd,
            "hardware_usd": self.hardware_usd,
            "energy_it_j": self.energy_it_j,
            "energy_billed_j": self.energy_billed_j,
            "energy_billed_kwh": self.energy_billed_j / J_PER_KWH,
            "pue": None if self.pue is None else self.pue.to_dict(),
            "tariff": None if self.tariff is None else self.tariff.to_dict(),
            "device_hours": self.device_hours,
            "hardware": None if self.hardware is None else self.hardware.to_dict(),
            "notes": list(self.notes),
        }


def run_cost(
    *,
    energy_j: float = 0.0,
    tariff: Tariff | None = None,
    pue: Pue | None = None,
    hardware: HardwarePrice | None = None,
    device_hours: float | None = None,
    at: date | None = None,
) -> CostBreakdown:
    """Price a run's energy and hardware time in USD.

    Args:
        energy_j: IT energy, J (≥ 0).
        tariff: Electricity price; without one the energy is not priced (and a note says so).
        pue: Facility overhead to bill on; None prices the metered IT energy as it is.
        hardware: Hourly hardware price (amortised purchase or cloud rental).
        device_hours: Device-hours used (devices × hours); required with ``hardware``.
        at: Date being accounted; time-bounded prices must cover it.

    Returns:
        The breakdown; ``total_usd`` sums the priced parts.

    Raises:
        InvalidQuantity: Bad numbers, or ``hardware`` without ``device_hours``.
        PriceNotValid: ``at`` lies outside a price's validity window.
    """
    energy_it_j = chk.non_negative(energy_j, "energy_j")
    hours = 0.0 if device_hours is None else chk.non_negative(device_hours, "device_hours")
    if hardware is not None and device_hours is None:
        raise InvalidQuantity("required when a hardware price is given", field="device_hours")
    if at is not None:
        for price in (tariff, hardware):
            if isinstance(price, Tariff | CloudPrice) and not price.covers(at):
                raise PriceNotValid(
                    f"the price from {price.source!r} is valid {chk.iso(price.valid_from) or '…'}"
                    f" to {chk.iso(price.valid_to) or '…'}, not on {chk.as_date(at).isoformat()}"
                )

    notes: list[str] = []
    energy_billed_j = energy_it_j * (1.0 if pue is None else pue.value)
    energy_usd: float | None = None
    if tariff is not None:
        energy_usd = energy_billed_j / J_PER_KWH * tariff.usd_per_kwh
        if pue is None:
            notes.append("Energy priced as metered IT energy (no PUE applied).")
        elif pue.is_assumption:
            notes.append(f"PUE {pue.value} is an assumption ({pue.source}).")
    elif energy_it_j > 0.0:
        notes.append("Energy not priced: no tariff given.")

    hardware_usd: float | None = None
    if hardware is not None:
        hardware_usd = hardware.usd_per_device_hour * hours
        if isinstance(hardware, CloudPrice) and tariff is not None:
            notes.append(
                "Cloud hourly prices usually include power and facility: pricing energy on top "
                "may count it twice."
            )
    elif hours > 0.0:
        notes.append("Hardware time not priced: no hardware price given.")

    return CostBreakdown(
        energy_it_j=energy_it_j,
        energy_billed_j=energy_billed_j,
        pue=pue,
        tariff=tariff,
        energy_usd=energy_usd,
        hardware=hardware,
        device_hours=hours,
        hardware_usd=hardware_usd,
        notes=tuple(notes),
    )
