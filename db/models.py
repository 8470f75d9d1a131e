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
* Floats that must be finite carry a CHECK bound of ±1e300: PostgreSQL sorts NaN above every
  number, so ``x >= 0`` alone would admit NaN there (SQLite turns NaN into NULL, which NOT NULL
  rejects). One NaN in a chunk would make every SUM over the run NaN.
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

from db.types import BIGINT_PK, JSON_DOC, StrEnumType, UTCDateTime, utcnow

__all__ = [
    "ALL_SCOPES",
    "FINITE_MAX",
    "NAMING_CONVENTION",
    "ApiToken",
    "Base",
    "Chunk",
    "Device",
    "DeviceKind",
    "EmissionFactor",
    "EnergyMethod",
    "FactorBasis",
    "FactorRate",
    "LedgerEntry",
    "LedgerKind",
    "LedgerSource",
    "Phase",
    "Project",
    "Run",
    "RunKind",
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
    """How an energy figure was obtained (DESIGN §3): never a silent 0."""

    COUNTER = "counter"
    POWER_AVG = "power_avg"
    POWER_INSTANT = "power_instant"
    ESTIMATE = "estimate"


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


class Run(Base):
    """One job (all its ranks and nodes), identified by a UUID the client generates.

    A client-made id lets a meter spool and upload before the service has ever answered, and
    makes "create run" idempotent. ``declared_flops`` is a float: 10²⁵ FLOP overflows int64.
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
    )

    id: Mapped[UUID] = mapped_column(primary_key=True)
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
        _enum_check("power_method", EnergyMethod, "power_method_valid"),
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
    power_method: Mapped[EnergyMethod] = mapped_column(StrEnumType(EnergyMethod))
    simulated: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="devices")


class Chunk(Base):
    """``chunk_s`` seconds of one device: a summary row plus the raw samples as one blob.

    The primary key *is* the idempotency key ``(run_id, device_id, seq)``: a retried upload hits
    it and becomes a no-op (``INSERT ... ON CONFLICT DO NOTHING`` on both backends), and the
    biggest table carries one index fewer than with a surrogate id. ``content_hash`` (SHA-256
    hex of the canonical chunk) tells a harmless repeat from a conflicting one.

    ``energy_low_j ≤ energy_j ≤ energy_high_j`` brackets the figure (gaps, counter resolution,
    power-only integration), so reports can sum honest bounds. ``mean_power_w`` is the mean of
    the power samples (clip it into [min, max] against rounding); ``samples`` is the
    `db.samples` codec's blob and may be NULL once raw arrays have expired (DESIGN §8).
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
        sa.CheckConstraint("energy_j >= 0 AND energy_low_j >= 0", name="energy_nonnegative"),
        sa.CheckConstraint(
            f"energy_low_j <= energy_j AND energy_j <= energy_high_j "
            f"AND energy_high_j <= {FINITE_MAX}",
            name="energy_bounds",
        ),
        sa.CheckConstraint(
            f"min_power_w >= 0 AND min_power_w <= mean_power_w AND mean_power_w <= max_power_w "
            f"AND max_power_w <= {FINITE_MAX}",
            name="power_order",
        ),
        sa.CheckConstraint(
            f"gap_s >= 0 AND gap_s <= {FINITE_MAX} AND gap_count >= 0 "
            "AND (gap_count > 0 OR gap_s = 0)",
            name="gaps_valid",
        ),
        _enum_check("method", EnergyMethod, "method_valid"),
        sa.CheckConstraint("length(content_hash) = 64", name="content_hash_sha256_hex"),
        sa.Index(None, "run_id", "t0_s"),
    )

    run_id: Mapped[UUID] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    t0_s: Mapped[float]
    t1_s: Mapped[float]
    n: Mapped[int]
    energy_j: Mapped[float]
    energy_low_j: Mapped[float]
    energy_high_j: Mapped[float]
    min_power_w: Mapped[float]
    mean_power_w: Mapped[float]
    max_power_w: Mapped[float]
    method: Mapped[EnergyMethod] = mapped_column(StrEnumType(EnergyMethod))
    gap_s: Mapped[float] = mapped_column(default=0.0)
    gap_count: Mapped[int] = mapped_column(default=0)
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    samples: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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
    Non-overlap of versions is enforced by the repository, not the database.
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
