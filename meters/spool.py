"""The meter's durable spool: sealed chunks wait in SQLite until the service acknowledges them.

DESIGN §3 step 3: a sealed chunk is committed here **before** any upload can see it, so a crash
of the job, the meter or the service loses at most the unsealed tail. The file is SQLite (the
stdlib module, nothing heavy) in WAL mode with ``synchronous=FULL``: every commit is fsync'd,
so a chunk `put_chunks` returned from survives power loss, and a ``kill -9`` mid-write leaves
the previous commit intact.

Tables::

    runs     (run_id PK, metadata JSON, status, exit_code, created_at, updated_at)
    devices  (run_id, key) PK, payload JSON                    -- wire DevicePayload
    chunks   (run_id, device_key, seq) PK, payload JSON,       -- wire ChunkPayload
             content_hash, created_at, acked_at NULL
    metrics  (run_id, name, step) PK, value, t_s,              -- wire MetricPayload
             created_at, sent_at NULL, rejected NULL

The chunk key ``(run_id, device_key, seq)`` is the idempotency key the service also uses:
storing an identical chunk again is a no-op, storing a different chunk under a stored key is a
meter bug and raises `SpoolConflict` (nothing is ever overwritten). Payloads are stored as the
JSON of the wire dicts (``Infinity`` allowed: Python's json round-trips it), so they are
uploaded unchanged and their `meters.wire.content_hash` is the same before and after.

Uploader side: `Spool.pending` (oldest first), `Spool.mark_acked`, `Spool.purge_acked`.

Metric points (`Spool.put_metric`, from `meters.api.Meter.record_metric`) wait here like chunks,
keyed as the service keys them, ``(run_id, name, step)``: the same point again is a no-op, another
value under a stored key raises `MetricConflict`. They need no run row (the job's meter may
record them into a wrapper's spool before the wrapper opens the run); the uploader sends them
(`Spool.pending_metrics`, `Spool.mark_metrics_sent`) and keeps the ones the service refused,
with the reason (`Spool.reject_metrics`). The table was added without a schema version bump:
an older meter opening the file leaves it alone.
Recovery: `Spool.next_seqs` tells a restarted meter where each device's numbering resumes.

One `Spool` object may be shared by threads (the sampler writes, an uploader reads and acks):
its single connection is guarded by a lock. Several processes may open the same file (a meter
and a ``push`` command): SQLite's locking and the busy timeout serialise them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, cast

from ._sqlite import SqliteFile
from .errors import MeterError
from .wire import ChunkPayload, DevicePayload, MetricPayload, content_hash

__all__ = [
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "SPOOL_FILENAME",
    "ChunkKey",
    "MetricConflict",
    "RunRecord",
    "RunStatus",
    "Spool",
    "SpoolConflict",
    "SpoolCounts",
    "SpoolError",
    "SpooledChunk",
    "UnknownRun",
]

SCHEMA_VERSION: Final = 1
"""Stored in ``PRAGMA user_version``; a spool written by a newer meter is refused."""
SPOOL_FILENAME: Final = "spool.sqlite3"
"""File name of the spool inside the directory the caller chooses (`Spool.in_directory`)."""

RunStatus = Literal["running", "finished", "failed", "lost"]
RUN_STATUSES: Final[tuple[RunStatus, ...]] = ("running", "finished", "failed", "lost")

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id     TEXT PRIMARY KEY,
        metadata   TEXT NOT NULL,
        status     TEXT NOT NULL
                   CHECK (status IN ('running', 'finished', 'failed', 'lost')),
        exit_code  INTEGER,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS devices (
        run_id  TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        key     TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS chunks (
        run_id       TEXT NOT NULL,
        device_key   TEXT NOT NULL,
        seq          INTEGER NOT NULL CHECK (seq >= 0),
        payload      TEXT NOT NULL,
        content_hash TEXT NOT NULL CHECK (length(content_hash) = 64),
        created_at   REAL NOT NULL,
        acked_at     REAL,
        PRIMARY KEY (run_id, device_key, seq),
        FOREIGN KEY (run_id, device_key) REFERENCES devices (run_id, key) ON DELETE CASCADE
    )
    """,
    # The uploader asks for unacked chunks all the time; acked ones only wait for a purge.
    "CREATE INDEX IF NOT EXISTS chunks_pending ON chunks (run_id) WHERE acked_at IS NULL",
    "CREATE INDEX IF NOT EXISTS chunks_acked ON chunks (acked_at) WHERE acked_at IS NOT NULL",
    """
    CREATE TABLE IF NOT EXISTS metrics (
        run_id     TEXT NOT NULL,
        name       TEXT NOT NULL,
        step       INTEGER NOT NULL CHECK (step >= 0),
        value      REAL NOT NULL,
        t_s        REAL NOT NULL,
        created_at REAL NOT NULL,
        sent_at    REAL,
        rejected   TEXT,
        PRIMARY KEY (run_id, name, step)
    )
    """,
    "CREATE INDEX IF NOT EXISTS metrics_pending ON metrics (run_id) "
    "WHERE sent_at IS NULL AND rejected IS NULL",
)


