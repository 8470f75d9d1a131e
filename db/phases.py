"""Phases: named windows of a run (``(run, name, t0_s)``) with the work declared inside them.

A phase is a module of its own, above `db.totals`, because writing one keeps the running totals
current: a new or newly closed phase has its per-device totals rebuilt from the chunk table
(`db.totals._rebuild_phase_totals`) under a ``FOR UPDATE`` lock on the run, which excludes
ingest's ``FOR KEY SHARE``, so no chunk written meanwhile can miss them. `db.totals` in turn needs
the run lookup of `db.runs`, so phases cannot live in `db.runs` without a circle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .errors import Conflict, FieldProblem, InvalidInput
from .models import Phase
from .records import INT64_MAX, UNBOUNDED_J, PhaseRecord, _phase_record
from .runs import _insert, _load_run
from .totals import _rebuild_phase_totals

__all__ = ["upsert_phase"]

# The Core table behind the model, typed as a table (``__table__`` is typed as a FromClause).
_PHASE_T = cast(sa.Table, Phase.__table__)


def upsert_phase(
    session: Session,
    *,
    project_id: int,
    run_id: UUID,
    name: str,
    t0_s: float,
    t1_s: float | None = None,
    flops: float | None = None,
    flops_dtype: str | None = None,
    tokens: int | None = None,
    tags: Mapping[str, Any] | None = None,
) -> tuple[PhaseRecord, bool]:
    """Record a phase, identified by ``(run, name, t0_s)``; a re-sent phase is recognised.

    Sending it again may fill in what was missing (close an open phase with ``t1_s``, add its
    FLOPs or tokens); changing a value already stored is a conflict.

    Returns:
        The phase and whether it was created.

    Raises:
        NotFound: No such run in the project.
        InvalidInput: Non-finite or negative times or work, ``t1_s < t0_s``.
        Conflict: A stored value differs.
    """
    problems = []
    if not (math.isfinite(t0_s) and 0 <= t0_s <= UNBOUNDED_J):
        problems.append(FieldProblem("t0_s", f"{t0_s!r} s is not a finite time >= 0"))
    if t1_s is not None and not (math.isfinite(t1_s) and t1_s >= t0_s and t1_s <= UNBOUNDED_J):
        problems.append(FieldProblem("t1_s", f"{t1_s!r} s is not a finite time >= t0_s"))
    if flops is not None and not (math.isfinite(flops) and 0 <= flops <= UNBOUNDED_J):
        problems.append(FieldProblem("flops", f"{flops!r} FLOP is not a finite value >= 0"))
    if tokens is not None and not 0 <= tokens <= INT64_MAX:
        problems.append(FieldProblem("tokens", f"{tokens} is outside [0, 2**63 - 1]"))
    if problems:
        raise InvalidInput(problems)
    # FOR UPDATE: no ingest of this run is in flight while the phase's totals are rebuilt
    # (ingest holds FOR KEY SHARE), so no new chunk can miss them (`db.models.PhaseTotal`).
    key = _load_run(session, project_id=project_id, run_id=run_id, lock=True).id
    inserted = session.execute(
        _insert(session, _PHASE_T)
        .values(
            run_id=key,
            name=name,
            t0_s=t0_s,
            t1_s=t1_s,
            flops=flops,
            flops_dtype=flops_dtype,
            tokens=tokens,
            tags=dict(tags or {}),
        )
        .on_conflict_do_nothing()
        .returning(_PHASE_T.c.id)
    ).first()
    phase = session.scalars(
        sa.select(Phase)
        .where(Phase.run_id == key, Phase.name == name, Phase.t0_s == t0_s)
        .with_for_update()
    ).one()
    if inserted is not None:
        session.flush()
        _rebuild_phase_totals(session, key, [phase.id])
        return _phase_record(phase, run_id), True
    closed = t1_s is not None and phase.t1_s is None
    for attribute, value in (
        ("t1_s", t1_s),
        ("flops", flops),
        ("flops_dtype", flops_dtype),
        ("tokens", tokens),
    ):
        if value is None:
            continue
        stored = getattr(phase, attribute)
        if stored is None:
            setattr(phase, attribute, value)
        elif stored != value:
            raise Conflict(
                f"phase {name!r} at t0_s={t0_s!r} already has {attribute}={stored!r}",
                field=attribute,
            )
    if tags:
        phase.tags = {**phase.tags, **tags}
    session.flush()
    if closed:
        _rebuild_phase_totals(session, key, [phase.id])
    return _phase_record(phase, run_id), False
