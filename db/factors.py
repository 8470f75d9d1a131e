"""Versioned emission factors and tariffs, and each project's region and PUE.

Versions
--------
An `db.models.EmissionFactor` or `db.models.Tariff` row is one **version**: a value valid over
``[valid_from, valid_to)`` (``valid_to`` NULL = until further notice). Versions of the same key
— (region, basis, rate, project) for factors, (region, project) for tariffs; ``project`` NULL
is a shared version — never overlap: `add_factor` / `add_tariff` refuse an overlapping window
with `Conflict` naming the version in the way. A version is never edited, with one exception:
`close_factor` / `close_tariff` set the ``valid_to`` of an open-ended version, so that a newer
one can follow it. Figures already derived with a version are frozen in the ledger with that
version's id, value, source and window (`db.ledger`): adding, or closing, a version never
changes a published figure.

Lookup (`find_factor`, `find_tariff`) takes a region and an instant: the project's own version
covering it, else a shared one, else — for location-based grid averages only — the **built-in
default** for the region from ``accounting/data/factors.toml`` (annual, country-level Ember
figures with source and year; `accounting.carbon.default_emission_factors`). Built-ins are
resolved in code rather than seeded as rows, so that they are visibly *defaults* (``id`` None,
``builtin`` true in every provenance record) and a database never holds a copy that silently
differs from the release it runs. There are no built-in market-based factors (residual mixes
are supplier- and year-specific) and no built-in tariffs: without one of the project's or a
shared version, the market-based figure and the cost are *not available*, never guessed.

Region and PUE (`db.models.ProjectAccounting`) are set explicitly per project. Without a
region nothing is looked up (no carbon is derived); without a PUE the boundary is IT-only
(``none``, 1.0, labelled as such).

One resolution
--------------
`resolve_context` is the single place that turns a project and an instant into the
`AccountingContext` every carbon and cost figure is derived with: region, PUE, the location-
and market-based factor versions and the tariff version valid at that instant, and — for each
figure that cannot be derived — the reason, worded once (`unavailable_reasons`). The ledger
freezes a run's figures with it (`db.ledger.record_run_end`); the run reports, pages and
economics use it too, through the ledger's frozen record where there is one (`db.basis`), so
that a figure never differs between a report and the ledger. The arithmetic is the context's
too (`AccountingContext.co2e_location_g` …), in the order the accounting core does it, so the
two agree to the last bit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from thermoledger.accounting.carbon import J_PER_KWH, Pue, default_emission_factors, default_pue
from thermoledger.accounting.units import magnitude_in

from .errors import Conflict, InvalidInput, NotFound
from .models import (
    EmissionFactor,
    FactorBasis,
    FactorRate,
    ProjectAccounting,
    PueKind,
    Tariff,
)
from .types import utcnow

__all__ = [
    "CONTEXT_FIGURES",
    "AccountingConfig",
    "AccountingContext",
    "AppliedVersion",
    "FactorVersion",
    "TariffVersion",
    "add_factor",
    "add_tariff",
    "builtin_factors",
    "close_factor",
    "close_tariff",
    "find_factor",
    "find_tariff",
    "get_accounting",
    "list_factors",
    "list_tariffs",
    "normalize_region",
    "resolve_context",
    "set_accounting",
    "unavailable_reasons",
]

#: Name of the built-in defaults in provenance records.
BUILTIN_SOURCE = "accounting/data/factors.toml"


def normalize_region(region: str) -> str:
    """Regions compare case-insensitively: stored and looked up upper-case, trimmed."""
    return region.strip().upper()


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _window(valid_from: datetime | None, valid_to: datetime | None) -> str:
    start = valid_from.isoformat() if valid_from is not None else "…"
    return f"{start} … {valid_to.isoformat() if valid_to is not None else 'open'}"


@dataclass(frozen=True, slots=True)
class FactorVersion:
    """One emission-factor version, stored or built in.

    Attributes:
        id: The row id; None for a built-in default.
        project_id: The owning project; None for a shared version (and built-ins).
        region: Grid region (upper-case).
        basis: ``location`` or ``market`` (GHG Protocol Scope 2 method).
        rate: ``average`` or ``marginal``.
        value: The value as published, in ``unit``.
        unit: Its unit, e.g. ``gCO2e/kWh`` or ``kgCO2e/MWh``.
        intensity_g_per_kwh: The value in gCO2e/kWh.
        valid_from: Start of validity (None for a built-in: any time).
        valid_to: End of validity, exclusive (None: open).
        source: Where the number comes from.
        year: Year of the underlying data.
        created_at: When the version was added (None for a built-in).
        note: A caveat that travels with the factor (built-ins only).
    """

    id: int | None
    project_id: int | None
    region: str
    basis: FactorBasis
    rate: FactorRate
    value: float
    unit: str
    intensity_g_per_kwh: float
    valid_from: datetime | None
    valid_to: datetime | None
    source: str
    year: int | None
    created_at: datetime | None = None
    note: str | None = None

    @property
    def builtin(self) -> bool:
        """Whether this is a built-in default rather than a stored version."""
        return self.id is None

    def label(self) -> str:
        """``version 12 of DE location/average (shared; valid … )`` for messages."""
        owner = "shared" if self.project_id is None else "this project's"
        name = "the built-in default" if self.builtin else f"version {self.id}"
        return (
            f"{name} of {self.region} {self.basis.value}/{self.rate.value} ({owner}; valid "
            f"{_window(self.valid_from, self.valid_to)}; source: {self.source})"
        )

    def provenance(self) -> dict[str, Any]:
        """What a ledger entry records about the factor it was derived with."""
        return {
            "id": self.id,
            "builtin": self.builtin,
            "scope": "shared" if self.project_id is None else "project",
            "region": self.region,
            "basis": self.basis.value,
            "rate": self.rate.value,
            "value": self.value,
            "unit": self.unit,
            "intensity_g_per_kwh": self.intensity_g_per_kwh,
            "valid_from": _iso(self.valid_from),
            "valid_to": _iso(self.valid_to),
            "source": BUILTIN_SOURCE + ": " + self.source if self.builtin else self.source,
            "year": self.year,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class TariffVersion:
    """One tariff version (there are no built-in tariffs).

    Attributes:
        id: The row id.
        project_id: The owning project; None for a shared version.
        region: Region (upper-case).
        value: Price as published, in ``unit``.
        unit: Its unit, e.g. ``USD/kWh`` or ``USD/MWh``.
        usd_per_kwh: The price in USD/kWh (may be negative: wholesale prices go below zero).
        valid_from: Start of validity.
        valid_to: End of validity, exclusive (None: open).
        source: Where the price comes from.
        year: Year it refers to.
        created_at: When the version was added.
    """

    id: int
    project_id: int | None
    region: str
    value: float
    unit: str
    usd_per_kwh: float
    valid_from: datetime
    valid_to: datetime | None
    source: str
    year: int | None
    created_at: datetime

    def label(self) -> str:
        """``version 3 of the DE tariff (shared; valid …)`` for messages."""
        owner = "shared" if self.project_id is None else "this project's"
        return (
            f"version {self.id} of the {self.region} tariff ({owner}; valid "
            f"{_window(self.valid_from, self.valid_to)}; source: {self.source})"
        )

    def provenance(self) -> dict[str, Any]:
        """What a ledger entry records about the tariff it was priced with."""
        return {
            "id": self.id,
            "scope": "shared" if self.project_id is None else "project",
            "region": self.region,
            "value": self.value,
            "unit": self.unit,
            "usd_per_kwh": self.usd_per_kwh,
            "valid_from": _iso(self.valid_from),
            "valid_to": _iso(self.valid_to),
            "source": self.source,
            "year": self.year,
        }


@dataclass(frozen=True, slots=True)
class AccountingConfig:
    """A project's region and PUE (`db.models.ProjectAccounting`).

    Attributes:
        project_id: The project.
        region: Grid region (upper-case), or None when not configured.
        pue: The PUE with its provenance (``none``, 1.0, when not configured).
        updated_at: When it was last set (None when never).
    """

    project_id: int
    region: str | None
    pue: Pue
    updated_at: datetime | None


def _factor_version(row: EmissionFactor) -> FactorVersion:
    return FactorVersion(
        id=row.id,
        project_id=row.project_id,
        region=row.region,
        basis=row.basis,
        rate=row.rate,
        value=row.value,
        unit=row.unit,
        intensity_g_per_kwh=magnitude_in({"value": row.value, "unit": row.unit}, "gCO2e/kWh"),
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        source=row.source,
        year=row.year,
        created_at=row.created_at,
    )


def _tariff_version(row: Tariff) -> TariffVersion:
    return TariffVersion(
        id=row.id,
        project_id=row.project_id,
        region=row.region,
        value=row.value,
        unit=row.unit,
        usd_per_kwh=magnitude_in({"value": row.value, "unit": row.unit}, "USD/kWh"),
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        source=row.source,
        year=row.year,
        created_at=row.created_at,
    )


def builtin_factors() -> list[FactorVersion]:
    """The built-in location-based grid averages, as versions without an id."""
    return [
        FactorVersion(
            id=None,
            project_id=None,
            region=region,
            basis=FactorBasis.LOCATION,
            rate=FactorRate.AVERAGE,
            value=factor.intensity_g_per_kwh,
            unit="gCO2e/kWh",
            intensity_g_per_kwh=factor.intensity_g_per_kwh,
            valid_from=None,
            valid_to=None,
            source=factor.source,
            year=factor.year,
            note=factor.note,
        )
        for region, factor in sorted(default_emission_factors().items())
    ]


def _serialise(session: Session, table: str) -> None:
    """Serialise version writes of one table on PostgreSQL (SQLite serialises every writer).

    The overlap check reads, then inserts; without the lock two concurrent adds could both
    pass it. Version writes are rare admin actions, so one lock per table is plenty.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"thermoledger:{table}".encode())
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def _check_window(valid_from: datetime, valid_to: datetime | None) -> None:
    if valid_to is not None and valid_to <= valid_from:
        raise InvalidInput.one(
            "valid_to", f"{valid_to.isoformat()} is not after valid_from {valid_from.isoformat()}"
        )


