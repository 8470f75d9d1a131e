"""Repository functions: how the service and the server CLI read and write the tables.

Every function takes the caller's `Session` and keyword-only arguments, works inside the caller's
transaction (it flushes, never commits: the service commits once per request) and returns plain
frozen dataclasses, never ORM objects, so nothing lazy-loads after the session is gone.

Tenancy is enforced here, not in the routes: every lookup of a run, a token or a phase is
filtered by ``project_id``, so a row of another project is indistinguishable from a missing one.

Concurrency. Rows that several clients may create at once (a run that every node of a job
registers, the devices a retried upload repeats, chunks) are written with ``INSERT ... ON
CONFLICT DO NOTHING`` and then read back, so a race between two identical requests ends in one
row and two successes instead of an integrity error. SQLite serialises writers anyway
(`db.engine` begins every transaction ``IMMEDIATE``); on PostgreSQL the second insert waits for
the first transaction and then skips the row.

Chunk ingest is all-or-nothing and costs a fixed number of statements per batch, whatever its
size: a key-share lock on the run, one SELECT of the run's devices, at most one multi-row
INSERT of new devices (and one re-read), **one** SELECT of the stored chunks whose keys or time
neighbours the batch touches, one bulk write of the new chunks (binary ``COPY`` on PostgreSQL,
an executemany on SQLite), and the running totals: one SELECT of the run's phases and at most
two multi-row UPSERTs (`db.models.DeviceTotal`, `db.models.PhaseTotal`). Any refusal raises
before the chunks are written, and the caller's transaction rollback undoes the device rows.

Reports read only the running totals (`run_usage`: O(devices × phases), whatever the run's
length); `rebuild_totals` re-derives them from the chunks.

Chunk band storage. The chunk table keeps the band's **terms** (``sensor_uncertainty_j``,
``bound_below_j``, ``bound_above_j``; see `db.models.Chunk`), never the band itself: sensor errors
combine root-sum-square across devices and bounds linearly, so the report needs them apart. An
unbounded ``bound_above_j`` (a counter reset without a power limit) is stored as `UNBOUNDED_J`
(the table's finite ceiling, 1e300 J, beyond any physical energy) and read back as +inf; a sum
that reaches it reads as +inf too.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple, cast
from uuid import UUID

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from thermoledger.accounting.catalog import lookup as catalog_lookup

from .errors import StorageError
from .models import (
    ApiToken,
    Chunk,
    Device,
    DeviceKind,
    DevicePowerMethod,
    DeviceTotal,
    EnergyMethod,
    Phase,
    PhaseTotal,
    Project,
    Run,
    RunKind,
    RunStatus,
    Scope,
)
from .samples import encode_samples_many
from .types import utcnow

__all__ = [
    "INT64_MAX",
    "TIME_TOLERANCE_S",
    "UNBOUNDED_J",
    "ChunkAck",
    "ChunkRow",
    "Conflict",
    "DeviceAggregate",
    "DeviceSpec",
    "FieldProblem",
    "InvalidInput",
    "NotFound",
    "PhaseAggregate",
    "PhaseDeviceEnergy",
    "PhaseRecord",
    "ProjectRecord",
    "RunCursor",
    "RunRecord",
    "RunUsage",
    "StoredToken",
    "TokenRecord",
    "add_token",
    "create_project",
    "declare_work",
    "end_run",
    "find_token",
    "get_or_create_project",
    "get_project",
    "get_run",
    "ingest_chunks",
    "list_runs",
    "list_tokens",
    "plausible_power_w",
    "rebuild_totals",
    "revoke_token",
    "run_usage",
    "touch_token",
    "upsert_phase",
    "upsert_run",
]

#: Stored in ``chunk.bound_above_j`` for "unbounded above"; any sum reaching it reads as +inf.
UNBOUNDED_J = 1e300
#: Largest value of a BIGINT column (declared tokens and parameters).
INT64_MAX = 2**63 - 1
#: Slack when comparing one chunk's end with the next chunk's start, s. Under the left-sample
#: rule they are the same reading; the slack only absorbs a meter spool that rounds times.
TIME_TOLERANCE_S = 1e-6


# The Core tables behind the models, typed as tables (``__table__`` is typed as a FromClause).
_RUN_T = cast(sa.Table, Run.__table__)
_DEVICE_T = cast(sa.Table, Device.__table__)
_CHUNK_T = cast(sa.Table, Chunk.__table__)
_PHASE_T = cast(sa.Table, Phase.__table__)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One refused field: its path in the request (``chunks[3].samples.t_s[17]``) and why."""

    field: str
    message: str


class NotFound(LookupError, StorageError):
    """The row does not exist, or belongs to another project (the two are not told apart)."""

    def __init__(self, resource: str, key: object) -> None:
        self.resource = resource
        self.key = key
        super().__init__(f"{resource} {key} not found")


