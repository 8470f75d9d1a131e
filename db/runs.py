"""Runs: registered by every node of a job, listed, ended, their work declared.

The module also holds what the run-scoped store modules build on: the tenancy-checked run
lookup `_load_run` and the conflict-tolerant `_insert`. `db.totals`, `db.phases` and `db.chunks`
import them from here, and this module imports none of them.

Tenancy is enforced here, not in the routes: every lookup of a run (`_load_run`), a token
(`db.tokens`) or a phase is filtered by ``project_id``, so a row of another project is
indistinguishable from a missing one.

Concurrency. Rows that several clients may create at once (a run that every node of a job
registers, the devices a retried upload repeats, chunks) are written with ``INSERT ... ON
CONFLICT DO NOTHING`` (`_insert`) and then read back, so a race between two identical requests
ends in one row and two successes instead of an integrity error. SQLite serialises writers anyway
(`db.engine` begins every transaction ``IMMEDIATE``); on PostgreSQL the second insert waits for
the first transaction and then skips the row.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, cast
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .errors import Conflict, FieldProblem, InvalidInput, NotFound, StorageError
from .models import Run, RunKind, RunStatus
from .records import INT64_MAX, UNBOUNDED_J, RunCursor, RunRecord, _run_record
from .types import utcnow

__all__ = [
    "ESTIMATE_LABEL",
    "MAX_RUN_TAGS",
    "RUN_KEY_NAMESPACE",
    "declare_work",
    "end_run",
    "get_run",
    "list_runs",
    "run_key",
    "upsert_run",
]

# The Core tables behind the models, typed as tables (``__table__`` is typed as a FromClause).
_RUN_T = cast(sa.Table, Run.__table__)


def _insert(session: Session, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which has ``on_conflict_do_nothing`` on both backends."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise StorageError(f"unsupported dialect {name!r}")  # pragma: no cover - engine refuses it


#: Namespace of the runs' derived database keys (`run_key`). Not secret: a key is never shown
#: to a client, and no request names a run by its key.
RUN_KEY_NAMESPACE: Final = uuid.UUID("5b0f6a52-2d3c-4b8e-9a57-0c9e1f6d3a41")
#: The ``host_info`` key that labels a run as an estimate (``POST /runs/{id}/estimate``); such a
#: run takes no chunks (`db.chunks`).
ESTIMATE_LABEL: Final = "estimate"
#: Most tags a run holds, after every merge (one request may send as many).
MAX_RUN_TAGS: Final = 64


def run_key(project_id: int, run_id: UUID) -> UUID:
    """The database key of a run whose id another project's run already holds as its key:
    ``uuid5`` of the project and the id, so two projects that pick the same id get two runs,
    and a race between two identical registrations still ends in one row (`upsert_run`).
    Every other run's key is its id."""
    return uuid.uuid5(RUN_KEY_NAMESPACE, f"{project_id}/{run_id}")