def _overlaps(
    column_from: Any, column_to: Any, valid_from: datetime, valid_to: datetime | None
) -> sa.ColumnElement[bool]:
    """SQL: the stored window ``[column_from, column_to)`` overlaps ``[valid_from, valid_to)``."""
    ends_after_start = sa.or_(column_to.is_(None), column_to > valid_from)
    if valid_to is None:
        return ends_after_start
    return sa.and_(ends_after_start, column_from < valid_to)


def _same_owner(column: Any, project_id: int | None) -> sa.ColumnElement[bool]:
    same: sa.ColumnElement[bool] = column.is_(None) if project_id is None else column == project_id
    return same


_VersionRow = TypeVar("_VersionRow", EmissionFactor, Tariff)


def _add_version(
    session: Session,
    model: type[_VersionRow],
    key: Sequence[sa.ColumnElement[bool]],
    *,
    label: Callable[[_VersionRow], str],
    route: str,
    project_id: int | None,
    valid_from: datetime,
    valid_to: datetime | None,
    **fields: Any,
) -> _VersionRow:
    """Insert a version of ``model`` unless its window overlaps one of the same ``key`` and
    owner (a 409 naming that version; ``route`` is where it is closed)."""
    _serialise(session, model.__tablename__)
    clash = session.scalars(
        sa.select(model)
        .where(
            *key,
            _same_owner(model.project_id, project_id),
            _overlaps(model.valid_from, model.valid_to, valid_from, valid_to),
        )
        .order_by(model.valid_from)
        .limit(1)
    ).one_or_none()
    if clash is not None:
        raise Conflict(
            f"[{_window(valid_from, valid_to)}) overlaps {label(clash)}; "
            f"close that version first (POST /api/v1/{route}/{clash.id}/close) or choose a "
            "window that does not overlap it",
            field="valid_from",
        )
    row = model(project_id=project_id, valid_from=valid_from, valid_to=valid_to, **fields)
    session.add(row)
    session.flush()
    return row