class Conflict(ValueError, StorageError):
    """The request contradicts what is stored (same key, different content or owner)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidInput(ValueError, StorageError):
    """Values that no row may hold (time going backwards, implausible power, ...).

    Attributes:
        problems: Every refused field found, in request order (at least one).
        field: Path of the first.
    """

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        if not problems:
            raise ValueError("InvalidInput needs at least one problem")
        self.problems = tuple(problems)
        self.field: str | None = self.problems[0].field
        super().__init__(f"{self.problems[0].field}: {self.problems[0].message}")

    @classmethod
    def one(cls, field: str, message: str) -> InvalidInput:
        """An error about a single field."""
        return cls([FieldProblem(field, message)])


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    """A project (tenant)."""

    id: int
    slug: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token without its secret."""

    id: int
    project_id: int
    project_slug: str
    name: str
    prefix: str
    scopes: Scope
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredToken:
    """What authentication needs: the record and the stored SHA-256 (hex) to compare with."""

    record: TokenRecord
    hash: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as stored."""

    id: UUID
    project_id: int
    name: str
    kind: RunKind
    status: RunStatus
    started_at: datetime
    ended_at: datetime | None
    exit_code: int | None
    tags: dict[str, Any]
    host_info: dict[str, Any]
    declared_params: int | None
    declared_tokens: int | None
    declared_flops: float | None
    declared_flops_dtype: str | None
    simulated: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RunCursor:
    """Keyset position in the run listing (newest first): the last run of the previous page."""

    started_at: datetime
    run_id: UUID


@dataclass(frozen=True, slots=True)
class PhaseRecord:
    """A phase as stored."""

    id: int
    run_id: UUID
    name: str
    t0_s: float
    t1_s: float | None
    flops: float | None
    flops_dtype: str | None
    tokens: int | None
    tags: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device as a meter describes it in an ingest batch.

    ``key`` is the meter's name for the device within the run; the table identifies a device
    by ``(host, kind, index)`` and, when known, by ``uid`` (the GPU UUID).
    """

    key: str
    host: str
    kind: DeviceKind
    index: int
    uid: str | None
    name: str
    power_limit_w: float | None
    has_energy_counter: bool
    power_method: DevicePowerMethod
    simulated: bool
    mig: bool = False


class ChunkRow(NamedTuple):
    """One validated chunk to store; ``position`` is its index in the request (for messages).

    A named tuple rather than a frozen dataclass: a batch makes hundreds, and a tuple is built
    several times faster.

    ``bound_above_j`` may be +inf (stored as `UNBOUNDED_J`). ``samples`` are the raw columns
    to encode (`db.samples`); ``blob`` is the raw columns encoded already, stored as given
    (`service.ingest` encodes a batch's blobs together). Neither: the meter sent no samples.
    """

    position: int
    device_key: str
    seq: int
    t0_s: float
    t1_s: float
    n: int
    energy_j: float
    sensor_uncertainty_j: float
    bound_below_j: float
    bound_above_j: float
    min_power_w: float
    mean_power_w: float
    max_power_w: float
    method: EnergyMethod
    gap_s: float
    gap_count: int
    reset_count: int
    wrap_count: int
    content_hash: str
    samples: Mapping[str, npt.NDArray[Any]] | None = None
    blob: bytes | None = None


#: Position of each `ChunkRow` field (columns of a transposed batch).
_CHUNK_FIELD: dict[str, int] = {name: i for i, name in enumerate(ChunkRow._fields)}


class ChunkAck(NamedTuple):
    """Fate of one chunk of a batch: newly ``stored``, or an identical ``duplicate`` (a named
    tuple, as `ChunkRow`)."""

    device_key: str
    seq: int
    status: Literal["stored", "duplicate"]


@dataclass(frozen=True, slots=True)
class DeviceAggregate:
    """One device of a run with the running totals of its chunk summaries.

    The band terms are sums over the device's chunks (linear: a device's sensor error is
    systematic); ``bound_above_j`` is +inf when any chunk is unbounded above.
    """

    id: int
    host: str
    kind: DeviceKind
    index: int
    uid: str | None
    name: str
    catalog_key: str | None
    power_limit_w: float | None
    simulated: bool
    chunks: int
    samples: int
    energy_j: float
    sensor_uncertainty_j: float
    bound_below_j: float
    bound_above_j: float
    t0_s: float
    t1_s: float
    peak_power_w: float
    gap_s: float
    gap_count: int
    reset_count: int
    method: str

    @property
    def key(self) -> str:
        """Stable display key: ``host/uid`` when the uid is known, else ``host/kind<index>``."""
        return f"{self.host}/{self.uid}" if self.uid else f"{self.host}/{self.kind}{self.index}"


@dataclass(frozen=True, slots=True)
class PhaseDeviceEnergy:
    """One device's share of a phase: pro-rata sums of its chunks' energy and band terms.

    ``bound_above_j`` is +inf when an overlapping chunk is unbounded above.
    """

    device_id: int
    energy_j: float
    sensor_uncertainty_j: float
    bound_below_j: float
    bound_above_j: float


@dataclass(frozen=True, slots=True)
class PhaseAggregate:
    """A phase with the energy of each device inside it, pro-rata at chunk resolution.

    ``t1_s`` is the run's last measured time for a phase still open. ``devices`` holds only
    devices with a chunk overlapping the phase; their band terms are kept apart so the report
    can combine them across devices as it does for the run's total.
    """

    phase: PhaseRecord
    t1_s: float
    devices: tuple[PhaseDeviceEnergy, ...] = ()

    @property
    def energy_j(self) -> float:
        """Energy of all devices inside the phase, J."""
        return math.fsum(d.energy_j for d in self.devices)


@dataclass(frozen=True, slots=True)
class RunUsage:
    """Everything a run report is built from (no raw samples)."""

    run: RunRecord
    devices: tuple[DeviceAggregate, ...]
    phases: tuple[PhaseAggregate, ...] = field(default=())


# --------------------------------------------------------------------------- helpers