def _find_run(session: Session, *, project_id: int, run_id: UUID, lock: bool = False) -> Run | None:
    """The project's run with (client) id ``run_id``, if any."""
    query = sa.select(Run).where(Run.client_id == run_id, Run.project_id == project_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def _load_run(session: Session, *, project_id: int, run_id: UUID, lock: bool = False) -> Run:
    """The project's run with (client) id ``run_id``; `NotFound` if the project has none."""
    run = _find_run(session, project_id=project_id, run_id=run_id, lock=lock)
    if run is None:
        raise NotFound("run", run_id)
    return run


def upsert_run(
    session: Session,
    *,
    project_id: int,
    run_id: UUID,
    name: str,
    kind: RunKind,
    started_at: datetime,
    tags: Mapping[str, Any],
    host_info: Mapping[str, Any],
    simulated: bool,
    max_host_info_bytes: int = 64 * 1024,
) -> tuple[RunRecord, bool]:
    """Create a run, or merge into the project's run with this id (every node of a job calls
    it).

    A run is identified within its project: another project's run with the same id is another
    run, and nothing here tells either project that the other exists.

    Merge rules: the earliest ``started_at`` wins, ``tags`` and ``host_info`` are merged (the
    new values win per key), ``name`` takes the new value, ``simulated`` stays set once set.
    The limits hold for the merged run, not only for one request: at most `MAX_RUN_TAGS` tags
    and ``max_host_info_bytes`` of ``host_info`` (compact JSON). Once a run has ended its
    identity is frozen: a new name, an earlier start or another kind is refused (a retried
    registration that changes none of them still succeeds).

    Returns:
        The run and whether it was created.

    Raises:
        Conflict: The run exists with another kind, or it has ended and the request would
            rename it or move its start.
        InvalidInput: The merged tags or host_info pass their limits.
    """
    now = utcnow()
    _check_limits(tags, host_info, max_host_info_bytes)
    values = {
        "client_id": run_id,
        "project_id": project_id,
        "name": name,
        "kind": kind,
        "status": RunStatus.RUNNING,
        "started_at": started_at,
        "tags": dict(tags),
        "host_info": dict(host_info),
        "simulated": simulated,
        "created_at": now,
        "updated_at": now,
    }
    # The key is the id itself unless another project's run holds it (then `run_key`).
    for key in (run_id, run_key(project_id, run_id)):
        inserted = session.execute(
            _insert(session, _RUN_T)
            .values(id=key, **values)
            .on_conflict_do_nothing()
            .returning(_RUN_T.c.id)
        ).first()
        run = _find_run(session, project_id=project_id, run_id=run_id, lock=True)
        if run is not None:
            break
    if run is None:  # pragma: no cover - the second key is the project's own
        raise StorageError(f"run {run_id} could not be stored")
    if inserted is not None:
        return _run_record(run), True
    if run.kind != kind:
        raise Conflict(f"run {run_id} exists with kind {run.kind.value!r}", field="kind")
    if run.status in (RunStatus.FINISHED, RunStatus.FAILED):
        if name != run.name:
            raise Conflict(
                f"run {run_id} has ended ({run.status.value}): its name {run.name!r} is final",
                field="name",
            )
        if started_at < run.started_at:
            raise Conflict(
                f"run {run_id} has ended ({run.status.value}): its start "
                f"{run.started_at.isoformat()} is final",
                field="started_at",
            )
    merged_tags = {**run.tags, **tags}
    merged_host_info = {**run.host_info, **host_info}
    _check_limits(merged_tags, merged_host_info, max_host_info_bytes, merged=True)
    run.started_at = min(run.started_at, started_at)
    run.tags = merged_tags
    run.host_info = merged_host_info
    run.name = name
    run.simulated = run.simulated or simulated
    session.flush()
    return _run_record(run), False


def _check_limits(
    tags: Mapping[str, Any],
    host_info: Mapping[str, Any],
    max_host_info_bytes: int,
    *,
    merged: bool = False,
) -> None:
    """Refuse tags or host_info past the limits a run holds (`upsert_run`)."""
    after = " once merged with the run's stored ones" if merged else ""
    problems = []
    if len(tags) > MAX_RUN_TAGS:
        problems.append(
            FieldProblem("tags", f"{len(tags)} tags{after}; a run holds at most {MAX_RUN_TAGS}")
        )
    size = len(json.dumps(host_info, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > max_host_info_bytes:
        problems.append(
            FieldProblem(
                "host_info",
                f"{size} bytes of JSON{after}; a run holds at most {max_host_info_bytes}",
            )
        )
    if problems:
        raise InvalidInput(problems)


def get_run(session: Session, *, project_id: int, run_id: UUID) -> RunRecord:
    """The run with this id in this project.

    Raises:
        NotFound: No such run in the project.
    """
    return _run_record(_load_run(session, project_id=project_id, run_id=run_id))


def list_runs(
    session: Session,
    *,
    project_id: int,
    kind: RunKind | None = None,
    status: RunStatus | None = None,
    tags: Sequence[tuple[str, str]] = (),
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    after: RunCursor | None = None,
    limit: int = 50,
) -> list[RunRecord]:
    """The project's runs, newest ``started_at`` first, filtered, one keyset page.

    Args:
        session: The caller's session.
        project_id: The project.
        kind, status: Exact filters.
        tags: ``(key, value)`` pairs the run's tags must all hold.
        started_after, started_before: ``started_at`` bounds (inclusive, exclusive).
        after: Continue after this run (the last one of the previous page).
        limit: Page size.
    """
    query = sa.select(Run).where(Run.project_id == project_id)
    if kind is not None:
        query = query.where(Run.kind == kind)
    if status is not None:
        query = query.where(Run.status == status)
    for key, value in tags:
        query = query.where(Run.tags[key].as_string() == value)
    if started_after is not None:
        query = query.where(Run.started_at >= started_after)
    if started_before is not None:
        query = query.where(Run.started_at < started_before)
    if after is not None:
        query = query.where(
            sa.or_(
                Run.started_at < after.started_at,
                sa.and_(Run.started_at == after.started_at, Run.client_id < after.run_id),
            )
        )
    query = query.order_by(Run.started_at.desc(), Run.client_id.desc()).limit(limit)
    return [_run_record(run) for run in session.scalars(query)]


def end_run(
    session: Session,
    *,
    project_id: int,
    run_id: UUID,
    status: Literal[RunStatus.FINISHED, RunStatus.FAILED],
    ended_at: datetime | None = None,
    exit_code: int | None = None,
) -> RunRecord:
    """Mark a run finished or failed (a ``running`` or ``lost`` one).

    Idempotent: ending it again the same way (same status and exit code) changes nothing.

    Args:
        session: The caller's session.
        project_id: The project.
        run_id: The run.
        status: ``finished`` or ``failed``.
        ended_at: End time (default: now, or the start time if the clocks disagree).
        exit_code: The job's exit status.

    Raises:
        NotFound: No such run in the project.
        Conflict: It already ended another way.
        InvalidInput: ``ended_at`` before ``started_at``.
    """
    run = _load_run(session, project_id=project_id, run_id=run_id, lock=True)
    if run.status in (RunStatus.FINISHED, RunStatus.FAILED):
        if run.status == status and run.exit_code == exit_code:
            return _run_record(run)
        raise Conflict(
            f"run {run_id} already ended as {run.status.value} (exit code {run.exit_code})",
            field="status",
        )
    if ended_at is None:
        ended_at = max(utcnow(), run.started_at)
    elif ended_at < run.started_at:
        raise InvalidInput.one(
            "ended_at",
            f"{ended_at.isoformat()} is before the run's start {run.started_at.isoformat()}",
        )
    run.status = status
    run.ended_at = ended_at
    run.exit_code = exit_code
    session.flush()
    return _run_record(run)


def declare_work(
    session: Session,
    *,
    project_id: int,
    run_id: UUID,
    flops: float | None = None,
    flops_dtype: str | None = None,
    tokens: int | None = None,
    params: int | None = None,
) -> RunRecord:
    """Set the work a run declares (totals so far; a retried call is harmless).

    Fields left None keep their stored value.

    Raises:
        NotFound: No such run in the project.
        InvalidInput: A negative, non-finite or out-of-range value.
    """
    problems = []
    if flops is not None and not (math.isfinite(flops) and 0 <= flops <= UNBOUNDED_J):
        problems.append(FieldProblem("flops", f"{flops!r} FLOP is not a finite value >= 0"))
    for name, value in (("tokens", tokens), ("model_params", params)):
        if value is not None and not 0 <= value <= INT64_MAX:
            problems.append(FieldProblem(name, f"{value} is outside [0, 2**63 - 1]"))
    if problems:
        raise InvalidInput(problems)
    run = _load_run(session, project_id=project_id, run_id=run_id, lock=True)
    if flops is not None:
        run.declared_flops = flops
    if flops_dtype is not None:
        run.declared_flops_dtype = flops_dtype
    if tokens is not None:
        run.declared_tokens = tokens
    if params is not None:
        run.declared_params = params
    session.flush()
    return _run_record(run)