def _close_version(session: Session, row: EmissionFactor | Tariff, valid_to: datetime) -> None:
    """End an open-ended version at ``valid_to``; versions are never otherwise edited."""
    if row.valid_to is not None:
        raise Conflict(
            f"version {row.id} is already closed at {row.valid_to.isoformat()}; versions are "
            "never edited: add a new one",
            field="valid_to",
        )
    _check_window(row.valid_from, valid_to)
    row.valid_to = valid_to
    session.flush()


def _find_version(
    session: Session,
    model: type[_VersionRow],
    covering: sa.ColumnElement[bool],
    project_id: int | None,
) -> _VersionRow | None:
    """The version matching ``covering``: the project's own first, else a shared one."""
    owners = [project_id, None] if project_id is not None else [None]
    for owner in owners:
        row = session.scalars(
            sa.select(model).where(covering, _same_owner(model.project_id, owner)).limit(1)
        ).one_or_none()
        if row is not None:
            return row
    return None


# --------------------------------------------------------------------------- emission factors


def add_factor(
    session: Session,
    *,
    project_id: int | None,
    region: str,
    basis: FactorBasis,
    rate: FactorRate,
    value: float,
    unit: str,
    valid_from: datetime,
    valid_to: datetime | None,
    source: str,
    year: int | None,
) -> FactorVersion:
    """Add an emission-factor version.

    Args:
        session: The caller's session.
        project_id: The project that owns it, or None for a shared version.
        region: Grid region (compared case-insensitively).
        basis, rate: Its Scope 2 method and rate.
        value, unit: The value as published (a ``gCO2e/kWh``-compatible unit; checked by
            the caller with `accounting.units.parse_quantity`).
        valid_from, valid_to: Validity ``[valid_from, valid_to)``; ``valid_to`` None = open.
        source: Where the number comes from.
        year: Year of the underlying data.

    Raises:
        InvalidInput: ``valid_to`` not after ``valid_from``.
        Conflict: The window overlaps a version of the same key (named in the message).
    """
    _check_window(valid_from, valid_to)
    region = normalize_region(region)
    row = _add_version(
        session,
        EmissionFactor,
        (
            EmissionFactor.region == region,
            EmissionFactor.basis == basis,
            EmissionFactor.rate == rate,
        ),
        label=lambda clash: _factor_version(clash).label(),
        route="factors",
        project_id=project_id,
        valid_from=valid_from,
        valid_to=valid_to,
        region=region,
        basis=basis,
        rate=rate,
        value=value,
        unit=unit,
        source=source,
        year=year,
    )
    return _factor_version(row)


