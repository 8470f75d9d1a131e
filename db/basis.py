"""The accounting basis of a run's figures: frozen in the ledger, else resolved at its end.

A run's carbon and cost are derived once, when it ends, and frozen in the ledger
(`db.ledger.record_run_end`) together with what they were derived with: the region, the PUE
and the factor and tariff versions valid at the run's end (`db.factors.resolve_context`). Every
later view of the run — its report, its page, its CSV, the runs list — reads that basis **back
from the ledger** instead of resolving it again. Resolving again would usually give the same
versions, but not always: a version can be closed early and a newer one added over the run's
end, and a project's region or PUE can change; a published figure must not move with either.

The basis is read from the ledger's latest run-end derivation: its ``it_energy`` entry and the
entries derived from it (``inputs.it_energy``). A figure that derivation did not produce is not
available, for the reason the ledger recorded with the facility energy (``unavailable``). A
manual correction that supersedes a derived figure is reported beside it, never folded in.

A run not in the ledger yet — still running, lost, or ended before its first measurement — gets
the context resolved at its end, or now while it runs (the call the ledger will make), and is
labelled provisional.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.orm import Session

from thermoledger.accounting.carbon import Pue

from .factors import (
    CONTEXT_FIGURES,
    AccountingContext,
    AppliedVersion,
    resolve_context,
    unavailable_reasons,
)
from .ledger import entry_accounted_at
from .models import LedgerEntry, RunStatus
from .records import RunRecord
from .types import utcnow

__all__ = ["Correction", "RunBasis", "run_bases", "run_basis"]

#: Run ids per ledger query of `run_bases`.
_BATCH = 500
#: Origins of the derivations that make a run's basis (not corrections beside it).
_DERIVATIONS = ("run_end", "rebasis")
#: Relative difference above which the measured energy no longer matches the ledgered one.
_ENERGY_RTOL = 1e-9


@dataclass(frozen=True, slots=True)
class Correction:
    """A later ledger entry that supersedes a figure of the run's end.

    Attributes:
        figure: The figure corrected.
        seq: The correcting entry's seq.
        supersedes: The seq of the run-end entry it replaces (directly or through others).
        value_si: Its value, in the figure's SI unit.
        note: Why, as posted.
    """

    figure: str
    seq: int
    supersedes: int
    value_si: float
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "figure": self.figure,
            "seq": self.seq,
            "supersedes": self.supersedes,
            "value_si": self.value_si,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class RunBasis:
    """What a run's carbon and cost figures are derived with, and where that comes from.

    Attributes:
        context: Region, PUE, versions and the reasons for missing figures.
        frozen: True when read from the ledger's run-end figures; False when resolved now
            (the figures are provisional until the run's end is ledgered).
        entries: ``{figure: seq}`` of the run-end derivation (empty when not frozen).
        ledgered_energy_j: The IT energy that derivation froze (None when not frozen).
        corrections: Later entries that supersede a figure of that derivation.
        status: The run's status.
    """

    context: AccountingContext
    frozen: bool
    status: RunStatus
    entries: Mapping[str, int] = field(default_factory=dict)
    ledgered_energy_j: float | None = None
    corrections: tuple[Correction, ...] = ()

    def notes(self, energy_j: float | None = None) -> list[str]:
        """What a reader of figures derived on this basis must know.

        Args:
            energy_j: The IT energy measured now, to flag a change since the run was ledgered.
        """
        when = self.context.at.isoformat()
        out: list[str] = []
        if self.frozen:
            seqs = sorted(self.entries.values())
            out.append(
                f"carbon and cost rest on the ledger's entries frozen at the run's end ({when}; "
                f"entries {', '.join(str(s) for s in seqs)}): versions added or closed later, or "
                "a later change of the project's region or PUE, do not change them"
            )
            ledgered = self.ledgered_energy_j
            if (
                energy_j is not None
                and ledgered is not None
                and abs(energy_j - ledgered) > _ENERGY_RTOL * max(abs(energy_j), abs(ledgered))
            ):
                out.append(
                    f"measurements changed since the run's figures were ledgered ({ledgered:.6g} J "
                    f"then, {energy_j:.6g} J now): ending the run again ledgers the new figures"
                )
        elif self.status is RunStatus.RUNNING:
            out.append(
                f"provisional: the run has not ended, so its carbon and cost use the versions "
                f"valid now ({when}); the run's end freezes them in the ledger"
            )
        elif self.status is RunStatus.LOST:
            out.append(
                f"the run was lost: its figures are not ledgered; carbon and cost use the "
                f"versions valid at its end ({when})"
            )
        else:
            out.append(
                f"not in the ledger yet: carbon and cost use the versions valid at the run's end "
                f"({when}), as the ledger will when the run's end is recorded with measurements"
            )
        for c in self.corrections:
            out.append(
                f"ledger entry {c.seq} corrects {c.figure} (entry {c.supersedes}) to "
                f"{c.value_si:.6g}" + (f": {c.note}" if c.note else "")
            )
        return out

    def to_dict(self, energy_j: float | None = None) -> dict[str, Any]:
        """JSON-safe record: the context, whether it is frozen, and the ledger entries."""
        return {
            **self.context.to_dict(),
            "frozen": self.frozen,
            "source": "ledger" if self.frozen else "resolved",
            "ledger_entries": dict(self.entries),
            "ledgered_energy_j": self.ledgered_energy_j,
            "corrections": [c.to_dict() for c in self.corrections],
            "notes": self.notes(energy_j),
        }


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    value_si: float
    provenance: Mapping[str, Any]

    @property
    def figure(self) -> str:
        return str(self.provenance.get("figure"))

    @property
    def derived_from(self) -> int | None:
        inputs = self.provenance.get("inputs")
        value = inputs.get("it_energy") if isinstance(inputs, Mapping) else None
        return int(value) if isinstance(value, int | float) else None


def _entries(
    session: Session, project_id: int, run_ids: Sequence[UUID]
) -> dict[UUID, list[_Entry]]:
    """Every ledger entry of the runs (by database key), in seq order, per key."""
    out: dict[UUID, list[_Entry]] = defaultdict(list)
    for start in range(0, len(run_ids), _BATCH):
        rows = session.execute(
            sa.select(
                LedgerEntry.run_id, LedgerEntry.seq, LedgerEntry.value_si, LedgerEntry.provenance
            )
            .where(
                LedgerEntry.project_id == project_id,
                LedgerEntry.run_id.in_(run_ids[start : start + _BATCH]),
            )
            .order_by(LedgerEntry.seq)
        ).all()
        for run_id, seq, value_si, provenance in rows:
            if run_id is not None:
                out[run_id].append(_Entry(int(seq), float(value_si), dict(provenance)))
    return out


def _facility_input(entry: _Entry) -> int | None:
    inputs = entry.provenance.get("inputs")
    value = inputs.get("facility_energy") if isinstance(inputs, Mapping) else None
    return int(value) if isinstance(value, int | float) else None


def _applied(entry: _Entry | None, key: str) -> AppliedVersion | None:
    record = None if entry is None else entry.provenance.get(key)
    return AppliedVersion.from_record(record) if isinstance(record, Mapping) else None


def _corrections(entries: Sequence[_Entry], frozen: Mapping[str, int]) -> tuple[Correction, ...]:
    replaced: dict[int, _Entry] = {}
    for entry in entries:
        target = entry.provenance.get("supersedes")
        if isinstance(target, int) and target not in replaced:
            replaced[target] = entry
    out = []
    for figure, seq in frozen.items():
        current: _Entry | None = None
        cursor = seq
        while cursor in replaced:
            current = replaced[cursor]
            cursor = current.seq
        if current is not None and current.provenance.get("origin") not in _DERIVATIONS:
            note = current.provenance.get("note")
            out.append(
                Correction(
                    figure=figure,
                    seq=current.seq,
                    supersedes=seq,
                    value_si=current.value_si,
                    note=note if isinstance(note, str) else None,
                )
            )
    return tuple(out)


def _frozen(run: RunRecord, entries: Sequence[_Entry]) -> RunBasis | None:
    """The basis of the latest run-end derivation in ``entries``, if there is one."""
    run_end = [e for e in entries if e.provenance.get("origin") == "run_end"]
    energy = [e for e in run_end if e.figure == "it_energy"]
    if not energy:
        return None
    it = energy[-1]
    batch = {e.figure: e for e in run_end if e.derived_from == it.seq}
    # A re-basis (`db.ledger.record_rebasis`) re-derives that IT energy's figures on a newer
    # basis: its latest batch (one facility entry and what was derived from it) is the basis.
    rebased = [
        e
        for e in entries
        if e.provenance.get("origin") == "rebasis"
        and e.figure == "facility_energy"
        and e.derived_from == it.seq
    ]
    if rebased:
        facility_seq = rebased[-1].seq
        batch = {"facility_energy": rebased[-1]} | {
            e.figure: e
            for e in entries
            if e.provenance.get("origin") == "rebasis" and _facility_input(e) == facility_seq
        }
    facility = batch.get("facility_energy")
    pue_record = None if facility is None else facility.provenance.get("pue")
    if facility is None or not isinstance(pue_record, Mapping):
        return None
    at = entry_accounted_at(it.provenance, run.ended_at or utcnow())
    region = facility.provenance.get("region")
    region = region if isinstance(region, str) else None
    location = _applied(batch.get("co2e_location"), "factor")
    market = _applied(batch.get("co2e_market"), "factor")
    tariff = _applied(batch.get("energy_cost"), "tariff")
    recorded = facility.provenance.get("unavailable")
    unavailable = (
        {k: str(v) for k, v in recorded.items() if k in CONTEXT_FIGURES}
        if isinstance(recorded, Mapping)
        else unavailable_reasons(
            region=region, at=at, location=location, market=market, tariff=tariff
        )
    )
    pue = Pue(
        value=float(pue_record["value"]),
        name=str(pue_record["name"]),
        kind=pue_record["kind"],
        source=str(pue_record["source"]),
        year=pue_record.get("year"),
        note=pue_record.get("note"),
    )
    frozen = {"it_energy": it.seq, **{figure: e.seq for figure, e in batch.items()}}
    return RunBasis(
        context=AccountingContext(
            at=at,
            region=region,
            pue=pue,
            location=location,
            market=market,
            tariff=tariff,
            unavailable=unavailable,
        ),
        frozen=True,
        status=run.status,
        entries=frozen,
        ledgered_energy_j=it.value_si,
        corrections=_corrections(entries, frozen),
    )


def run_bases(
    session: Session,
    *,
    project_id: int,
    runs: Sequence[RunRecord],
    now: datetime | None = None,
) -> dict[UUID, RunBasis]:
    """The basis of each run: frozen in the ledger, else resolved at its end (or ``now``).

    Reads the runs' ledger entries in batches; runs not ledgered share one resolution per
    instant.

    Args:
        session: The caller's session.
        project_id: The runs' project.
        runs: The runs (of that project).
        now: The instant for runs that have not ended (default: now).
    """
    now = now or utcnow()
    ledgered = _entries(session, project_id, [r.key for r in runs])
    resolved: dict[datetime, AccountingContext] = {}
    out: dict[UUID, RunBasis] = {}
    for run in runs:
        basis = _frozen(run, ledgered.get(run.key, ()))
        if basis is None:
            at = run.ended_at or now
            context = resolved.get(at)
            if context is None:
                context = resolved[at] = resolve_context(session, project_id=project_id, at=at)
            basis = RunBasis(context=context, frozen=False, status=run.status)
        out[run.id] = basis
    return out


def run_basis(
    session: Session, *, project_id: int, run: RunRecord, now: datetime | None = None
) -> RunBasis:
    """The basis of one run (see `run_bases`)."""
    return run_bases(session, project_id=project_id, runs=[run], now=now)[run.id]
