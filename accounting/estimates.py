"""Estimates for what was never metered: device time × mean power (× PUE), with a band.

Published training footprints (Patterson et al. 2021, Luccioni et al. 2023, the Llama model
cards, Strubell et al. 2019) and a team's own history (a cloud bill, a scheduler's GPU-hours)
start from the same first step, which `estimate_run` performs:

    it_energy_j       = device_time_s × mean_power_w
    device_time_s     = devices × duration_s            (or given directly, e.g. "1,082,990 h")
    mean_power_w      = measured elsewhere, or tdp_w × utilisation
    facility_energy_j = it_energy_j × PUE               (PUE 1 when none is stated)
    co2e_g            = facility_energy_j / 3.6e6 [J/kWh] × intensity_g_per_kwh

The intensity is a location-based grid average (the figure publications state); market-based
instruments are not part of an estimate.

Where the source states the energy itself (an external tool's figure, such as CodeCarbon's
``energy_consumed``), ``it_energy_j`` is that energy with its range, and no device time or power
enters (``energy_basis`` ``stated``; ``device_time_x_power`` otherwise).

The band
--------
Every input may carry a range (`Interval`: a value with ``low ≤ value ≤ high``, stated directly
or as a relative uncertainty ``rel``: ``value × (1 ± rel)``). All inputs are positive and every
output is a product of them, so it increases with each input: the output's range is the product
of the inputs' lows to the product of their highs. This is interval arithmetic, the worst case
over every combination of the inputs in their ranges; it assumes nothing about the errors being
independent (root-sum-square would, and would be narrower), which is the conservative choice for
inputs that are often correlated (a utilisation guessed from the same TDP that sets the power).
An input stated without a range contributes none, and is listed in `RunEstimate.unstated` so a
reader sees that the band is only as wide as what was stated.

Nothing here is looked up implicitly except a TDP by device name in the hardware catalog
(`accounting.catalog`), and then the catalog entry's id is recorded. Inputs are refused, never
clamped: `InvalidEstimate` (an `InvalidQuantity`) names the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from . import catalog as hardware
from .catalog import Catalog
from .errors import InvalidQuantity

__all__ = [
    "J_PER_KWH",
    "METHOD",
    "EnergyBasis",
    "EstimateSource",
    "InputValue",
    "Interval",
    "InvalidEstimate",
    "PowerBasis",
    "RunEstimate",
    "estimate_run",
    "total",
]

#: Joules in one kilowatt-hour (exact).
J_PER_KWH = 3.6e6
#: The method every estimated figure carries, in the ledger and the reports.
METHOD = "estimate"
#: The rule written into every estimate's record.
BAND_RULE = (
    "interval arithmetic: each output is a product of positive inputs, so its range runs from "
    "the product of the inputs' lows to the product of their highs (worst case, no independence "
    "assumed); an input stated without a range adds none"
)

PowerBasis: TypeAlias = Literal["measured", "tdp_x_utilisation"]
EnergyBasis: TypeAlias = Literal["device_time_x_power", "stated"]


class InvalidEstimate(InvalidQuantity):
    """An estimate's input is missing, contradictory or out of range (names the field)."""