class SpoolError(RuntimeError, MeterError):
    """The spool file cannot be opened, read or written (SQLite's error is the cause)."""


class SpoolConflict(ValueError, SpoolError):
    """A chunk differs from the one already stored under its key (a meter bug; never overwritten).

    Attributes:
        keys: The conflicting keys.
    """

    def __init__(self, keys: Sequence[ChunkKey]) -> None:
        self.keys = tuple(keys)
        shown = ", ".join(f"{k.run_id}/{k.device_key}#{k.seq}" for k in self.keys[:5])
        more = f" and {len(self.keys) - 5} more" if len(self.keys) > 5 else ""
        super().__init__(f"a different chunk is already stored under {shown}{more}")


class MetricConflict(ValueError, SpoolError):
    """A metric point's ``(run, name, step)`` is stored with another value (never overwritten).

    Attributes:
        stored: The stored point.
    """

    def __init__(self, stored: MetricPayload) -> None:
        self.stored = stored
        super().__init__(
            f"{stored['name']!r} step {stored['step']} is already recorded as {stored['value']!r}"
        )


class UnknownRun(LookupError, SpoolError):
    """The run id is not in the spool."""


class ChunkKey(NamedTuple):
    """The idempotency key of a chunk."""

    run_id: str
    device_key: str
    seq: int


