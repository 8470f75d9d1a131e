"""The ledger: append-only, hash-chained figures per project, and what appends them.

Appending (`append`) is serialised per project: the project's `db.models.LedgerHead` row is
locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises
writers), the entry gets ``seq = head.seq + 1`` and ``prev_hash = head.hash``, its hash is
computed by `db.chain`, and the head moves to it — all in the caller's transaction. The
migrations install triggers that refuse UPDATE and DELETE on ``ledger_entry``; `verify` catches
anyone who drops them first.

Figures
-------
Every entry holds one named **figure** (`FIGURES`): its kind, its dimension and the unit it is
stored in (``value_si``/``unit_si``; the value and unit as given are kept beside them). The
provenance of every entry carries ``figure`` and ``accounted_at`` — the instant the figure
belongs to (a run's end; for a manual entry the time it names), which the period rollups use.

When a run ends (`record_run_end`, called by ``POST /runs/{id}/finish`` and ``/fail``) the
ledger freezes its published figures: the measured IT energy (with the methods and uncertainty
band), the facility energy (× the project's PUE), the location- and market-based CO2e and the
energy cost — each derived with the factor and tariff versions valid at the run's end and
recording their ids, values, sources and windows — and the tokens and FLOPs the run declared.
The context comes from `db.factors.resolve_context`, the resolution the run reports share
(`db.basis`); a figure that cannot be derived (no region, no version valid then) is absent, and
the facility-energy entry records why (``unavailable``, in the words the reports show).
A run with no measurements appends nothing. Ending it again is harmless; when its
measurements changed in between (another node's chunks arrived, more work was declared), the
figures are derived again and each new entry **supersedes** the current one. Nothing is ever
recomputed from a newer factor: a figure changes only by a new entry.

A run priced on an old basis (it ended before its project had a region, say) is re-priced by
`record_rebasis`: new derived entries on the project's current basis that supersede the old
ones and name the basis they replace, the measured IT energy untouched.

Manual entries (`post_entry`) are how offsets, embodied carbon, figures measured elsewhere,
and corrections enter: a correction is a new entry naming the seq it ``supersedes`` (same
figure, same run), never an edit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from thermoledger.accounting.carbon import J_PER_KWH, Pue
from thermoledger.accounting.estimates import BAND_RULE, Interval, RunEstimate
from thermoledger.accounting.integrate import aggregate_energy

from . import factors
from .chain import (
    GENESIS_HASH,
    ChainHead,
    ChainVerdict,
    EntryContent,
    StoredEntry,
    canonical_value,
    entry_hash,
    iso_utc,
    verify_chain,
)
from .errors import Conflict, InvalidInput, NotFound
from .models import (
    Chunk,
    LedgerEntry,
    LedgerHead,
    LedgerKind,
    LedgerSource,
    Project,
    Run,
    RunStatus,
)
from .records import RunRecord, RunUsage
from .runs import get_run
from .totals import run_usage
from .types import utcnow

__all__ = [
    "FIGURES",
    "FigureSpec",
    "LedgerRecord",
    "append",
    "get_entry",
    "list_entries",
    "post_entry",
    "project_entries",
    "record_estimate",
    "record_rebasis",
    "record_run_end",
    "verify",
    "verify_projects",
]

_ENTRY_T = cast(sa.Table, LedgerEntry.__table__)
_HEAD_T = cast(sa.Table, LedgerHead.__table__)
_RUN_T = cast(sa.Table, Run.__table__)


@dataclass(frozen=True, slots=True)
class FigureSpec:
    """What a named figure is.

    Attributes:
        name: The figure's name (``it_energy``, ``co2e_location`` …).
        kind: The ledger kind it is stored under.
        dimension: `accounting.units.DIMENSIONS` name its quantity must have.
        unit_si: The unit ``value_si`` is in.
        signed: Whether negative values are allowed (prices can go below zero).
        description: One line for the API documentation.
    """

    name: str
    kind: LedgerKind
    dimension: str
    unit_si: str
    signed: bool
    description: str


#: The figures the ledger holds, by name.
FIGURES: Mapping[str, FigureSpec] = {
    spec.name: spec
    for spec in (
        FigureSpec(
            "it_energy", LedgerKind.ENERGY, "energy", "J", False, "IT energy of a run (metered)"
        ),
        FigureSpec(
            "facility_energy",
            LedgerKind.ENERGY,
            "energy",
            "J",
            False,
            "facility energy: IT energy × PUE",
        ),
        FigureSpec(
            "co2e_location",
            LedgerKind.CARBON,
            "emissions",
            "gCO2e",
            False,
            "GHG Scope 2 location-based emissions",
        ),
        FigureSpec(
            "co2e_market",
            LedgerKind.CARBON,
            "emissions",
            "gCO2e",
            False,
            "GHG Scope 2 market-based emissions",
        ),
        FigureSpec(
            "embodied",
            LedgerKind.CARBON,
            "emissions",
            "gCO2e",
            False,
            "embodied emissions allocated to the work (the SCI's M)",
        ),
        FigureSpec(
            "offset",
            LedgerKind.CARBON,
            "emissions",
            "gCO2e",
            False,
            "offsets retired (reported beside emissions, never netted)",
        ),
        FigureSpec("energy_cost", LedgerKind.COST, "currency", "USD", True, "energy × tariff"),
        FigureSpec(
            "hardware_cost", LedgerKind.COST, "currency", "USD", False, "hardware time, priced"
        ),
        FigureSpec("tokens", LedgerKind.TOKENS, "tokens", "token", False, "tokens processed"),
        FigureSpec("flops", LedgerKind.COMPUTE, "compute", "FLOP", False, "FLOPs done"),
    )
}

#: Largest magnitude the ledger's CHECK constraints admit.
_FINITE_MAX = 1e300


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """A ledger entry as read back.

    Attributes:
        id: Row id.
        seq: Position in the project's chain (from 1).
        project: The project's slug.
        run_id: The run the figure belongs to, if any.
        kind: The ledger kind.
        figure: The figure's name (`FIGURES`).
        source: measured, declared or derived.
        value_si: Value in ``unit_si``.
        unit_si: The figure's storage unit.
        value_given: Value as given.
        unit_given: Unit as given.
        accounted_at: The instant the figure belongs to.
        created_at: When it was appended.
        provenance: Where it comes from (JSON object).
        prev_hash: Hash of the previous entry.
        hash: This entry's hash.
        superseded_by: Seq of the entry that replaced it, if any.
    """

    id: int
    seq: int
    project: str
    run_id: UUID | None
    kind: LedgerKind
    figure: str
    source: LedgerSource
    value_si: float
    unit_si: str
    value_given: float
    unit_given: str
    accounted_at: datetime
    created_at: datetime
    provenance: dict[str, Any]
    prev_hash: str
    hash: str
    superseded_by: int | None = None

    @property
    def supersedes(self) -> int | None:
        """Seq of the entry this one replaces, if any."""
        value = self.provenance.get("supersedes")
        return int(value) if isinstance(value, int | float) else None


def _insert(session: Session, table: Any) -> postgresql.Insert | sqlite.Insert:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _project_slug(session: Session, project_id: int) -> str:
    slug = session.scalar(sa.select(Project.slug).where(Project.id == project_id))
    if slug is None:
        raise NotFound("project", project_id)
    return slug


def _lock_head(session: Session, project_id: int) -> tuple[int, str]:
    """Lock the project's head row (creating it at seq 0), return (seq, hash)."""
    session.execute(
        _insert(session, _HEAD_T)
        .values(project_id=project_id, seq=0, hash=GENESIS_HASH, updated_at=utcnow())
        .on_conflict_do_nothing()
    )
    row = session.execute(
        sa.select(_HEAD_T.c.seq, _HEAD_T.c.hash)
        .where(_HEAD_T.c.project_id == project_id)
        .with_for_update()
    ).one()
    return int(row.seq), str(row.hash)


