"""thermoledger's tables, as typed SQLAlchemy 2.0 models.

These models are the *target* of the migrations, never a way to create the schema outside tests:
`migrations/versions` is the only schema path, and ``db.migrate.check`` fails when the two drift.

Conventions:

* Every constraint and index has a deterministic name (`NAMING_CONVENTION`), so migrations can
  refer to them by name and autogenerate produces stable diffs.
* Every timestamp is an aware UTC datetime (`db.types.UTCDateTime`); chunk and phase times are
  float64 unix seconds (``t0_s``, ``t1_s``), the unit the accounting core integrates in.
* Enumerations are ``VARCHAR`` + a named CHECK constraint built from the Python enum (the
  migration spells the same list out; a test compares constraint names on both backends).
* Floats that must be finite carry a CHECK bound of ±1e300 (`FINITE_MAX`): PostgreSQL sorts
  NaN above every number, so ``x >= 0`` alone would admit NaN there (SQLite turns NaN into
  NULL, which NOT NULL rejects). One NaN in a chunk would make every SUM over the run NaN.
* Quantities are in SI base units named in the column (``energy_j``, ``power_w``); the ledger
  additionally keeps the value and unit as given.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .types import BIGINT_PK, JSON_DOC, StrEnumType, UTCDateTime, utcnow

__all__ = [
    "ALL_SCOPES",
    "FINITE_MAX",
    "MEAN_IN_RANGE_METHODS",
    "NAMING_CONVENTION",
    "ApiToken",
    "Base",
    "BrowserSession",
    "Chunk",
    "Device",
    "DeviceKind",
    "DevicePowerMethod",
    "DeviceTotal",
    "EmissionFactor",
    "EnergyMethod",
    "FactorBasis",
    "FactorRate",
    "LedgerEntry",
    "LedgerHead",
    "LedgerKind",
    "LedgerSource",
    "Phase",
    "PhaseTotal",
    "Project",
    "ProjectAccounting",
    "PueKind",
    "Run",
    "RunKind",
    "RunMetric",
    "RunStatus",
    "Scope",
    "ScopeType",
    "Tariff",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Upper bound of every "finite" CHECK (see the module docstring).
FINITE_MAX = "1e300"


class RunKind(enum.StrEnum):
    """What a run does."""

    TRAINING = "training"
    INFERENCE = "inference"
    EVAL = "eval"
    OTHER = "other"


class RunStatus(enum.StrEnum):
    """Where a run is in its life; ``lost`` = the meter stopped reporting without an end."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    LOST = "lost"


class DeviceKind(enum.StrEnum):
    """What a metered device is: a GPU (NVML), or a RAPL CPU package / DRAM domain."""

    GPU = "gpu"
    CPU = "cpu"
    DRAM = "dram"
    OTHER = "other"


class EnergyMethod(enum.StrEnum):
    """How a chunk's energy figure was obtained (DESIGN §3): never a silent 0.

    Exactly the wire's vocabulary (`meters.wire.METHODS`). ``mixed``: the chunk's samples
    switched method (a device degrading from its counter to power readings mid-chunk).
    """

    COUNTER = "counter"
    POWER_AVG = "power_avg"
    POWER_INSTANT = "power_instant"
    ESTIMATE = "estimate"
    MIXED = "mixed"


class DevicePowerMethod(enum.StrEnum):
    """How a device's power figures are obtained, as the meter declares it per device.

    ``counter`` is a counter-only device (RAPL): its power samples are counter differences.
    A device with no usable method is never sent, so there is no ``none``; and a device has
    one method, so there is no ``mixed``.
    """

    COUNTER = "counter"
    POWER_AVG = "power_avg"
    POWER_INSTANT = "power_instant"
    ESTIMATE = "estimate"


#: Chunk methods whose mean power is the mean of the power samples, so min ≤ mean ≤ max holds.
#: A ``counter`` chunk's mean is its counter energy over time while min/max come from the
#: separate power sensor (which lags: a 1 s average on Hopper; and differs by a few %), so its
#: mean may fall outside them; ``mixed`` chunks may hold counter intervals.
MEAN_IN_RANGE_METHODS: tuple[EnergyMethod, ...] = (
    EnergyMethod.POWER_AVG,
    EnergyMethod.POWER_INSTANT,
    EnergyMethod.ESTIMATE,
)


