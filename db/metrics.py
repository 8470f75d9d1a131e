"""Quality metrics over a run (``eval_loss`` at step 1200), and the run's energy at each point.

A point is identified by ``(run, name, step)`` (`db.models.RunMetric`): a re-sent point is a
duplicate, the same key with another value or time is a conflict, and a batch is stored whole
or not at all (conflicts are found before anything is written; a race with an identical
request is settled by ``ON CONFLICT DO NOTHING`` and a read-back).

The energy at a point is the run's cumulative measured energy at its ``t_s``
(`accounting.quality.cumulative_energy`), from the chunk table: every device the run report
adds (a device that another on its host covers is left out, `db.selection`), each chunk shared
out linearly in time where the point falls inside it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from uuid import UUID

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from thermoledger.accounting.quality import CumulativeEnergy, cumulative_energy

from .errors import Conflict, FieldProblem, InvalidInput
from .models import Chunk, Device, Run, RunMetric
from .records import INT64_MAX, UNBOUNDED_J, RunRecord, _run_record
from .runs import _insert, _load_run
from .selection import _covered

__all__ = [
    "MAX_METRIC_POINTS",
    "MAX_QUALITY_RUNS",
    "METRIC_NAME_PATTERN",
    "MetricPoint",
    "MetricsWritten",
    "RecordedMetric",
    "RunMetrics",
    "energy_at",
    "list_metrics",
    "metrics_with_energy",
    "project_metric_names",
    "project_metric_runs",
    "record_metrics",
]

#: Metric names: the tag keys' alphabet and length (letters, digits, ``_ . : / -``; 1-64).
METRIC_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
#: Most points one request may send.
MAX_METRIC_POINTS = 10_000
#: Most runs a project-wide quality figure reads (newest first).
MAX_QUALITY_RUNS = 2_000

_BATCH = 500  # runs per IN (...) list
_METRIC_T = cast(sa.Table, RunMetric.__table__)
_CHUNK_T = cast(sa.Table, Chunk.__table__)
_DEVICE_T = cast(sa.Table, Device.__table__)


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One metric point.

    Attributes:
        name: The metric (``eval_loss``, ``tokens_seen``).
        step: The training step it belongs to (its key within the metric).
        value: The value, in the metric's own unit.
        t_s: When the job recorded it, unix s (the meter's clock, the chunks' clock).
    """

    name: str
    step: int
    value: float
    t_s: float


@dataclass(frozen=True, slots=True)
class MetricsWritten:
    """What a batch did: points newly stored and points that were already there."""

    stored: int
    duplicates: int


def _problems(points: Sequence[MetricPoint]) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    seen: dict[tuple[str, int], tuple[int, MetricPoint]] = {}
    for i, p in enumerate(points):
        where = f"points[{i}]"
        if not METRIC_NAME_PATTERN.match(p.name):
            problems.append(
                FieldProblem(f"{where}.name", f"{p.name!r} is not 1-64 of [A-Za-z0-9_.:/-]")
            )
        if not 0 <= p.step <= INT64_MAX:
            problems.append(FieldProblem(f"{where}.step", f"{p.step} is outside [0, 2**63 - 1]"))
        if not (math.isfinite(p.value) and abs(p.value) <= UNBOUNDED_J):
            problems.append(FieldProblem(f"{where}.value", f"{p.value!r} is not a finite number"))
        if not (math.isfinite(p.t_s) and 0 <= p.t_s <= UNBOUNDED_J):
            problems.append(FieldProblem(f"{where}.t_s", f"{p.t_s!r} s is not a finite time >= 0"))
        earlier = seen.setdefault((p.name, p.step), (i, p))
        if earlier[0] != i and earlier[1] != p:
            problems.append(
                FieldProblem(where, f"{p.name!r} step {p.step} differs from points[{earlier[0]}]")
            )
    return problems


def _stored(
    session: Session, key: UUID, keys: set[tuple[str, int]]
) -> dict[tuple[str, int], tuple[float, float]]:
    names = sorted({name for name, _ in keys})
    rows = session.execute(
        sa.select(RunMetric.name, RunMetric.step, RunMetric.value, RunMetric.t_s).where(
            RunMetric.run_id == key, RunMetric.name.in_(names)
        )
    ).all()
    return {(n, s): (v, t) for n, s, v, t in rows if (n, s) in keys}


