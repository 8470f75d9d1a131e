"""Carbon accounting: GHG Protocol Scope 2 (dual reporting) and the Software Carbon Intensity.

The model
---------
Operational emissions are facility energy × grid intensity, with facility energy = IT energy × PUE
(PUE = total facility energy / IT equipment energy, so PUE ≥ 1; pass ``default_pue("none")`` when
the energy was already metered at the facility input or the boundary excludes the data centre):

    co2e_g = energy_j / 3.6e6 [J/kWh] × PUE × intensity_g_per_kwh

**Scope 2 dual reporting** (GHG Protocol Scope 2 Guidance, 2015). `scope2_emissions` always
reports both methods side by side:

- *location-based*: a grid-average factor of the grid where the energy was consumed (a factor of
  kind ``location`` or ``average``; a ``marginal`` or ``market`` factor is refused here);
- *market-based*: a factor of kind ``market`` from a contractual instrument (supplier tariff, PPA,
  EACs such as RECs/GOs) covering ``market_coverage`` of the facility energy, with the rest at the
  **residual mix** the caller supplies. With no instrument, the residual mix covers all of it. With
  neither, or with an instrument covering only part and no residual mix, the market-based figure
  is reported as **not available, with the reason**. It is never filled in from the location-based
  factor: a missing figure that says so is auditable, a copied one misstates the inventory.

**SCI** (Green Software Foundation SCI v1.1 = ISO/IEC 21031:2024), computed by
`software_carbon_intensity`:

    SCI = (E·I + M) per R

E in kWh (including PUE when the boundary includes the data centre), I an average or marginal grid
intensity (**market-based instruments are excluded by the spec**: a factor of kind ``market`` is
refused with `FactorKindError`), M the embodied share TE × (TiR / EL) × (RR / ToR) of each piece of
hardware (`EmbodiedShare`), and R a named functional unit with a count (`FunctionalUnit`).

Embodied emissions (TE) are **never defaulted**: no per-device life-cycle figure in our reference
material is well enough sourced to ship, so the caller passes TE with its source. An SCI computed
without any embodied component is flagged in its notes as understated.

Defaults. ``data/factors.toml`` holds annual, country-level grid averages (Ember 2023 lifecycle
figures; world 481 gCO2e/kWh) and PUE defaults (hyperscale 1.10, typical/colocation 1.56 from
Uptime 2024, an on-prem assumption of 1.6, and ``none`` = 1.0), each with source, year and kind. The
region is always named by the caller: nothing here guesses where a job ran.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _econ_checks as chk
from .errors import AccountingError, InvalidQuantity

__all__ = [
    "J_PER_KWH",
    "YEAR_S",
    "EmbodiedShare",
    "EmissionFactor",
    "FactorKind",
    "FactorKindError",
    "FactorNotValid",
    "FunctionalUnit",
    "Pue",
    "SciResult",
    "Scope2Emissions",
    "UnknownPue",
    "UnknownRegion",
    "default_emission_factor",
    "default_emission_factors",
    "default_pue",
    "default_pues",
    "operational_co2e_g",
    "scope2_emissions",
    "software_carbon_intensity",
]

#: Joules in one kilowatt-hour (exact).
J_PER_KWH = 3.6e6
#: One year of 365 days in seconds, the convention of the SCI spec's worked example
#: (4 years = 4 × 365 × 24 h). pint's ``year`` is the Julian year of 365.25 days instead.
YEAR_S = 365.0 * 24.0 * 3600.0

FactorKind: TypeAlias = Literal["location", "market", "average", "marginal"]
_FACTOR_KINDS: tuple[str, ...] = get_args(FactorKind)
_LOCATION_BASED_KINDS = frozenset({"location", "average"})
_MARKET_BASED_KINDS = frozenset({"market"})
_SCI_KINDS = frozenset({"location", "average", "marginal"})

PueKind: TypeAlias = Literal["published", "survey", "assumption", "definition", "measured"]
_PUE_KINDS: tuple[str, ...] = get_args(PueKind)

MarketBasis: TypeAlias = Literal["contractual", "contractual+residual_mix", "residual_mix"]


class FactorKindError(ValueError, AccountingError):
    """An emission factor of the wrong kind for its use (e.g. a market factor in an SCI)."""


class FactorNotValid(ValueError, AccountingError):
    """An emission factor's validity window does not cover the date being accounted."""


