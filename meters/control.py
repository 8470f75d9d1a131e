"""The control outbox: what a run tells the service besides its chunks, kept until it is sent.

The chunk spool (`meters.spool`) holds measurements. This second SQLite file, beside it in the
spool directory, holds the rest of the conversation with the service, so an offline run can be
pushed later and a run cut off by a crash still says what it knew:

``messages``
    One row per (run, kind, key): the run's declaration (``run``, the ``PUT /runs/{id}`` body),
    each phase (``phase``, keyed by name and start time), the declared work (``work``, totals
    so far) and how the run ended (``end``). A row is replaced when its content changes (a
    phase closing, more tokens) and its ``version`` goes up; the uploader records the version
    it sent, so a change made while a request was in flight is sent again.
``rejected``
    Chunks the service refused with a 4xx (a meter bug, never lost: they stay in the spool,
    skipped by the uploader until ``thermoledger push --retry-rejected``).
``seqs``
    Per (run, device) the next chunk seq above everything ever acknowledged, so purging acked
    chunks from the spool never lets a restarted meter reuse a seq the service already has.

WAL with ``synchronous=NORMAL``: a commit survives the process being killed (the case that
matters for a meter); only an OS crash may lose the last commits, which are re-derived or
re-declared by a running job. Several processes may share the file (the wrapper and an
in-process `meters.api.Meter` in its child, or a ``push``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from ._sqlite import SqliteFile
from .spool import ChunkKey, SpoolError

__all__ = [
    "CONTROL_FILENAME",
    "ControlStore",
    "Message",
    "MessageKind",
    "Rejection",
]

CONTROL_FILENAME: Final = "control.sqlite3"
MessageKind = Literal["run", "phase", "work", "end"]
_SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS messages (
        run_id       TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('run', 'phase', 'work', 'end')),
        key          TEXT NOT NULL,
        body         TEXT NOT NULL,
        version      INTEGER NOT NULL,
        sent_version INTEGER NOT NULL DEFAULT 0,
        rejected     TEXT,
        updated_at   REAL NOT NULL,
        PRIMARY KEY (run_id, kind, key)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS rejected (
        run_id      TEXT NOT NULL,
        device_key  TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        status_code INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        at          REAL NOT NULL,
        PRIMARY KEY (run_id, device_key, seq)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS seqs (
        run_id     TEXT NOT NULL,
        device_key TEXT NOT NULL,
        next_seq   INTEGER NOT NULL,
        PRIMARY KEY (run_id, device_key)
    )
    """,
)


@dataclass(frozen=True, slots=True)
class Message:
    """One control message as stored.

    Attributes:
        run_id: The run.
        kind: ``run``, ``phase``, ``work`` or ``end``.
        key: Identifies it within (run, kind): ``""`` for the singletons, ``name@t0`` for
            phases.
        body: The JSON body to send.
        version: Bumped whenever the body changes.
        sent_version: The version the service acknowledged last (0: never).
        rejected: Why the service refused it (None: not refused).
    """

    run_id: str
    kind: MessageKind
    key: str
    body: dict[str, Any]
    version: int
    sent_version: int
    rejected: str | None

    @property
    def pending(self) -> bool:
        """Not yet sent in its current version, and not refused."""
        return self.rejected is None and self.version > self.sent_version


@dataclass(frozen=True, slots=True)
class Rejection:
    """A chunk the service refused."""

    key: ChunkKey
    status_code: int
    reason: str
    at_s: float


