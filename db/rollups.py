"""Period rollups and the auditor's export, both read from the ledger alone.

Neither recomputes anything from runs, factors or tariffs: a rollup sums the project's
*current* ledger figures (`accounting.rollup`), and the export lists the entries themselves
with what each was derived from. So a published rollup or export never changes when a factor
or tariff version is added; it changes only when the ledger does (a new run, a correction),
and the ledger says so entry by entry.

Time ranges select entries by ``accounted_at`` (the instant a figure belongs to: a run's end),
half-open ``[start, end)``, in UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.orm import Session

from thermoledger.accounting.rollup import GroupRollup, LedgerFigure, Period, rollup

from . import ledger
from .chain import ChainVerdict, canonical_value
from .models import Run

__all__ = [
    "EXPORT_COLUMNS",
    "GroupBy",
    "RunInfo",
    "export_rows",
    "rollup_project",
]

GroupBy = Literal["project", "tag"]

#: Columns of the auditor's export, in order (the CSV header).
EXPORT_COLUMNS: tuple[str, ...] = (
    "project",
    "seq",
    "id",
    "created_at",
    "accounted_at",
    "run_id",
    "run_name",
    "run_kind",
    "run_status",
    "kind",
    "figure",
    "source",
    "value_si",
    "unit_si",
    "value_given",
    "unit_given",
    "superseded_by",
    "supersedes",
    "inputs",
    "method",
    "band_low_j",
    "band_high_j",
    "simulated",
    "pue",
    "pue_name",
    "pue_kind",
    "pue_source",
    "factor_id",
    "factor_builtin",
    "factor_region",
    "factor_basis",
    "factor_rate",
    "factor_value",
    "factor_unit",
    "factor_source",
    "factor_year",
    "factor_valid_from",
    "factor_valid_to",
    "tariff_id",
    "tariff_region",
    "tariff_value",
    "tariff_unit",
    "tariff_source",
    "tariff_year",
    "tariff_valid_from",
    "tariff_valid_to",
    "reference",
    "note",
    "prev_hash",
    "hash",
    "provenance_json",
)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the rollup and the export need of a run."""

    id: UUID
    name: str
    kind: str
    status: str
    tags: dict[str, Any]
    simulated: bool


def _runs(session: Session, project_id: int, run_ids: set[UUID]) -> dict[UUID, RunInfo]:
    if not run_ids:
        return {}
    rows = session.execute(
        sa.select(Run.client_id, Run.name, Run.kind, Run.status, Run.tags, Run.simulated).where(
            Run.project_id == project_id, Run.client_id.in_(sorted(run_ids))
        )
    ).all()
    return {
        row.client_id: RunInfo(
            id=row.client_id,
            name=row.name,
            kind=row.kind.value,
            status=row.status.value,
            tags=dict(row.tags),
            simulated=bool(row.simulated),
        )
        for row in rows
    }


def _in_range(at: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or at >= start) and (end is None or at < end)


def _measured_simulated(entry: ledger.LedgerRecord) -> bool:
    measurement = entry.provenance.get("measurement")
    return isinstance(measurement, dict) and bool(measurement.get("simulated"))


