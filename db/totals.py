"""Running totals: kept by every write, re-derived from the chunks on demand, read by reports.

Each device of a run has a `db.models.DeviceTotal` row and each (phase, device) a
`db.models.PhaseTotal` row. `db.chunks` adds every newly written chunk to them
(`_add_to_totals`, two multi-row UPSERTs); `db.phases` rebuilds a phase's rows from the chunk
table when the phase is created or closed (`_rebuild_phase_totals`).

Reports read only the running totals (`run_usage`: O(devices × phases), whatever the run's
length); `rebuild_totals` re-derives them from the chunks. Bounds at the `UNBOUNDED_J` sentinel
(`db.records`) saturate when summed and read back as +inf.

The energy decomposition's inputs are kept the same way: each device's quietest sustained chunk
(a running minimum of ``quiet_power_w``, with its ``quiet_power_high_w``; ties keep the lower
top, so the result does not depend on arrival order) and its memory-busy and observed seconds
(sums), both from `accounting.decomposition.lowest_sustained_power` over the new chunks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, cast
from uuid import UUID

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from thermoledger.accounting.decomposition import lowest_sustained_power
from thermoledger.accounting.integrate import covered_by

from .models import Chunk, Device, DeviceTotal, EnergyMethod, Phase, PhaseTotal
from .records import (
    UNBOUNDED_J,
    ChunkRow,
    DeviceAggregate,
    PhaseAggregate,
    PhaseDeviceEnergy,
    RunUsage,
    _phase_record,
    _run_record,
)
from .runs import _load_run

__all__ = [
    "rebuild_totals",
    "run_usage",
]

# The Core tables behind the models, typed as tables (``__table__`` is typed as a FromClause).
_DEVICE_T = cast(sa.Table, Device.__table__)
_CHUNK_T = cast(sa.Table, Chunk.__table__)
_PHASE_T = cast(sa.Table, Phase.__table__)
_DEVICE_TOTAL_T = cast(sa.Table, DeviceTotal.__table__)
_PHASE_TOTAL_T = cast(sa.Table, PhaseTotal.__table__)
_TERMS = ("energy_j", "sensor_uncertainty_j", "bound_below_j", "bound_above_j")

#: Position of each `ChunkRow` field (columns of a transposed batch).
_CHUNK_FIELD: dict[str, int] = {name: i for i, name in enumerate(ChunkRow._fields)}


def _clamped_sum(table: sa.Table, excluded: Any, name: str) -> sa.ColumnElement[float]:
    """``stored + delta``, clamped to the `UNBOUNDED_J` sentinel (which it means)."""
    total = table.c[name] + excluded[name]
    return sa.case((total >= UNBOUNDED_J, UNBOUNDED_J), else_=total)


@functools.lru_cache(maxsize=8)
def _adding_upsert(dialect: str, table_name: str, keys: tuple[str, ...]) -> sa.Insert:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` that adds the new row to the stored one.

    Sums add; ``t0_s`` keeps the minimum, ``t1_s`` and ``peak_power_w`` the maximum;
    ``bound_above_j`` saturates at the `UNBOUNDED_J` sentinel; ``method`` turns ``mixed`` when
    the two differ; ``quiet_power_w`` and ``quiet_power_high_w`` are replaced together by the
    new pair when it is lower (NULL: none yet). Built once per table and dialect: building it
    costs more than running it.
    """
    table = _DEVICE_TOTAL_T if table_name == _DEVICE_TOTAL_T.name else _PHASE_TOTAL_T
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    excluded = insert.excluded
    set_: dict[str, Any] = {}
    for column in table.columns:
        name = column.name
        if name in keys:
            continue
        if name == "bound_above_j":
            set_[name] = _clamped_sum(table, excluded, name)
        elif name == "t0_s":
            set_[name] = sa.case((excluded.t0_s < table.c.t0_s, excluded.t0_s), else_=table.c.t0_s)
        elif name in ("t1_s", "peak_power_w"):
            set_[name] = sa.case(
                (excluded[name] > table.c[name], excluded[name]), else_=table.c[name]
            )
        elif name == "method":
            set_[name] = sa.case(
                (excluded.method == table.c.method, table.c.method),
                else_=sa.literal(EnergyMethod.MIXED.value),
            )
        elif name in ("quiet_power_w", "quiet_power_high_w"):
            quieter = sa.and_(
                excluded.quiet_power_w.is_not(None),
                sa.or_(
                    table.c.quiet_power_w.is_(None),
                    excluded.quiet_power_w < table.c.quiet_power_w,
                    sa.and_(
                        excluded.quiet_power_w == table.c.quiet_power_w,
                        excluded.quiet_power_high_w < table.c.quiet_power_high_w,
                    ),
                ),
            )
            set_[name] = sa.case((quieter, excluded[name]), else_=table.c[name])
        else:
            set_[name] = table.c[name] + excluded[name]
    return insert.on_conflict_do_update(index_elements=list(keys), set_=set_)