def _check_against(
    points: Sequence[MetricPoint], stored: dict[tuple[str, int], tuple[float, float]]
) -> None:
    for i, p in enumerate(points):
        have = stored.get((p.name, p.step))
        if have is None:
            continue
        for field, new, old in (("value", p.value, have[0]), ("t_s", p.t_s, have[1])):
            if new != old:
                raise Conflict(
                    f"{p.name!r} step {p.step} is stored with {field}={old!r}, not {new!r}",
                    field=f"points[{i}].{field}",
                )


def record_metrics(
    session: Session, *, project_id: int, run_id: UUID, points: Sequence[MetricPoint]
) -> MetricsWritten:
    """Store a batch of metric points of a run: all of them, or none.

    Args:
        session: The caller's session (its transaction is the request's).
        project_id: The run's project.
        run_id: The run's id as its clients know it.
        points: The points (at most `MAX_METRIC_POINTS`).

    Returns:
        How many were new and how many were already stored (duplicates).

    Raises:
        NotFound: No such run in the project.
        InvalidInput: A name, step, value or time no row may hold, two different points under
            one key in the batch, or too many points (every problem at once).
        Conflict: A point's key is stored with another value or time.
    """
    if len(points) > MAX_METRIC_POINTS:
        raise InvalidInput.one("points", f"{len(points)} points; at most {MAX_METRIC_POINTS}")
    problems = _problems(points)
    if problems:
        raise InvalidInput(problems)
    key = _load_run(session, project_id=project_id, run_id=run_id).id
    unique = list({(p.name, p.step): p for p in points}.values())
    if not unique:
        return MetricsWritten(0, 0)
    keys = {(p.name, p.step) for p in unique}
    before = _stored(session, key, keys)
    _check_against(points, before)
    new = [p for p in unique if (p.name, p.step) not in before]
    if new:
        session.execute(
            _insert(session, _METRIC_T).on_conflict_do_nothing(),
            [
                {"run_id": key, "name": p.name, "step": p.step, "value": p.value, "t_s": p.t_s}
                for p in new
            ],
        )
        # A concurrent identical request may have stored some first: read back and compare.
        _check_against(points, _stored(session, key, keys))
    return MetricsWritten(stored=len(new), duplicates=len(points) - len(new))


def list_metrics(
    session: Session, *, project_id: int, run_id: UUID, name: str | None = None
) -> list[MetricPoint]:
    """A run's metric points, by name then step.

    Raises:
        NotFound: No such run in the project.
    """
    key = _load_run(session, project_id=project_id, run_id=run_id).id
    return _points(session, key, name)


def metrics_with_energy(
    session: Session, *, project_id: int, run_id: UUID, name: str | None = None
) -> tuple[list[MetricPoint], CumulativeEnergy | None]:
    """A run's metric points (by name then step) and its cumulative energy at each.

    Returns:
        The points, and the energy at each (None when the run has no chunks).

    Raises:
        NotFound: No such run in the project.
    """
    key = _load_run(session, project_id=project_id, run_id=run_id).id
    points = _points(session, key, name)
    return points, energy_at(session, run_key=key, at_s=[p.t_s for p in points])


def _points(session: Session, key: UUID, name: str | None) -> list[MetricPoint]:
    query = sa.select(RunMetric.name, RunMetric.step, RunMetric.value, RunMetric.t_s).where(
        RunMetric.run_id == key
    )
    if name is not None:
        query = query.where(RunMetric.name == name)
    rows = session.execute(query.order_by(RunMetric.name, RunMetric.step)).all()
    return [MetricPoint(str(n), int(s), float(v), float(t)) for n, s, v, t in rows]


