"""Chunk ingest: a meter's batch of sealed chunks, stored all or nothing, idempotently.

Chunk ingest is all-or-nothing and costs a fixed number of statements per batch, whatever its
size: a key-share lock on the run, one SELECT of the run's devices, at most one multi-row
INSERT of new devices (and one re-read), **one** SELECT of the stored chunks whose keys or time
neighbours the batch touches, one bulk write of the new chunks (binary ``COPY`` on PostgreSQL,
an executemany on SQLite), and the running totals: one SELECT of the run's phases and at most
two multi-row UPSERTs (`db.models.DeviceTotal`, `db.models.PhaseTotal`; see `db.totals`). Any
refusal raises before the chunks are written, and the caller's transaction rollback undoes the
device rows.

Devices and chunks that a retried or concurrent upload repeats are written ``ON CONFLICT DO
NOTHING`` and read back (`db.runs` explains why); a chunk's band terms are stored as
`db.records` describes.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.orm import Session

from thermoledger.accounting.catalog import lookup as catalog_lookup

from .errors import Conflict, FieldProblem, InvalidInput, NotFound
from .models import Chunk, Device, DeviceKind, Run
from .records import UNBOUNDED_J, ChunkAck, ChunkRow, DeviceSpec
from .runs import ESTIMATE_LABEL, _insert
from .samples import encode_samples_many
from .totals import _add_to_totals
from .types import utcnow

__all__ = [
    "TIME_TOLERANCE_S",
    "ingest_chunks",
    "plausible_power_w",
]

#: Slack when comparing one chunk's end with the next chunk's start, s. Under the left-sample
#: rule they are the same reading; the slack only absorbs a meter spool that rounds times.
TIME_TOLERANCE_S = 1e-6


# The Core tables behind the models, typed as tables (``__table__`` is typed as a FromClause).
_RUN_T = cast(sa.Table, Run.__table__)
_DEVICE_T = cast(sa.Table, Device.__table__)
_CHUNK_T = cast(sa.Table, Chunk.__table__)


def plausible_power_w(power_limit_w: float | None) -> float:
    """Highest power reading accepted for a device, W: 1.5 × its limit + 50 W (inf if none).

    Boards briefly exceed their enforced limit (NVML's limit is a moving average, transients
    overshoot it), so the ceiling is generous; a reading beyond it is a unit or scaling bug.
    """
    return math.inf if power_limit_w is None else 1.5 * power_limit_w + 50.0


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
        sa.select(
            r.c.id,
            r.c.host_info[ESTIMATE_LABEL].as_string().is_not(None),
            d.c.id,
            d.c.host,
            d.c.kind,
            d.c.device_index,
            d.c.uuid,
            d.c.power_limit_w,
        )
        .select_from(r.outerjoin(d, d.c.run_id == r.c.id))
        .where(
            r.c.client_id == sa.bindparam("run_id"), r.c.project_id == sa.bindparam("project_id")
        )
        .with_for_update(read=True, key_share=True, of=r)
    )


def _run_for_ingest(
    session: Session, *, project_id: int, run_id: UUID
) -> tuple[UUID, list[_DeviceRow]]:
    """The run's database key and devices, in the round trip that checks the run; `NotFound`
    unless the project has a run with (client) id ``run_id``, `Conflict` when that run is an
    estimate (`db.ledger.record_estimate`: its figures are not measured, and chunks would
    supersede them at its next end).

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
    if found[0][1]:
        raise Conflict(
            f"run {run_id} is an estimate (host_info.{ESTIMATE_LABEL}): it takes no "
            "measurements; meter a new run instead",
            field="run_id",
        )
    return found[0][0], [_DeviceRow(*row[2:]) for row in found if row[2] is not None]


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
                    "covers": ",".join(d.covers),
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
    db_key, stored_devices = _run_for_ingest(session, project_id=project_id, run_id=run_id)
    rows = _match_devices(session, db_key, devices, stored_devices)

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
    stored = _stored_chunks(session, db_key, ranges)

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
        written = _insert_chunks(session, db_key, to_insert, compress_samples=compress_samples)
        _add_to_totals(session, db_key, written)
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
    ("mem_busy_frac", "float8"),
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
            c.mem_busy_frac,
        )
        for device_id, c in rows
    ]


#: The savepoint a chunk ``COPY`` runs in (`_copy_chunks`).
_COPY_SAVEPOINT = "thermoledger_chunk_copy"


def _copy_chunks(session: Session, values: Sequence[tuple[Any, ...]]) -> bool:
    """Binary ``COPY`` of chunk rows into the table (PostgreSQL), inside a savepoint of the
    session's transaction.

    Returns:
        False when a key is already stored (a unique violation: a concurrent request stored
        it after the check); the savepoint is then rolled back and nothing was written.

    The savepoint is the driver's own, not `Session.begin_nested`: that one also releases it
    and goes through SQLAlchemy's statement path twice, ~8 % of the server's GIL time under
    ingest load (py-spy). An unreleased savepoint simply ends with the transaction. Other driver
    errors are re-raised as SQLAlchemy's, so they map like any other statement's.
    """
    import psycopg  # the PostgreSQL driver; only reached on that backend

    columns = ", ".join(name for name, _ in _COPY_COLUMNS)
    statement = f"COPY chunk ({columns}) FROM STDIN (FORMAT BINARY)"
    driver = session.connection().connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.cursor() as cursor:
            cursor.execute(f"SAVEPOINT {_COPY_SAVEPOINT}")
            try:
                with cursor.copy(statement) as copy:
                    copy.set_types([kind for _, kind in _COPY_COLUMNS])
                    for row in values:
                        copy.write_row(row)
            except psycopg.errors.UniqueViolation:
                cursor.execute(f"ROLLBACK TO SAVEPOINT {_COPY_SAVEPOINT}")
                return False
    except psycopg.Error as e:
        raise sa.exc.DBAPIError.instance(statement, None, e, psycopg.Error) from e
    return True


def _insert_chunks(
    session: Session,
    run_id: UUID,
    rows: Sequence[tuple[int, ChunkRow]],
    *,
    compress_samples: bool,
) -> list[tuple[int, ChunkRow]]:
    """Write the new chunks in one bulk operation, tolerating keys a concurrent request stored.

    PostgreSQL: a binary ``COPY`` inside a savepoint (`_copy_chunks`), ~10× faster than an
    INSERT per row. The keys were checked just before, so it only fails with a unique
    violation when a concurrent request stored one of them in between; then the savepoint is
    rolled back and the slow path below runs.

    Slow path (and SQLite): ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` the keys written,
    as one executemany. A key another request stored instead with different content is a
    conflict (this transaction then rolls back); with the same content it is stored once, as
    it must be, and counted in the totals by the request that wrote it.

    Returns:
        The rows this transaction wrote (what the running totals must add).
    """
    values = _chunk_values(run_id, rows, compress_samples=compress_samples)
    if session.get_bind().dialect.name == "postgresql" and _copy_chunks(session, values):
        return list(rows)
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
