"""API schemas of the ledger, the factor and tariff versions, rollups and the audit.

Kept apart from `service.schemas` (the ingest path's models) so the two evolve separately;
the conventions are the same: ``XCreate`` in, ``XPublic`` out, quantities as
``{"value": 3.6, "unit": "MJ"}`` or ``"3.6 MJ"`` checked by the routes with
`accounting.units.parse_quantity` (a wrong dimension is a 422 naming the field and both
dimensions), and `given_unit` keeps the unit exactly as the client wrote it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
)

from thermoledger.accounting.carbon import Pue
from thermoledger.accounting.units import InvalidQuantity, QuantityT, parse_quantity
from thermoledger.db.factors import AccountingConfig, FactorVersion, TariffVersion
from thermoledger.db.ledger import LedgerRecord
from thermoledger.db.models import FactorBasis, FactorRate, LedgerSource

from .schemas import QuantityIn
from .timebounds import StoredTime

__all__ = [
    "INT64_MAX",
    "INTENSITY_MAX_G_PER_KWH",
    "PRICE_MAX_USD_PER_KWH",
    "PUE_MAX",
    "REGION_PATTERN",
    "AccountingPublic",
    "AccountingSet",
    "FactorCreate",
    "FactorList",
    "FactorPublic",
    "FigureName",
    "Instant",
    "LedgerEntryCreate",
    "LedgerEntryPublic",
    "LedgerPage",
    "MeasuredPue",
    "PuePublic",
    "QuantityPublic",
    "RollupsPublic",
    "TariffCreate",
    "TariffPublic",
    "VerifyPublic",
    "VersionClose",
    "given_unit",
    "parse_edge_quantity",
]

_API = ConfigDict(extra="forbid", allow_inf_nan=False)
_NO_NUL = r"^[^\x00]*$"

#: Grid regions: ``WORLD``, ISO 3166-1 codes (``DE``), grid zones (``US-CAL-CISO``), any case.
REGION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
Region = Annotated[str, StringConstraints(pattern=REGION_PATTERN)]
Text500 = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=_NO_NUL)
]
Year = Annotated[int, Field(ge=1900, le=2200)]
FigureName = Literal[
    "it_energy",
    "facility_energy",
    "co2e_location",
    "co2e_market",
    "embodied",
    "offset",
    "energy_cost",
    "hardware_cost",
    "tokens",
    "flops",
]
_UNIT_MAX = 64
#: Largest value of a BIGINT column (ledger seqs).
INT64_MAX = 2**63 - 1
#: Bounds that keep every derived figure finite: PUE (facility / IT energy; real data
#: centres sit between 1.0 and 3), grid intensity (the dirtiest grids emit ~1.2 kgCO2e/kWh)
#: and electricity prices (wholesale spikes reach ~10 USD/kWh).
PUE_MAX = 10.0
INTENSITY_MAX_G_PER_KWH = 1e5
PRICE_MAX_USD_PER_KWH = 1e3


#: An aware instant inside the service's stored time range (`service.timebounds`): ledger
#: instants, validity windows, and the ``from``/``to``/``at`` filters (refused outside it).
Instant = StoredTime


def given_unit(raw: Any, *, field: str) -> str:
    """The unit exactly as the client wrote it (``{"unit": "kWh"}`` or ``"3.6 kWh"``).

    Call after `parse_quantity` accepted ``raw``.

    Raises:
        InvalidQuantity: Longer than the 64 characters a stored unit may have.
    """
    unit = raw["unit"] if isinstance(raw, dict) else str(raw).strip().partition(" ")[2]
    unit = unit.strip() or "dimensionless"
    if len(unit) > _UNIT_MAX:
        raise InvalidQuantity(f"unit longer than {_UNIT_MAX} characters", field=field)
    return unit


def parse_edge_quantity(raw: Any, dimension: str, *, field: str) -> tuple[QuantityT, str]:
    """`parse_quantity` plus the unit as given.

    Raises:
        DimensionMismatch: Another dimension (422 naming both).
        InvalidQuantity: Malformed, non-finite, or an over-long unit.
    """
    quantity = parse_quantity(raw, dimension, field=field)
    return quantity, given_unit(raw, field=field)


class QuantityPublic(BaseModel):
    """A value with its unit, as given."""

    value: float
    unit: str


# --------------------------------------------------------------------------- ledger


class LedgerEntryCreate(BaseModel):
    """A figure posted by hand: an offset, embodied carbon, a correction, a figure metered
    elsewhere. Corrections are new entries naming the seq they ``supersedes``."""

    model_config = _API

    figure: FigureName
    quantity: QuantityIn = Field(description='e.g. "1.2 tCO2e" or {"value": 3.6, "unit": "MJ"}')
    run_id: UUID | None = None
    source: LedgerSource = LedgerSource.DECLARED
    at: Instant | None = Field(
        default=None,
        description="the instant the figure belongs to; default: the superseded entry's, "
        "else the run's end, else now",
    )
    supersedes: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None
    reference: Text500 = Field(description="where the number comes from (LCA, invoice, …)")
    note: Text500 | None = None


class LedgerEntryPublic(BaseModel):
    """A ledger entry."""

    seq: int
    id: int
    project: str
    run_id: UUID | None
    kind: str
    figure: str
    source: str
    value: QuantityPublic
    value_si: float
    unit_si: str
    accounted_at: datetime
    created_at: datetime
    superseded_by: int | None
    provenance: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, record: LedgerRecord) -> LedgerEntryPublic:
        """From a ledger record."""
        return cls(
            seq=record.seq,
            id=record.id,
            project=record.project,
            run_id=record.run_id,
            kind=record.kind.value,
            figure=record.figure,
            source=record.source.value,
            value=QuantityPublic(value=record.value_given, unit=record.unit_given),
            value_si=record.value_si,
            unit_si=record.unit_si,
            accounted_at=record.accounted_at,
            created_at=record.created_at,
            superseded_by=record.superseded_by,
            provenance=record.provenance,
            prev_hash=record.prev_hash,
            hash=record.hash,
        )


class LedgerPage(BaseModel):
    """One page of entries, oldest first; pass ``next_after`` as ``after`` for the next."""

    items: list[LedgerEntryPublic]
    next_after: int | None


# --------------------------------------------------------------------------- factors, tariffs


class FactorCreate(BaseModel):
    """A new emission-factor version: the project's own (project admin) or shared (operator)."""

    model_config = _API

    region: Region
    basis: FactorBasis
    rate: FactorRate = FactorRate.AVERAGE
    intensity: QuantityIn = Field(description='e.g. "350 gCO2e/kWh" or "0.35 kgCO2e/kWh"')
    valid_from: Instant
    valid_to: Instant | None = Field(default=None, description="exclusive; null: open")
    source: Text500
    year: Year | None = None