class LedgerKind(enum.StrEnum):
    """What a ledger entry counts."""

    ENERGY = "energy"
    COMPUTE = "compute"
    TOKENS = "tokens"
    COST = "cost"
    CARBON = "carbon"


class LedgerSource(enum.StrEnum):
    """Whether a ledger figure was measured, declared by the job, or derived from others."""

    MEASURED = "measured"
    DECLARED = "declared"
    DERIVED = "derived"


class FactorBasis(enum.StrEnum):
    """GHG Protocol Scope 2 method an emission factor serves."""

    LOCATION = "location"
    MARKET = "market"


class FactorRate(enum.StrEnum):
    """Average (attributional) or marginal (consequential, carbon-aware scheduling) rate."""

    AVERAGE = "average"
    MARGINAL = "marginal"


class PueKind(enum.StrEnum):
    """Where a project's PUE comes from (`accounting.carbon.Pue.kind`)."""

    PUBLISHED = "published"
    SURVEY = "survey"
    ASSUMPTION = "assumption"
    DEFINITION = "definition"
    MEASURED = "measured"


class Scope(enum.IntFlag):
    """API token permissions, stored as a bitmask (1..7)."""

    INGEST = 1
    READ = 2
    ADMIN = 4


ALL_SCOPES = Scope.INGEST | Scope.READ | Scope.ADMIN


class ScopeType(sa.TypeDecorator[Scope]):
    """`Scope` flags stored as an ``INTEGER`` bitmask."""

    impl = sa.Integer
    cache_ok = True

    def process_bind_param(self, value: Scope | int | None, dialect: Dialect) -> int | None:
        return None if value is None else int(Scope(value))

    def process_result_value(self, value: int | None, dialect: Dialect) -> Scope | None:
        return None if value is None else Scope(value)


_MEAN_IN_RANGE_SQL = ", ".join(f"'{m.value}'" for m in MEAN_IN_RANGE_METHODS)