def _insert(session: Session, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which has ``on_conflict_do_nothing`` on both backends."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise StorageError(f"unsupported dialect {name!r}")  # pragma: no cover - engine refuses it


def _project_record(row: Project) -> ProjectRecord:
    return ProjectRecord(id=row.id, slug=row.slug, name=row.name, created_at=row.created_at)


def _token_record(row: ApiToken, slug: str) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        project_id=row.project_id,
        project_slug=slug,
        name=row.name,
        prefix=row.prefix,
        scopes=row.scopes,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _run_record(row: Run) -> RunRecord:
    return RunRecord(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        kind=row.kind,
        status=row.status,
        started_at=row.started_at,
        ended_at=row.ended_at,
        exit_code=row.exit_code,
        tags=dict(row.tags),
        host_info=dict(row.host_info),
        declared_params=row.declared_params,
        declared_tokens=row.declared_tokens,
        declared_flops=row.declared_flops,
        declared_flops_dtype=row.declared_flops_dtype,
        simulated=row.simulated,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _phase_record(row: Phase) -> PhaseRecord:
    return PhaseRecord(
        id=row.id,
        run_id=row.run_id,
        name=row.name,
        t0_s=row.t0_s,
        t1_s=row.t1_s,
        flops=row.flops,
        flops_dtype=row.flops_dtype,
        tokens=row.tokens,
        tags=dict(row.tags),
    )


def _load_run(session: Session, *, project_id: int, run_id: UUID, lock: bool = False) -> Run:
    query = sa.select(Run).where(Run.id == run_id, Run.project_id == project_id)
    if lock:
        query = query.with_for_update()
    run = session.scalars(query).one_or_none()
    if run is None:
        raise NotFound("run", run_id)
    return run


def plausible_power_w(power_limit_w: float | None) -> float:
    """Highest power reading accepted for a device, W: 1.5 × its limit + 50 W (inf if none).

    Boards briefly exceed their enforced limit (NVML's limit is a moving average, transients
    overshoot it), so the ceiling is generous; a reading beyond it is a unit or scaling bug.
    """
    return math.inf if power_limit_w is None else 1.5 * power_limit_w + 50.0


# --------------------------------------------------------------------------- projects, tokens


def create_project(session: Session, *, slug: str, name: str) -> ProjectRecord:
    """Create a project.

    Raises:
        Conflict: The slug is taken.
    """
    if session.scalar(sa.select(Project.id).where(Project.slug == slug)) is not None:
        raise Conflict(f"project {slug!r} already exists", field="slug")
    row = Project(slug=slug, name=name)
    session.add(row)
    session.flush()
    return _project_record(row)


def get_project(session: Session, *, slug: str) -> ProjectRecord:
    """The project with this slug.

    Raises:
        NotFound: No such project.
    """
    row = session.scalars(sa.select(Project).where(Project.slug == slug)).one_or_none()
    if row is None:
        raise NotFound("project", slug)
    return _project_record(row)


def get_or_create_project(
    session: Session, *, slug: str, name: str | None = None
) -> tuple[ProjectRecord, bool]:
    """The project with this slug, created (named ``name`` or the slug) if missing.

    Returns:
        The project and whether it was created.
    """
    try:
        return get_project(session, slug=slug), False
    except NotFound:
        return create_project(session, slug=slug, name=name or slug), True


def add_token(
    session: Session,
    *,
    project_id: int,
    name: str,
    prefix: str,
    token_hash: str,
    scopes: Scope,
    expires_at: datetime | None = None,
) -> TokenRecord:
    """Store a new token's public prefix and SHA-256 hash (the secret itself is never stored).

    Raises:
        NotFound: No project with this id.
    """
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound("project", project_id)
    row = ApiToken(
        project_id=project_id,
        name=name,
        prefix=prefix,
        hash=token_hash,
        scopes=scopes,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return _token_record(row, project.slug)


@functools.lru_cache(maxsize=1)
def _find_token_statement() -> sa.Select[Any]:
    """`find_token`'s query with Core (every request runs it: no ORM load), built once."""
    t, p = cast(sa.Table, ApiToken.__table__), cast(sa.Table, Project.__table__)
    return (
        sa.select(
            t.c.id,
            t.c.project_id,
            p.c.slug,
            t.c.name,
            t.c.prefix,
            t.c.scopes,
            t.c.created_at,
            t.c.last_used_at,
            t.c.expires_at,
            t.c.revoked_at,
            t.c.hash,
        )
        .join_from(t, p, p.c.id == t.c.project_id)
        .where(t.c.prefix == sa.bindparam("prefix"))
    )


def find_token(session: Session, *, prefix: str) -> StoredToken | None:
    """The token with this public prefix (revoked and expired ones included), or None."""
    row = session.execute(_find_token_statement(), {"prefix": prefix}).one_or_none()
    if row is None:
        return None
    *fields, token_hash = row
    return StoredToken(record=TokenRecord(*fields), hash=token_hash)


def touch_token(session: Session, *, token_id: int, now: datetime) -> None:
    """Record that the token was used at ``now`` (callers throttle how often)."""
    session.execute(sa.update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def list_tokens(session: Session, *, project_id: int) -> list[TokenRecord]:
    """The project's tokens, oldest first (no secrets, no hashes)."""
    rows = session.execute(
        sa.select(ApiToken, Project.slug)
        .join(Project, Project.id == ApiToken.project_id)
        .where(ApiToken.project_id == project_id)
        .order_by(ApiToken.id)
    ).all()
    return [_token_record(token, slug) for token, slug in rows]


def revoke_token(
    session: Session, *, token_id: int, project_id: int | None, now: datetime | None = None
) -> TokenRecord:
    """Revoke a token (idempotent: revoking a revoked token keeps its first revocation time).

    Args:
        session: The caller's session.
        token_id: The token to revoke.
        project_id: Only a token of this project is found; None: any project (operator).
        now: Revocation time (default: the current time).

    Raises:
        NotFound: No such token in the project.
    """
    query = sa.select(ApiToken, Project.slug).join(Project, Project.id == ApiToken.project_id)
    query = query.where(ApiToken.id == token_id)
    if project_id is not None:
        query = query.where(ApiToken.project_id == project_id)
    row = session.execute(query).one_or_none()
    if row is None:
        raise NotFound("token", token_id)
    token, slug = row
    if token.revoked_at is None:
        token.revoked_at = now or utcnow()
        session.flush()
    return _token_record(token, slug)


# --------------------------------------------------------------------------- runs


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
) -> tuple[RunRecord, bool]:
    """Create a run, or merge into the existing run with this id (every node of a job calls it).

    Merge rules: the earliest ``started_at`` wins, ``tags`` and ``host_info`` are merged (the
    new values win per key), ``name`` takes the new value, ``simulated`` stays set once set.

    Returns:
        The run and whether it was created.

    Raises:
        Conflict: The id belongs to another project, or to a run of another kind.
    """
    now = utcnow()
    inserted = session.execute(
        _insert(session, _RUN_T)
        .values(
            id=run_id,
            project_id=project_id,
            name=name,
            kind=kind,
            status=RunStatus.RUNNING,
            started_at=started_at,
            tags=dict(tags),
            host_info=dict(host_info),
            simulated=simulated,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
        .returning(_RUN_T.c.id)
    ).first()
    run = session.scalars(sa.select(Run).where(Run.id == run_id).with_for_update()).one()
    if inserted is not None:
        return _run_record(run), True
    if run.project_id != project_id:
        # The brief is a conflict, not a 404: a client-made UUID that collides must be told.
        raise Conflict(f"run id {run_id} is already in use", field="run_id")
    if run.kind != kind:
        raise Conflict(f"run {run_id} exists with kind {run.kind.value!r}", field="kind")
    run.started_at = min(run.started_at, started_at)
    run.tags = {**run.tags, **tags}
    run.host_info = {**run.host_info, **host_info}
    run.name = name
    run.simulated = run.simulated or simulated
    session.flush()
    return _run_record(run), False


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
                sa.and_(Run.started_at == after.started_at, Run.id < after.run_id),
            )
        )
    query = query.order_by(Run.started_at.desc(), Run.id.desc()).limit(limit)
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


# --------------------------------------------------------------------------- phases


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
    _load_run(session, project_id=project_id, run_id=run_id, lock=True)
    inserted = session.execute(
        _insert(session, _PHASE_T)
        .values(
            run_id=run_id,
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
        .where(Phase.run_id == run_id, Phase.name == name, Phase.t0_s == t0_s)
        .with_for_update()
    ).one()
    if inserted is not None:
        session.flush()
        _rebuild_phase_totals(session, run_id, [phase.id])
        return _phase_record(phase), True
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
        _rebuild_phase_totals(session, run_id, [phase.id])
    return _phase_record(phase), False


# --------------------------------------------------------------------------- chunks


@dataclass(frozen=True, slots=True)
class _DeviceRow:
    """What ingest needs of a stored device (read with Core: no ORM identity-map cost)."""

    id: int
    host: str
    kind: DeviceKind
    device_index: int
    uuid: str | None
    power_limit_w: float | None


def _device_rows(session: Session, run_id: UUID) -> list[_DeviceRow]:
    d = _DEVICE_T
    return [
        _DeviceRow(*row)
        for row in session.execute(
            sa.select(
                d.c.id, d.c.host, d.c.kind, d.c.device_index, d.c.uuid, d.c.power_limit_w
            ).where(d.c.run_id == run_id)
        )
    ]


@functools.lru_cache(maxsize=1)
def _run_for_ingest_statement() -> sa.Select[Any]:
    """`_run_for_ingest`'s query, built once (building it costs more than running it)."""
    r, d = _RUN_T, _DEVICE_T
    return (
        sa.select(r.c.id, d.c.id, d.c.host, d.c.kind, d.c.device_index, d.c.uuid, d.c.power_limit_w)
        .select_from(r.outerjoin(d, d.c.run_id == r.c.id))
        .where(r.c.id == sa.bindparam("run_id"), r.c.project_id == sa.bindparam("project_id"))
        .with_for_update(read=True, key_share=True, of=r)
    )


def _run_for_ingest(session: Session, *, project_id: int, run_id: UUID) -> list[_DeviceRow]:
    """The run's devices, in the round trip that checks the run; `NotFound` unless the run
    exists in the project.

    Takes ``FOR KEY SHARE`` on the run (PostgreSQL; SQLite serialises writers anyway): ingests
    of one run proceed together, while a phase change (``FOR UPDATE``) waits for them. The
    run's phases are read later, by another statement: one that waited here for a phase change
    still reads the tables as they were when it started (READ COMMITTED), so it would miss the
    phase just committed.
    """
    found = session.execute(
        _run_for_ingest_statement(), {"run_id": run_id, "project_id": project_id}
    ).all()
    if not found:
        raise NotFound("run", run_id)
    return [_DeviceRow(*row[1:]) for row in found if row[1] is not None]


def _match_devices(
    session: Session, run_id: UUID, specs: Sequence[DeviceSpec], rows: list[_DeviceRow]
) -> dict[str, _DeviceRow]:
    """Device row of each spec's key, given the run's stored ``rows``, inserting the new ones;
    refuses contradictions."""

    def slot(d: DeviceSpec) -> tuple[str, DeviceKind, int]:
        return (d.host, d.kind, d.index)

    by_slot = {(r.host, r.kind, r.device_index): r for r in rows}
    new = [d for d in specs if slot(d) not in by_slot]
    if new:
        session.execute(
            _insert(session, _DEVICE_T).on_conflict_do_nothing(),
            [
                {
                    "run_id": run_id,
                    "host": d.host,
                    "kind": d.kind,
                    "device_index": d.index,
                    "uuid": d.uid,
                    "name": d.name,
                    "catalog_key": _catalog_key(d.name),
                    "power_limit_w": d.power_limit_w,
                    "has_energy_counter": d.has_energy_counter,
                    "power_method": d.power_method,
                    "simulated": d.simulated,
                    "mig": d.mig,
                    "created_at": utcnow(),
                }
                for d in new
            ],
        )
        rows = _device_rows(session, run_id)
        by_slot = {(r.host, r.kind, r.device_index): r for r in rows}
    by_uid = {r.uuid: r for r in rows if r.uuid}
    matched: dict[str, _DeviceRow] = {}
    for i, spec in enumerate(specs):
        row = by_slot.get(slot(spec))
        other = by_uid.get(spec.uid) if spec.uid else None
        if row is None or (spec.uid and row.uuid and row.uuid != spec.uid):
            where = f"{spec.host} {spec.kind.value} {spec.index}"
            stored = "another device" if row is None else f"uid {row.uuid!r}"
            raise Conflict(f"{where} is registered with {stored}", field=f"devices[{i}].uid")
        if other is not None and other.id != row.id:
            raise Conflict(
                f"uid {spec.uid!r} is already registered as {other.host} {other.kind.value} "
                f"{other.device_index} of this run (one device must not be counted twice)",
                field=f"devices[{i}].uid",
            )
        matched[spec.key] = row
    return matched


def _catalog_key(name: str) -> str | None:
    entry = catalog_lookup(name)
    return None if entry is None else entry.id


@dataclass(frozen=True, slots=True)
class _Stored:
    seq: int
    t0_s: float
    t1_s: float
    content_hash: str


@functools.lru_cache(maxsize=64)
def _stored_chunks_statement(devices: int) -> sa.CompoundSelect[Any]:
    """The `_stored_chunks` query for ``devices`` devices, with bound parameters ``run_id``,
    ``device_<k>``, ``lo_<k>``, ``hi_<k>``.

    Built once per device count: the statement is large (three selects per device) and
    building it costs far more than running it, so it is kept and only its parameters change.
    """
    c = _CHUNK_T
    columns = (c.c.device_id, c.c.seq, c.c.t0_s, c.c.t1_s, c.c.content_hash)
    run_id = sa.bindparam("run_id", type_=sa.Uuid())
    parts: list[sa.Select[Any]] = []
    for k in range(devices):
        lo = sa.bindparam(f"lo_{k}", type_=sa.Integer())
        hi = sa.bindparam(f"hi_{k}", type_=sa.Integer())
        device_id = sa.bindparam(f"device_{k}", type_=sa.BigInteger())
        same = sa.select(*columns).where(c.c.run_id == run_id, c.c.device_id == device_id)
        below = same.where(c.c.seq < lo).order_by(c.c.seq.desc()).limit(1)
        above = same.where(c.c.seq > hi).order_by(c.c.seq).limit(1)
        # Each LIMIT 1 part is wrapped: SQLite refuses ORDER BY/LIMIT directly in a UNION.
        parts.append(same.where(c.c.seq.between(lo, hi)))
        parts.extend(sa.select(*part.subquery().c) for part in (below, above))
    return sa.union_all(*parts)


#: `_stored_chunks` on PostgreSQL: the same three lookups per device, as one fixed statement
#: over arrays (``LATERAL``), so it is parsed and planned once per connection, not per batch.
_STORED_CHUNKS_PG = sa.text(
    """
    SELECT x.device_id, x.seq, x.t0_s, x.t1_s, x.content_hash
    FROM unnest(CAST(:devices AS bigint[]), CAST(:los AS int[]), CAST(:his AS int[]))
        AS r(device_id, lo, hi)
    CROSS JOIN LATERAL (
        (SELECT device_id, seq, t0_s, t1_s, content_hash FROM chunk
         WHERE run_id = :run_id AND device_id = r.device_id AND seq BETWEEN r.lo AND r.hi)
        UNION ALL
        (SELECT device_id, seq, t0_s, t1_s, content_hash FROM chunk
         WHERE run_id = :run_id AND device_id = r.device_id AND seq < r.lo
         ORDER BY seq DESC LIMIT 1)
        UNION ALL
        (SELECT device_id, seq, t0_s, t1_s, content_hash FROM chunk
         WHERE run_id = :run_id AND device_id = r.device_id AND seq > r.hi
         ORDER BY seq LIMIT 1)
    ) AS x
    """
).bindparams(sa.bindparam("run_id", type_=sa.Uuid()))


def _stored_chunks(
    session: Session, run_id: UUID, ranges: Mapping[int, tuple[int, int]]
) -> dict[int, dict[int, _Stored]]:
    """Stored chunks per device: those whose seq is in the batch's range, plus the nearest
    neighbour below and above it (enough to check time order against everything stored).

    Primary-key range scans and ``ORDER BY seq LIMIT 1`` lookups, three per device, in one
    statement (`_STORED_CHUNKS_PG` on PostgreSQL, a cached ``UNION ALL`` elsewhere), whatever
    the table's size.
    """
    if not ranges:
        return {}
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            _STORED_CHUNKS_PG,
            {
                "run_id": run_id,
                "devices": list(ranges),
                "los": [lo for lo, _ in ranges.values()],
                "his": [hi for _, hi in ranges.values()],
            },
        )
    else:
        params: dict[str, Any] = {"run_id": run_id}
        for k, (device_id, (lo, hi)) in enumerate(ranges.items()):
            params.update({f"device_{k}": device_id, f"lo_{k}": lo, f"hi_{k}": hi})
        rows = session.execute(_stored_chunks_statement(len(ranges)), params)
    stored: dict[int, dict[int, _Stored]] = {device_id: {} for device_id in ranges}
    for device_id, seq, t0_s, t1_s, content_hash in rows:
        stored[device_id][seq] = _Stored(seq, t0_s, t1_s, content_hash)
    return stored


def _key_text(chunk: ChunkRow) -> str:
    return f"(device {chunk.device_key!r}, seq {chunk.seq})"


def _check_time_order(
    new: Sequence[ChunkRow], stored: Mapping[int, _Stored]
) -> FieldProblem | None:
    """First new chunk that overlaps its predecessor or successor by seq, or None."""
    timeline: list[tuple[int, float, float, ChunkRow | None]] = [
        (s.seq, s.t0_s, s.t1_s, None) for s in stored.values()
    ]
    timeline.extend((c.seq, c.t0_s, c.t1_s, c) for c in new)
    timeline.sort(key=lambda item: item[0])
    problems: list[FieldProblem] = []
    for (seq_a, _, t1_a, chunk_a), (seq_b, t0_b, _, chunk_b) in itertools.pairwise(timeline):
        if t0_b >= t1_a - TIME_TOLERANCE_S or (chunk_a is None and chunk_b is None):
            continue
        if chunk_b is not None:
            origin = "stored" if chunk_a is None else f"chunks[{chunk_a.position}]"
            problems.append(
                FieldProblem(
                    f"chunks[{chunk_b.position}].t0_s",
                    f"t0_s = {t0_b!r} s is before t1_s = {t1_a!r} s of seq {seq_a} of the same "
                    f"device ({origin}): time must not go backwards between chunks",
                )
            )
        else:
            assert chunk_a is not None
            problems.append(
                FieldProblem(
                    f"chunks[{chunk_a.position}].t1_s",
                    f"t1_s = {t1_a!r} s is after t0_s = {t0_b!r} s of stored seq {seq_b} of the "
                    "same device: time must not go backwards between chunks",
                )
            )
    return min(problems, key=lambda p: _position(p.field)) if problems else None


def _position(field_path: str) -> int:
    return int(field_path.split("]", 1)[0].removeprefix("chunks["))


def ingest_chunks(
    session: Session,
    *,
    project_id: int,
    run_id: UUID,
    devices: Sequence[DeviceSpec],
    chunks: Sequence[ChunkRow],
    compress_samples: bool = True,
) -> list[ChunkAck]:
    """Store a batch of validated chunks, all or nothing, idempotently by (run, device, seq).

    Checks against what is stored: a repeated key with the same ``content_hash`` is a
    ``duplicate`` (not stored again); with another hash, a conflict. Every new chunk must start
    no earlier than its predecessor by seq ends, and end no later than its successor starts,
    within `TIME_TOLERANCE_S`; its ``max_power_w`` and ``mean_power_w`` must be plausible for
    the device's stored power limit (`plausible_power_w`).

    Args:
        session: The caller's session (the caller's rollback undoes everything on error).
        project_id: The project the run must belong to.
        run_id: The run.
        devices: Every device the chunks refer to, by ``key``.
        chunks: The chunks, in request order (``position`` names them in errors).
        compress_samples: zlib-compress the raw sample blobs it encodes (a chunk that carries
            its ``blob`` is stored as given).

    Returns:
        One acknowledgement per chunk, in request order.

    Raises:
        NotFound: No such run in the project.
        Conflict: A key repeats with other content, or a device contradicts a stored one.
        InvalidInput: Time going backwards across chunks, implausible power, unknown device key.
    """
    stored_devices = _run_for_ingest(session, project_id=project_id, run_id=run_id)
    rows = _match_devices(session, run_id, devices, stored_devices)

    problems: list[FieldProblem] = []
    first_of_key: dict[tuple[int, int], ChunkRow] = {}
    repeats: list[ChunkRow] = []
    ceilings = {key: plausible_power_w(row.power_limit_w) for key, row in rows.items()}
    for c in chunks:
        device = rows.get(c.device_key)
        if device is None:
            problems.append(
                FieldProblem(
                    f"chunks[{c.position}].device_key",
                    f"{c.device_key!r} is not among the batch's devices",
                )
            )
            continue
        ceiling_w = ceilings[c.device_key]
        # The mean is checked on its own: a counter chunk's mean is not bounded by max_power_w.
        if c.max_power_w > ceiling_w or c.mean_power_w > ceiling_w:
            name, value_w = (
                ("max_power_w", c.max_power_w)
                if c.max_power_w > ceiling_w
                else ("mean_power_w", c.mean_power_w)
            )
            problems.append(
                FieldProblem(
                    f"chunks[{c.position}].{name}",
                    f"{value_w!r} W is implausible for a device limited to "
                    f"{device.power_limit_w!r} W (ceiling 1.5 × limit + 50 W = {ceiling_w:g} W)",
                )
            )
        key = (device.id, c.seq)
        earlier = first_of_key.get(key)
        if earlier is None:
            first_of_key[key] = c
        elif earlier.content_hash != c.content_hash:
            raise Conflict(
                f"chunk {_key_text(c)} appears twice in the batch with different content "
                f"(first as chunks[{earlier.position}])",
                field=f"chunks[{c.position}]",
            )
        else:
            repeats.append(c)
    if problems:
        raise InvalidInput(problems)

    ranges: dict[int, tuple[int, int]] = {}
    for device_id, seq in first_of_key:
        lo, hi = ranges.get(device_id, (seq, seq))
        ranges[device_id] = (min(lo, seq), max(hi, seq))
    stored = _stored_chunks(session, run_id, ranges)

    duplicates: set[tuple[int, int]] = set()
    new_by_device: dict[int, list[ChunkRow]] = {}
    for (device_id, seq), c in first_of_key.items():
        existing = stored[device_id].get(seq)
        if existing is None:
            new_by_device.setdefault(device_id, []).append(c)
        elif existing.content_hash == c.content_hash:
            duplicates.add((device_id, seq))
        else:
            raise Conflict(
                f"chunk {_key_text(c)} is already stored with different content",
                field=f"chunks[{c.position}]",
            )
    order_problems = [
        problem
        for device_id, new in new_by_device.items()
        if (problem := _check_time_order(new, stored[device_id])) is not None
    ]
    if order_problems:
        raise InvalidInput(sorted(order_problems, key=lambda p: _position(p.field)))

    to_insert = [(device_id, c) for device_id, new in new_by_device.items() for c in new]
    if to_insert:
        written = _insert_chunks(session, run_id, to_insert, compress_samples=compress_samples)
        _add_to_totals(session, run_id, written)
    device_of = {key: rows[key].id for key in rows}
    acks = []
    repeat_ids = {id(c) for c in repeats}
    for c in chunks:
        key = (device_of[c.device_key], c.seq)
        duplicate = id(c) in repeat_ids or key in duplicates
        acks.append(ChunkAck(c.device_key, c.seq, "duplicate" if duplicate else "stored"))
    return acks


#: Columns of a chunk row in the order `_copy_chunks` writes them, with their PostgreSQL types.
_COPY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "uuid"),
    ("device_id", "int8"),
    ("seq", "int4"),
    ("t0_s", "float8"),
    ("t1_s", "float8"),
    ("n", "int4"),
    ("energy_j", "float8"),
    ("sensor_uncertainty_j", "float8"),
    ("bound_below_j", "float8"),
    ("bound_above_j", "float8"),
    ("min_power_w", "float8"),
    ("mean_power_w", "float8"),
    ("max_power_w", "float8"),
    ("method", "varchar"),
    ("gap_s", "float8"),
    ("gap_count", "int4"),
    ("reset_count", "int4"),
    ("wrap_count", "int4"),
    ("content_hash", "varchar"),
    ("samples", "bytea"),
    ("created_at", "timestamptz"),
)


