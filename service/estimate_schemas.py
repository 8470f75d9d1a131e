"""Schemas of ``POST /api/v1/runs/{run_id}/estimate``: an estimated run, and what it ledgered.

Quantities come with their units (``"14.8 day"``, ``"330 W"``, ``"0.954 lbCO2e/kWh"``) and are
converted to SI here, at the edge (`EstimateCreate.to_estimate`); the arithmetic is
`accounting.estimates.estimate_run`'s. Every refusal names the body's field.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from thermoledger.accounting.estimates import (
    EstimateSource,
    InputValue,
    Interval,
    InvalidEstimate,
    RunEstimate,
    estimate_run,
)
from thermoledger.accounting.units import magnitude_in
from thermoledger.db.ledger import LedgerRecord
from thermoledger.db.models import RunKind

from .ledger_schemas import LedgerEntryPublic
from .schemas import _API, Name, QuantityIn, RunPublic, Slug, TagKey, TagValue
from .timebounds import StoredTime

__all__ = ["BandIn", "EstimateBand", "EstimateCreate", "EstimatePublic", "SourceIn"]

_NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(max_length=1000, pattern=_NO_NUL)]
ShortText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300, pattern=_NO_NUL)
]
#: A range end: a quantity for inputs with a unit, a plain number for dimensionless ones.
EndIn = Annotated[
    Any, Field(description='a quantity ("250 W") or, for pue and utilisation, a number')
]


class BandIn(BaseModel):
    """How uncertain one input is: a relative uncertainty, or the low and high ends."""

    model_config = _API

    rel: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="relative uncertainty: the range is value × (1 ± rel)"
    )
    low: EndIn | None = None
    high: EndIn | None = None


class EstimateBand(BaseModel):
    """The inputs' ranges; an input left out contributes none to the band."""

    model_config = _API

    energy: BandIn | None = None
    device_time: BandIn | None = None
    devices: BandIn | None = None
    duration: BandIn | None = None
    mean_power: BandIn | None = None
    tdp: BandIn | None = None
    utilisation: BandIn | None = None
    pue: BandIn | None = None
    intensity: BandIn | None = None


class SourceIn(BaseModel):
    """Where the inputs come from."""

    model_config = _API

    source: ShortText = Field(description="who states the inputs: authors, a bill, a scheduler")
    document: ShortText | None = Field(default=None, description="title, arXiv id, URL, invoice")
    page: ShortText | None = Field(default=None, description="page, table or section")
    note: Text | None = Field(default=None, description="what was derived or assumed")


#: Each input's unit inside (None: a plain number).
_UNITS: dict[str, str | None] = {
    "energy": "J",
    "device_time": "s",
    "devices": None,
    "duration": "s",
    "mean_power": "W",
    "tdp": "W",
    "utilisation": None,
    "pue": None,
    "intensity": "gCO2e/kWh",
}