def _upsert_adding(
    session: Session, table: sa.Table, keys: tuple[str, ...], deltas: Sequence[dict[str, Any]]
) -> None:
    """Add the delta rows to the stored rows of ``table`` (`_adding_upsert`).

    Rows go in key order, so concurrent ingests lock the same rows in the same order.
    """
    if not deltas:
        return
    statement = _adding_upsert(session.get_bind().dialect.name, table.name, keys)
    ordered = sorted(deltas, key=lambda row: tuple(row[k] for k in keys))
    session.execute(statement, ordered)


#: The phases `_add_to_totals` splits chunks over, built once (building it per batch cost
#: more than running it).
_PHASES_OF_RUN = sa.select(_PHASE_T.c.id, _PHASE_T.c.t0_s, _PHASE_T.c.t1_s).where(
    _PHASE_T.c.run_id == sa.bindparam("run_id")
)


def _add_to_totals(session: Session, run_id: UUID, written: Sequence[tuple[int, ChunkRow]]) -> None:
    """Add newly written chunks to their devices' totals and to every phase they overlap."""
    if not written:
        return
    per_device: dict[int, list[ChunkRow]] = {}
    for device_id, c in written:
        per_device.setdefault(device_id, []).append(c)
    f = _CHUNK_FIELD
    # The decomposition's figures of all devices at once: per device, its ~30 numpy calls on
    # a few dozen values cost more than the rest of the totals.
    everything = list(zip(*(c for chunks in per_device.values() for c in chunks), strict=True))
    activity = _activity(
        [k for k, chunks in enumerate(per_device.values()) for _ in chunks],
        len(per_device),
        *(everything[f[name]] for name in _ACTIVITY_FIELDS),
    )
    device_rows = []
    for k, (device_id, chunks) in enumerate(per_device.items()):
        column = list(zip(*chunks, strict=True))  # one tuple per ChunkRow field
        methods = set(column[f["method"]])
        device_rows.append(
            {
                "run_id": run_id,
                "device_id": device_id,
                "chunks": len(chunks),
                "samples": sum(column[f["n"]]),
                "energy_j": math.fsum(column[f["energy_j"]]),
                "sensor_uncertainty_j": math.fsum(column[f["sensor_uncertainty_j"]]),
                "bound_below_j": math.fsum(column[f["bound_below_j"]]),
                "bound_above_j": min(math.fsum(column[f["bound_above_j"]]), UNBOUNDED_J),
                "t0_s": min(column[f["t0_s"]]),
                "t1_s": max(column[f["t1_s"]]),
                "peak_power_w": max(column[f["max_power_w"]]),
                "gap_s": math.fsum(column[f["gap_s"]]),
                "gap_count": sum(column[f["gap_count"]]),
                "reset_count": sum(column[f["reset_count"]]),
                "method": methods.pop() if len(methods) == 1 else EnergyMethod.MIXED,
                **activity[k],
            }
        )
    _upsert_adding(session, _DEVICE_TOTAL_T, ("run_id", "device_id"), device_rows)
    found = session.execute(_PHASES_OF_RUN, {"run_id": run_id}).all()
    if not found:
        return
    device_ids = np.fromiter((d for d, _ in written), np.int64, len(written))
    c0 = np.fromiter((c.t0_s for _, c in written), np.float64, len(written))
    c1 = np.fromiter((c.t1_s for _, c in written), np.float64, len(written))
    terms = {
        name: np.fromiter((getattr(c, name) for _, c in written), np.float64, len(written))
        for name in _TERMS
    }
    unbounded = terms["bound_above_j"] >= UNBOUNDED_J
    terms["bound_above_j"] = np.where(unbounded, 0.0, terms["bound_above_j"])
    phase_rows = []
    for phase_id, p0, p1 in found:
        fraction = _overlap_fraction(c0, c1, p0, math.inf if p1 is None else p1)
        for device_id in np.unique(device_ids[fraction > 0]).tolist():
            mine = (device_ids == device_id) & (fraction > 0)
            row: dict[str, Any] = {"phase_id": phase_id, "device_id": device_id}
            for name, values in terms.items():
                row[name] = math.fsum((values[mine] * fraction[mine]).tolist())
            if unbounded[mine].any():
                row["bound_above_j"] = UNBOUNDED_J
            phase_rows.append(row)
    _upsert_adding(session, _PHASE_TOTAL_T, ("phase_id", "device_id"), phase_rows)