class ControlStore(SqliteFile):
    """The control outbox file (see the module docstring). Thread-safe; close it when done.

    Args:
        path: The file, created 0600; missing parent directories are created 0700.
        now: Unix-time source (tests inject one).
        busy_timeout_s: How long a write waits for another process's lock, s.

    Raises:
        SpoolError: The file cannot be opened or was written by a newer meter.
    """

    FILENAME = CONTROL_FILENAME
    _KIND = "control file"
    _SCHEMA = _SCHEMA
    _SCHEMA_VERSION = _SCHEMA_VERSION
    _ERROR = SpoolError

    # -- messages -----------------------------------------------------------------------------

    def put(
        self,
        run_id: str,
        kind: MessageKind,
        body: Mapping[str, Any],
        *,
        key: str = "",
        if_absent: bool = False,
    ) -> bool:
        """Store a message; an unchanged body is a no-op, a changed one bumps the version.

        A message the service refused is given a new chance when its body changes.

        Args:
            run_id: The run.
            kind: What it is.
            body: The JSON body (finite numbers; JSON cannot carry NaN or inf).
            key: Identity within (run, kind).
            if_absent: Store only when no message with this identity exists.

        Returns:
            Whether anything changed.
        """
        text = json.dumps(dict(body), sort_keys=True, allow_nan=False)
        with self._write() as conn:
            row = conn.execute(
                "SELECT body, version FROM messages WHERE run_id = ? AND kind = ? AND key = ?",
                (run_id, kind, key),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO messages (run_id, kind, key, body, version, updated_at) "
                    "VALUES (?, ?, ?, ?, 1, ?)",
                    (run_id, kind, key, text, self._now()),
                )
                return True
            if if_absent or row[0] == text:
                return False
            conn.execute(
                "UPDATE messages SET body = ?, version = version + 1, rejected = NULL, "
                "updated_at = ? WHERE run_id = ? AND kind = ? AND key = ?",
                (text, self._now(), run_id, kind, key),
            )
            return True

    def get(self, run_id: str, kind: MessageKind, key: str = "") -> Message | None:
        """One message, or None."""
        rows = self._read(
            "SELECT run_id, kind, key, body, version, sent_version, rejected FROM messages "
            "WHERE run_id = ? AND kind = ? AND key = ?",
            (run_id, kind, key),
        )
        return _message(rows[0]) if rows else None

    def messages(self, run_id: str, *, pending_only: bool = False) -> list[Message]:
        """A run's messages, in the order they were first stored."""
        where = " AND rejected IS NULL AND version > sent_version" if pending_only else ""
        rows = self._read(
            "SELECT run_id, kind, key, body, version, sent_version, rejected FROM messages "
            f"WHERE run_id = ?{where} ORDER BY rowid",
            (run_id,),
        )
        return [_message(row) for row in rows]

    def runs_with_pending(self) -> list[str]:
        """Runs that have a message to send, oldest first."""
        rows = self._read(
            "SELECT run_id FROM messages WHERE rejected IS NULL AND version > sent_version "
            "GROUP BY run_id ORDER BY MIN(rowid)"
        )
        return [str(row[0]) for row in rows]

    def mark_sent(self, message: Message) -> None:
        """Record that the service acknowledged ``message`` (in the version it had)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE messages SET sent_version = MAX(sent_version, ?) "
                "WHERE run_id = ? AND kind = ? AND key = ?",
                (message.version, message.run_id, message.kind, message.key),
            )

    def mark_unsent(self, run_id: str, kind: MessageKind, key: str = "") -> None:
        """Make a message pending again (e.g. the run must be declared again)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE messages SET sent_version = 0 WHERE run_id = ? AND kind = ? AND key = ?",
                (run_id, kind, key),
            )

    def mark_rejected(self, message: Message, reason: str) -> None:
        """Record that the service refused ``message`` (it is not sent again unless it changes)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE messages SET rejected = ? WHERE run_id = ? AND kind = ? AND key = ? "
                "AND version = ?",
                (reason, message.run_id, message.kind, message.key, message.version),
            )

    # -- rejected chunks ----------------------------------------------------------------------

    def reject_chunks(self, keys: Iterable[ChunkKey], *, status_code: int, reason: str) -> None:
        """Record chunks the service refused (they stay in the spool, skipped by uploads)."""
        now = self._now()
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO rejected (run_id, device_key, seq, status_code, reason, at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, device_key, seq) DO UPDATE SET "
                "status_code = excluded.status_code, reason = excluded.reason, at = excluded.at",
                [(*key, status_code, reason, now) for key in keys],
            )

    def rejected_chunks(self, run_id: str | None = None) -> list[Rejection]:
        """Refused chunks (of one run, or all)."""
        where, params = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        rows = self._read(
            "SELECT run_id, device_key, seq, status_code, reason, at FROM rejected "
            f"{where} ORDER BY run_id, device_key, seq",
            params,
        )
        return [
            Rejection(ChunkKey(str(r), str(d), int(s)), int(code), str(why), float(at))
            for r, d, s, code, why, at in rows
        ]

    def rejected_keys(self, run_id: str) -> set[ChunkKey]:
        """Keys of a run's refused chunks."""
        return {r.key for r in self.rejected_chunks(run_id)}

    def clear_rejections(self, run_id: str | None = None) -> int:
        """Forget refusals (chunks and messages) so they are tried again; returns chunks freed."""
        where, params = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        with self._write() as conn:
            freed = conn.execute(f"DELETE FROM rejected {where}", params).rowcount
            conn.execute(f"UPDATE messages SET rejected = NULL {where}", params)
            return int(freed)

    # -- seq high-water marks -----------------------------------------------------------------

    def note_seqs(self, run_id: str, keys: Iterable[ChunkKey]) -> None:
        """Remember that these chunks exist at the service (next seq is above each)."""
        top: dict[str, int] = {}
        for key in keys:
            top[key.device_key] = max(top.get(key.device_key, 0), key.seq + 1)
        if not top:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO seqs (run_id, device_key, next_seq) VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, device_key) DO UPDATE SET "
                "next_seq = MAX(next_seq, excluded.next_seq)",
                [(run_id, device, seq) for device, seq in top.items()],
            )

    def next_seqs(self, run_id: str) -> dict[str, int]:
        """Per device key, one past the highest seq ever acknowledged for this run."""
        rows = self._read("SELECT device_key, next_seq FROM seqs WHERE run_id = ?", (run_id,))
        return {str(device): int(seq) for device, seq in rows}


def _message(row: tuple[Any, ...]) -> Message:
    run_id, kind, key, body, version, sent, rejected = row
    return Message(
        run_id=str(run_id),
        kind=cast(MessageKind, kind),
        key=str(key),
        body=dict(json.loads(body)),
        version=int(version),
        sent_version=int(sent),
        rejected=None if rejected is None else str(rejected),
    )