class UnknownRegion(LookupError, AccountingError):
    """No built-in emission factor exists for the region named."""

    def __init__(self, region: str, known: Sequence[str]) -> None:
        self.region = region
        super().__init__(
            f"no built-in emission factor for region {region!r}; known: {', '.join(known)}. "
            "Pass an EmissionFactor for other regions."
        )


class UnknownPue(LookupError, AccountingError):
    """No built-in PUE default has the name given."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        super().__init__(f"no built-in PUE default {name!r}; known: {', '.join(known)}")


# --------------------------------------------------------------------------------------------
# Factors and PUE


@dataclass(frozen=True, slots=True)
class EmissionFactor:
    """A grid carbon intensity with its provenance.

    Attributes:
        region: The grid region, named explicitly by whoever supplies the factor.
        intensity_g_per_kwh: Emissions per kWh of electricity consumed, gCO2e/kWh (≥ 0).
        kind: ``location`` (grid average for Scope 2 location-based), ``market`` (contractual
            instrument or residual mix, Scope 2 market-based only), ``average`` or ``marginal``
            (a grid signal for SCI; ``average`` also serves location-based Scope 2).
        source: Where the number comes from.
        year: Year of the underlying data, if known.
        valid_from: First day the factor applies to, if it is time-bounded.
        valid_to: Last day the factor applies to, if it is time-bounded.
        basis: How the factor was built (e.g. ``lifecycle``), if known.
        note: A caveat carried into every report that uses the factor.
    """

    region: str
    intensity_g_per_kwh: float
    kind: FactorKind
    source: str
    year: int | None = None
    valid_from: date | None = None
    valid_to: date | None = None
    basis: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        chk.non_empty(self.region, "region")
        chk.non_empty(self.source, "source")
        object.__setattr__(
            self,
            "intensity_g_per_kwh",
            chk.non_negative(self.intensity_g_per_kwh, "intensity_g_per_kwh"),
        )
        if self.kind not in _FACTOR_KINDS:
            raise FactorKindError(
                f"emission factor kind must be one of {', '.join(_FACTOR_KINDS)}, got {self.kind!r}"
            )
        chk.check_window(self.valid_from, self.valid_to, "valid_to")

    @classmethod
    def from_quantity(
        cls,
        intensity: Any,
        *,
        region: str,
        kind: FactorKind,
        source: str,
        year: int | None = None,
        valid_from: date | None = None,
        valid_to: date | None = None,
        basis: str | None = None,
        note: str | None = None,
    ) -> EmissionFactor:
        """Build a factor from an edge quantity such as ``"481 gCO2e/kWh"`` or ``"0.2 kgCO2e/kWh"``.

        Raises:
            DimensionMismatch: The quantity is not emissions per energy.
            InvalidQuantity: Malformed or non-finite quantity.
        """
        from .units import magnitude_in  # pint stays out of this module's import

        return cls(
            region=region,
            intensity_g_per_kwh=magnitude_in(intensity, "gCO2e/kWh", field="intensity"),
            kind=kind,
            source=source,
            year=year,
            valid_from=valid_from,
            valid_to=valid_to,
            basis=basis,
            note=note,
        )

    def covers(self, when: date) -> bool:
        """Whether the factor's validity window (open ends unbounded) includes ``when``."""
        return chk.window_covers(self.valid_from, self.valid_to, when)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe provenance record."""
        return {
            "region": self.region,
            "intensity_g_per_kwh": self.intensity_g_per_kwh,
            "kind": self.kind,
            "source": self.source,
            "year": self.year,
            "valid_from": chk.iso(self.valid_from),
            "valid_to": chk.iso(self.valid_to),
            "basis": self.basis,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Pue:
    """Power usage effectiveness (total facility energy / IT energy) with its provenance.

    Attributes:
        value: The PUE, ≥ 1 by definition.
        name: A label: the built-in default's name, or e.g. ``"measured"``.
        kind: ``published``, ``survey``, ``assumption``, ``definition`` (1.0 for an IT-only
            boundary) or ``measured``.
        source: Where the value comes from.
        year: Year the value refers to, if known.
        note: A caveat carried into reports.
    """

    value: float
    name: str
    kind: PueKind
    source: str
    year: int | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        value = chk.finite(self.value, "pue")
        if value < 1.0:
            raise InvalidQuantity(
                f"PUE is total facility energy / IT energy and cannot be below 1, got {value!r}",
                field="pue",
            )
        object.__setattr__(self, "value", value)
        chk.non_empty(self.name, "pue.name")
        chk.non_empty(self.source, "pue.source")
        if self.kind not in _PUE_KINDS:
            raise InvalidQuantity(
                f"PUE kind must be one of {', '.join(_PUE_KINDS)}, got {self.kind!r}",
                field="pue.kind",
            )

    @classmethod
    def measured(cls, value: float, *, source: str, year: int | None = None) -> Pue:
        """A PUE measured or published for the actual facility."""
        return cls(value=value, name="measured", kind="measured", source=source, year=year)

    @property
    def is_assumption(self) -> bool:
        """True when the value is a labelled guess rather than data."""
        return self.kind == "assumption"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe provenance record."""
        return {
            "value": self.value,
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "year": self.year,
            "note": self.note,
        }