def _load_factor(session: Session, factor_id: int, project_id: int | None) -> EmissionFactor:
    row = session.get(EmissionFactor, factor_id)
    if row is None or row.project_id != project_id:
        raise NotFound("emission factor", factor_id)
    return row


def close_factor(
    session: Session, *, factor_id: int, project_id: int | None, valid_to: datetime
) -> FactorVersion:
    """End an open-ended factor version at ``valid_to`` (so that a newer one can follow).

    Args:
        session: The caller's session.
        factor_id: The version.
        project_id: Its owner as the caller sees it (None: a shared version); a version of
            another owner is not found.
        valid_to: The new end of validity (exclusive), after its ``valid_from``.

    Raises:
        NotFound: No such version for this owner.
        Conflict: It is already closed.
        InvalidInput: ``valid_to`` not after its ``valid_from``.
    """
    _serialise(session, "emission_factor")
    row = _load_factor(session, factor_id, project_id)
    _close_version(session, row, valid_to)
    return _factor_version(row)


def list_factors(
    session: Session,
    *,
    project_id: int | None,
    region: str | None = None,
    basis: FactorBasis | None = None,
) -> list[FactorVersion]:
    """Stored versions visible to a project (its own and the shared ones), oldest first."""
    query = sa.select(EmissionFactor).where(
        sa.or_(EmissionFactor.project_id.is_(None), EmissionFactor.project_id == project_id)
        if project_id is not None
        else EmissionFactor.project_id.is_(None)
    )
    if region is not None:
        query = query.where(EmissionFactor.region == normalize_region(region))
    if basis is not None:
        query = query.where(EmissionFactor.basis == basis)
    query = query.order_by(
        EmissionFactor.region,
        EmissionFactor.basis,
        EmissionFactor.rate,
        EmissionFactor.valid_from,
        EmissionFactor.id,
    )
    return [_factor_version(row) for row in session.scalars(query)]


def find_factor(
    session: Session,
    *,
    project_id: int | None,
    region: str,
    basis: FactorBasis,
    at: datetime,
    rate: FactorRate = FactorRate.AVERAGE,
) -> FactorVersion | None:
    """The factor that applies to ``region`` at ``at``: the project's, a shared one, a built-in.

    Returns:
        The version, or None when there is none (never a guess from another region or basis).
    """
    region = normalize_region(region)
    covering = sa.and_(
        EmissionFactor.region == region,
        EmissionFactor.basis == basis,
        EmissionFactor.rate == rate,
        EmissionFactor.valid_from <= at,
        sa.or_(EmissionFactor.valid_to.is_(None), EmissionFactor.valid_to > at),
    )
    row = _find_version(session, EmissionFactor, covering, project_id)
    if row is not None:
        return _factor_version(row)
    if basis is FactorBasis.LOCATION and rate is FactorRate.AVERAGE:
        return next((f for f in builtin_factors() if f.region == region), None)
    return None