def _chunk_values(
    run_id: UUID, rows: Sequence[tuple[int, ChunkRow]], *, compress_samples: bool
) -> list[tuple[Any, ...]]:
    now = utcnow()
    to_encode = [c.samples for _, c in rows if c.samples is not None and c.blob is None]
    encoded = iter(encode_samples_many(to_encode, compress=compress_samples))
    return [
        (
            run_id,
            device_id,
            c.seq,
            c.t0_s,
            c.t1_s,
            c.n,
            c.energy_j,
            c.sensor_uncertainty_j,
            c.bound_below_j,
            min(c.bound_above_j, UNBOUNDED_J),
            c.min_power_w,
            c.mean_power_w,
            c.max_power_w,
            c.method.value,
            c.gap_s,
            c.gap_count,
            c.reset_count,
            c.wrap_count,
            c.content_hash,
            c.blob if c.blob is not None or c.samples is None else next(encoded),
            now,
        )
        for device_id, c in rows
    ]


def _copy_chunks(session: Session, values: Sequence[tuple[Any, ...]]) -> None:
    """Binary ``COPY`` of chunk rows into the table (PostgreSQL), in the session's transaction.

    Driver errors are re-raised as SQLAlchemy's, so they map like any other statement's.
    """
    import psycopg  # the PostgreSQL driver; only reached on that backend

    columns = ", ".join(name for name, _ in _COPY_COLUMNS)
    statement = f"COPY chunk ({columns}) FROM STDIN (FORMAT BINARY)"
    driver = session.connection().connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types([kind for _, kind in _COPY_COLUMNS])
            for row in values:
                copy.write_row(row)
    except psycopg.Error as e:
        raise sa.exc.DBAPIError.instance(statement, None, e, psycopg.Error) from e