@dataclass(frozen=True, slots=True)
class Interval:
    """A positive quantity with its range, ``0 ≤ low ≤ value ≤ high``.

    Attributes:
        value: The central value (in the unit its name carries where it is used).
        low: The lowest value the input may take.
        high: The highest value the input may take.
    """

    value: float
    low: float
    high: float

    @classmethod
    def of(
        cls,
        value: float,
        *,
        rel: float | None = None,
        low: float | None = None,
        high: float | None = None,
        field: str = "value",
    ) -> Interval:
        """An interval from a value and either a relative uncertainty or explicit ends.

        Args:
            value: The central value (finite, ≥ 0).
            rel: Relative uncertainty in [0, 1]: the range is ``value × (1 ± rel)``.
            low: The low end (default: ``value``, or from ``rel``).
            high: The high end (default: ``value``, or from ``rel``).
            field: The input's name, for errors.

        Raises:
            InvalidEstimate: A non-finite or negative number, ``rel`` outside [0, 1] or given
                with ``low``/``high``, or ends that do not bracket the value.
        """
        v = _number(value, field)
        if v < 0:
            raise InvalidEstimate(f"must be ≥ 0, got {v!r}", field=field)
        if rel is not None:
            if low is not None or high is not None:
                raise InvalidEstimate(
                    "give a relative uncertainty or low/high, not both", field=f"{field}.rel"
                )
            r = _number(rel, f"{field}.rel")
            if not 0.0 <= r <= 1.0:
                raise InvalidEstimate(f"must lie in [0, 1], got {r!r}", field=f"{field}.rel")
            return cls(v, v * (1.0 - r), v * (1.0 + r))
        lo = v if low is None else _number(low, f"{field}.low")
        hi = v if high is None else _number(high, f"{field}.high")
        if lo < 0:
            raise InvalidEstimate(f"must be ≥ 0, got {lo!r}", field=f"{field}.low")
        if lo > v:
            raise InvalidEstimate(f"{lo!r} is above the value {v!r}", field=f"{field}.low")
        if hi < v:
            raise InvalidEstimate(f"{hi!r} is below the value {v!r}", field=f"{field}.high")
        return cls(v, lo, hi)

    @classmethod
    def exact(cls, value: float) -> Interval:
        """A value without a range."""
        return cls(value, value, value)

    @property
    def stated(self) -> bool:
        """Whether the input carries a range (low < high)."""
        return self.low < self.high

    def __mul__(self, other: Interval) -> Interval:
        return Interval(self.value * other.value, self.low * other.low, self.high * other.high)

    def scaled(self, factor: float) -> Interval:
        """The interval times a positive constant (a unit conversion)."""
        return Interval(self.value * factor, self.low * factor, self.high * factor)

    def to_dict(self) -> dict[str, float]:
        """``{"value", "low", "high"}``."""
        return {"value": self.value, "low": self.low, "high": self.high}


InputValue: TypeAlias = "float | int | Interval"