def _enum_check(column: str, enum_class: type[enum.StrEnum], name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(StrEnumType(enum_class).check_sql(column), name=name)


class Base(DeclarativeBase):
    """Declarative base: the naming convention and the Python → column type defaults."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: UTCDateTime(),
        UUID: sa.Uuid(),
        float: sa.Double(),
        dict[str, Any]: JSON_DOC,
    }


class Project(Base):
    """A tenant: runs, tokens and its ledger chain belong to exactly one project."""

    __tablename__ = "project"
    __table_args__ = (sa.CheckConstraint("length(slug) >= 1", name="slug_not_empty"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    runs: Mapped[list[Run]] = relationship(back_populates="project")
    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="project", cascade="all, delete-orphan", passive_deletes=True
    )


class ApiToken(Base):
    """A project API token. Only a SHA-256 of its secret is stored.

    The secret is 32 random bytes (256 bits of entropy), so a fast hash is enough: bcrypt and
    friends slow down guessing *low-entropy* passwords, which buys nothing against 2²⁵⁶
    candidates and would cost ~100 ms of CPU on every ingest request. ``prefix`` is the public,
    unique head of the token, used to find the row before comparing hashes in constant time.
    """

    __tablename__ = "api_token"
    __table_args__ = (
        sa.CheckConstraint(f"scopes >= 1 AND scopes <= {int(ALL_SCOPES)}", name="scopes_valid"),
        sa.CheckConstraint("length(hash) = 64", name="hash_sha256_hex"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("project.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(200))
    prefix: Mapped[str] = mapped_column(sa.String(16), unique=True)
    hash: Mapped[str] = mapped_column(sa.String(64))
    scopes: Mapped[Scope] = mapped_column(ScopeType())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    project: Mapped[Project] = relationship(back_populates="tokens")


def _same_as_id(context: Any) -> Any:
    """A run inserted without a ``client_id`` (ORM, tests) is known by its key."""
    return context.get_current_parameters()["id"]


class Run(Base):
    """One job (all its ranks and nodes), identified within its project by a UUID the client
    generates (``client_id``).

    A client-made id lets a meter spool and upload before the service has ever answered, and
    makes "create run" idempotent. It is unique within the project only: two projects may pick
    the same id (ids derived from a Slurm job id are predictable) and get two runs, neither
    visible to the other. ``id`` is the run's database key, which the rows of its devices,
    chunks, phases and ledger entries reference: ``client_id`` itself, except for a run whose
    id another project's run already holds as its key (`db.runs.run_key`); never shown to
    clients. ``declared_flops`` is a float: 10²⁵ FLOP overflows int64.
    """

    __tablename__ = "run"
    __table_args__ = (
        _enum_check("kind", RunKind, "kind_valid"),
        _enum_check("status", RunStatus, "status_valid"),
        sa.CheckConstraint("ended_at IS NULL OR ended_at >= started_at", name="time_order"),
        sa.CheckConstraint("status <> 'running' OR ended_at IS NULL", name="running_not_ended"),
        sa.CheckConstraint(
            "declared_params >= 0 AND declared_tokens >= 0", name="declared_counts_nonnegative"
        ),
        sa.CheckConstraint(
            f"declared_flops >= 0 AND declared_flops <= {FINITE_MAX}", name="declared_flops_valid"
        ),
        sa.Index(None, "project_id", "started_at"),
        sa.Index(None, "project_id", "kind", "status"),
        sa.UniqueConstraint("project_id", "client_id"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True)
    client_id: Mapped[UUID] = mapped_column(default=_same_as_id)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("project.id"))
    name: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[RunKind] = mapped_column(StrEnumType(RunKind))
    status: Mapped[RunStatus] = mapped_column(StrEnumType(RunStatus), default=RunStatus.RUNNING)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    exit_code: Mapped[int | None]
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Launcher facts: hostnames, SLURM/Kubernetes job ids, driver and library versions.
    host_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    declared_params: Mapped[int | None] = mapped_column(sa.BigInteger)
    declared_tokens: Mapped[int | None] = mapped_column(sa.BigInteger)
    declared_flops: Mapped[float | None]
    declared_flops_dtype: Mapped[str | None] = mapped_column(sa.String(16))
    simulated: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    project: Mapped[Project] = relationship(back_populates="runs")
    devices: Mapped[list[Device]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    phases: Mapped[list[Phase]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )


class Device(Base):
    """One metered device of one run on one host.

    ``(run, host, kind, device_index)`` is unique because a RAPL CPU package 0 and DRAM domain 0
    share an index; ``(run, uuid)`` is unique (NULLs allowed) so the same physical GPU cannot be
    registered twice under two host spellings or by two meters on one node (DESIGN §9: nothing
    counted twice). ``(run_id, id)`` is unique only to be the target of the chunk's composite
    foreign key, which keeps a chunk's run and its device's run the same.
    """

    __tablename__ = "device"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "host", "kind", "device_index"),
        sa.UniqueConstraint("run_id", "uuid"),
        sa.UniqueConstraint("run_id", "id"),
        _enum_check("kind", DeviceKind, "kind_valid"),
        _enum_check("power_method", DevicePowerMethod, "power_method_valid"),
        sa.CheckConstraint("device_index >= 0", name="device_index_nonnegative"),
        sa.CheckConstraint(
            f"power_limit_w > 0 AND power_limit_w <= {FINITE_MAX}", name="power_limit_valid"
        ),
    )

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True)
    run_id: Mapped[UUID] = mapped_column(sa.ForeignKey("run.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(sa.String(255))
    kind: Mapped[DeviceKind] = mapped_column(StrEnumType(DeviceKind), default=DeviceKind.GPU)
    device_index: Mapped[int]
    uuid: Mapped[str | None] = mapped_column(sa.String(96))
    name: Mapped[str] = mapped_column(sa.String(200))
    catalog_key: Mapped[str | None] = mapped_column(sa.String(64))
    power_limit_w: Mapped[float | None]
    has_energy_counter: Mapped[bool]
    power_method: Mapped[DevicePowerMethod] = mapped_column(StrEnumType(DevicePowerMethod))
    simulated: Mapped[bool] = mapped_column(default=False)
    #: The GPU runs MIG: its figures are the whole GPU's, shared by every instance on it.
    mig: Mapped[bool] = mapped_column(default=False)
    #: Other kinds on its host whose energy its figures include (comma-separated, e.g. ``cpu``
    #: for a GH200-class module; empty: none): those devices are left out of every total.
    covers: Mapped[str] = mapped_column(sa.String(32), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="devices")


class Chunk(Base):
    """``chunk_s`` seconds of one device: a summary row plus the raw samples as one blob.

    The primary key *is* the idempotency key ``(run_id, device_id, seq)``: a retried upload hits
    it and becomes a no-op (``INSERT ... ON CONFLICT DO NOTHING`` on both backends), and the
    biggest table carries one index fewer than with a surrogate id. ``content_hash`` (SHA-256
    hex of the canonical chunk) tells a harmless repeat from a conflicting one.

    Uncertainty is stored as the **terms** of the band, not the band: ``sensor_uncertainty_j``
    (symmetric, systematic per device) and the one-sided ``bound_below_j``/``bound_above_j``
    (`accounting.integrate`'s model). The terms combine differently across devices (sensor
    errors root-sum-square, bounds linearly), which a stored ``[low, high]`` could not; the
    chunk's band is derived, ``[max(0, E − sensor − below), E + sensor + above]``.
    ``bound_above_j = 1e300`` (`FINITE_MAX`, beyond any physical energy) means **unbounded
    above** (a counter reset without a power limit). A sentinel rather than a nullable column:
    every column stays NOT NULL, and an aggregate that forgets the convention errs high (a sum
    ≥ 1e300 still reads as unbounded), where ``SUM`` would silently skip NULLs and make an
    unbounded band look bounded.

    ``mean_power_w`` is energy over counted time. For power methods it lies in
    ``[min_power_w, max_power_w]`` (checked); for ``counter``/``mixed`` chunks it comes from
    the counter while min/max come from the power sensor, so only ``min ≤ max`` holds
    (`MEAN_IN_RANGE_METHODS`). ``reset_count``/``wrap_count`` count counter resets (driver
    reloads) and wraps inside the chunk. ``samples`` is the `db.samples` codec's blob and may
    be NULL once raw arrays have expired (DESIGN §8). ``mem_busy_frac`` is the time-weighted
    fraction of the chunk during which the device's memory was busy (NVML ``utilization.memory``,
    AMD SMI ``umc_activity``), in [0, 1]; NULL when the meter had no such reading (migration 0007:
    nullable on purpose, "not measured" is never 0).
    """

    __tablename__ = "chunk"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["run_id", "device_id"], ["device.run_id", "device.id"], ondelete="CASCADE"
        ),
        sa.CheckConstraint("seq >= 0", name="seq_nonnegative"),
        sa.CheckConstraint("n > 0", name="n_positive"),
        sa.CheckConstraint(
            f"t0_s >= 0 AND t0_s <= t1_s AND t1_s <= {FINITE_MAX}", name="time_order"
        ),
        sa.CheckConstraint(f"energy_j >= 0 AND energy_j <= {FINITE_MAX}", name="energy_valid"),
        sa.CheckConstraint(
            f"sensor_uncertainty_j >= 0 AND sensor_uncertainty_j <= {FINITE_MAX} "
            f"AND bound_below_j >= 0 AND bound_below_j <= {FINITE_MAX} "
            f"AND bound_above_j >= 0 AND bound_above_j <= {FINITE_MAX}",
            name="band_terms_valid",
        ),
        sa.CheckConstraint(
            f"min_power_w >= 0 AND min_power_w <= max_power_w AND max_power_w <= {FINITE_MAX} "
            f"AND mean_power_w >= 0 AND mean_power_w <= {FINITE_MAX} "
            f"AND (method NOT IN ({_MEAN_IN_RANGE_SQL}) "
            "OR (min_power_w <= mean_power_w AND mean_power_w <= max_power_w))",
            name="power_order",
        ),
        sa.CheckConstraint(
            f"gap_s >= 0 AND gap_s <= {FINITE_MAX} AND gap_count >= 0 "
            "AND (gap_count > 0 OR gap_s = 0)",
            name="gaps_valid",
        ),
        sa.CheckConstraint("reset_count >= 0 AND wrap_count >= 0", name="counts_nonnegative"),
        _enum_check("method", EnergyMethod, "method_valid"),
        sa.CheckConstraint("length(content_hash) = 64", name="content_hash_sha256_hex"),
        sa.CheckConstraint(
            "mem_busy_frac IS NULL OR (mem_busy_frac >= 0 AND mem_busy_frac <= 1)",
            name="mem_busy_frac_valid",
        ),
        sa.Index(None, "run_id", "t0_s"),
    )

    run_id: Mapped[UUID] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    t0_s: Mapped[float]
    t1_s: Mapped[float]
    n: Mapped[int]
    energy_j: Mapped[float]
    sensor_uncertainty_j: Mapped[float]
    bound_below_j: Mapped[float]
    bound_above_j: Mapped[float]
    min_power_w: Mapped[float]
    mean_power_w: Mapped[float]
    max_power_w: Mapped[float]
    method: Mapped[EnergyMethod] = mapped_column(StrEnumType(EnergyMethod))
    gap_s: Mapped[float] = mapped_column(default=0.0)
    gap_count: Mapped[int] = mapped_column(default=0)
    reset_count: Mapped[int] = mapped_column(default=0)
    wrap_count: Mapped[int] = mapped_column(default=0)
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    samples: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    mem_busy_frac: Mapped[float | None]


class Phase(Base):
    """A window the job marked (``epoch-3``, ``eval``) with the work it declared inside it.

    ``t1_s`` is NULL while the phase is open (or forever, if the run was lost inside it).
    ``(run, name, t0_s)`` is unique so a re-sent phase is recognised.
    """

    __tablename__ = "phase"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "name", "t0_s"),
        sa.CheckConstraint(
            f"t0_s >= 0 AND t0_s <= {FINITE_MAX} AND (t1_s IS NULL OR t1_s >= t0_s)",
            name="time_order",
        ),
        sa.CheckConstraint(f"flops >= 0 AND flops <= {FINITE_MAX}", name="flops_valid"),
        sa.CheckConstraint("tokens >= 0", name="tokens_nonnegative"),
    )

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True)
    run_id: Mapped[UUID] = mapped_column(sa.ForeignKey("run.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(200))
    t0_s: Mapped[float]
    t1_s: Mapped[float | None]
    flops: Mapped[float | None]
    flops_dtype: Mapped[str | None] = mapped_column(sa.String(16))
    tokens: Mapped[int | None] = mapped_column(sa.BigInteger)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)

    run: Mapped[Run] = relationship(back_populates="phases")


class DeviceTotal(Base):
    """Running totals of one device's chunks: what a run report reads instead of the chunks.

    Derived state, kept on purpose: summing 10⁵ chunk rows per report costs 50–100 ms on
    SQLite and grows with the run, while these rows are O(devices). Ingest adds each newly
    stored chunk's figures in the same transaction (an atomic ``UPSERT ... SET x = x + delta``,
    so concurrent ingests compose); ``db.totals.rebuild_totals`` recomputes them from the
    chunks, and tests hold the two equal. Band terms add linearly within a device (its sensor
    error is systematic); ``bound_above_j`` keeps the chunk table's 1e300 "unbounded" sentinel
    (a sum that reaches it is clamped to it). ``method`` is the chunks' common method, or
    ``mixed``.

    What the energy decomposition reads (`accounting.decomposition`, migration 0007):
    ``quiet_power_w`` is the lowest mean power of a sustained chunk (at least
    `accounting.decomposition.SUSTAINED_WINDOW_S`, no gap, no reset, measured), kept as a
    running minimum, with ``quiet_power_high_w`` the top of that chunk's band over its length
    (ties: the lower top); NULL while no chunk qualifies. ``mem_busy_s`` adds each chunk's
    ``mem_busy_frac`` × length and ``mem_observed_s`` the length of the chunks that carry one.
    """

    __tablename__ = "device_total"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["run_id", "device_id"], ["device.run_id", "device.id"], ondelete="CASCADE"
        ),
        sa.CheckConstraint("chunks > 0 AND samples > 0", name="counts_positive"),
        sa.CheckConstraint("gap_count >= 0 AND reset_count >= 0", name="event_counts_nonnegative"),
        sa.CheckConstraint(
            f"energy_j >= 0 AND energy_j <= {FINITE_MAX} "
            f"AND sensor_uncertainty_j >= 0 AND sensor_uncertainty_j <= {FINITE_MAX} "
            f"AND bound_below_j >= 0 AND bound_below_j <= {FINITE_MAX} "
            f"AND bound_above_j >= 0 AND bound_above_j <= {FINITE_MAX}",
            name="energy_valid",
        ),
        sa.CheckConstraint(
            f"t0_s >= 0 AND t0_s <= t1_s AND t1_s <= {FINITE_MAX} "
            f"AND peak_power_w >= 0 AND peak_power_w <= {FINITE_MAX} "
            f"AND gap_s >= 0 AND gap_s <= {FINITE_MAX}",
            name="span_valid",
        ),
        _enum_check("method", EnergyMethod, "method_valid"),
        sa.CheckConstraint(
            "(quiet_power_w IS NULL) = (quiet_power_high_w IS NULL) "
            f"AND (quiet_power_w IS NULL OR (quiet_power_w >= 0 "
            f"AND quiet_power_w <= quiet_power_high_w AND quiet_power_high_w <= {FINITE_MAX}))",
            name="quiet_power_valid",
        ),
        sa.CheckConstraint(
            f"mem_busy_s >= 0 AND mem_busy_s <= mem_observed_s AND mem_observed_s <= {FINITE_MAX}",
            name="mem_activity_valid",
        ),
    )

    run_id: Mapped[UUID] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    chunks: Mapped[int] = mapped_column(sa.BigInteger)
    samples: Mapped[int] = mapped_column(sa.BigInteger)
    energy_j: Mapped[float]
    sensor_uncertainty_j: Mapped[float]
    bound_below_j: Mapped[float]
    bound_above_j: Mapped[float]
    t0_s: Mapped[float]
    t1_s: Mapped[float]
    peak_power_w: Mapped[float]
    gap_s: Mapped[float]
    gap_count: Mapped[int] = mapped_column(sa.BigInteger)
    reset_count: Mapped[int] = mapped_column(sa.BigInteger)
    method: Mapped[EnergyMethod] = mapped_column(StrEnumType(EnergyMethod))
    quiet_power_w: Mapped[float | None]
    quiet_power_high_w: Mapped[float | None]
    mem_busy_s: Mapped[float] = mapped_column(default=0.0, server_default=sa.text("0"))
    mem_observed_s: Mapped[float] = mapped_column(default=0.0, server_default=sa.text("0"))


class PhaseTotal(Base):
    """One device's energy inside one phase: pro-rata sums of its overlapping chunks.

    Derived state like `DeviceTotal`: ingest adds each new chunk's share to every phase it
    overlaps (an open phase reaches to +inf, which is where the run's last measurement ends it
    anyway), and recording or closing a phase recomputes its rows from the chunks. In
    PostgreSQL the two cannot miss each other: a phase change locks its run ``FOR UPDATE``,
    ingest takes ``FOR KEY SHARE`` on it (SQLite serialises writers anyway).
    """

    __tablename__ = "phase_total"
    __table_args__ = (
        sa.CheckConstraint(
            f"energy_j >= 0 AND energy_j <= {FINITE_MAX} "
            f"AND sensor_uncertainty_j >= 0 AND sensor_uncertainty_j <= {FINITE_MAX} "
            f"AND bound_below_j >= 0 AND bound_below_j <= {FINITE_MAX} "
            f"AND bound_above_j >= 0 AND bound_above_j <= {FINITE_MAX}",
            name="energy_valid",
        ),
    )

    phase_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("phase.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("device.id", ondelete="CASCADE"), primary_key=True
    )
    energy_j: Mapped[float]
    sensor_uncertainty_j: Mapped[float]
    bound_below_j: Mapped[float]
    bound_above_j: Mapped[float]


class LedgerEntry(Base):
    """One append-only, hash-chained record of a project's ledger.

    ``seq`` counts 1, 2, 3 ... per project; ``hash`` = SHA-256 over the entry's canonical content
    and ``prev_hash`` (64 zeros for seq 1), so ``audit verify`` detects a changed or removed
    entry. The migration also installs triggers that refuse UPDATE and DELETE on this table on
    both backends, so an application bug cannot rewrite history; the chain catches anyone who
    drops the triggers first. Foreign keys have no ON DELETE: a run or project with ledger
    entries cannot be deleted.
    """

    __tablename__ = "ledger_entry"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "seq"),
        sa.Index(None, "run_id"),
        sa.CheckConstraint("seq >= 1", name="seq_positive"),
        _enum_check("kind", LedgerKind, "kind_valid"),
        _enum_check("source", LedgerSource, "source_valid"),
        sa.CheckConstraint(
            f"value_si >= -{FINITE_MAX} AND value_si <= {FINITE_MAX} "
            f"AND value_given >= -{FINITE_MAX} AND value_given <= {FINITE_MAX}",
            name="values_finite",
        ),
        sa.CheckConstraint(
            "length(hash) = 64 AND length(prev_hash) = 64", name="hashes_sha256_hex"
        ),
    )

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("project.id"))
    run_id: Mapped[UUID | None] = mapped_column(sa.ForeignKey("run.id"))
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    kind: Mapped[LedgerKind] = mapped_column(StrEnumType(LedgerKind))
    value_si: Mapped[float]
    unit_si: Mapped[str] = mapped_column(sa.String(32))
    value_given: Mapped[float]
    unit_given: Mapped[str] = mapped_column(sa.String(64))
    source: Mapped[LedgerSource] = mapped_column(StrEnumType(LedgerSource))
    #: Where the figure came from: factor/tariff ids and versions, chunk ranges, code version.
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))


class EmissionFactor(Base):
    """A grid carbon intensity, valid over ``[valid_from, valid_to)``; rows are versions.

    Two axes instead of DESIGN's single ``kind``: ``basis`` (location | market, the GHG Scope 2
    method it serves) and ``rate`` (average | marginal) are independent. ``project_id`` NULL is
    a shared factor; a project's own (a PPA, a supplier-specific market factor) overrides it.
    Non-overlap of versions is enforced by `db.factors`, not the database; rows are never
    edited except to close an open-ended version (set its ``valid_to``).
    """

    __tablename__ = "emission_factor"
    __table_args__ = (
        sa.Index(None, "region", "valid_from"),
        _enum_check("basis", FactorBasis, "basis_valid"),
        _enum_check("rate", FactorRate, "rate_valid"),
        sa.CheckConstraint(f"value >= 0 AND value <= {FINITE_MAX}", name="value_valid"),
        sa.CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="validity_order"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(sa.ForeignKey("project.id"))
    region: Mapped[str] = mapped_column(sa.String(64))
    basis: Mapped[FactorBasis] = mapped_column(StrEnumType(FactorBasis))
    rate: Mapped[FactorRate] = mapped_column(StrEnumType(FactorRate))
    value: Mapped[float]
    #: As published, e.g. ``gCO2e/kWh``; the accounting core converts with the one registry.
    unit: Mapped[str] = mapped_column(sa.String(64))
    valid_from: Mapped[datetime]
    valid_to: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(sa.String(500))
    year: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Tariff(Base):
    """An electricity price, valid over ``[valid_from, valid_to)``; rows are versions.

    ``value`` may be negative (wholesale prices go below zero). ``project_id`` NULL = shared.
    """

    __tablename__ = "tariff"
    __table_args__ = (
        sa.Index(None, "region", "valid_from"),
        sa.CheckConstraint(
            f"value >= -{FINITE_MAX} AND value <= {FINITE_MAX}", name="value_finite"
        ),
        sa.CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="validity_order"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(sa.ForeignKey("project.id"))
    region: Mapped[str] = mapped_column(sa.String(64))
    value: Mapped[float]
    #: As published, e.g. ``USD/kWh``.
    unit: Mapped[str] = mapped_column(sa.String(64))
    valid_from: Mapped[datetime]
    valid_to: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(sa.String(500))
    year: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerHead(Base):
    """The last entry of a project's ledger chain: its seq and hash, kept beside the chain.

    Appending locks this row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite serialises
    writers), which serialises appends per project, and updates it in the same transaction.
    Verification compares it with the chain's last entry, so deleting the newest entries, or
    appending a forged one behind the service's back, shows even though no link breaks.
    """

    __tablename__ = "ledger_head"
    __table_args__ = (
        sa.CheckConstraint("seq >= 0", name="seq_nonnegative"),
        sa.CheckConstraint("length(hash) = 64", name="hash_sha256_hex"),
    )

    project_id: Mapped[int] = mapped_column(sa.ForeignKey("project.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProjectAccounting(Base):
    """How a project's energy becomes carbon and cost: its grid region and its PUE.

    Configured explicitly by the project's admin; nothing is guessed (no geolocation). The
    region selects emission factors and tariffs (`db.factors`); the PUE is stored with its
    provenance as resolved when it was set (a built-in default's value and source are copied,
    so a later release with other defaults does not change it). Figures already in the ledger
    keep the region and PUE they were derived with: changing this row changes only what is
    ledgered afterwards.
    """

    __tablename__ = "project_accounting"
    __table_args__ = (
        sa.CheckConstraint("length(region) >= 1", name="region_not_empty"),
        sa.CheckConstraint(f"pue >= 1 AND pue <= {FINITE_MAX}", name="pue_valid"),
        _enum_check("pue_kind", PueKind, "pue_kind_valid"),
    )

    project_id: Mapped[int] = mapped_column(
        sa.ForeignKey("project.id", ondelete="CASCADE"), primary_key=True
    )
    region: Mapped[str] = mapped_column(sa.String(64))
    pue: Mapped[float]
    #: A built-in default's name (``hyperscale``, ``typical``, ``none`` …) or ``measured``.
    pue_name: Mapped[str] = mapped_column(sa.String(64))
    pue_kind: Mapped[PueKind] = mapped_column(StrEnumType(PueKind))
    pue_source: Mapped[str] = mapped_column(sa.String(500))
    pue_year: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class BrowserSession(Base):
    """A signed-in browser: the pages' session, bound to the API token it was opened with.

    The cookie carries a random session id (`service.pages.auth`); only its SHA-256 is stored
    here, so neither the cookie nor this table is an API credential. Every page request checks
    the row (not expired, not revoked) *and* the bound token (not expired, not revoked, still
    ``read``), so revoking the token or logging out ends the session at once. ``csrf`` is the
    per-session secret the pages put in their forms' hidden field; on its own it grants nothing.
    """

    __tablename__ = "browser_session"
    __table_args__ = (
        sa.CheckConstraint("length(hash) = 64", name="hash_sha256_hex"),
        sa.CheckConstraint("expires_at > created_at", name="expiry_after_creation"),
        sa.Index(None, "expires_at"),
        sa.Index(None, "token_id"),
    )

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True)
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    token_id: Mapped[int] = mapped_column(sa.ForeignKey("api_token.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("project.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class RunMetric(Base):
    """One point of a quality metric over a run (``eval_loss`` at step 1200), as the job sent it.

    ``(run, name, step)`` is unique so a re-sent point is recognised; a different value under
    the same key is refused (`db.metrics`). ``t_s`` is the meter's clock (unix seconds, the
    chunks' clock), which places the point on the run's cumulative energy. The value is any
    finite float (a loss, an accuracy, ``tokens_seen``); its unit is the metric's own.
    """

    __tablename__ = "run_metric"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "name", "step"),
        sa.CheckConstraint("length(name) >= 1", name="name_not_empty"),
        sa.CheckConstraint("step >= 0", name="step_nonnegative"),
        sa.CheckConstraint(
            f"value >= -{FINITE_MAX} AND value <= {FINITE_MAX}", name="value_finite"
        ),
        sa.CheckConstraint(f"t_s >= 0 AND t_s <= {FINITE_MAX}", name="t_s_valid"),
    )

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True)
    run_id: Mapped[UUID] = mapped_column(sa.ForeignKey("run.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(64))
    step: Mapped[int] = mapped_column(sa.BigInteger)
    value: Mapped[float]
    t_s: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