# --------------------------------------------------------------------------- tariffs


def add_tariff(
    session: Session,
    *,
    project_id: int | None,
    region: str,
    value: float,
    unit: str,
    valid_from: datetime,
    valid_to: datetime | None,
    source: str,
    year: int | None,
) -> TariffVersion:
    """Add a tariff version (see `add_factor`; the key is region and owner).

    Raises:
        InvalidInput: ``valid_to`` not after ``valid_from``.
        Conflict: The window overlaps a version of the same key (named in the message).
    """
    _check_window(valid_from, valid_to)
    region = normalize_region(region)
    row = _add_version(
        session,
        Tariff,
        (Tariff.region == region,),
        label=lambda clash: _tariff_version(clash).label(),
        route="tariffs",
        project_id=project_id,
        valid_from=valid_from,
        valid_to=valid_to,
        region=region,
        value=value,
        unit=unit,
        source=source,
        year=year,
    )
    return _tariff_version(row)


def close_tariff(
    session: Session, *, tariff_id: int, project_id: int | None, valid_to: datetime
) -> TariffVersion:
    """End an open-ended tariff version at ``valid_to`` (see `close_factor`).

    Raises:
        NotFound: No such version for this owner.
        Conflict: It is already closed.
        InvalidInput: ``valid_to`` not after its ``valid_from``.
    """
    _serialise(session, "tariff")
    row = session.get(Tariff, tariff_id)
    if row is None or row.project_id != project_id:
        raise NotFound("tariff", tariff_id)
    _close_version(session, row, valid_to)
    return _tariff_version(row)


def list_tariffs(
    session: Session, *, project_id: int | None, region: str | None = None
) -> list[TariffVersion]:
    """Stored tariff versions visible to a project (its own and the shared ones)."""
    query = sa.select(Tariff).where(
        sa.or_(Tariff.project_id.is_(None), Tariff.project_id == project_id)
        if project_id is not None
        else Tariff.project_id.is_(None)
    )
    if region is not None:
        query = query.where(Tariff.region == normalize_region(region))
    query = query.order_by(Tariff.region, Tariff.valid_from, Tariff.id)
    return [_tariff_version(row) for row in session.scalars(query)]


def find_tariff(
    session: Session, *, project_id: int | None, region: str, at: datetime
) -> TariffVersion | None:
    """The tariff that applies to ``region`` at ``at``: the project's, else a shared one."""
    region = normalize_region(region)
    covering = sa.and_(
        Tariff.region == region,
        Tariff.valid_from <= at,
        sa.or_(Tariff.valid_to.is_(None), Tariff.valid_to > at),
    )
    row = _find_version(session, Tariff, covering, project_id)
    return None if row is None else _tariff_version(row)


# --------------------------------------------------------------------------- project settings


def get_accounting(session: Session, *, project_id: int) -> AccountingConfig:
    """The project's region and PUE; unset: no region, PUE ``none`` (IT-only boundary)."""
    row = session.get(ProjectAccounting, project_id)
    if row is None:
        return AccountingConfig(
            project_id=project_id, region=None, pue=default_pue("none"), updated_at=None
        )
    pue = Pue(
        value=row.pue,
        name=row.pue_name,
        kind=row.pue_kind.value,
        source=row.pue_source,
        year=row.pue_year,
    )
    return AccountingConfig(
        project_id=project_id, region=row.region, pue=pue, updated_at=row.updated_at
    )


def set_accounting(session: Session, *, project_id: int, region: str, pue: Pue) -> AccountingConfig:
    """Set the project's region and PUE (what is ledgered from now on is derived with them)."""
    row = session.get(ProjectAccounting, project_id)
    if row is None:
        row = ProjectAccounting(project_id=project_id)
        session.add(row)
    row.region = normalize_region(region)
    row.pue = pue.value
    row.pue_name = pue.name
    row.pue_kind = PueKind(pue.kind)
    row.pue_source = pue.source
    row.pue_year = pue.year
    row.updated_at = utcnow()
    session.flush()
    return get_accounting(session, project_id=project_id)


