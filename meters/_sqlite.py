"""What the meter's two local SQLite files (spool and control outbox) share."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import MeterError


@contextmanager
def write_transaction(
    lock: threading.Lock | threading.RLock,
    connection: Callable[[], sqlite3.Connection],
    what: str,
    error: type[MeterError],
) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken with the write lock up front (no upgrade deadlock).

    Args:
        lock: The lock serialising this file's connection between threads.
        connection: Returns the open connection (raising ``error`` when closed).
        what: How error messages name the file, e.g. ``"spool /path/spool.sqlite3"``.
        error: The exception raised for SQLite failures, chained to the SQLite error.
    """
    with lock:
        conn = connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise error(f"{what}: cannot begin a write: {e}") from e
        try:
            yield conn
        except BaseException as e:
            # SQLite may already have rolled back (e.g. disk full); a second ROLLBACK
            # would raise and hide the real error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise error(f"{what}: {e}") from e
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise error(f"{what}: commit failed: {e}") from e


def open_database(
    path: Path,
    *,
    what: str,
    schema: Sequence[str],
    schema_version: int,
    busy_timeout_s: float,
    error: type[MeterError],
) -> sqlite3.Connection:
    """Open (creating if needed) one of the meter's SQLite files, durable and at our schema.

    WAL mode with ``synchronous=FULL``: what these files hold (sealed chunks, acknowledged
    sequence numbers, run endings) must survive a power loss, not only a crash. Transactions
    are explicit (``isolation_level=None``; see `write_transaction`).

    Raises:
        error: The file cannot be opened, refuses WAL, or was written by a newer schema.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as e:
        raise error(f"cannot open {what}: {e}") from e
    try:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as e:
            raise error(f"cannot open {what}: {e}") from e
        if str(mode).lower() != "wal":
            raise error(f"{what}: the file system refuses WAL mode ({mode})")
        with write_transaction(threading.Lock(), lambda: conn, what, error):
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > schema_version:
                raise error(f"{what} has schema {version}; this meter knows {schema_version}")
            for statement in schema:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {schema_version}")
    except BaseException:
        conn.close()
        raise
    return conn