#: The chunk fields `_activity` reads, in its argument order.
_ACTIVITY_FIELDS = (
    "t0_s",
    "t1_s",
    "energy_j",
    "sensor_uncertainty_j",
    "bound_above_j",
    "gap_count",
    "reset_count",
    "method",
    "mem_busy_frac",
)


def _activity(
    device: Sequence[int],
    n_devices: int,
    t0_s: Sequence[float],
    t1_s: Sequence[float],
    energy_j: Sequence[float],
    sensor_uncertainty_j: Sequence[float],
    bound_above_j: Sequence[float],
    gap_count: Sequence[int],
    reset_count: Sequence[int],
    method: Sequence[str],
    mem_busy_frac: Sequence[float | None],
) -> list[dict[str, Any]]:
    """Per device position, the decomposition's `DeviceTotal` figures of these chunks."""
    found = lowest_sustained_power(
        device=np.asarray(device, dtype=np.int64),
        n_devices=n_devices,
        t0_s=np.asarray(t0_s, dtype=np.float64),
        t1_s=np.asarray(t1_s, dtype=np.float64),
        energy_j=np.asarray(energy_j, dtype=np.float64),
        sensor_uncertainty_j=np.asarray(sensor_uncertainty_j, dtype=np.float64),
        bound_above_j=np.asarray(bound_above_j, dtype=np.float64),
        gap_count=np.asarray(gap_count, dtype=np.int64),
        reset_count=np.asarray(reset_count, dtype=np.int64),
        estimated=np.fromiter((m == EnergyMethod.ESTIMATE for m in method), np.bool_),
        mem_busy_frac=np.fromiter(
            (math.nan if b is None else b for b in mem_busy_frac), np.float64, len(mem_busy_frac)
        ),
    )
    quiet = found.quiet_power_w.tolist()
    high = found.quiet_power_high_w.tolist()
    busy = found.mem_busy_s.tolist()
    observed = found.mem_observed_s.tolist()
    return [
        {
            "quiet_power_w": None if math.isnan(quiet[k]) else quiet[k],
            "quiet_power_high_w": None if math.isnan(high[k]) else high[k],
            "mem_busy_s": busy[k],
            "mem_observed_s": observed[k],
        }
        for k in range(n_devices)
    ]


def _overlap_fraction(
    t0_s: npt.NDArray[np.float64], t1_s: npt.NDArray[np.float64], start_s: float, end_s: float
) -> npt.NDArray[np.float64]:
    """Share of each chunk ``[t0_s, t1_s]`` inside ``[start_s, end_s)``, by time (0 outside).

    A zero-length chunk counts whole where its instant lies inside. Same rule as
    `_phase_sums` in SQL.
    """
    lo = np.maximum(t0_s, start_s)
    hi = np.minimum(t1_s, end_s)
    length = t1_s - t0_s
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(length > 0, (hi - lo) / np.where(length > 0, length, 1.0), 1.0)
    inside = np.where(
        length > 0, (t0_s < end_s) & (t1_s > start_s), (t0_s >= start_s) & (t0_s < end_s)
    )
    return np.where(inside, share, 0.0)