def rollup_project(
    session: Session,
    *,
    project_id: int,
    period: Period,
    group_by: GroupBy = "project",
    tag_key: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[GroupRollup]:
    """The project's rollups per period and group (see `accounting.rollup`).

    Args:
        session: The caller's session.
        project_id: The project.
        period: ``month`` or ``quarter``.
        group_by: ``project`` (one group: the slug) or ``tag`` (the value of ``tag_key`` on
            each figure's run; figures without a run or without the tag form group None).
        tag_key: The tag to group by (required with ``group_by="tag"``).
        start, end: ``accounted_at`` range, half-open.
    """
    entries = [
        e
        for e in ledger.project_entries(session, project_id=project_id)
        if e.superseded_by is None and _in_range(e.accounted_at, start, end)
    ]
    runs = _runs(session, project_id, {e.run_id for e in entries if e.run_id is not None})
    simulated = {
        e.run_id for e in entries if e.figure == "it_energy" and _measured_simulated(e)
    } | {r.id for r in runs.values() if r.simulated}
    figures = []
    for e in entries:
        run = runs.get(e.run_id) if e.run_id is not None else None
        if group_by == "project":
            group: str | None = e.project
        else:
            value = None if run is None or tag_key is None else run.tags.get(tag_key)
            group = None if value is None else str(value)
        figures.append(
            LedgerFigure(
                seq=e.seq,
                figure=e.figure,
                value_si=e.value_si,
                accounted_at=e.accounted_at,
                run_id=None if e.run_id is None else str(e.run_id),
                group=group,
                simulated=e.run_id in simulated,
            )
        )
    return rollup(figures, period=period)


def _methods(entry: ledger.LedgerRecord) -> str | None:
    measurement = entry.provenance.get("measurement")
    if not isinstance(measurement, dict) or not isinstance(measurement.get("methods"), dict):
        return None
    return "+".join(sorted(measurement["methods"]))


def _get(document: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _row(entry: ledger.LedgerRecord, run: RunInfo | None) -> dict[str, Any]:
    p = entry.provenance
    measurement = p.get("measurement") if isinstance(p.get("measurement"), dict) else {}
    return {
        "project": entry.project,
        "seq": entry.seq,
        "id": entry.id,
        "created_at": entry.created_at.isoformat(),
        "accounted_at": entry.accounted_at.isoformat(),
        "run_id": None if entry.run_id is None else str(entry.run_id),
        "run_name": None if run is None else run.name,
        "run_kind": None if run is None else run.kind,
        "run_status": None if run is None else run.status,
        "kind": entry.kind.value,
        "figure": entry.figure,
        "source": entry.source.value,
        "value_si": entry.value_si,
        "unit_si": entry.unit_si,
        "value_given": entry.value_given,
        "unit_given": entry.unit_given,
        "superseded_by": entry.superseded_by,
        "supersedes": entry.supersedes,
        "inputs": p.get("inputs"),
        "method": _methods(entry),
        "band_low_j": _get(measurement, "band_low_j"),
        "band_high_j": _get(measurement, "band_high_j"),
        "simulated": _get(measurement, "simulated"),
        "pue": _get(p, "pue", "value"),
        "pue_name": _get(p, "pue", "name"),
        "pue_kind": _get(p, "pue", "kind"),
        "pue_source": _get(p, "pue", "source"),
        "factor_id": _get(p, "factor", "id"),
        "factor_builtin": _get(p, "factor", "builtin"),
        "factor_region": _get(p, "factor", "region"),
        "factor_basis": _get(p, "factor", "basis"),
        "factor_rate": _get(p, "factor", "rate"),
        "factor_value": _get(p, "factor", "value"),
        "factor_unit": _get(p, "factor", "unit"),
        "factor_source": _get(p, "factor", "source"),
        "factor_year": _get(p, "factor", "year"),
        "factor_valid_from": _get(p, "factor", "valid_from"),
        "factor_valid_to": _get(p, "factor", "valid_to"),
        "tariff_id": _get(p, "tariff", "id"),
        "tariff_region": _get(p, "tariff", "region"),
        "tariff_value": _get(p, "tariff", "value"),
        "tariff_unit": _get(p, "tariff", "unit"),
        "tariff_source": _get(p, "tariff", "source"),
        "tariff_year": _get(p, "tariff", "year"),
        "tariff_valid_from": _get(p, "tariff", "valid_from"),
        "tariff_valid_to": _get(p, "tariff", "valid_to"),
        "reference": p.get("reference"),
        "note": p.get("note"),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "provenance_json": json.dumps(
            canonical_value(p), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
    }


def export_rows(
    session: Session,
    *,
    project_id: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[list[dict[str, Any]], ChainVerdict]:
    """The auditor's export: every entry in range, with its run, method, factor and hashes.

    Superseded entries are included (with ``superseded_by``): the export is the record, the
    rollup the current view of it. A derived figure's ``method`` and band are those of the
    measured energy it names in ``inputs`` (when that entry is in range too).
    ``provenance_json`` is the canonical JSON the entry's hash covers, so each hash can be
    recomputed from the row (`db.chain.entry_hash`).

    Returns:
        The rows (`EXPORT_COLUMNS` keys) and the verification of the project's whole chain.
    """
    entries = [
        e
        for e in ledger.project_entries(session, project_id=project_id)
        if _in_range(e.accounted_at, start, end)
    ]
    runs = _runs(session, project_id, {e.run_id for e in entries if e.run_id is not None})
    rows = [_row(e, runs.get(e.run_id) if e.run_id is not None else None) for e in entries]
    # A derived figure shows the method and band of the measured energy it was derived from.
    measured = {row["seq"]: row for row in rows if row["method"] is not None}
    for row in rows:
        source = measured.get(_get(row["inputs"], "it_energy"))
        if row["method"] is None and source is not None:
            for column in ("method", "band_low_j", "band_high_j", "simulated"):
                row[column] = source[column]
    return rows, ledger.verify(session, project_id=project_id)