class EstimateCreate(BaseModel):
    """An estimated run: device time × mean power (or TDP × utilisation) × PUE, or an energy
    the source states (``energy``, e.g. an external tool's figure) × PUE.

    Device time is ``device_time`` (device-hours as a time, ``"1082990 h"``) or ``devices`` ×
    ``duration``. Mean power is ``mean_power``, or ``utilisation`` × ``tdp`` (default: the
    catalog's TDP of ``device``). ``pue`` defaults to the project's; ``intensity`` (a
    location-based grid figure, e.g. ``"429 gCO2e/kWh"`` or ``"0.954 lbCO2e/kWh"``) defaults to
    the project's factor valid at the run's end. ``energy`` (IT energy, ``"0.47 kWh"``) takes
    the place of every device-time and power input.

    ``project``, when given, must be the token's project (409 otherwise): a client that names
    the project it means is told when its token belongs to another. With ``supersede`` false a
    run that already has a different estimate is refused (409) instead of superseded; the same
    estimate again is a no-op either way.
    """

    model_config = _API

    name: Name | None = Field(
        default=None, description="the run's name; required when this call creates the run"
    )
    kind: RunKind = RunKind.TRAINING
    started_at: StoredTime | None = Field(
        default=None, description="when the run started (default: its stored start, or now)"
    )
    ended_at: StoredTime | None = Field(
        default=None,
        description="when it ended (default: its stored end, or start + duration, or now)",
    )
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=64)] = Field(default_factory=dict)
    project: Slug | None = Field(
        default=None, description="the project meant; must be the token's (409 otherwise)"
    )
    supersede: bool = Field(
        default=True,
        description="false: refuse (409) when the run already has a different estimate",
    )
    energy: QuantityIn | None = Field(
        default=None,
        description='IT energy stated by the source, "0.47 kWh" (instead of device time × power)',
    )
    device_time: QuantityIn | None = Field(default=None, description='device-hours, "1082990 h"')
    devices: Annotated[float, Field(gt=0, le=1e12)] | None = Field(
        default=None, description="number of devices (with duration)"
    )
    duration: QuantityIn | None = Field(default=None, description='wall-clock time, "14.8 day"')
    mean_power: QuantityIn | None = Field(default=None, description='per device, "330 W"')
    tdp: QuantityIn | None = Field(default=None, description='per device, "400 W"')
    utilisation: float | None = Field(default=None, description="mean fraction of TDP, (0, 1]")
    device: ShortText | None = Field(
        default=None, description="device name (a driver's name or a catalog id)"
    )
    pue: float | None = Field(default=None, description="facility / IT energy, ≥ 1")
    intensity: QuantityIn | None = Field(default=None, description='"429 gCO2e/kWh"')
    band: EstimateBand = Field(default_factory=EstimateBand)
    provenance: SourceIn

    def _value(self, name: str) -> InputValue | None:
        raw = getattr(self, name)
        if raw is None:
            return None
        unit = _UNITS[name]
        value = float(raw) if unit is None else magnitude_in(raw, unit, field=name)
        band: BandIn | None = getattr(self.band, name)
        if band is None:
            return value
        return Interval.of(
            value,
            rel=band.rel,
            low=None if band.low is None else _end(band.low, unit, f"band.{name}.low"),
            high=None if band.high is None else _end(band.high, unit, f"band.{name}.high"),
            field=f"band.{name}",
        )

    def to_estimate(self) -> RunEstimate:
        """The estimate, in SI (`accounting.estimates.estimate_run`).

        Raises:
            InvalidQuantity: (or `DimensionMismatch`) a malformed quantity, naming its field.
            InvalidEstimate: A missing, contradictory or out-of-range input, naming it.
        """
        for name in _UNITS:
            if getattr(self.band, name) is not None and getattr(self, name) is None:
                raise InvalidEstimate(
                    f"a range for {name}, which is not given", field=f"band.{name}"
                )
        return estimate_run(
            source=EstimateSource(
                self.provenance.source,
                document=self.provenance.document,
                page=self.provenance.page,
                note=self.provenance.note,
            ),
            device_time_s=self._value("device_time"),
            devices=self._value("devices"),
            duration_s=self._value("duration"),
            mean_power_w=self._value("mean_power"),
            tdp_w=self._value("tdp"),
            utilisation=self._value("utilisation"),
            device=self.device,
            pue=self._value("pue"),
            intensity_g_per_kwh=self._value("intensity"),
            energy_j=self._value("energy"),
        )


def _end(raw: Any, unit: str | None, field: str) -> float:
    if unit is not None:
        return magnitude_in(raw, unit, field=field)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidEstimate(f"expected a number, got {raw!r}", field=field)
    return float(raw)


class EstimatePublic(BaseModel):
    """The estimated run, the estimate's record, and the ledger entries it appended."""

    run: RunPublic
    estimate: dict[str, Any] = Field(
        description="inputs in SI, the figures with their ranges, the band rule, provenance"
    )
    entries: list[LedgerEntryPublic] = Field(
        description="entries appended by this call (none when the same estimate was posted)"
    )

    @classmethod
    def of(
        cls, run: RunPublic, estimate: RunEstimate, entries: list[LedgerRecord]
    ) -> EstimatePublic:
        """From the stored run, the estimate and the appended entries."""
        return cls(
            run=run,
            estimate=estimate.to_dict(),
            entries=[LedgerEntryPublic.of(e) for e in entries],
        )