def _finite(value: float, field: str) -> float:
    number = float(value)
    if not math.isfinite(number) or abs(number) > _FINITE_MAX:
        raise InvalidInput.one(field, f"{value!r} is not a finite value the ledger can hold")
    return number


def append(
    session: Session,
    *,
    project_id: int,
    figure: str,
    value_si: float,
    value_given: float,
    unit_given: str,
    source: LedgerSource,
    accounted_at: datetime,
    provenance: Mapping[str, Any],
    run_id: UUID | None = None,
    now: datetime | None = None,
) -> LedgerRecord:
    """Append one entry to the project's chain (inside the caller's transaction).

    Args:
        session: The caller's session.
        project_id: The project whose chain grows.
        figure: A `FIGURES` name (sets the kind and ``unit_si``).
        value_si: The value in the figure's ``unit_si``.
        value_given, unit_given: The value and unit as given.
        source: measured, declared or derived.
        accounted_at: The instant the figure belongs to (aware).
        provenance: Where it comes from; ``figure`` and ``accounted_at`` are added.
        run_id: The run, if the figure belongs to one.
        now: The append time (default: now).

    Raises:
        InvalidInput: An unknown figure, a non-finite value, unstorable provenance.
        NotFound: No such project.
    """
    spec = FIGURES.get(figure)
    if spec is None:
        raise InvalidInput.one("figure", f"unknown figure {figure!r}; known: {', '.join(FIGURES)}")
    try:
        document = {**provenance, "figure": figure, "accounted_at": iso_utc(accounted_at)}
        stored_provenance = canonical_value(document)
    except (TypeError, ValueError) as e:
        raise InvalidInput.one("provenance", str(e)) from e
    slug = _project_slug(session, project_id)
    # The row references the run's database key; the hash covers the id the project knows it
    # by, which with the project's slug names it uniquely (`db.runs.run_key`).
    key = None if run_id is None else get_run(session, project_id=project_id, run_id=run_id).key
    seq, prev_hash = _lock_head(session, project_id)
    seq += 1
    created_at = now or utcnow()
    content = EntryContent(
        seq=seq,
        project=slug,
        run=run_id,
        kind=spec.kind.value,
        value_si=_finite(value_si, "value"),
        unit_si=spec.unit_si,
        value_given=_finite(value_given, "value"),
        unit_given=unit_given,
        source=source.value,
        provenance=stored_provenance,
        created_at=created_at,
    )
    digest = entry_hash(prev_hash, content)
    row = LedgerEntry(
        project_id=project_id,
        run_id=key,
        seq=seq,
        kind=spec.kind,
        value_si=content.value_si,
        unit_si=spec.unit_si,
        value_given=content.value_given,
        unit_given=unit_given,
        source=source,
        provenance=stored_provenance,
        created_at=created_at,
        prev_hash=prev_hash,
        hash=digest,
    )
    session.add(row)
    session.execute(
        sa.update(_HEAD_T)
        .where(_HEAD_T.c.project_id == project_id)
        .values(seq=seq, hash=digest, updated_at=created_at)
    )
    session.flush()
    return _record(row, slug, run_id)