# --------------------------------------------------------------------------- the accounting context

#: The figures a context derives beyond energy (names as in `db.ledger.FIGURES`).
CONTEXT_FIGURES: tuple[str, ...] = ("co2e_location", "co2e_market", "energy_cost")


def _instant(when: datetime) -> str:
    """``2025-10-10 00:00:00 UTC``: how an instant reads in a reason."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


@dataclass(frozen=True, slots=True)
class AppliedVersion:
    """A factor or tariff version as a figure applies it.

    Built from a `FactorVersion` or `TariffVersion` when resolved, or read back from the
    ledger's provenance of a frozen figure — the same record either way.

    Attributes:
        per_kwh: Its value per kWh: gCO2e/kWh for a factor, USD/kWh for a tariff.
        provenance: Its record (`FactorVersion.provenance`, `TariffVersion.provenance`), which
            the ledger stores with every figure derived with it.
    """

    per_kwh: float
    provenance: Mapping[str, Any]

    @classmethod
    def of_factor(cls, version: FactorVersion) -> AppliedVersion:
        """A factor version as applied."""
        return cls(per_kwh=version.intensity_g_per_kwh, provenance=version.provenance())

    @classmethod
    def of_tariff(cls, version: TariffVersion) -> AppliedVersion:
        """A tariff version as applied."""
        return cls(per_kwh=version.usd_per_kwh, provenance=version.provenance())

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AppliedVersion:
        """Read back from a ledger provenance record (a factor's or a tariff's).

        Raises:
            ValueError: The record holds no per-kWh value.
        """
        value = record.get("intensity_g_per_kwh", record.get("usd_per_kwh"))
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"provenance record without a per-kWh value: {dict(record)!r}")
        return cls(per_kwh=float(value), provenance=dict(record))

    @property
    def id(self) -> int | None:
        """The version's row id; None for a built-in default."""
        value = self.provenance.get("id")
        return int(value) if isinstance(value, int | float) else None

    def label(self) -> str:
        """``version 12 of DE location/average, 400 gCO2e/kWh (shared; source: …; valid …)``."""
        p = self.provenance
        owner = "this project's" if p.get("scope") == "project" else "shared"
        source = str(p.get("source"))
        if p.get("year") is not None:
            source += f", {p['year']}"
        value = f"{_number(p.get('value'))} {p.get('unit')}"
        if "basis" in p:
            what = f"{p.get('region')} {p.get('basis')}/{p.get('rate')}"
            if p.get("builtin"):
                return f"the built-in default of {what}, {value} (source: {source})"
        else:
            what = f"the {p.get('region')} tariff"
        window = f"{p.get('valid_from') or '…'} … {p.get('valid_to') or 'open'}"
        return f"version {self.id} of {what}, {value} ({owner}; source: {source}; valid {window})"


def unavailable_reasons(
    *,
    region: str | None,
    at: datetime,
    location: AppliedVersion | None,
    market: AppliedVersion | None,
    tariff: AppliedVersion | None,
) -> dict[str, str]:
    """Why each figure of `CONTEXT_FIGURES` that cannot be derived is not available.

    The ledger records these words with a run's figures and the reports show the same words:
    a missing figure says why, and is never filled in from a default.
    """
    if region is None:
        reason = (
            "the project has no region configured (PUT /api/v1/accounting): no emission factor "
            "or tariff is looked up without one"
        )
        return dict.fromkeys(CONTEXT_FIGURES, reason)
    when = _instant(at)
    reasons: dict[str, str] = {}
    if location is None:
        reasons["co2e_location"] = (
            f"no location-based emission factor for region {region} is valid at {when} (neither "
            "the project's own, a shared version nor a built-in default)"
        )
    if market is None:
        reasons["co2e_market"] = (
            f"no market-based emission factor for region {region} is valid at {when} (the "
            "project's own or a shared version; there are no built-in market-based factors, and "
            "the location-based factor is not substituted)"
        )
    if tariff is None:
        reasons["energy_cost"] = (
            f"no tariff for region {region} is valid at {when} (the project's own or a shared "
            "version; there are no built-in tariffs)"
        )
    return reasons