@dataclass(frozen=True, slots=True)
class SpooledChunk:
    """A chunk as stored.

    Attributes:
        key: Its key.
        payload: The wire chunk, exactly as it will be uploaded.
        content_hash: `meters.wire.content_hash` of the payload (hex SHA-256).
        created_at_s: When it was stored, unix s.
        acked_at_s: When the service acknowledged it, unix s (None: pending).
    """

    key: ChunkKey
    payload: ChunkPayload
    content_hash: str
    created_at_s: float
    acked_at_s: float | None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as the spool knows it.

    Attributes:
        run_id: The client-generated run id.
        metadata: What the meter recorded when it opened the run (host, interval, ...).
        status: ``running``, ``finished``, ``failed`` or ``lost``.
        exit_code: The job's exit code, when known.
        created_at_s: When the run was first opened here, unix s.
        updated_at_s: Last status change, unix s.
    """

    run_id: str
    metadata: dict[str, Any]
    status: RunStatus
    exit_code: int | None
    created_at_s: float
    updated_at_s: float


@dataclass(frozen=True, slots=True)
class SpoolCounts:
    """How many chunks wait and how many were acknowledged (not yet purged)."""

    pending: int
    acked: int


class Spool(SqliteFile):
    """A SQLite spool file (WAL, ``synchronous=FULL``). Use as a context manager or `close`.

    Args:
        path: The spool file, created 0600; missing parent directories are created 0700.
        now: Unix-time source for ``created_at`` / ``acked_at`` (tests inject one).
        busy_timeout_s: How long a write waits for another process's lock, s.

    Raises:
        SpoolError: The file cannot be opened, is not a spool, or was written by a newer
            schema.
    """

    FILENAME = SPOOL_FILENAME
    _KIND = "spool"
    _SCHEMA = _SCHEMA
    _SCHEMA_VERSION = SCHEMA_VERSION
    _ERROR = SpoolError

    # -- runs and devices ---------------------------------------------------------------------

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Register a run as ``running``; a run already here keeps its metadata and is reopened.

        Args:
            run_id: The run id.
            metadata: Facts about the run (host, interval_s, chunk_s, ...); values JSON cannot
                hold are stored as their ``str``.
        """
        now = self._now()
        # default=str: metadata is descriptive; an odd value must not stop the run's chunks.
        text = json.dumps(dict(metadata or {}), sort_keys=True, default=str)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, metadata, status, exit_code, created_at, updated_at) "
                "VALUES (?, ?, 'running', NULL, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET status = 'running', exit_code = NULL, "
                "updated_at = excluded.updated_at",
                (run_id, text, now, now),
            )

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        """Record how a run ended (or that it runs again).

        Raises:
            UnknownRun: No such run.
            ValueError: ``status`` is not one of `RUN_STATUSES`.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, exit_code = ?, updated_at = ? WHERE run_id = ?",
                (status, exit_code, self._now(), run_id),
            )
            if cursor.rowcount == 0:
                raise UnknownRun(f"run {run_id!r} is not in the spool {self.path}")

    def run_status(self, run_id: str) -> RunRecord | None:
        """The run, or None if the spool does not know it."""
        rows = self._read(
            "SELECT run_id, metadata, status, exit_code, created_at, updated_at FROM runs "
            "WHERE run_id = ?",
            (run_id,),
        )
        return _run(rows[0]) if rows else None

    def runs(self) -> list[RunRecord]:
        """Every run in the spool, oldest first."""
        rows = self._read(
            "SELECT run_id, metadata, status, exit_code, created_at, updated_at FROM runs "
            "ORDER BY created_at, rowid"
        )
        return [_run(row) for row in rows]

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        """Store (or refresh) the run's device descriptions; chunks may only name these.

        Raises:
            UnknownRun: The run was not opened.
        """
        rows = [(run_id, d["key"], json.dumps(d, sort_keys=True)) for d in devices]
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.executemany(
                "INSERT INTO devices (run_id, key, payload) VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, key) DO UPDATE SET payload = excluded.payload",
                rows,
            )

    def devices(self, run_id: str) -> list[DevicePayload]:
        """The run's devices, in key order."""
        rows = self._read("SELECT payload FROM devices WHERE run_id = ? ORDER BY key", (run_id,))
        return [cast(DevicePayload, json.loads(row[0])) for row in rows]

    # -- chunks -------------------------------------------------------------------------------

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        """Store sealed chunks durably, all in one transaction (committed and fsync'd on return).

        A chunk identical to the one stored under its key is skipped.

        Args:
            run_id: The run they belong to (opened, devices stored).
            chunks: Wire chunks.

        Returns:
            How many chunks were new.

        Raises:
            SpoolConflict: A chunk differs from the stored one under its key; nothing of this
                call is stored.
            SpoolError: Unknown run or device, or SQLite failed; nothing is stored.
        """
        now = self._now()
        inserted = 0
        conflicts: list[ChunkKey] = []
        with self._write() as conn:
            for chunk in chunks:
                key = ChunkKey(run_id, chunk["device_key"], int(chunk["seq"]))
                payload, digest = _encoded(chunk)
                stored = conn.execute(
                    "SELECT content_hash FROM chunks "
                    "WHERE run_id = ? AND device_key = ? AND seq = ?",
                    key,
                ).fetchone()
                if stored is not None:
                    if stored[0] != digest:
                        conflicts.append(key)
                    continue
                conn.execute(
                    "INSERT INTO chunks (run_id, device_key, seq, payload, content_hash, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, payload, digest, now),
                )
                inserted += 1
            if conflicts:
                raise SpoolConflict(conflicts)
        return inserted

    def put_chunk(self, run_id: str, chunk: ChunkPayload) -> bool:
        """Store one chunk; True if it was new, False if an identical one was already stored.

        Raises:
            SpoolConflict: A different chunk is stored under its key.
            SpoolError: Unknown run or device, or SQLite failed.
        """
        return self.put_chunks(run_id, [chunk]) == 1

    def next_seqs(self, run_id: str) -> dict[str, int]:
        """Per device key: one past the highest stored seq (where a restarted meter resumes).

        Acked chunks count until purged; the service dedupes by key anyway, so even after a
        purge a reused seq would be refused there, never silently double counted.
        """
        rows = self._read(
            "SELECT device_key, MAX(seq) FROM chunks WHERE run_id = ? GROUP BY device_key",
            (run_id,),
        )
        return {str(key): int(top) + 1 for key, top in rows}

    def pending(self, run_id: str | None = None, *, limit: int = 100) -> list[SpooledChunk]:
        """Unacknowledged chunks, oldest first (the order they were stored).

        Args:
            run_id: Only this run's chunks (default: every run's).
            limit: At most this many.
        """
        where = "acked_at IS NULL" + (" AND run_id = ?" if run_id is not None else "")
        params: tuple[Any, ...] = (run_id,) if run_id is not None else ()
        return self._chunks(where, params, order="rowid", limit=limit)

    def chunks(self, run_id: str, device_key: str | None = None) -> list[SpooledChunk]:
        """Every stored chunk of a run (acked or not), by device key then seq."""
        where = "run_id = ?" + (" AND device_key = ?" if device_key is not None else "")
        params: tuple[Any, ...] = (run_id,) if device_key is None else (run_id, device_key)
        return self._chunks(where, params, order="device_key, seq", limit=None)

    def mark_acked(self, keys: Iterable[ChunkKey | tuple[str, str, int]]) -> int:
        """Record that the service stored these chunks; returns how many were newly acked."""
        now = self._now()
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                "UPDATE chunks SET acked_at = ? "
                "WHERE run_id = ? AND device_key = ? AND seq = ? AND acked_at IS NULL",
                [(now, *key) for key in keys],
            )
            return conn.total_changes - before

    def purge_acked(self, *, older_than_s: float = 0.0) -> int:
        """Delete chunks acknowledged at least ``older_than_s`` seconds ago; returns how many."""
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM chunks WHERE acked_at IS NOT NULL AND acked_at <= ?",
                (self._now() - older_than_s,),
            )
            return cursor.rowcount

    def counts(self, run_id: str | None = None) -> SpoolCounts:
        """How many chunks are pending and acked (in one run, or in all)."""
        where = "WHERE run_id = ?" if run_id is not None else ""
        params: tuple[Any, ...] = (run_id,) if run_id is not None else ()
        rows = self._read(
            "SELECT COUNT(*) - COUNT(acked_at), COUNT(acked_at) FROM chunks " + where, params
        )
        return SpoolCounts(pending=int(rows[0][0]), acked=int(rows[0][1]))

    # -- metric points ------------------------------------------------------------------------

    def put_metric(self, run_id: str, point: MetricPayload) -> bool:
        """Store a metric point durably; True if new, False if the same value was stored.

        Raises:
            MetricConflict: ``(run, name, step)`` is stored with another value.
            SpoolError: SQLite failed.
        """
        key = (run_id, point["name"], int(point["step"]))
        with self._write() as conn:
            row = conn.execute(
                "SELECT value, t_s FROM metrics WHERE run_id = ? AND name = ? AND step = ?", key
            ).fetchone()
            if row is not None:
                if float(row[0]) != float(point["value"]):
                    stored = MetricPayload(
                        name=key[1], step=key[2], value=float(row[0]), t_s=float(row[1])
                    )
                    raise MetricConflict(stored)
                return False
            conn.execute(
                "INSERT INTO metrics (run_id, name, step, value, t_s, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (*key, float(point["value"]), float(point["t_s"]), self._now()),
            )
            return True

    def metrics(self, run_id: str) -> list[MetricPayload]:
        """Every stored point of a run (sent or not), by name then step."""
        return self._metrics("run_id = ?", (run_id,), limit=None)

    def pending_metrics(self, run_id: str, *, limit: int = 1000) -> list[MetricPayload]:
        """Points not yet sent and not refused, oldest first."""
        return self._metrics(
            "run_id = ? AND sent_at IS NULL AND rejected IS NULL", (run_id,), limit=limit
        )

    def mark_metrics_sent(self, run_id: str, keys: Iterable[tuple[str, int]]) -> None:
        """Record that the service stored these points (``(name, step)``)."""
        now = self._now()
        with self._write() as conn:
            conn.executemany(
                "UPDATE metrics SET sent_at = ? WHERE run_id = ? AND name = ? AND step = ?",
                [(now, run_id, name, step) for name, step in keys],
            )

    def reject_metrics(self, run_id: str, keys: Iterable[tuple[str, int]], reason: str) -> None:
        """Record that the service refused these points (kept, not sent again)."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE metrics SET rejected = ? WHERE run_id = ? AND name = ? AND step = ?",
                [(reason, run_id, name, step) for name, step in keys],
            )

    def rejected_metrics(self, run_id: str) -> dict[tuple[str, int], str]:
        """The run's refused points, ``(name, step)`` to the service's reason."""
        rows = self._read(
            "SELECT name, step, rejected FROM metrics WHERE run_id = ? AND rejected IS NOT NULL",
            (run_id,),
        )
        return {(str(n), int(s)): str(why) for n, s, why in rows}

    def runs_with_pending_metrics(self) -> list[str]:
        """Runs with points to send, oldest first."""
        rows = self._read(
            "SELECT run_id FROM metrics WHERE sent_at IS NULL AND rejected IS NULL "
            "GROUP BY run_id ORDER BY MIN(rowid)"
        )
        return [str(row[0]) for row in rows]

    def pending_metric_count(self, run_id: str) -> int:
        """How many of the run's points wait to be sent (refused ones not counted)."""
        rows = self._read(
            "SELECT COUNT(*) FROM metrics WHERE run_id = ? AND sent_at IS NULL "
            "AND rejected IS NULL",
            (run_id,),
        )
        return int(rows[0][0])

    # -- internals ----------------------------------------------------------------------------

    def _metrics(
        self, where: str, params: tuple[Any, ...], *, limit: int | None
    ) -> list[MetricPayload]:
        order = "rowid" if limit is not None else "name, step"
        sql = f"SELECT name, step, value, t_s FROM metrics WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, int(limit))
        return [
            MetricPayload(name=str(n), step=int(s), value=float(v), t_s=float(t))
            for n, s, v, t in self._read(sql, params)
        ]

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise UnknownRun(f"run {run_id!r} is not in the spool {self.path}")

    def _chunks(
        self, where: str, params: tuple[Any, ...], *, order: str, limit: int | None
    ) -> list[SpooledChunk]:
        sql = (
            "SELECT run_id, device_key, seq, payload, content_hash, created_at, acked_at "
            f"FROM chunks WHERE {where} ORDER BY {order}"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, int(limit))
        return [
            SpooledChunk(
                key=ChunkKey(str(run_id), str(device_key), int(seq)),
                payload=cast(ChunkPayload, json.loads(payload)),
                content_hash=str(digest),
                created_at_s=float(created),
                acked_at_s=None if acked is None else float(acked),
            )
            for run_id, device_key, seq, payload, digest, created, acked in self._read(sql, params)
        ]


def _encoded(chunk: ChunkPayload) -> tuple[str, str]:
    """A chunk's stored JSON and its `meters.wire.content_hash`, from one serialisation mostly.

    The canonical JSON that `content_hash` digests differs from plain sorted JSON only where a
    float is not finite (written as a string there). Every chunk without one (all but a chunk
    whose band is unbounded) is stored as its canonical JSON, which parses back to the same
    payload: one encoding of its few hundred floats per chunk instead of two, the costliest
    step of spooling. A test checks that the digest is `content_hash`'s.
    """
    try:
        canonical = json.dumps(chunk, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:  # an infinity: JSON's Infinity in the payload, a string in the hash
        return json.dumps(chunk, sort_keys=True), content_hash(chunk)
    return canonical, hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _run(row: Sequence[Any]) -> RunRecord:
    run_id, metadata, status, exit_code, created, updated = row
    return RunRecord(
        run_id=str(run_id),
        metadata=dict(json.loads(metadata)),
        status=cast(RunStatus, status),
        exit_code=None if exit_code is None else int(exit_code),
        created_at_s=float(created),
        updated_at_s=float(created if updated is None else updated),
    )