def entry_accounted_at(provenance: Mapping[str, Any], fallback: datetime) -> datetime:
    """When an entry was accounted (``provenance["accounted_at"]``), else ``fallback``."""
    text = provenance.get("accounted_at")
    if isinstance(text, str):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    return fallback


def _record(
    row: LedgerEntry, slug: str, run_id: UUID | None, superseded_by: int | None = None
) -> LedgerRecord:
    """``row`` as a record; ``run_id`` is its run's id as the project knows it (the row holds
    the run's database key)."""
    provenance = dict(row.provenance)
    return LedgerRecord(
        id=row.id,
        seq=row.seq,
        project=slug,
        run_id=run_id,
        kind=row.kind,
        figure=str(provenance.get("figure", row.kind.value)),
        source=row.source,
        value_si=row.value_si,
        unit_si=row.unit_si,
        value_given=row.value_given,
        unit_given=row.unit_given,
        accounted_at=entry_accounted_at(provenance, row.created_at),
        created_at=row.created_at,
        provenance=provenance,
        prev_hash=row.prev_hash,
        hash=row.hash,
        superseded_by=superseded_by,
    )


def _supersession(rows: Sequence[LedgerEntry]) -> dict[int, int]:
    """``{superseded seq: superseding seq}`` over ``rows``."""
    replaced: dict[int, int] = {}
    for row in rows:
        target = row.provenance.get("supersedes")
        if isinstance(target, int) and target not in replaced:
            replaced[target] = row.seq
    return replaced


def project_entries(
    session: Session, *, project_id: int, run_id: UUID | None = None
) -> list[LedgerRecord]:
    """Every entry of a project (or of one run of it), in seq order, with ``superseded_by``.

    A correction names an entry of the same run, so one run's entries are read alone (through
    the ``run_id`` index).
    """
    slug = _project_slug(session, project_id)
    query = _entries_query(project_id)
    if run_id is not None:
        query = query.where(Run.client_id == run_id)
    rows = session.execute(query.order_by(LedgerEntry.seq, LedgerEntry.id)).all()
    replaced = _supersession([row for row, _ in rows])
    return [_record(row, slug, client_id, replaced.get(row.seq)) for row, client_id in rows]


def _entries_query(project_id: int) -> Any:  # Select's type parameters differ in 2.0 and 2.1
    """A project's entries, each with its run's id as the project knows it (or None)."""
    return (
        sa.select(LedgerEntry, Run.client_id)
        .outerjoin(Run, Run.id == LedgerEntry.run_id)
        .where(LedgerEntry.project_id == project_id)
    )


def list_entries(
    session: Session,
    *,
    project_id: int,
    run_id: UUID | None = None,
    figure: str | None = None,
    after_seq: int = 0,
    limit: int = 100,
) -> list[LedgerRecord]:
    """One page of a project's entries with seq > ``after_seq``, oldest first."""
    slug = _project_slug(session, project_id)
    rows = session.execute(
        _entries_query(project_id)
        .where(LedgerEntry.seq > after_seq)
        .order_by(LedgerEntry.seq, LedgerEntry.id)
    ).all()
    # A superseding entry always comes later, so the rows after the page's start suffice.
    replaced = _supersession([row for row, _ in rows])
    out = []
    for row, client_id in rows:
        if run_id is not None and client_id != run_id:
            continue
        if figure is not None and row.provenance.get("figure") != figure:
            continue
        out.append(_record(row, slug, client_id, replaced.get(row.seq)))
        if len(out) == limit:
            break
    return out


def get_entry(session: Session, *, project_id: int, seq: int) -> LedgerRecord:
    """The project's entry at ``seq``.

    Raises:
        NotFound: No such entry in the project.
    """
    entries = list_entries(session, project_id=project_id, after_seq=seq - 1, limit=1)
    if not entries or entries[0].seq != seq:
        raise NotFound("ledger entry", seq)
    return entries[0]


# --------------------------------------------------------------------------- manual entries