def _phase_sums(
    session: Session, run_id: UUID, phase_ids: Sequence[int] | None
) -> dict[int, list[dict[str, Any]]]:
    """Per phase, per device: pro-rata sums of the overlapping chunks, from the chunk table.

    An open phase reaches to +inf (in effect: the run's last measurement). Chunks are found by
    the ``(run_id, t0_s)`` index, so a phase costs the chunks that start before its end.
    """
    c = _CHUNK_T
    p = _PHASE_T
    end = sa.func.coalesce(p.c.t1_s, sa.literal(UNBOUNDED_J, sa.Double()))
    lo = sa.case((c.c.t0_s > p.c.t0_s, c.c.t0_s), else_=p.c.t0_s)
    hi = sa.case((c.c.t1_s < end, c.c.t1_s), else_=end)
    fraction = sa.case(
        (c.c.t1_s > c.c.t0_s, (hi - lo) / (c.c.t1_s - c.c.t0_s)), else_=sa.literal(1.0)
    )
    overlaps = sa.or_(
        sa.and_(c.c.t0_s < end, c.c.t1_s > p.c.t0_s),
        sa.and_(c.c.t0_s == c.c.t1_s, c.c.t0_s >= p.c.t0_s, c.c.t0_s < end),
    )
    query = (
        sa.select(
            p.c.id,
            c.c.device_id,
            sa.func.sum(c.c.energy_j * fraction),
            sa.func.sum(c.c.sensor_uncertainty_j * fraction),
            sa.func.sum(c.c.bound_below_j * fraction),
            sa.func.sum(_finite_part(c.c.bound_above_j) * fraction),
            sa.func.max(_unbounded_flag(c.c.bound_above_j)),
        )
        .select_from(p)
        .join(c, sa.and_(c.c.run_id == p.c.run_id, overlaps))
        .where(p.c.run_id == run_id)
        .group_by(p.c.id, c.c.device_id)
        .order_by(p.c.id, c.c.device_id)
    )
    if phase_ids is not None:
        query = query.where(p.c.id.in_(phase_ids))
    sums: dict[int, list[dict[str, Any]]] = {}
    for phase_id, device_id, energy, sensor, below, above, unbounded in session.execute(query):
        sums.setdefault(phase_id, []).append(
            {
                "phase_id": phase_id,
                "device_id": device_id,
                "energy_j": float(energy or 0.0),
                "sensor_uncertainty_j": float(sensor or 0.0),
                "bound_below_j": float(below or 0.0),
                "bound_above_j": (
                    UNBOUNDED_J if unbounded else min(float(above or 0.0), UNBOUNDED_J)
                ),
            }
        )
    return sums


def _rebuild_phase_totals(session: Session, run_id: UUID, phase_ids: Sequence[int]) -> None:
    """Recompute the phases' totals from the chunk table."""
    t = _PHASE_TOTAL_T
    session.execute(sa.delete(t).where(t.c.phase_id.in_(phase_ids)))
    rows = [row for rows in _phase_sums(session, run_id, phase_ids).values() for row in rows]
    if rows:
        session.execute(sa.insert(t), rows)