def _insert_chunks(
    session: Session,
    run_id: UUID,
    rows: Sequence[tuple[int, ChunkRow]],
    *,
    compress_samples: bool,
) -> list[tuple[int, ChunkRow]]:
    """Write the new chunks in one bulk operation, tolerating keys a concurrent request stored.

    PostgreSQL: a binary ``COPY`` inside a savepoint, ~10× faster than an INSERT per row. The
    keys were checked just before, so it only fails with a unique violation when a concurrent
    request stored one of them in between; then the savepoint is rolled back and the slow
    path below runs.

    Slow path (and SQLite): ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` the keys written,
    as one executemany. A key another request stored instead with different content is a
    conflict (this transaction then rolls back); with the same content it is stored once, as
    it must be, and counted in the totals by the request that wrote it.

    Returns:
        The rows this transaction wrote (what the running totals must add).
    """
    values = _chunk_values(run_id, rows, compress_samples=compress_samples)
    if session.get_bind().dialect.name == "postgresql":
        try:
            with session.begin_nested():
                _copy_chunks(session, values)
            return list(rows)
        except sa.exc.IntegrityError as e:
            if getattr(e.orig, "sqlstate", None) != "23505":  # unique_violation: a race
                raise
    table = _CHUNK_T
    names = [name for name, _ in _COPY_COLUMNS]
    written_keys = {
        (device_id, seq)
        for device_id, seq in session.execute(
            _insert(session, table)
            .on_conflict_do_nothing()
            .returning(table.c.device_id, table.c.seq),
            [dict(zip(names, row, strict=True)) for row in values],
        )
    }
    written = [(device_id, c) for device_id, c in rows if (device_id, c.seq) in written_keys]
    if len(written) == len(rows):
        return written
    others = [(device_id, c) for device_id, c in rows if (device_id, c.seq) not in written_keys]
    stored = {
        (device_id, seq): content_hash
        for device_id, seq, content_hash in session.execute(
            sa.select(table.c.device_id, table.c.seq, table.c.content_hash).where(
                table.c.run_id == run_id,
                sa.or_(
                    *(
                        sa.and_(table.c.device_id == device_id, table.c.seq == c.seq)
                        for device_id, c in others
                    )
                ),
            )
        )
    }
    for device_id, c in others:
        if stored.get((device_id, c.seq)) != c.content_hash:
            raise Conflict(
                f"chunk {_key_text(c)} was stored concurrently with different content",
                field=f"chunks[{c.position}]",
            )
    return written