class FactorPublic(BaseModel):
    """An emission-factor version (``id`` null for a built-in default)."""

    id: int | None
    builtin: bool
    shared: bool
    region: str
    basis: FactorBasis
    rate: FactorRate
    intensity: QuantityPublic
    intensity_g_per_kwh: float
    valid_from: datetime | None
    valid_to: datetime | None
    source: str
    year: int | None
    created_at: datetime | None
    note: str | None

    @classmethod
    def of(cls, version: FactorVersion) -> FactorPublic:
        """From a version."""
        return cls(
            id=version.id,
            builtin=version.builtin,
            shared=version.project_id is None,
            region=version.region,
            basis=version.basis,
            rate=version.rate,
            intensity=QuantityPublic(value=version.value, unit=version.unit),
            intensity_g_per_kwh=version.intensity_g_per_kwh,
            valid_from=version.valid_from,
            valid_to=version.valid_to,
            source=version.source,
            year=version.year,
            created_at=version.created_at,
            note=version.note,
        )


class FactorList(BaseModel):
    """Stored versions visible to the caller, and the built-in defaults."""

    items: list[FactorPublic]
    builtin: list[FactorPublic]


class VersionClose(BaseModel):
    """End an open-ended version."""

    model_config = _API

    valid_to: Instant


class TariffCreate(BaseModel):
    """A new tariff version: the project's own (project admin) or shared (operator)."""

    model_config = _API

    region: Region
    price: QuantityIn = Field(description='e.g. "0.12 USD/kWh" or "120 USD/MWh"')
    valid_from: Instant
    valid_to: Instant | None = Field(default=None, description="exclusive; null: open")
    source: Text500
    year: Year | None = None


