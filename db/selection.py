"""Runs matching a filter, each with its measured energy: what the runs list and its totals read.

`db.runs.list_runs` pages through a project's runs; a list page also wants each run's
energy and the totals of the whole selection. Building a full report per run would cost two
queries and an accounting pass per run, so the energy comes from **one** aggregate over the
running totals (`db.models.DeviceTotal`) per batch of runs. It adds the devices the run report
adds: a device that another on its host covers (``device.covers``: the CPU inside a
GH200-class module's figure) is left out, as `accounting.integrate.covered_by` rules. Carbon
and energy cost are linear in energy under one set of factors, so the selection's totals
follow from the summed energy (the caller prices it, with the same settings the run reports
use).

The selection is capped at `MAX_SELECTION` runs (newest first); `RunSelection.truncated` says
when the filter matched more, so a page can say its totals are partial instead of being wrong
in silence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .models import Device, DeviceTotal, Run, RunKind, RunStatus
from .records import RunCursor, RunRecord
from .runs import list_runs

__all__ = ["MAX_SELECTION", "RunEnergy", "RunSelection", "run_energies", "select_runs"]

#: Most runs one selection holds (newest first).
MAX_SELECTION = 5000
_BATCH = 500
_TOTAL_T = cast(sa.Table, DeviceTotal.__table__)
_DEVICE_T = cast(sa.Table, Device.__table__)


def _covered(d: sa.Table) -> sa.Exists:
    """Another device of the run on the same host lists ``d``'s kind in its ``covers``."""
    g = _DEVICE_T.alias("covering")
    listed = sa.literal(",") + g.c.covers + sa.literal(",")
    kind = sa.literal(",") + sa.cast(d.c.kind, sa.String) + sa.literal(",")
    return (
        sa.exists()
        .where(g.c.run_id == d.c.run_id, g.c.host == d.c.host, g.c.id != d.c.id)
        .where(listed.contains(kind, autoescape=False))
    )


@dataclass(frozen=True, slots=True)
class RunEnergy:
    """A run's measured energy, summed over its devices' running totals.

    Attributes:
        energy_j: Energy of all devices, J (0 when nothing was measured yet), those covered
            by another device on their host left out.
        devices: Devices with measurements that the energy adds.
        t0_s: First sample, unix s (None without measurements).
        t1_s: End of the last chunk, unix s (None without measurements).
    """

    energy_j: float = 0.0
    devices: int = 0
    t0_s: float | None = None
    t1_s: float | None = None

    @property
    def duration_s(self) -> float | None:
        """Measured span, s (None without measurements)."""
        if self.t0_s is None or self.t1_s is None:
            return None
        return max(self.t1_s - self.t0_s, 0.0)


@dataclass(frozen=True, slots=True)
class RunSelection:
    """The runs a filter matched (newest first), their energies, and the selection's total.

    Attributes:
        runs: The matching runs, at most `MAX_SELECTION`.
        energy: Per run id, its energy.
        truncated: More runs matched than the selection holds.
    """

    runs: tuple[RunRecord, ...]
    energy: dict[UUID, RunEnergy]
    truncated: bool

    @property
    def total_energy_j(self) -> float:
        """Energy of every run in the selection, J."""
        return math.fsum(e.energy_j for e in self.energy.values())

    @property
    def measured_runs(self) -> int:
        """Runs with at least one measured device."""
        return sum(1 for e in self.energy.values() if e.devices)


def run_energies(
    session: Session, *, project_id: int, run_ids: Sequence[UUID]
) -> dict[UUID, RunEnergy]:
    """Measured energy of each run (one aggregate per 500 runs; other projects' runs ignored).

    Args:
        session: The caller's session.
        project_id: The project; ids of another project's runs get no entry.
        run_ids: The runs.

    Returns:
        Per run with measurements, its energy; runs without any are absent.
    """
    t = _TOTAL_T
    d = _DEVICE_T
    out: dict[UUID, RunEnergy] = {}
    ids = list(dict.fromkeys(run_ids))
    for start in range(0, len(ids), _BATCH):
        batch = ids[start : start + _BATCH]
        rows = session.execute(
            sa.select(
                Run.client_id,
                sa.func.sum(t.c.energy_j),
                sa.func.count(),
                sa.func.min(t.c.t0_s),
                sa.func.max(t.c.t1_s),
            )
            .join(Run, Run.id == t.c.run_id)
            .join(d, sa.and_(d.c.run_id == t.c.run_id, d.c.id == t.c.device_id))
            .where(Run.project_id == project_id, Run.client_id.in_(batch))
            .where(~_covered(d))
            .group_by(Run.client_id)
        ).all()
        for run_id, energy, devices, t0, t1 in rows:
            out[run_id] = RunEnergy(float(energy), int(devices), float(t0), float(t1))
    return out


def select_runs(
    session: Session,
    *,
    project_id: int,
    kind: RunKind | None = None,
    status: RunStatus | None = None,
    tags: Sequence[tuple[str, str]] = (),
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    limit: int = MAX_SELECTION,
) -> RunSelection:
    """Every run of the project matching the filter (up to ``limit``), with its energy.

    Filters are those of `db.runs.list_runs` (which this pages through).

    Args:
        session: The caller's session.
        project_id: The project.
        kind, status: Exact filters.
        tags: ``(key, value)`` pairs the run's tags must all hold.
        started_after, started_before: ``started_at`` bounds (inclusive, exclusive).
        limit: Most runs to select, 1 … `MAX_SELECTION`.
    """
    limit = max(1, min(limit, MAX_SELECTION))
    runs: list[RunRecord] = []
    after: RunCursor | None = None
    truncated = False
    while True:
        want = min(_BATCH, limit - len(runs))
        page = list_runs(
            session,
            project_id=project_id,
            kind=kind,
            status=status,
            tags=tags,
            started_after=started_after,
            started_before=started_before,
            after=after,
            limit=want + 1,
        )
        runs.extend(page[:want])
        if len(page) <= want:
            break
        if len(runs) >= limit:
            truncated = True
            break
        after = RunCursor(started_at=runs[-1].started_at, run_id=runs[-1].id)
    energy = run_energies(session, project_id=project_id, run_ids=[r.id for r in runs])
    return RunSelection(runs=tuple(runs), energy=energy, truncated=truncated)