@dataclass(frozen=True, slots=True)
class AccountingContext:
    """What a run's carbon and cost figures are derived with, and why any is missing.

    Attributes:
        at: The instant the versions are valid at (a run's end).
        region: Grid region, or None when the project has none configured.
        pue: The PUE (facility energy = IT energy × PUE).
        location: The location-based (grid-average) factor version, if one applies.
        market: The market-based factor version, if one applies.
        tariff: The tariff version, if one applies.
        unavailable: ``{figure: reason}`` for each of `CONTEXT_FIGURES` not derived.
    """

    at: datetime
    region: str | None
    pue: Pue
    location: AppliedVersion | None = None
    market: AppliedVersion | None = None
    tariff: AppliedVersion | None = None
    unavailable: Mapping[str, str] = field(default_factory=dict)

    def facility_j(self, energy_j: float) -> float:
        """Facility energy, J: IT energy × PUE."""
        return energy_j * self.pue.value

    def _per_facility_kwh(self, energy_j: float, applied: AppliedVersion | None) -> float | None:
        # The accounting core's order of operations (accounting.carbon.scope2_emissions,
        # accounting.cost.run_cost): (IT × PUE) / J_PER_KWH × per-kWh value.
        if applied is None:
            return None
        return self.facility_j(energy_j) / J_PER_KWH * applied.per_kwh

    def co2e_location_g(self, energy_j: float) -> float | None:
        """Location-based CO2e of ``energy_j`` of IT energy, g (None: not available)."""
        return self._per_facility_kwh(energy_j, self.location)

    def co2e_market_g(self, energy_j: float) -> float | None:
        """Market-based CO2e of ``energy_j`` of IT energy, g (None: not available)."""
        return self._per_facility_kwh(energy_j, self.market)

    def energy_cost_usd(self, energy_j: float) -> float | None:
        """Cost of ``energy_j`` of IT energy billed as facility energy, USD (None: not priced)."""
        return self._per_facility_kwh(energy_j, self.tariff)

    def statement(self) -> list[str]:
        """The basis as lines a reader can check."""
        pue = self.pue
        lines = [
            f"region: {self.region}" if self.region is not None else "region: not configured",
            f"PUE {pue.value:g} ({pue.name}, {pue.kind}: {pue.source}"
            + (f", {pue.year}" if pue.year is not None else "")
            + ")",
        ]
        for figure, name, applied in (
            ("co2e_location", "location-based factor", self.location),
            ("co2e_market", "market-based factor", self.market),
            ("energy_cost", "tariff", self.tariff),
        ):
            if applied is not None:
                lines.append(f"{name}: {applied.label()}")
            else:
                lines.append(f"{name}: not available: {self.unavailable.get(figure, 'none')}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the basis."""
        return {
            "at": self.at.astimezone(UTC).isoformat(),
            "region": self.region,
            "pue": self.pue.to_dict(),
            "location_factor": None if self.location is None else dict(self.location.provenance),
            "market_factor": None if self.market is None else dict(self.market.provenance),
            "tariff": None if self.tariff is None else dict(self.tariff.provenance),
            "unavailable": dict(self.unavailable),
            "statement": self.statement(),
        }


def resolve_context(
    session: Session,
    *,
    project_id: int,
    at: datetime,
    region: str | None = None,
    pue: Pue | None = None,
) -> AccountingContext:
    """The project's accounting context at ``at``: its region and PUE, and the factor and tariff
    versions valid then (`find_factor`, `find_tariff`).

    Args:
        session: The caller's session.
        project_id: The project.
        at: The instant (a run's end; now for a plan).
        region: Use this region instead of the project's (an explicit override).
        pue: Use this PUE instead of the project's (an explicit override).
    """
    config = get_accounting(session, project_id=project_id)
    where = normalize_region(region) if region is not None else config.region
    location = market = tariff = None
    if where is not None:
        found = find_factor(
            session, project_id=project_id, region=where, basis=FactorBasis.LOCATION, at=at
        )
        location = None if found is None else AppliedVersion.of_factor(found)
        found = find_factor(
            session, project_id=project_id, region=where, basis=FactorBasis.MARKET, at=at
        )
        market = None if found is None else AppliedVersion.of_factor(found)
        price = find_tariff(session, project_id=project_id, region=where, at=at)
        tariff = None if price is None else AppliedVersion.of_tariff(price)
    return AccountingContext(
        at=at,
        region=where,
        pue=pue or config.pue,
        location=location,
        market=market,
        tariff=tariff,
        unavailable=unavailable_reasons(
            region=where, at=at, location=location, market=market, tariff=tariff
        ),
    )