@dataclass(frozen=True, slots=True)
class EstimateSource:
    """Where an estimate's inputs come from.

    Attributes:
        source: Who states them: a publication's authors, a bill, a scheduler's accounting.
        document: The document: a title, an arXiv id, a URL, an invoice number.
        page: Where in it: a page, table or section.
        note: Free text: what was derived, assumed or left out.
    """

    source: str
    document: str | None = None
    page: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise InvalidEstimate(
                "name where the inputs come from (a publication, a bill, a scheduler)",
                field="provenance.source",
            )

    def to_dict(self) -> dict[str, str | None]:
        """JSON-safe record."""
        return {
            "source": self.source,
            "document": self.document,
            "page": self.page,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class RunEstimate:
    """An estimated run: its inputs, its figures with their bands, and their provenance.

    Attributes:
        device_time_s: Device time (device-seconds: devices × duration); None for a stated
            energy.
        devices: The device count, when given as devices × duration.
        duration_s: The wall-clock duration, s, when given as devices × duration.
        mean_power_w: Mean power per device, W; None for a stated energy.
        power_basis: ``measured`` (a mean power measured or stated elsewhere) or
            ``tdp_x_utilisation``; None for a stated energy.
        tdp_w: The TDP used, W, for ``tdp_x_utilisation``.
        utilisation: The fraction of TDP, for ``tdp_x_utilisation``.
        device: The device as named by the caller, if any.
        catalog_id: The catalog entry the TDP came from, if it came from the catalog.
        pue: PUE (1 when none was stated: the IT boundary).
        pue_stated: Whether a PUE was given.
        it_energy_j: IT energy, J.
        facility_energy_j: Facility energy (IT × PUE), J.
        intensity_g_per_kwh: Location-based grid intensity, gCO2e/kWh, if given.
        co2e_g: Location-based emissions of the facility energy, gCO2e, if an intensity was given.
        unstated: The inputs given without a range (they add nothing to the band).
        source: Where the inputs come from.
        energy_basis: ``device_time_x_power``, or ``stated`` (the source states the IT energy).
    """

    device_time_s: Interval | None
    devices: Interval | None
    duration_s: Interval | None
    mean_power_w: Interval | None
    power_basis: PowerBasis | None
    tdp_w: Interval | None
    utilisation: Interval | None
    device: str | None
    catalog_id: str | None
    pue: Interval
    pue_stated: bool
    it_energy_j: Interval
    facility_energy_j: Interval
    intensity_g_per_kwh: Interval | None
    co2e_g: Interval | None
    unstated: tuple[str, ...]
    source: EstimateSource
    energy_basis: EnergyBasis = "device_time_x_power"

    @property
    def method(self) -> str:
        """Always ``estimate``."""
        return METHOD

    @property
    def it_energy_kwh(self) -> float:
        """IT energy, kWh."""
        return self.it_energy_j.value / J_PER_KWH

    @property
    def facility_energy_kwh(self) -> float:
        """Facility energy, kWh."""
        return self.facility_energy_j.value / J_PER_KWH

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the inputs, the figures, the band rule and the provenance."""

        def opt(interval: Interval | None) -> dict[str, float] | None:
            return None if interval is None else interval.to_dict()

        record: dict[str, Any] = {
            "method": METHOD,
            "inputs": {
                "device_time_s": opt(self.device_time_s),
                "devices": opt(self.devices),
                "duration_s": opt(self.duration_s),
                "mean_power_w": opt(self.mean_power_w),
                "power_basis": self.power_basis,
                "tdp_w": opt(self.tdp_w),
                "utilisation": opt(self.utilisation),
                "device": self.device,
                "catalog_id": self.catalog_id,
                "pue": self.pue.to_dict(),
                "pue_stated": self.pue_stated,
                "intensity_g_per_kwh": opt(self.intensity_g_per_kwh),
            },
            "it_energy_j": self.it_energy_j.to_dict(),
            "facility_energy_j": self.facility_energy_j.to_dict(),
            "co2e_location_g": opt(self.co2e_g),
            "band": BAND_RULE,
            "unstated": list(self.unstated),
            "provenance": self.source.to_dict(),
        }
        if self.energy_basis == "stated":
            # Only then: the records of device-time estimates stay as they were ledgered, so
            # posting one again still compares equal.
            record["energy_basis"] = "stated"
            record["inputs"]["energy_j"] = self.it_energy_j.to_dict()
        return record


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEstimate(f"expected a number, got {value!r}", field=field)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidEstimate(f"must be finite, got {number!r}", field=field)
    return number


def _interval(value: InputValue, field: str, *, positive: bool = True) -> Interval:
    """``value`` as an interval, checked: finite, ≥ 0, and > 0 where ``positive``."""
    if isinstance(value, Interval):
        # Re-validate: an Interval can be built directly with any numbers.
        checked = Interval.of(value.value, low=value.low, high=value.high, field=field)
    else:
        checked = Interval.of(_number(value, field), field=field)
    if positive and checked.value <= 0:
        raise InvalidEstimate(f"must be > 0, got {checked.value!r}", field=field)
    return checked


def _device_time(
    device_time_s: InputValue | None, devices: InputValue | None, duration_s: InputValue | None
) -> tuple[Interval, Interval | None, Interval | None]:
    if device_time_s is not None:
        if devices is not None or duration_s is not None:
            field = "devices" if devices is not None else "duration"
            raise InvalidEstimate(
                "give device time (device-hours) or devices × duration, not both", field=field
            )
        return _interval(device_time_s, "device_time"), None, None
    if devices is None or duration_s is None:
        if devices is None and duration_s is None:
            missing = "device_time"
        else:
            missing = "devices" if devices is None else "duration"
        raise InvalidEstimate(
            "an estimate needs device time (device-hours), or devices and a duration",
            field=missing,
        )
    count = _interval(devices, "devices")
    duration = _interval(duration_s, "duration")
    return count * duration, count, duration


def _power(
    mean_power_w: InputValue | None,
    tdp_w: InputValue | None,
    utilisation: InputValue | None,
    device: str | None,
    catalog: Catalog | None,
) -> tuple[Interval, PowerBasis, Interval | None, Interval | None, str | None]:
    if mean_power_w is not None:
        if utilisation is not None or tdp_w is not None:
            field = "utilisation" if utilisation is not None else "tdp"
            raise InvalidEstimate(
                "give a mean power, or a TDP (or device) with a utilisation, not both",
                field=field,
            )
        return _interval(mean_power_w, "mean_power"), "measured", None, None, None
    if utilisation is None:
        raise InvalidEstimate(
            "an estimate needs a mean power, or a utilisation of a TDP (given, or the device's "
            "from the hardware catalog)",
            field="mean_power",
        )
    share = _interval(utilisation, "utilisation")
    if share.high > 1.0:
        raise InvalidEstimate(
            f"is a fraction of TDP and cannot exceed 1, got {share.high!r}", field="utilisation"
        )
    catalog_id = None
    if tdp_w is not None:
        tdp = _interval(tdp_w, "tdp")
    else:
        if device is None or not device.strip():
            raise InvalidEstimate(
                "a utilisation needs a TDP: give tdp, or a device the hardware catalog knows",
                field="tdp",
            )
        resolution = hardware.resolve(device, catalog=catalog)
        if resolution.entry is None:
            hint = (
                f"; it matches several entries: {', '.join(resolution.candidates)}"
                if resolution.status == "ambiguous"
                else (
                    f"; entries of that family: {', '.join(resolution.candidates)}"
                    if resolution.candidates
                    else ""
                )
            )
            raise InvalidEstimate(
                f"{device!r} is not in the hardware catalog{hint}: give its tdp", field="device"
            )
        if resolution.entry.tdp_w is None:
            raise InvalidEstimate(
                f"the catalog publishes no TDP for {resolution.entry.id}: give tdp", field="tdp"
            )
        tdp = Interval.exact(resolution.entry.tdp_w)
        catalog_id = resolution.entry.id
    return tdp * share, "tdp_x_utilisation", tdp, share, catalog_id


def estimate_run(
    *,
    source: EstimateSource,
    device_time_s: InputValue | None = None,
    devices: InputValue | None = None,
    duration_s: InputValue | None = None,
    mean_power_w: InputValue | None = None,
    tdp_w: InputValue | None = None,
    utilisation: InputValue | None = None,
    device: str | None = None,
    pue: InputValue | None = None,
    intensity_g_per_kwh: InputValue | None = None,
    catalog: Catalog | None = None,
    energy_j: InputValue | None = None,
) -> RunEstimate:
    """Estimate a run's energy (and, with an intensity, its location-based CO2e).

    Each numeric input is a number or an `Interval` (its range). See the module docstring for
    the model and the band rule.

    Args:
        source: Where the inputs come from (required: an estimate without a source is a guess).
        energy_j: The IT energy itself, J, as the source states it (> 0), instead of device
            time × power: then none of the device-time and power inputs may be given. Or:
        device_time_s: Device time, device-seconds (e.g. GPU-hours × 3600). Or:
        devices: Number of devices, with
        duration_s: the wall-clock duration, s.
        mean_power_w: Mean power per device, W, measured or stated elsewhere. Or:
        tdp_w: The device's TDP, W (default: the catalog's, by ``device``), with
        utilisation: the mean fraction of TDP drawn, in (0, 1].
        device: The device's name (a driver's name or a catalog id); needed for the catalog's
            TDP, recorded always.
        pue: Facility energy / IT energy, ≥ 1; None: 1 (IT boundary; recorded as not stated).
        intensity_g_per_kwh: Location-based grid intensity, gCO2e/kWh, ≥ 0.
        catalog: The hardware catalog (default: the built-in one).

    Returns:
        The estimate, with bands and provenance.

    Raises:
        InvalidEstimate: A missing, contradictory, non-finite or out-of-range input (names it);
            a device the catalog does not know (or knows without a TDP) when no TDP is given.

    Example:
        >>> e = estimate_run(source=EstimateSource("a test"), devices=8, duration_s=3600.0,
        ...                  mean_power_w=300.0, pue=1.5)
        >>> e.it_energy_kwh, e.facility_energy_kwh
        (2.4, 3.6)
    """
    if not isinstance(source, EstimateSource):
        raise InvalidEstimate("expected an EstimateSource", field="provenance")
    if energy_j is not None:
        return _stated(
            source,
            energy_j,
            {
                "device_time": device_time_s,
                "devices": devices,
                "duration": duration_s,
                "mean_power": mean_power_w,
                "tdp": tdp_w,
                "utilisation": utilisation,
            },
            device=device,
            pue=pue,
            intensity_g_per_kwh=intensity_g_per_kwh,
        )
    time_s, count, duration = _device_time(device_time_s, devices, duration_s)
    power, basis, tdp, share, catalog_id = _power(mean_power_w, tdp_w, utilisation, device, catalog)
    factor, pue_stated, intensity = _pue_and_intensity(pue, intensity_g_per_kwh)
    it_energy = time_s * power
    facility = it_energy * factor
    co2e = None if intensity is None else facility.scaled(1.0 / J_PER_KWH) * intensity
    named: list[tuple[str, Interval | None]] = [
        ("device_time", None if count is not None else time_s),
        ("devices", count),
        ("duration", duration),
        ("mean_power", power if basis == "measured" else None),
        ("tdp", tdp),
        ("utilisation", share),
        ("pue", factor if pue_stated else None),
        ("intensity", intensity),
    ]
    unstated = tuple(name for name, value in named if value is not None and not value.stated)
    return RunEstimate(
        device_time_s=time_s,
        devices=count,
        duration_s=duration,
        mean_power_w=power,
        power_basis=basis,
        tdp_w=tdp,
        utilisation=share,
        device=device,
        catalog_id=catalog_id,
        pue=factor,
        pue_stated=pue_stated,
        it_energy_j=it_energy,
        facility_energy_j=facility,
        intensity_g_per_kwh=intensity,
        co2e_g=co2e,
        unstated=unstated,
        source=source,
    )


def _pue_and_intensity(
    pue: InputValue | None, intensity_g_per_kwh: InputValue | None
) -> tuple[Interval, bool, Interval | None]:
    """The PUE (1, not stated, when None), whether it was stated, and the intensity."""
    if pue is None:
        factor, pue_stated = Interval.exact(1.0), False
    else:
        factor, pue_stated = _interval(pue, "pue"), True
        if factor.low < 1.0:
            raise InvalidEstimate(
                f"is facility energy / IT energy and cannot be below 1, got {factor.low!r}",
                field="pue",
            )
    intensity = (
        None
        if intensity_g_per_kwh is None
        else _interval(intensity_g_per_kwh, "intensity", positive=False)
    )
    return factor, pue_stated, intensity


def _stated(
    source: EstimateSource,
    energy_j: InputValue,
    others: dict[str, InputValue | None],
    *,
    device: str | None,
    pue: InputValue | None,
    intensity_g_per_kwh: InputValue | None,
) -> RunEstimate:
    """An estimate whose IT energy the source states (``energy_basis`` ``stated``)."""
    for name, value in others.items():
        if value is not None:
            raise InvalidEstimate("give an energy, or device time × power, not both", field=name)
    it_energy = _interval(energy_j, "energy")
    factor, pue_stated, intensity = _pue_and_intensity(pue, intensity_g_per_kwh)
    facility = it_energy * factor
    co2e = None if intensity is None else facility.scaled(1.0 / J_PER_KWH) * intensity
    named: list[tuple[str, Interval | None]] = [
        ("energy", it_energy),
        ("pue", factor if pue_stated else None),
        ("intensity", intensity),
    ]
    return RunEstimate(
        device_time_s=None,
        devices=None,
        duration_s=None,
        mean_power_w=None,
        power_basis=None,
        tdp_w=None,
        utilisation=None,
        device=device,
        catalog_id=None,
        pue=factor,
        pue_stated=pue_stated,
        it_energy_j=it_energy,
        facility_energy_j=facility,
        intensity_g_per_kwh=intensity,
        co2e_g=co2e,
        unstated=tuple(n for n, v in named if v is not None and not v.stated),
        source=source,
        energy_basis="stated",
    )


def total(estimates: Iterable[RunEstimate]) -> tuple[Interval, Interval, Interval | None]:
    """Sum several estimates (a model family's total): IT energy, facility energy and CO2e.

    Ranges add end to end (the worst case again). The CO2e total is None unless every estimate
    has one.

    Returns:
        ``(it_energy_j, facility_energy_j, co2e_g)``.
    """
    items = list(estimates)
    if not items:
        raise InvalidEstimate("nothing to sum", field="estimates")

    def add(parts: list[Interval]) -> Interval:
        return Interval(
            math.fsum(p.value for p in parts),
            math.fsum(p.low for p in parts),
            math.fsum(p.high for p in parts),
        )

    carbon = [e.co2e_g for e in items]
    return (
        add([e.it_energy_j for e in items]),
        add([e.facility_energy_j for e in items]),
        None if any(c is None for c in carbon) else add([c for c in carbon if c is not None]),
    )