# --------------------------------------------------------------------------- running totals

_DEVICE_TOTAL_T = cast(sa.Table, DeviceTotal.__table__)
_PHASE_TOTAL_T = cast(sa.Table, PhaseTotal.__table__)
_TERMS = ("energy_j", "sensor_uncertainty_j", "bound_below_j", "bound_above_j")


def _clamped_sum(table: sa.Table, excluded: Any, name: str) -> sa.ColumnElement[float]:
    """``stored + delta``, clamped to the `UNBOUNDED_J` sentinel (which it means)."""
    total = table.c[name] + excluded[name]
    return sa.case((total >= UNBOUNDED_J, UNBOUNDED_J), else_=total)


@functools.lru_cache(maxsize=8)
def _adding_upsert(dialect: str, table_name: str, keys: tuple[str, ...]) -> sa.Insert:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` that adds the new row to the stored one.

    Sums add; ``t0_s`` keeps the minimum, ``t1_s`` and ``peak_power_w`` the maximum;
    ``bound_above_j`` saturates at the `UNBOUNDED_J` sentinel; ``method`` turns ``mixed`` when
    the two differ. Built once per table and dialect: building it costs more than running it.
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


def _add_to_totals(session: Session, run_id: UUID, written: Sequence[tuple[int, ChunkRow]]) -> None:
    """Add newly written chunks to their devices' totals and to every phase they overlap."""
    if not written:
        return
    per_device: dict[int, list[ChunkRow]] = {}
    for device_id, c in written:
        per_device.setdefault(device_id, []).append(c)
    f = _CHUNK_FIELD
    device_rows = []
    for device_id, chunks in per_device.items():
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
            }
        )
    _upsert_adding(session, _DEVICE_TOTAL_T, ("run_id", "device_id"), device_rows)
    found = session.execute(
        sa.select(_PHASE_T.c.id, _PHASE_T.c.t0_s, _PHASE_T.c.t1_s).where(
            _PHASE_T.c.run_id == run_id
        )
    ).all()
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
    """Per device: the `DeviceTotal` figures summed from the chunk table."""
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
    _load_run(session, project_id=project_id, run_id=run_id, lock=True)
    t = _DEVICE_TOTAL_T
    session.execute(sa.delete(t).where(t.c.run_id == run_id))
    rows = _device_sums(session, run_id)
    if rows:
        session.execute(sa.insert(t), rows)
    phase_ids = session.scalars(sa.select(_PHASE_T.c.id).where(_PHASE_T.c.run_id == run_id)).all()
    if phase_ids:
        _rebuild_phase_totals(session, run_id, list(phase_ids))
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
        )
        .select_from(d)
        .join(t, sa.and_(t.c.run_id == d.c.run_id, t.c.device_id == d.c.id))
        .where(d.c.run_id == run_id)
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
        )
        for row in device_rows
    )
    run_end_s = max((dev.t1_s for dev in devices), default=None)
    return RunUsage(
        run=_run_record(run),
        devices=devices,
        phases=_phase_usage(session, run_id, run_end_s),
    )


def _phase_usage(
    session: Session, run_id: UUID, run_end_s: float | None
) -> tuple[PhaseAggregate, ...]:
    phases = [
        _phase_record(row)
        for row in session.scalars(
            sa.select(Phase).where(Phase.run_id == run_id).order_by(Phase.t0_s, Phase.name)
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
