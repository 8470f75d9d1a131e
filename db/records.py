"""The plain records the store modules return, and the values they take in.

Every store function (`db.tokens`, `db.runs`, `db.phases`, `db.chunks`, `db.totals`) takes the
caller's `Session` and keyword-only arguments, works inside the caller's transaction (it flushes,
never commits: the service commits once per request) and returns plain frozen dataclasses, never
ORM objects, so nothing lazy-loads after the session is gone. They are all here, with the
functions that build them from ORM rows (``_run_record``, ...), so that a module that only reads
them (`service.schemas`, `db.basis`) imports no query code, and so that every store module can
share them without importing another.

Chunk band storage. The chunk table keeps the band's **terms** (``sensor_uncertainty_j``,
``bound_below_j``, ``bound_above_j``; see `db.models.Chunk`), never the band itself: sensor errors
combine root-sum-square across devices and bounds linearly, so the report needs them apart. An
unbounded ``bound_above_j`` (a counter reset without a power limit) is stored as `UNBOUNDED_J`
(the table's finite ceiling, 1e300 J, beyond any physical energy) and read back as +inf; a sum
that reaches it reads as +inf too (`db.totals`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple
from uuid import UUID

import numpy.typing as npt

from .models import (
    ApiToken,
    DeviceKind,
    DevicePowerMethod,
    EnergyMethod,
    Phase,
    Project,
    Run,
    RunKind,
    RunStatus,
    Scope,
)

__all__ = [
    "INT64_MAX",
    "UNBOUNDED_J",
    "ChunkAck",
    "ChunkRow",
    "DeviceAggregate",
    "DeviceSpec",
    "PhaseAggregate",
    "PhaseDeviceEnergy",
    "PhaseRecord",
    "ProjectRecord",
    "RunCursor",
    "RunRecord",
    "RunUsage",
    "StoredToken",
    "TokenRecord",
]

#: Stored in ``chunk.bound_above_j`` for "unbounded above"; any sum reaching it reads as +inf.
UNBOUNDED_J = 1e300
#: Largest value of a BIGINT column (declared tokens and parameters).
INT64_MAX = 2**63 - 1


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
    """A run as stored.

    Attributes:
        id: The run's id as its clients know it: the UUID they made, unique within the project
            (two projects may each have a run with the same id; neither sees the other's).
        key: The run's key inside the database (``run.id``, which the rows of its devices,
            chunks, phases and ledger entries reference); never shown to clients.
    """

    id: UUID
    key: UUID
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
    covers: tuple[DeviceKind, ...] = ()


class ChunkRow(NamedTuple):
    """One validated chunk to store; ``position`` is its index in the request (for messages).

    A named tuple rather than a frozen dataclass: a batch makes hundreds, and a tuple is built
    several times faster.

    ``bound_above_j`` may be +inf (stored as `UNBOUNDED_J`). ``samples`` are the raw columns
    to encode (`db.samples`); ``blob`` is the raw columns encoded already, stored as given
    (`service.ingest` encodes a batch's blobs together). Neither: the meter sent no samples.
    ``mem_busy_frac`` is the chunk's memory-busy fraction in [0, 1], None when it has none.
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
    mem_busy_frac: float | None = None


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
    systematic); ``bound_above_j`` is +inf when any chunk is unbounded above. ``covers`` are
    the kinds on its host its figures include; ``covered_by`` is the key of a device whose
    figures include this one's (it is then left out of totals). ``quiet_power_w`` and
    ``quiet_power_high_w`` are its lowest sustained power and that reading's top (None: no chunk
    qualified; `accounting.decomposition.lowest_sustained_power`); ``mem_busy_s`` and
    ``mem_observed_s`` its memory-busy seconds and the seconds its chunks carried the counter.
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
    covers: tuple[str, ...] = ()
    covered_by: str | None = None
    quiet_power_w: float | None = None
    quiet_power_high_w: float | None = None
    mem_busy_s: float = 0.0
    mem_observed_s: float = 0.0

    @property
    def counted(self) -> bool:
        """Whether totals add this device: no other device on its host covers its kind."""
        return self.covered_by is None

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
    """Everything a run report is built from (no raw samples).

    ``devices`` lists every device; totals add the `counted` ones only (a device another on
    its host covers, e.g. the CPU inside a GH200-class module's figure, has ``covered_by``).
    """

    run: RunRecord
    devices: tuple[DeviceAggregate, ...]
    phases: tuple[PhaseAggregate, ...] = field(default=())

    @property
    def counted(self) -> tuple[DeviceAggregate, ...]:
        """The devices totals add (none of them covered by another)."""
        return tuple(d for d in self.devices if d.counted)


# --------------------------------------------------------------------------- rows to records


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
        id=row.client_id,
        key=row.id,
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


def _phase_record(row: Phase, run_id: UUID) -> PhaseRecord:
    """``row`` as a record of the run its project calls ``run_id`` (the row holds its key)."""
    return PhaseRecord(
        id=row.id,
        run_id=run_id,
        name=row.name,
        t0_s=row.t0_s,
        t1_s=row.t1_s,
        flops=row.flops,
        flops_dtype=row.flops_dtype,
        tokens=row.tokens,
        tags=dict(row.tags),
    )