class TariffPublic(BaseModel):
    """A tariff version."""

    id: int
    shared: bool
    region: str
    price: QuantityPublic
    usd_per_kwh: float
    valid_from: datetime
    valid_to: datetime | None
    source: str
    year: int | None
    created_at: datetime

    @classmethod
    def of(cls, version: TariffVersion) -> TariffPublic:
        """From a version."""
        return cls(
            id=version.id,
            shared=version.project_id is None,
            region=version.region,
            price=QuantityPublic(value=version.value, unit=version.unit),
            usd_per_kwh=version.usd_per_kwh,
            valid_from=version.valid_from,
            valid_to=version.valid_to,
            source=version.source,
            year=version.year,
            created_at=version.created_at,
        )


# --------------------------------------------------------------------------- project settings


class MeasuredPue(BaseModel):
    """A PUE measured or published for the actual facility."""

    model_config = _API

    value: Annotated[float, Field(ge=1.0, le=PUE_MAX)]
    source: Text500
    year: Year | None = None


def _pue_branch(value: Any) -> str:
    return "default" if isinstance(value, str) else "measured"


#: A built-in default's name, or a measured PUE; errors name the branch the value took
#: (``pue.measured.value``), not both.
PueIn = Annotated[
    Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$"), Tag("default")]
    | Annotated[MeasuredPue, Tag("measured")],
    Discriminator(_pue_branch),
]


class AccountingSet(BaseModel):
    """The project's grid region and PUE (``pue``: a built-in default's name, or measured)."""

    model_config = _API

    region: Region = Field(description="e.g. WORLD, DE, US-CAL-CISO; never guessed")
    pue: PueIn = Field(
        default="none",
        description="hyperscale, typical, colocation, on_prem_unknown, none (IT only), or "
        '{"value": 1.2, "source": "..."}',
    )


class PuePublic(BaseModel):
    """A PUE with its provenance."""

    value: float
    name: str
    kind: str
    source: str
    year: int | None

    @classmethod
    def of(cls, pue: Pue) -> PuePublic:
        """From an accounting PUE."""
        return cls(value=pue.value, name=pue.name, kind=pue.kind, source=pue.source, year=pue.year)


class AccountingPublic(BaseModel):
    """The project's region and PUE (``region`` null: not configured, no carbon derived)."""

    project: str
    region: str | None
    pue: PuePublic
    updated_at: datetime | None

    @classmethod
    def of(cls, config: AccountingConfig, project: str) -> AccountingPublic:
        """From the stored configuration."""
        return cls(
            project=project,
            region=config.region,
            pue=PuePublic.of(config.pue),
            updated_at=config.updated_at,
        )


# --------------------------------------------------------------------------- audit


class ChainProblemPublic(BaseModel):
    """One broken (or missing) entry."""

    kind: str
    seq: int
    id: int | None
    message: str


class HeadPublic(BaseModel):
    """The chain's last entry: publish it, and verify later with ``anchor=seq:hash``."""

    seq: int
    hash: str


class VerifyPublic(BaseModel):
    """The verification of one project's chain."""

    project: str
    ok: bool
    entries: int
    head: HeadPublic
    problems: list[ChainProblemPublic]


# --------------------------------------------------------------------------- rollups

_ROLLUP = ConfigDict(extra="forbid")
_Status = Annotated[
    Literal["available", "not_available"],
    Field(description="``available`` only when every run of the group has the figure."),
]
_Reason = Annotated[str | None, Field(description="Why there is no total; None when there is.")]


