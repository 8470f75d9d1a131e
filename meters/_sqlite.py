"""What the meter's two local SQLite files (spool and control outbox) share."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from meters.errors import MeterError


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