def energy_at(session: Session, *, run_key: UUID, at_s: Sequence[float]) -> CumulativeEnergy | None:
    """The run's cumulative measured energy and band at each time (None without chunks, or
    without times).

    Args:
        session: The caller's session.
        run_key: The run's database key (``run.id``, not the client id).
        at_s: Times, unix s.
    """
    if not at_s:
        return None
    c = _CHUNK_T
    d = _DEVICE_T
    rows = session.execute(
        sa.select(
            c.c.device_id,
            c.c.t0_s,
            c.c.t1_s,
            c.c.energy_j,
            c.c.sensor_uncertainty_j,
            c.c.bound_below_j,
            c.c.bound_above_j,
        )
        .join(d, sa.and_(d.c.run_id == c.c.run_id, d.c.id == c.c.device_id))
        .where(c.c.run_id == run_key)
        .where(~_covered(d))
        # Chunks that begin after the last point add nothing to it (the (run_id, t0_s) index).
        .where(c.c.t0_s <= max(at_s))
    ).all()
    if not rows:
        exists = session.execute(sa.select(c.c.run_id).where(c.c.run_id == run_key).limit(1))
        if exists.first() is None:
            return None
        zeros = np.zeros(len(at_s))
        return CumulativeEnergy(energy_j=zeros, energy_low_j=zeros, energy_high_j=zeros)
    columns = np.asarray([r[1:] for r in rows], dtype=np.float64).reshape(len(rows), 6)
    above = columns[:, 5]
    return cumulative_energy(
        device=np.asarray([r[0] for r in rows], dtype=np.int64),
        t0_s=columns[:, 0],
        t1_s=columns[:, 1],
        energy_j=columns[:, 2],
        sensor_uncertainty_j=columns[:, 3],
        bound_below_j=columns[:, 4],
        bound_above_j=np.where(above >= UNBOUNDED_J, np.inf, above),
        at_s=np.asarray(at_s, dtype=np.float64),
    )


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """One run's points of one metric, in step order, with the energy at each.

    Attributes:
        run: The run.
        points: Its points of the metric, by step.
        energy: Cumulative energy at each point (None: the run has no chunks).
    """

    run: RunRecord
    points: tuple[MetricPoint, ...]
    energy: CumulativeEnergy | None


def project_metric_runs(
    session: Session,
    *,
    project_id: int,
    name: str,
    started_after: datetime | None = None,
    limit: int = MAX_QUALITY_RUNS,
) -> tuple[list[RunMetrics], bool]:
    """Every run of the project that recorded metric ``name`` (newest first, up to ``limit``).

    Returns:
        The runs with their points and energies, and whether more runs matched than returned.
    """
    has_metric = sa.exists().where(RunMetric.run_id == Run.id, RunMetric.name == name)
    query = sa.select(Run).where(Run.project_id == project_id, has_metric)
    if started_after is not None:
        query = query.where(Run.started_at >= started_after)
    runs = session.scalars(
        query.order_by(Run.started_at.desc(), Run.client_id.desc()).limit(limit + 1)
    ).all()
    truncated = len(runs) > limit
    selected = runs[:limit]
    by_run: dict[UUID, list[MetricPoint]] = {run.id: [] for run in selected}
    keys = list(by_run)
    for start in range(0, len(keys), _BATCH):
        rows = session.execute(
            sa.select(RunMetric.run_id, RunMetric.step, RunMetric.value, RunMetric.t_s)
            .where(RunMetric.run_id.in_(keys[start : start + _BATCH]), RunMetric.name == name)
            .order_by(RunMetric.run_id, RunMetric.step)
        ).all()
        for key, step, value, t_s in rows:
            by_run[key].append(MetricPoint(name, int(step), float(value), float(t_s)))
    out: list[RunMetrics] = []
    for run in selected:
        points = tuple(by_run[run.id])
        energy = energy_at(session, run_key=run.id, at_s=[p.t_s for p in points])
        out.append(RunMetrics(run=_run_record(run), points=points, energy=energy))
    return out, truncated


@dataclass(frozen=True, slots=True)
class RecordedMetric:
    """A metric the project's runs recorded.

    Attributes:
        name: The metric's name.
        runs: How many runs recorded it.
        points: How many points in all.
        last_t_s: The newest point's time (unix s).
    """

    name: str
    runs: int
    points: int
    last_t_s: float


def project_metric_names(
    session: Session, *, project_id: int, limit: int = MAX_QUALITY_RUNS
) -> tuple[list[RecordedMetric], bool]:
    """The metric names the project's runs recorded, most runs first (then by name).

    Returns:
        Up to ``limit`` names, and whether there were more.
    """
    runs = sa.func.count(sa.distinct(RunMetric.run_id))
    rows = session.execute(
        sa.select(RunMetric.name, runs, sa.func.count(), sa.func.max(RunMetric.t_s))
        .join(Run, Run.id == RunMetric.run_id)
        .where(Run.project_id == project_id)
        .group_by(RunMetric.name)
        .order_by(runs.desc(), RunMetric.name)
        .limit(limit + 1)
    ).all()
    names = [RecordedMetric(str(n), int(r), int(p), float(t)) for n, r, p, t in rows[:limit]]
    return names, len(rows) > limit