class _Covered(BaseModel):
    """A sum that is a total only when every run of the group has the figure; the total and
    the covered sum carry their unit in their names (``kwh``, ``g``, ``usd``)."""

    model_config = _ROLLUP

    status: _Status
    runs_covered: int = Field(description="Runs of the group with the figure.")
    runs: int = Field(description="Runs of the group.")
    reason: _Reason


class CoveredKwh(_Covered):
    """An energy sum."""

    kwh: float | None = Field(description="The total, kWh; None when not available.")
    covered_kwh: float | None = Field(
        description="Sum over the runs that have it, kWh; None when no entry was summed."
    )


class CoveredG(_Covered):
    """An emissions sum."""

    g: float | None = Field(description="The total, gCO2e; None when not available.")
    covered_g: float | None = Field(
        description="Sum over the runs that have it, gCO2e; None when no entry was summed."
    )


class CoveredUsd(_Covered):
    """A cost sum."""

    usd: float | None = Field(description="The total, USD; None when not available.")
    covered_usd: float | None = Field(
        description="Sum over the runs that have it, USD; None when no entry was summed."
    )


class RollupEnergy(BaseModel):
    """IT and facility energy of the group and period."""

    model_config = _ROLLUP

    it_kwh: float = Field(description="Σ IT energy, kWh.")
    facility: CoveredKwh = Field(description="Σ facility energy (IT × each run's PUE).")


class RollupCo2e(BaseModel):
    """Scope 2 emissions, location- and market-based side by side."""

    model_config = _ROLLUP

    location_based: CoveredG
    market_based: CoveredG


class RollupCost(BaseModel):
    """Energy and hardware cost."""

    model_config = _ROLLUP

    status: _Status
    usd: float | None = Field(description="Energy + hardware cost, USD; None without energy cost.")
    energy: CoveredUsd
    hardware_usd: float | None = Field(description="Σ hardware cost, USD; None: none recorded.")


class RollupSci(BaseModel):
    """An SCI score per one functional unit, or why there is none."""

    model_config = _ROLLUP

    status: _Status
    functional_unit: str = Field(description="``run`` or ``1k tokens``.")
    g_per_unit: float | None = Field(description="(O + M) / R, gCO2e per unit.")
    count: float | None = Field(description="R, units delivered; None: no tokens declared.")
    reason: _Reason


class RollupSciPair(BaseModel):
    """SCI per run and per 1000 tokens."""

    model_config = _ROLLUP

    per_run: RollupSci
    per_1k_tokens: RollupSci


class RollupRowPublic(BaseModel):
    """One period and group: sums of the ledger's current figures."""

    model_config = _ROLLUP

    period: str = Field(description="``2026-03`` (month) or ``2026-Q1`` (quarter), UTC.")
    group: str | None = Field(description="The project slug or the tag's value (None: untagged).")
    runs: int = Field(description="Runs with an IT energy figure.")
    simulated_runs: int = Field(description="Of which metered on simulated devices.")
    energy: RollupEnergy
    co2e: RollupCo2e
    cost: RollupCost
    embodied_g: float | None = Field(
        description="Σ embodied emissions (M), gCO2e; None: none recorded."
    )
    offsets_g: float = Field(description="Σ offsets retired, gCO2e (never netted).")
    tokens: float | None = Field(description="Σ tokens declared; None: no run declared any.")
    runs_with_tokens: int
    sci: RollupSciPair
    entries: list[int] = Field(description="Seqs of every ledger entry summed.")
    notes: list[str]


class RollupsPublic(BaseModel):
    """The project's rollups per period and group, with the method that produced them."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True)

    project: str
    period: Literal["month", "quarter"]
    group_by: Literal["project", "tag"]
    tag_key: str | None = Field(description="The tag grouped by (``group_by=tag``).")
    start: str | None = Field(alias="from", description="Start of the range (ISO), inclusive.")
    end: str | None = Field(alias="to", description="End of the range (ISO), exclusive.")
    method: str = Field(description="How every figure was summed.")
    rows: list[RollupRowPublic]