@functools.cache
def _factor_table() -> Mapping[str, Any]:
    data = resources.files("thermoledger.accounting").joinpath("data", "factors.toml").read_bytes()
    return MappingProxyType(tomllib.loads(data.decode("utf-8")))


@functools.cache
def default_emission_factors() -> Mapping[str, EmissionFactor]:
    """The built-in annual grid factors, keyed by region (``WORLD`` or ISO 3166-1 alpha-2).

    Read from ``data/factors.toml`` on first use and cached.
    """
    factors: dict[str, EmissionFactor] = {}
    for region, entry in _factor_table()["emission_factors"].items():
        factors[region] = EmissionFactor(
            region=region,
            intensity_g_per_kwh=entry["intensity_g_per_kwh"],
            kind=entry["kind"],
            source=entry["source"],
            year=entry.get("year"),
            basis=entry.get("basis"),
            note=_join_notes(entry.get("note"), _confidence_note(entry.get("confidence"))),
        )
    return MappingProxyType(factors)


def default_emission_factor(region: str) -> EmissionFactor:
    """The built-in location-based factor for ``region`` (``"WORLD"``, ``"DE"``, ``"fr"``, ...).

    Raises:
        UnknownRegion: No built-in factor for that region; build an `EmissionFactor` instead.
    """
    factors = default_emission_factors()
    key = region.strip().upper()
    if key not in factors:
        raise UnknownRegion(region, sorted(factors))
    return factors[key]


@functools.cache
def default_pues() -> Mapping[str, Pue]:
    """The built-in PUE defaults: ``hyperscale``, ``typical``, ``colocation``,
    ``on_prem_unknown`` (an assumption) and ``none`` (1.0, IT-only boundary)."""
    pues: dict[str, Pue] = {}
    for name, entry in _factor_table()["pue"].items():
        pues[name] = Pue(
            value=entry["value"],
            name=name,
            kind=entry["kind"],
            source=entry["source"],
            year=entry.get("year"),
            note=entry.get("note"),
        )
    return MappingProxyType(pues)


def default_pue(name: str) -> Pue:
    """A built-in PUE default by name (see `default_pues`).

    Raises:
        UnknownPue: No default of that name.
    """
    pues = default_pues()
    if name not in pues:
        raise UnknownPue(name, sorted(pues))
    return pues[name]


def _confidence_note(confidence: str | None) -> str | None:
    if confidence == "M":
        return "Confidence M: from background knowledge, not re-checked against the primary."
    return None


def _join_notes(*notes: str | None) -> str | None:
    present = [n for n in notes if n]
    return " ".join(present) if present else None


# --------------------------------------------------------------------------------------------
# Scope 2