def _device_sums(session: Session, run_id: UUID) -> list[dict[str, Any]]:
    """Per device: the `DeviceTotal` figures summed from the chunk table (the decomposition's
    from the chunks' summaries, by the kernel ingest uses: `_activity`)."""
    c = _CHUNK_T
    rows = session.execute(
        sa.select(
            c.c.device_id,
            sa.func.count(),
            sa.func.sum(c.c.n),
            sa.func.sum(c.c.energy_j),
            sa.func.sum(c.c.sensor_uncertainty_j),
            sa.func.sum(c.c.bound_below_j),
            sa.func.sum(_finite_part(c.c.bound_above_j)),
            sa.func.max(_unbounded_flag(c.c.bound_above_j)),
            sa.func.min(c.c.t0_s),
            sa.func.max(c.c.t1_s),
            sa.func.max(c.c.max_power_w),
            sa.func.sum(c.c.gap_s),
            sa.func.sum(c.c.gap_count),
            sa.func.sum(c.c.reset_count),
            sa.func.min(c.c.method),
            sa.func.max(c.c.method),
        )
        .where(c.c.run_id == run_id)
        .group_by(c.c.device_id)
    ).all()
    summaries = session.execute(
        sa.select(c.c.device_id, *(c.c[name] for name in _ACTIVITY_FIELDS))
        .where(c.c.run_id == run_id)
        .order_by(c.c.device_id, c.c.seq)
    ).all()
    ids = sorted({s[0] for s in summaries})
    position = {device_id: k for k, device_id in enumerate(ids)}
    columns = list(zip(*summaries, strict=True)) if summaries else [()] * 10
    found = _activity([position[d] for d in columns[0]], len(ids), *columns[1:])
    activity = dict(zip(ids, found, strict=True))
    return [
        {
            "run_id": run_id,
            "device_id": row[0],
            "chunks": row[1],
            "samples": row[2],
            "energy_j": row[3],
            "sensor_uncertainty_j": row[4],
            "bound_below_j": row[5],
            "bound_above_j": UNBOUNDED_J if row[7] else min(row[6], UNBOUNDED_J),
            "t0_s": row[8],
            "t1_s": row[9],
            "peak_power_w": row[10],
            "gap_s": row[11],
            "gap_count": row[12],
            "reset_count": row[13],
            "method": row[14] if row[14] == row[15] else EnergyMethod.MIXED,
            **activity.get(row[0], {}),
        }
        for row in rows
    ]


def rebuild_totals(session: Session, *, project_id: int, run_id: UUID) -> None:
    """Recompute a run's device and phase totals from its chunks (repair; audit).

    Ingest and phase changes keep the totals current; this re-derives them from scratch, so a
    test or an operator can check that the kept figures match the chunks.

    Raises:
        NotFound: No such run in the project.
    """
    key = _load_run(session, project_id=project_id, run_id=run_id, lock=True).id
    t = _DEVICE_TOTAL_T
    session.execute(sa.delete(t).where(t.c.run_id == key))
    rows = _device_sums(session, key)
    if rows:
        session.execute(sa.insert(t), rows)
    phase_ids = session.scalars(sa.select(_PHASE_T.c.id).where(_PHASE_T.c.run_id == key)).all()
    if phase_ids:
        _rebuild_phase_totals(session, key, list(phase_ids))
    session.flush()


# --------------------------------------------------------------------------- reports


def _unbounded_flag(column: sa.ColumnElement[float]) -> sa.ColumnElement[int]:
    """1 where a stored bound is the `UNBOUNDED_J` sentinel, else 0."""
    return sa.case((column >= UNBOUNDED_J, 1), else_=0)


def _finite_part(column: sa.ColumnElement[float]) -> sa.ColumnElement[float]:
    """The bound where finite, 0 where it is the sentinel (summed apart from the flag)."""
    return sa.case((column >= UNBOUNDED_J, 0.0), else_=column)


def _above(stored_j: float) -> float:
    """A stored bound read back: the `UNBOUNDED_J` sentinel (or beyond) is +inf."""
    return math.inf if stored_j >= UNBOUNDED_J else float(stored_j)