def post_entry(
    session: Session,
    *,
    project_id: int,
    figure: str,
    value_si: float,
    value_given: float,
    unit_given: str,
    source: LedgerSource,
    reference: str,
    run_id: UUID | None = None,
    at: datetime | None = None,
    supersedes: int | None = None,
    note: str | None = None,
    recorded_by: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> LedgerRecord:
    """Append a figure posted by hand: an offset, embodied carbon, a correction …

    Args:
        session: The caller's session.
        project_id: The project.
        figure: A `FIGURES` name.
        value_si: The value in the figure's ``unit_si`` (the caller converted it).
        value_given, unit_given: As posted.
        source: measured, declared or derived.
        reference: Where the number comes from (an LCA, an invoice, a certificate id).
        run_id: The run it belongs to, if any (must be the project's).
        at: The instant it belongs to; default: the superseded entry's, else the run's end,
            else now. Never in the future.
        supersedes: Seq of the entry this one corrects (same figure and run).
        note: Why (e.g. the reason for a correction).
        recorded_by: Who posted it (e.g. ``{"token_id": 7}``).
        now: The append time (default: now).

    Raises:
        InvalidInput: Unknown figure, a negative value where none may be, ``at`` in the future,
            a ``supersedes`` of another figure or run.
        NotFound: The run or the superseded entry is not the project's.
        Conflict: The superseded entry was already superseded.
    """
    now = now or utcnow()
    spec = FIGURES.get(figure)
    if spec is None:
        raise InvalidInput.one("figure", f"unknown figure {figure!r}; known: {', '.join(FIGURES)}")
    for value in (value_si, value_given):
        if not math.isfinite(value) or abs(value) > _FINITE_MAX:
            raise InvalidInput.one("quantity", f"{value!r} {spec.unit_si} is out of range")
    if not spec.signed and value_si < 0:
        raise InvalidInput.one("quantity", f"{figure} cannot be negative")
    run_end: datetime | None = None
    if run_id is not None:
        run_end = get_run(session, project_id=project_id, run_id=run_id).ended_at
    provenance: dict[str, Any] = {"origin": "manual", "reference": reference}
    if note:
        provenance["note"] = note
    if recorded_by:
        provenance["recorded_by"] = dict(recorded_by)
    default_at = run_end or now
    if supersedes is not None:
        # Lock the chain first, so that two corrections of one entry cannot both pass.
        _lock_head(session, project_id)
        target = _current_target(session, project_id, supersedes)
        if target.figure != figure or target.run_id != run_id:
            raise InvalidInput.one(
                "supersedes",
                f"entry {supersedes} is {target.figure} of "
                f"{'run ' + str(target.run_id) if target.run_id else 'no run'}; a correction "
                "must be the same figure of the same run",
            )
        provenance["supersedes"] = supersedes
        default_at = target.accounted_at
    accounted_at = at or default_at
    if accounted_at > now:
        raise InvalidInput.one("at", f"{accounted_at.isoformat()} is in the future")
    return append(
        session,
        project_id=project_id,
        figure=figure,
        value_si=value_si,
        value_given=value_given,
        unit_given=unit_given,
        source=source,
        accounted_at=accounted_at,
        provenance=provenance,
        run_id=run_id,
        now=now,
    )


def _current_target(session: Session, project_id: int, seq: int) -> LedgerRecord:
    """The entry at ``seq``, which must not be superseded yet (raises NotFound, Conflict)."""
    target = get_entry(session, project_id=project_id, seq=seq)
    if target.superseded_by is not None:
        raise Conflict(
            f"entry {seq} was already superseded by entry {target.superseded_by}; correct that "
            "one instead",
            field="supersedes",
        )
    return target


# --------------------------------------------------------------------------- run figures


@dataclass(frozen=True, slots=True)
class _Measured:
    energy_j: float
    low_j: float
    high_j: float
    chunks: int
    devices: int
    simulated: bool
    methods: dict[str, dict[str, float]]
    t0_s: float
    t1_s: float


def _measure(usage: RunUsage) -> _Measured:
    # A device covered by another (the CPU inside a GH200-class module's figure) is not
    # added again: the ledger freezes the same IT energy as the report's total.
    devices = usage.counted
    totals = aggregate_energy(
        [d.energy_j for d in devices],
        [d.sensor_uncertainty_j for d in devices],
        [d.bound_below_j for d in devices],
        [d.bound_above_j for d in devices],
        device=[d.id for d in devices],
        combine="independent",
    )
    methods: dict[str, dict[str, float]] = {}
    for d in devices:
        entry = methods.setdefault(d.method, {"devices": 0, "energy_j": 0.0})
        entry["devices"] += 1
        entry["energy_j"] += d.energy_j
    return _Measured(
        energy_j=float(totals.energy_j[0]),
        low_j=float(totals.energy_low_j[0]),
        high_j=float(totals.energy_high_j[0]),
        chunks=sum(d.chunks for d in usage.devices),
        devices=len(devices),
        simulated=any(d.simulated for d in usage.devices),
        methods=dict(sorted(methods.items())),
        t0_s=min(d.t0_s for d in usage.devices),
        t1_s=max(d.t1_s for d in usage.devices),
    )


def _signature(measured: _Measured, run: RunRecord) -> dict[str, Any]:
    """What the run's figures are derived from; equal signatures → nothing new to ledger."""
    return {
        "energy_j": measured.energy_j,
        "chunks": measured.chunks,
        "tokens": run.declared_tokens,
        "flops": run.declared_flops,
    }


@dataclass
class _RunEntries:
    """Appends a run's figures at one instant, each superseding the run's current entry of the
    same figure (`record_run_end`, `record_estimate`, `record_rebasis`).

    Attributes:
        base: Provenance every entry carries (its origin, the run's status …).
        current: The run's entries in force, by figure: what a new one supersedes.
        reason: Why an entry supersedes another (None: ``base`` says it already).
        appended: What was appended, in order.
    """

    session: Session
    project_id: int
    run_id: UUID
    at: datetime
    base: Mapping[str, Any]
    current: Mapping[str, LedgerRecord]
    reason: str | None
    appended: list[LedgerRecord] = dataclasses.field(default_factory=list)

    def add(
        self, figure: str, value: float, unit: str, source: LedgerSource, extra: Mapping[str, Any]
    ) -> int:
        """Append ``figure`` (``value`` in ``unit``, SI); returns its seq."""
        provenance = {**self.base, **extra}
        previous = self.current.get(figure)
        if previous is not None:
            provenance["supersedes"] = previous.seq
            if self.reason is not None:
                provenance["reason"] = self.reason
        record = append(
            self.session,
            project_id=self.project_id,
            figure=figure,
            value_si=value,
            value_given=value,
            unit_given=unit,
            source=source,
            accounted_at=self.at,
            provenance=provenance,
            run_id=self.run_id,
        )
        self.appended.append(record)
        return record.seq

    def derived(self, figure: str, value: float, unit: str, extra: dict[str, Any]) -> int:
        """`add` of a figure derived from others (CO2e, cost, facility energy)."""
        return self.add(figure, value, unit, LedgerSource.DERIVED, extra)


#: Appends one derived entry: (figure, value, unit, provenance extras) -> its seq.
_Derive = Callable[[str, float, str, dict[str, Any]], int]


def _add_carbon(
    add: _Derive, context: factors.AccountingContext, energy_j: float, inputs: dict[str, int]
) -> None:
    """The CO2e entries of ``energy_j`` of IT energy, location- and market-based, each where
    the context has a factor for it (what is missing is said on the facility entry)."""
    pue = context.pue.to_dict()
    for figure, applied, value in (
        ("co2e_location", context.location, context.co2e_location_g(energy_j)),
        ("co2e_market", context.market, context.co2e_market_g(energy_j)),
    ):
        if applied is not None and value is not None:
            add(
                figure,
                value,
                "gCO2e",
                {"inputs": inputs, "pue": pue, "factor": dict(applied.provenance)},
            )


def _add_cost(
    add: _Derive, context: factors.AccountingContext, energy_j: float, inputs: dict[str, int]
) -> None:
    """The energy cost entry of ``energy_j`` of IT energy, where the context has a tariff."""
    cost = context.energy_cost_usd(energy_j)
    if context.tariff is not None and cost is not None:
        add(
            "energy_cost",
            cost,
            "USD",
            {
                "inputs": inputs,
                "pue": context.pue.to_dict(),
                "billed": "facility energy (IT × PUE)",
                "tariff": dict(context.tariff.provenance),
            },
        )


def record_run_end(session: Session, *, project_id: int, run_id: UUID) -> list[LedgerRecord]:
    """Freeze an ended run's figures in the ledger (see the module docstring).

    Returns:
        The entries appended (none when the run has no measurements, or nothing changed
        since its figures were last ledgered).

    Raises:
        NotFound: No such run in the project.
        Conflict: The run has not ended.
    """
    usage = run_usage(session, project_id=project_id, run_id=run_id)
    run = usage.run
    if run.status not in (RunStatus.FINISHED, RunStatus.FAILED) or run.ended_at is None:
        raise Conflict(f"run {run_id} has not ended: its figures are not final", field="status")
    if not usage.devices:
        return []
    measured = _measure(usage)
    signature = _signature(measured, run)
    _lock_head(session, project_id)  # read the run's figures under the chain's lock
    existing = project_entries(session, project_id=project_id, run_id=run_id)
    current = {e.figure: e for e in existing if e.superseded_by is None}
    auto = [e for e in existing if e.provenance.get("origin") == "run_end"]
    if auto and canonical_value(auto[-1].provenance.get("signature")) == canonical_value(signature):
        return []
    reason = (
        "the run's measurements or declared work changed since it was last ledgered"
        if auto
        else "derived at the run's end, replacing the figure recorded for the run before"
    )

    at = run.ended_at
    # The one resolution the reports use too (`db.factors.resolve_context`, read back by
    # `db.basis`): region, PUE, the versions valid at the run's end, and why any is missing.
    context = factors.resolve_context(session, project_id=project_id, at=at)
    base = {"origin": "run_end", "run_status": run.status.value, "signature": signature}
    writer = _RunEntries(session, project_id, run_id, at, base, current, reason)
    add, appended = writer.add, writer.appended

    it_seq = add(
        "it_energy",
        measured.energy_j,
        "J",
        LedgerSource.MEASURED,
        {
            "measurement": {
                "methods": measured.methods,
                "devices": measured.devices,
                "chunks": measured.chunks,
                "band_low_j": measured.low_j,
                "band_high_j": measured.high_j if math.isfinite(measured.high_j) else None,
                "band": "sensor error root-sum-square across devices; gap, reset and coverage "
                "bounds linear (accounting.integrate.aggregate_energy)",
                "t0_s": measured.t0_s,
                "t1_s": measured.t1_s,
                "simulated": measured.simulated,
            }
        },
    )
    pue_record = context.pue.to_dict()
    facility_extra: dict[str, Any] = {
        "inputs": {"it_energy": it_seq},
        "pue": pue_record,
        "region": context.region,
    }
    if context.unavailable:
        facility_extra["unavailable"] = dict(context.unavailable)
    facility_seq = add(
        "facility_energy",
        context.facility_j(measured.energy_j),
        "J",
        LedgerSource.DERIVED,
        facility_extra,
    )
    inputs = {"it_energy": it_seq, "facility_energy": facility_seq}
    _add_carbon(writer.derived, context, measured.energy_j, inputs)
    _add_cost(writer.derived, context, measured.energy_j, inputs)
    if run.declared_tokens is not None:
        add("tokens", float(run.declared_tokens), "token", LedgerSource.DECLARED, {})
    if run.declared_flops is not None:
        dtype = run.declared_flops_dtype
        add("flops", run.declared_flops, "FLOP", LedgerSource.DECLARED, {"dtype": dtype})
    return appended


# --------------------------------------------------------------------------- estimates


def has_measurements(session: Session, *, project_id: int, run_id: UUID) -> bool:
    """Whether the run has any metered chunk (then it cannot also be estimated)."""
    key = get_run(session, project_id=project_id, run_id=run_id).key
    return session.scalar(sa.select(Chunk.run_id).where(Chunk.run_id == key).limit(1)) is not None


def record_estimate(
    session: Session,
    *,
    project_id: int,
    run_id: UUID,
    estimate: RunEstimate,
    supersede: bool = True,
) -> list[LedgerRecord]:
    """Ledger an ended run's figures from an estimate, beside `record_run_end`'s measured path.

    The run's IT energy is the estimate's (source ``declared``; provenance ``origin`` and
    ``method`` ``estimate``, the inputs, the band and its rule, and where the inputs come from);
    facility energy is IT × the estimate's PUE, or the project's when the estimate states none;
    location-based CO2e uses the estimate's intensity, or the project's factor valid at the run's
    end when it states none (market-based CO2e then too: an estimate's own intensity is
    location-based, and nothing is substituted for the market-based figure); energy cost uses
    the project's tariff, as for a measured run. Bands ride along in the ``measurement`` record
    every IT-energy entry has (``methods: {"estimate": …}``), so exports and rollups show them.

    Posting the same estimate again appends nothing; a different one supersedes each figure
    (a new entry naming the seq it replaces), never edits it, unless ``supersede`` is false:
    then it is refused.

    Returns:
        The entries appended.

    Raises:
        NotFound: No such run in the project.
        Conflict: The run has not ended, has metered chunks, or has measured figures; or it has
            another estimate and ``supersede`` is false.
    """
    run = get_run(session, project_id=project_id, run_id=run_id)
    if run.status not in (RunStatus.FINISHED, RunStatus.FAILED) or run.ended_at is None:
        raise Conflict(f"run {run_id} has not ended: its figures are not final", field="status")
    if has_measurements(session, project_id=project_id, run_id=run_id):
        raise Conflict(
            f"run {run_id} has metered chunks: a measured run cannot also be estimated",
            field="run_id",
        )
    _lock_head(session, project_id)
    existing = project_entries(session, project_id=project_id, run_id=run_id)
    if any(e.provenance.get("origin") == "run_end" for e in existing):
        raise Conflict(f"run {run_id} already has measured figures in the ledger", field="run_id")
    record = estimate.to_dict()
    current = {e.figure: e for e in existing if e.superseded_by is None}
    auto = [
        e for e in existing if e.provenance.get("origin") == "estimate" and e.figure == "it_energy"
    ]
    if auto and canonical_value(auto[-1].provenance.get("estimate")) == canonical_value(record):
        return []
    if auto and not supersede:
        previous = auto[-1].provenance.get("source")
        named = previous.get("source") if isinstance(previous, Mapping) else None
        raise Conflict(
            f"run {run_id} already has another estimate (ledger entry #{auto[-1].seq}"
            + (f", from {named}" if named else "")
            + "): it is not replaced unless superseding is asked for",
            field="run_id",
        )
    at = run.ended_at
    source = estimate.source
    pue = (
        Pue(
            value=estimate.pue.value,
            name="estimate",
            kind="published",
            source=source.source,
            note=source.document,
        )
        if estimate.pue_stated
        else None
    )
    context = factors.resolve_context(session, project_id=project_id, at=at, pue=pue)
    base = {"origin": "estimate", "method": "estimate", "run_status": run.status.value}
    writer = _RunEntries(
        session,
        project_id,
        run_id,
        at,
        base,
        current,
        "the run's estimate was posted again with other inputs",
    )
    add, appended = writer.add, writer.appended

    it = estimate.it_energy_j
    # The estimate's own PUE (with its range), else the project's, exact (the context above
    # holds the same one, so CO2e and cost rest on it too).
    pue_range = estimate.pue if estimate.pue_stated else Interval.exact(context.pue.value)
    facility = it * pue_range
    devices = estimate.devices.value if estimate.devices is not None else None
    it_seq = add(
        "it_energy",
        it.value,
        "J",
        LedgerSource.DECLARED,
        {
            "estimate": record,
            "measurement": {
                "methods": {"estimate": {"devices": devices, "energy_j": it.value}},
                "band_low_j": it.low,
                "band_high_j": it.high,
                "band": BAND_RULE,
                "simulated": False,
            },
            "source": source.to_dict(),
        },
    )
    pue_record = context.pue.to_dict()
    facility_extra: dict[str, Any] = {
        "inputs": {"it_energy": it_seq},
        "pue": pue_record,
        "region": context.region,
        "band_low_j": facility.low,
        "band_high_j": facility.high,
    }
    unavailable = dict(context.unavailable)
    if estimate.intensity_g_per_kwh is not None:
        unavailable.pop("co2e_location", None)
        unavailable["co2e_market"] = (
            "the estimate states a location-based intensity only; no market-based factor is "
            "substituted"
        )
    if unavailable:
        facility_extra["unavailable"] = unavailable
    facility_seq = add("facility_energy", facility.value, "J", LedgerSource.DERIVED, facility_extra)
    inputs = {"it_energy": it_seq, "facility_energy": facility_seq}
    if estimate.intensity_g_per_kwh is not None:
        intensity = estimate.intensity_g_per_kwh
        co2e = facility.scaled(1.0 / J_PER_KWH) * intensity
        add(
            "co2e_location",
            co2e.value,
            "gCO2e",
            LedgerSource.DERIVED,
            {
                "inputs": inputs,
                "pue": pue_record,
                "factor": {
                    "origin": "estimate",
                    "basis": "location",
                    "intensity_g_per_kwh": intensity.value,
                    "value": intensity.value,
                    "unit": "gCO2e/kWh",
                    "low": intensity.low,
                    "high": intensity.high,
                    "source": source.source,
                    "document": source.document,
                    "page": source.page,
                },
                "band_low_g": co2e.low,
                "band_high_g": co2e.high,
            },
        )
    else:
        _add_carbon(writer.derived, context, it.value, inputs)
    _add_cost(writer.derived, context, it.value, inputs)
    return appended


# --------------------------------------------------------------------------- re-basis

#: The figures a re-basis derives again; the measured IT energy and declared work stay as they are.
_REBASIS_FIGURES = ("facility_energy", "co2e_location", "co2e_market", "energy_cost")


def _ledgered_basis(current: Mapping[str, LedgerRecord]) -> dict[str, Any]:
    """The basis the run's current derived entries rest on, as a comparable record."""
    facility = current.get("facility_energy")

    def version(figure: str, key: str) -> Any:
        entry = current.get(figure)
        return None if entry is None else entry.provenance.get(key)

    return {
        "region": None if facility is None else facility.provenance.get("region"),
        "pue": None if facility is None else facility.provenance.get("pue"),
        "location_factor": version("co2e_location", "factor"),
        "market_factor": version("co2e_market", "factor"),
        "tariff": version("energy_cost", "tariff"),
    }


def record_rebasis(
    session: Session, *, project_id: int, run_id: UUID, reason: str
) -> list[LedgerRecord]:
    """Re-price an ended run on its project's current basis, by new entries, never by edits.

    For a run that ended before its project had a region (or with another PUE, or before a
    factor or tariff version covering its end was added): the facility energy, the location-
    and market-based CO2e and the energy cost are derived again from the run's ledgered IT
    energy with the project's region and PUE as they are now and the factor and tariff versions
    valid at the run's end (`db.factors.resolve_context`, the resolution `record_run_end` uses).
    Each new entry has provenance ``origin: "rebasis"``, the ``reason``, the ``previous_basis``
    (region, PUE, factor and tariff records and the seqs it replaces) and ``supersedes`` the
    figure's current entry, if any. The measured IT energy and the declared work are not touched.
    `db.basis` reads the latest re-basis as the run's basis. A figure the new basis cannot derive
    keeps its current entry (the facility entry's ``unavailable`` says why it was not derived).

    Returns:
        The entries appended; none when the current basis is already the one the run's figures
        rest on (re-basing again is harmless).

    Raises:
        NotFound: No such run in the project.
        Conflict: The run has not ended, or has no measured figures in the ledger (nothing to
            re-price; an estimate is revised by posting it again).
        InvalidInput: An empty reason.
    """
    reason = reason.strip()
    if not reason:
        raise InvalidInput.one("reason", "say why the run is re-priced")
    run = get_run(session, project_id=project_id, run_id=run_id)
    if run.status not in (RunStatus.FINISHED, RunStatus.FAILED) or run.ended_at is None:
        raise Conflict(
            f"run {run_id} has not ended: its figures are not final, so there is nothing to "
            "re-price yet",
            field="status",
        )
    _lock_head(session, project_id)  # read the run's figures under the chain's lock
    existing = project_entries(session, project_id=project_id, run_id=run_id)
    current = {e.figure: e for e in existing if e.superseded_by is None}
    it = current.get("it_energy")
    if it is None or it.provenance.get("origin") != "run_end":
        raise Conflict(
            f"run {run_id} has no measured figures in the ledger to re-price"
            + ("; post its estimate again instead" if it is not None else ""),
            field="run_id",
        )
    at = run.ended_at
    context = factors.resolve_context(session, project_id=project_id, at=at)
    basis = {
        "region": context.region,
        "pue": context.pue.to_dict(),
        "location_factor": None if context.location is None else dict(context.location.provenance),
        "market_factor": None if context.market is None else dict(context.market.provenance),
        "tariff": None if context.tariff is None else dict(context.tariff.provenance),
    }
    previous = _ledgered_basis(current)
    if canonical_value(previous) == canonical_value(basis):
        return []
    previous["entries"] = {f: current[f].seq for f in _REBASIS_FIGURES if f in current}
    base = {
        "origin": "rebasis",
        "reason": reason,
        "previous_basis": previous,
        "run_status": run.status.value,
    }
    writer = _RunEntries(session, project_id, run_id, at, base, current, reason=None)
    add, appended = writer.derived, writer.appended

    energy_j = it.value_si
    pue_record = context.pue.to_dict()
    facility_extra: dict[str, Any] = {
        "inputs": {"it_energy": it.seq},
        "pue": pue_record,
        "region": context.region,
    }
    if context.unavailable:
        facility_extra["unavailable"] = dict(context.unavailable)
    facility_seq = add("facility_energy", context.facility_j(energy_j), "J", facility_extra)
    inputs = {"it_energy": it.seq, "facility_energy": facility_seq}
    _add_carbon(add, context, energy_j, inputs)
    _add_cost(add, context, energy_j, inputs)
    return appended


# --------------------------------------------------------------------------- verification


def _stored_entries(session: Session, project_id: int, slug: str) -> list[StoredEntry]:
    t = _ENTRY_T
    rows = session.execute(
        sa.select(
            t.c.id,
            t.c.seq,
            _RUN_T.c.client_id,
            t.c.kind,
            t.c.value_si,
            t.c.unit_si,
            t.c.value_given,
            t.c.unit_given,
            t.c.source,
            t.c.provenance,
            t.c.created_at,
            t.c.prev_hash,
            t.c.hash,
        )
        .select_from(t.outerjoin(_RUN_T, _RUN_T.c.id == t.c.run_id))
        .where(t.c.project_id == project_id)
        .order_by(t.c.seq, t.c.id)
    ).all()
    return [
        StoredEntry(
            id=_lenient_int(row.id),
            content=EntryContent(
                seq=_lenient_int(row.seq),
                project=slug,
                run=row.client_id,
                kind=row.kind,
                value_si=row.value_si,
                unit_si=row.unit_si,
                value_given=row.value_given,
                unit_given=row.unit_given,
                source=row.source,
                provenance=row.provenance,
                created_at=row.created_at,
            ),
            prev_hash=str(row.prev_hash),
            hash=str(row.hash),
        )
        for row in rows
    ]


def _lenient_int(value: Any) -> int:
    """An id or seq as read; 0 where someone with database access left it NULL (the entry
    then fails its hash check and is reported, instead of verification crashing)."""
    return 0 if value is None else int(value)


def verify(
    session: Session, *, project_id: int, anchors: Mapping[int, str] | None = None
) -> ChainVerdict:
    """Verify one project's chain against its content and its recorded head.

    Reads every entry of the project (one query); the checks are `db.chain.verify_chain`'s.

    Args:
        session: The caller's session.
        project_id: The project.
        anchors: ``{seq: hash}`` published earlier, each of which must still be in the chain.

    Raises:
        NotFound: No such project.
    """
    slug = _project_slug(session, project_id)
    head_row = session.execute(
        sa.select(_HEAD_T.c.seq, _HEAD_T.c.hash).where(_HEAD_T.c.project_id == project_id)
    ).one_or_none()
    head = None if head_row is None else ChainHead(int(head_row.seq), str(head_row.hash))
    if head is None:
        head = ChainHead(0, GENESIS_HASH)  # nothing was ever appended through the service
    return verify_chain(_stored_entries(session, project_id, slug), head=head, anchors=anchors)


def verify_projects(
    session: Session, *, slug: str | None = None, anchors: Mapping[int, str] | None = None
) -> list[tuple[str, ChainVerdict]]:
    """Verify every project's chain (or the one named), by slug.

    Args:
        session: The caller's session.
        slug: Only this project.
        anchors: ``{seq: hash}`` each verified chain must still hold (use with ``slug``).

    Raises:
        NotFound: ``slug`` names no project.
    """
    query = sa.select(Project.id, Project.slug).order_by(Project.slug)
    if slug is not None:
        query = query.where(Project.slug == slug)
    projects = session.execute(query).all()
    if slug is not None and not projects:
        raise NotFound("project", slug)
    return [(str(s), verify(session, project_id=int(pid), anchors=anchors)) for pid, s in projects]