def operational_co2e_g(
    energy_j: ArrayLike, *, intensity_g_per_kwh: float, pue: float = 1.0
) -> NDArray[np.float64]:
    """Vectorised operational emissions: energy_j / 3.6e6 × PUE × intensity.

    Args:
        energy_j: IT energy per element, J (any shape, ≥ 0).
        intensity_g_per_kwh: Grid intensity, gCO2e/kWh.
        pue: Facility overhead multiplier (≥ 1).

    Returns:
        Emissions per element, gCO2e, same shape as ``energy_j``.
    """
    energy = np.asarray(energy_j, dtype=np.float64)
    if not np.all(np.isfinite(energy)) or np.any(energy < 0.0):
        raise InvalidQuantity("must hold finite values ≥ 0", field="energy_j")
    intensity = chk.non_negative(intensity_g_per_kwh, "intensity_g_per_kwh")
    facility = chk.finite(pue, "pue")
    if facility < 1.0:
        raise InvalidQuantity(f"PUE cannot be below 1, got {facility!r}", field="pue")
    result: NDArray[np.float64] = energy / J_PER_KWH * facility * intensity
    return result


@dataclass(frozen=True, slots=True)
class Scope2Emissions:
    """Location-based and market-based emissions of one energy figure, with provenance.

    Attributes:
        energy_it_j: IT energy as measured, J.
        energy_facility_j: IT energy × PUE, J.
        pue: The PUE applied.
        location_co2e_g: Location-based emissions, gCO2e.
        location_factor: The grid-average factor used.
        market_co2e_g: Market-based emissions, gCO2e, or None when not available.
        market_basis: ``contractual``, ``contractual+residual_mix`` or ``residual_mix``; None
            when not available.
        market_factor: The contractual-instrument factor, if any.
        market_coverage: Fraction of facility energy under the instrument, if any.
        residual_mix_factor: The residual-mix factor, if any.
        market_unavailable_reason: Why there is no market-based figure, when there is none.
        notes: Assumptions and caveats a reader must see.
    """

    energy_it_j: float
    energy_facility_j: float
    pue: Pue
    location_co2e_g: float
    location_factor: EmissionFactor
    market_co2e_g: float | None
    market_basis: MarketBasis | None
    market_factor: EmissionFactor | None
    market_coverage: float | None
    residual_mix_factor: EmissionFactor | None
    market_unavailable_reason: str | None
    notes: tuple[str, ...] = ()

    @property
    def energy_facility_kwh(self) -> float:
        """Facility energy in kWh."""
        return self.energy_facility_j / J_PER_KWH

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record with both figures and every factor used."""
        return {
            "energy_it_j": self.energy_it_j,
            "energy_facility_j": self.energy_facility_j,
            "energy_facility_kwh": self.energy_facility_kwh,
            "pue": self.pue.to_dict(),
            "location_based": {
                "co2e_g": self.location_co2e_g,
                "factor": self.location_factor.to_dict(),
            },
            "market_based": {
                "status": "available" if self.market_co2e_g is not None else "not_available",
                "co2e_g": self.market_co2e_g,
                "basis": self.market_basis,
                "coverage": self.market_coverage,
                "factor": None if self.market_factor is None else self.market_factor.to_dict(),
                "residual_mix_factor": (
                    None if self.residual_mix_factor is None else self.residual_mix_factor.to_dict()
                ),
                "reason": self.market_unavailable_reason,
            },
            "notes": list(self.notes),
        }


def scope2_emissions(
    energy_j: float,
    *,
    pue: Pue,
    location_factor: EmissionFactor,
    market_factor: EmissionFactor | None = None,
    market_coverage: float = 1.0,
    residual_mix_factor: EmissionFactor | None = None,
    at: date | None = None,
) -> Scope2Emissions:
    """GHG Protocol Scope 2 emissions of ``energy_j``, location- and market-based side by side.

    Args:
        energy_j: IT energy, J (≥ 0). Facility energy is ``energy_j × pue.value``.
        pue: Facility overhead; ``default_pue("none")`` for an IT-only boundary.
        location_factor: Grid-average factor (kind ``location`` or ``average``).
        market_factor: Contractual-instrument factor (kind ``market``), if the consumer holds one.
        market_coverage: Fraction of facility energy the instrument covers, in [0, 1]; the rest
            is at ``residual_mix_factor``. Only meaningful with ``market_factor``.
        residual_mix_factor: Residual-mix factor (kind ``market``) for energy no instrument covers.
        at: Date being accounted; when given, every factor with a validity window must cover it.

    Returns:
        Both figures with provenance; the market-based one is None with a reason when the inputs
        do not determine it.

    Raises:
        FactorKindError: A factor of the wrong kind for its role.
        FactorNotValid: ``at`` lies outside a factor's validity window.
        InvalidQuantity: Negative or non-finite energy, coverage outside [0, 1].
    """
    energy_it_j = chk.non_negative(energy_j, "energy_j")
    coverage = chk.fraction(market_coverage, "market_coverage")
    _require_kind(location_factor, _LOCATION_BASED_KINDS, "location-based Scope 2")
    if market_factor is not None:
        _require_kind(market_factor, _MARKET_BASED_KINDS, "market-based Scope 2")
    elif coverage != 1.0:
        raise InvalidQuantity(
            "market_coverage was given without a market_factor", field="market_coverage"
        )
    if residual_mix_factor is not None:
        _require_kind(residual_mix_factor, _MARKET_BASED_KINDS, "a residual mix")
    if at is not None:
        for factor in (location_factor, market_factor, residual_mix_factor):
            _require_covers(factor, at)

    energy_facility_j = energy_it_j * pue.value
    energy_kwh = energy_facility_j / J_PER_KWH
    location_g = energy_kwh * location_factor.intensity_g_per_kwh

    market_g: float | None = None
    basis: MarketBasis | None = None
    reason: str | None = None
    if market_factor is not None and coverage == 1.0:
        market_g = energy_kwh * market_factor.intensity_g_per_kwh
        basis = "contractual"
    elif market_factor is not None and residual_mix_factor is not None:
        market_g = energy_kwh * (
            coverage * market_factor.intensity_g_per_kwh
            + (1.0 - coverage) * residual_mix_factor.intensity_g_per_kwh
        )
        basis = "contractual+residual_mix"
    elif market_factor is not None:
        reason = (
            f"the contractual instrument covers {coverage:.0%} of the energy and no residual-mix "
            "factor was supplied for the rest"
        )
    elif residual_mix_factor is not None:
        market_g = energy_kwh * residual_mix_factor.intensity_g_per_kwh
        basis = "residual_mix"
    else:
        reason = (
            "no contractual-instrument or residual-mix factor was supplied; the location-based "
            "factor is not substituted"
        )

    notes = _pue_notes(pue) + _factor_notes(location_factor, market_factor, residual_mix_factor)
    return Scope2Emissions(
        energy_it_j=energy_it_j,
        energy_facility_j=energy_facility_j,
        pue=pue,
        location_co2e_g=location_g,
        location_factor=location_factor,
        market_co2e_g=market_g,
        market_basis=basis,
        market_factor=market_factor,
        market_coverage=coverage if market_factor is not None else None,
        residual_mix_factor=residual_mix_factor,
        market_unavailable_reason=reason,
        notes=notes,
    )


def _require_kind(factor: EmissionFactor, allowed: frozenset[str], role: str) -> None:
    if factor.kind in allowed:
        return
    extra = ""
    if role.startswith("SCI") and factor.kind == "market":
        extra = (
            " The SCI excludes market-based measures (RECs, PPAs, EACs, offsets): use an average"
            " or marginal grid intensity for the region instead."
        )
    raise FactorKindError(
        f"{role} needs a factor of kind {' or '.join(sorted(allowed))}; the factor for region "
        f"{factor.region!r} ({factor.source}) is of kind {factor.kind!r}.{extra}"
    )


def _require_covers(factor: EmissionFactor | None, at: date) -> None:
    if factor is not None and not factor.covers(at):
        raise FactorNotValid(
            f"the {factor.kind} factor for region {factor.region!r} ({factor.source}) is valid "
            f"{chk.iso(factor.valid_from) or '…'} to {chk.iso(factor.valid_to) or '…'}, "
            f"not on {chk.as_date(at).isoformat()}"
        )


def _pue_notes(pue: Pue) -> tuple[str, ...]:
    notes = []
    if pue.is_assumption:
        notes.append(f"PUE {pue.value} is an assumption ({pue.source}).")
    if pue.note and not pue.is_assumption:
        notes.append(f"PUE: {pue.note}")
    return tuple(notes)


def _factor_notes(*factors: EmissionFactor | None) -> tuple[str, ...]:
    return tuple(
        f"{f.kind} factor {f.region}: {f.note}" for f in factors if f is not None and f.note
    )


# --------------------------------------------------------------------------------------------
# SCI


@dataclass(frozen=True, slots=True)
class FunctionalUnit:
    """The SCI's R: what the software delivered, named, and how many of it.

    Attributes:
        name: The unit, singular (``"training run"``, ``"token"``, ``"API call"``).
        count: How many units the measured energy and hardware time delivered (> 0).
    """

    name: str
    count: float = 1.0

    def __post_init__(self) -> None:
        chk.non_empty(self.name, "functional_unit.name")
        object.__setattr__(self, "count", chk.positive(self.count, "functional_unit.count"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {"name": self.name, "count": self.count}


@dataclass(frozen=True, slots=True)
class EmbodiedShare:
    """The SCI's M for one piece of hardware: TE × (TiR / EL) × (RR / ToR).

    Attributes:
        total_embodied_g: TE, the hardware's life-cycle embodied emissions, gCO2e (≥ 0).
        time_reserved_s: TiR, how long the software reserved the hardware, s.
        expected_lifespan_s: EL, how long the hardware stays installed, s (`YEAR_S` helps).
        source: Where TE comes from (an LCA, a vendor report, an explicit assumption).
        resources_reserved: RR, e.g. GPUs reserved out of a node.
        total_resources: ToR, e.g. the node's GPU count.
        label: What the hardware is, for the report.
    """

    total_embodied_g: float
    time_reserved_s: float
    expected_lifespan_s: float
    source: str
    resources_reserved: float = 1.0
    total_resources: float = 1.0
    label: str | None = None

    def __post_init__(self) -> None:
        te = chk.non_negative(self.total_embodied_g, "total_embodied_g")
        tir = chk.non_negative(self.time_reserved_s, "time_reserved_s")
        el = chk.positive(self.expected_lifespan_s, "expected_lifespan_s")
        rr = chk.non_negative(self.resources_reserved, "resources_reserved")
        tor = chk.positive(self.total_resources, "total_resources")
        chk.non_empty(self.source, "embodied.source")
        # Both shares above 1 would allocate more than the hardware's whole footprint: almost
        # always a unit slip (hours given as seconds), so refuse it rather than report it.
        if tir > el:
            raise InvalidQuantity(
                f"time reserved ({tir} s) exceeds the expected lifespan ({el} s)",
                field="time_reserved_s",
            )
        if rr > tor:
            raise InvalidQuantity(
                f"resources reserved ({rr}) exceed the total resources ({tor})",
                field="resources_reserved",
            )
        for name, value in (
            ("total_embodied_g", te),
            ("time_reserved_s", tir),
            ("expected_lifespan_s", el),
            ("resources_reserved", rr),
            ("total_resources", tor),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def from_quantities(
        cls,
        total_embodied: Any,
        *,
        time_reserved: Any,
        expected_lifespan: Any,
        source: str,
        resources_reserved: float = 1.0,
        total_resources: float = 1.0,
        label: str | None = None,
    ) -> EmbodiedShare:
        """Build from edge quantities (``"1000 kgCO2e"``, ``"1 h"``, ``"35040 h"``).

        Note that pint's ``year`` is 365.25 days, not the SCI example's 365.
        """
        from .units import magnitude_in  # pint stays out of this module's import

        return cls(
            total_embodied_g=magnitude_in(total_embodied, "gCO2e", field="total_embodied"),
            time_reserved_s=magnitude_in(time_reserved, "s", field="time_reserved"),
            expected_lifespan_s=magnitude_in(expected_lifespan, "s", field="expected_lifespan"),
            source=source,
            resources_reserved=resources_reserved,
            total_resources=total_resources,
            label=label,
        )

    @property
    def time_share(self) -> float:
        """TiR / EL."""
        return self.time_reserved_s / self.expected_lifespan_s

    @property
    def resource_share(self) -> float:
        """RR / ToR."""
        return self.resources_reserved / self.total_resources

    @property
    def embodied_g(self) -> float:
        """M for this hardware, gCO2e."""
        return self.total_embodied_g * self.time_share * self.resource_share

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record with the inputs and M."""
        return {
            "label": self.label,
            "total_embodied_g": self.total_embodied_g,
            "time_reserved_s": self.time_reserved_s,
            "expected_lifespan_s": self.expected_lifespan_s,
            "resources_reserved": self.resources_reserved,
            "total_resources": self.total_resources,
            "time_share": self.time_share,
            "resource_share": self.resource_share,
            "embodied_g": self.embodied_g,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class SciResult:
    """An SCI score with its parts and the assumptions behind them.

    Attributes:
        sci_g_per_unit: (O + M) / R.count, gCO2e per functional unit.
        functional_unit: R.
        operational_g: O = E·I over the whole measured window, gCO2e.
        embodied_g: M summed over the hardware, gCO2e.
        energy_it_j: IT energy, J.
        energy_kwh: E, kWh, including PUE.
        pue: The PUE applied.
        intensity: The grid factor I.
        embodied: The embodied components.
        boundary: The software boundary as the caller described it.
        notes: Caveats a reader must see.
    """

    sci_g_per_unit: float
    functional_unit: FunctionalUnit
    operational_g: float
    embodied_g: float
    energy_it_j: float
    energy_kwh: float
    pue: Pue
    intensity: EmissionFactor
    embodied: tuple[EmbodiedShare, ...]
    boundary: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def total_g(self) -> float:
        """C = O + M over the measured window, gCO2e."""
        return self.operational_g + self.embodied_g

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the score, its parts and its provenance."""
        return {
            "sci_g_per_unit": self.sci_g_per_unit,
            "per": self.functional_unit.name,
            "functional_unit": self.functional_unit.to_dict(),
            "total_g": self.total_g,
            "operational_g": self.operational_g,
            "embodied_g": self.embodied_g,
            "energy_it_j": self.energy_it_j,
            "energy_kwh": self.energy_kwh,
            "pue": self.pue.to_dict(),
            "intensity": self.intensity.to_dict(),
            "embodied": [e.to_dict() for e in self.embodied],
            "boundary": self.boundary,
            "notes": list(self.notes),
        }


def software_carbon_intensity(
    *,
    energy_j: float,
    pue: Pue,
    intensity: EmissionFactor,
    embodied: EmbodiedShare | Sequence[EmbodiedShare],
    functional_unit: FunctionalUnit,
    boundary: str | None = None,
    at: date | None = None,
) -> SciResult:
    """SCI = (E·I + M) per R (ISO/IEC 21031:2024).

    Args:
        energy_j: IT energy of everything reserved inside the boundary, J (≥ 0).
        pue: Facility overhead; use a real PUE when the boundary includes the data centre and
            ``default_pue("none")`` when it does not.
        intensity: I, an ``average``, ``location`` (grid average) or ``marginal`` grid factor.
        embodied: M's components; an empty sequence is allowed but flagged as understating.
        functional_unit: R, named, with the count of units delivered.
        boundary: A description of the software boundary, reported with the score.
        at: Date being accounted; the factor's validity window must cover it when given.

    Returns:
        The score and its parts.

    Raises:
        FactorKindError: ``intensity`` is a market-based factor (the SCI excludes them).
        FactorNotValid: ``at`` lies outside the factor's validity window.
        InvalidQuantity: Negative or non-finite energy.
    """
    energy_it_j = chk.non_negative(energy_j, "energy_j")
    _require_kind(intensity, _SCI_KINDS, "SCI intensity I")
    if at is not None:
        _require_covers(intensity, at)
    components = (embodied,) if isinstance(embodied, EmbodiedShare) else tuple(embodied)

    energy_kwh = energy_it_j * pue.value / J_PER_KWH
    operational_g = energy_kwh * intensity.intensity_g_per_kwh
    embodied_g = float(sum(c.embodied_g for c in components))
    notes = list(_pue_notes(pue) + _factor_notes(intensity))
    if not components:
        notes.append(
            "No embodied emissions (M) were supplied: the SCI requires them, so this score is "
            "understated."
        )
    return SciResult(
        sci_g_per_unit=(operational_g + embodied_g) / functional_unit.count,
        functional_unit=functional_unit,
        operational_g=operational_g,
        embodied_g=embodied_g,
        energy_it_j=energy_it_j,
        energy_kwh=energy_kwh,
        pue=pue,
        intensity=intensity,
        embodied=components,
        boundary=boundary,
        notes=tuple(notes),
    )