def run_usage(session: Session, *, project_id: int, run_id: UUID) -> RunUsage:
    """The run with its per-device and per-phase totals (no chunk is read).

    Two small queries over the running totals (`db.models.DeviceTotal`, `PhaseTotal`), so the
    cost is O(devices × phases) whatever the run's length. A phase's figures are each
    overlapping chunk's, in proportion to the part of the chunk's time inside the phase:
    exact when phase boundaries fall on chunk boundaries, otherwise it assumes constant power
    within a chunk (error at most one chunk's energy per boundary).

    Raises:
        NotFound: No such run in the project.
    """
    run = _load_run(session, project_id=project_id, run_id=run_id)
    d = _DEVICE_T
    t = _DEVICE_TOTAL_T
    device_rows = session.execute(
        sa.select(
            d.c.id,
            d.c.host,
            d.c.kind,
            d.c.device_index,
            d.c.uuid,
            d.c.name,
            d.c.catalog_key,
            d.c.power_limit_w,
            d.c.simulated,
            t.c.chunks,
            t.c.samples,
            t.c.energy_j,
            t.c.sensor_uncertainty_j,
            t.c.bound_below_j,
            t.c.bound_above_j,
            t.c.t0_s,
            t.c.t1_s,
            t.c.peak_power_w,
            t.c.gap_s,
            t.c.gap_count,
            t.c.reset_count,
            t.c.method,
            d.c.covers,
            t.c.quiet_power_w,
            t.c.quiet_power_high_w,
            t.c.mem_busy_s,
            t.c.mem_observed_s,
        )
        .select_from(d)
        .join(t, sa.and_(t.c.run_id == d.c.run_id, t.c.device_id == d.c.id))
        .where(d.c.run_id == run.id)
        .order_by(d.c.host, d.c.kind, d.c.device_index)
    ).all()
    devices = tuple(
        DeviceAggregate(
            id=row[0],
            host=row[1],
            kind=row[2],
            index=row[3],
            uid=row[4],
            name=row[5],
            catalog_key=row[6],
            power_limit_w=row[7],
            simulated=bool(row[8]),
            chunks=int(row[9]),
            samples=int(row[10]),
            energy_j=float(row[11]),
            sensor_uncertainty_j=float(row[12]),
            bound_below_j=float(row[13]),
            bound_above_j=_above(row[14]),
            t0_s=float(row[15]),
            t1_s=float(row[16]),
            peak_power_w=float(row[17]),
            gap_s=float(row[18]),
            gap_count=int(row[19]),
            reset_count=int(row[20]),
            method=str(row[21]),
            covers=tuple(k for k in str(row[22]).split(",") if k),
            quiet_power_w=None if row[23] is None else float(row[23]),
            quiet_power_high_w=None if row[24] is None else float(row[24]),
            mem_busy_s=float(row[25]),
            mem_observed_s=float(row[26]),
        )
        for row in device_rows
    )
    devices = _with_overlaps(devices)
    run_end_s = max((dev.t1_s for dev in devices), default=None)
    return RunUsage(
        run=_run_record(run),
        devices=devices,
        phases=_phase_usage(session, run.id, run_id, run_end_s),
    )


def _with_overlaps(devices: tuple[DeviceAggregate, ...]) -> tuple[DeviceAggregate, ...]:
    """Each device with the key of the device that covers it, if any (`covered_by`)."""
    by = covered_by(
        [d.host for d in devices], [str(d.kind) for d in devices], [d.covers for d in devices]
    )
    if all(b is None for b in by):
        return devices
    return tuple(
        d if b is None else dataclasses.replace(d, covered_by=devices[b].key)
        for d, b in zip(devices, by, strict=True)
    )


def _phase_usage(
    session: Session, key: UUID, run_id: UUID, run_end_s: float | None
) -> tuple[PhaseAggregate, ...]:
    """The run's phases with their shares; ``key`` is the run's database key, ``run_id`` the
    id its project knows it by (which the records carry)."""
    phases = [
        _phase_record(row, run_id)
        for row in session.scalars(
            sa.select(Phase).where(Phase.run_id == key).order_by(Phase.t0_s, Phase.name)
        )
    ]
    if not phases:
        return ()
    t = _PHASE_TOTAL_T
    shares: dict[int, list[PhaseDeviceEnergy]] = {}
    for phase_id, device_id, energy, sensor, below, above in session.execute(
        sa.select(
            t.c.phase_id,
            t.c.device_id,
            t.c.energy_j,
            t.c.sensor_uncertainty_j,
            t.c.bound_below_j,
            t.c.bound_above_j,
        )
        .where(t.c.phase_id.in_([phase.id for phase in phases]))
        .order_by(t.c.phase_id, t.c.device_id)
    ):
        shares.setdefault(phase_id, []).append(
            PhaseDeviceEnergy(
                device_id=int(device_id),
                energy_j=float(energy),
                sensor_uncertainty_j=float(sensor),
                bound_below_j=float(below),
                bound_above_j=_above(above),
            )
        )
    out = []
    for phase in phases:
        t1_s = phase.t1_s if phase.t1_s is not None else (run_end_s or phase.t0_s)
        out.append(
            PhaseAggregate(
                phase=phase,
                t1_s=max(t1_s, phase.t0_s),
                devices=tuple(shares.get(phase.id, ())),
            )
        )
    return tuple(out)
