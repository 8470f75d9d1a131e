"""What the meter's two local SQLite files (spool and control outbox) share.

Both are private to the user who runs the meter (they name runs, hosts and tags): the
directories the meter creates are 0700 and the files 0600, whatever the umask. The file is
created with that mode before SQLite opens it, and SQLite gives its ``-wal``, ``-shm`` and
``-journal`` files the mode of the database file, so those are 0600 too. The umask is never
changed: it is process-wide, and the meter runs inside a multi-threaded training process. A
directory that already exists (one the user chose) and a file that already exists keep their
modes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

from thermoledger._private_files import create_private_file, make_private_dirs

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
    are explicit (``isolation_level=None``; see `write_transaction`). A new file and the
    directories created for it are private to the user (see the module docstring).

    Raises:
        error: The file cannot be opened, refuses WAL, or was written by a newer schema.
    """
    try:
        make_private_dirs(path.parent)
        create_private_file(path)
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


class SqliteFile:
    """One of the meter's SQLite files: one connection, shared by threads under one lock.

    Subclasses name their file and schema in class attributes; this base opens the file at its
    schema (`open_database`), closes it, and gives the subclass its locked reads and write
    transactions, with SQLite errors raised as the subclass's error naming the file.

    Args:
        path: The file, created 0600; missing parent directories are created 0700.
        now: Unix-time source for the timestamps the file records (tests inject one).
        busy_timeout_s: How long a write waits for another process's lock, s.
    """

    #: The file's name inside a spool directory (`in_directory`).
    FILENAME: ClassVar[str]
    #: How messages name the file ("spool", "control file").
    _KIND: ClassVar[str]
    _SCHEMA: ClassVar[Sequence[str]]
    _SCHEMA_VERSION: ClassVar[int]
    _ERROR: ClassVar[type[MeterError]]

    def __init__(
        self,
        path: str | Path,
        *,
        now: Callable[[], float] = time.time,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self._now = now
        self._lock = threading.Lock()
        self._what = f"{self._KIND} {self.path}"
        self._conn: sqlite3.Connection | None = open_database(
            self.path,
            what=self._what,
            schema=self._SCHEMA,
            schema_version=self._SCHEMA_VERSION,
            busy_timeout_s=busy_timeout_s,
            error=self._ERROR,
        )

    @classmethod
    def in_directory(cls, directory: str | Path, **kwargs: Any) -> Self:
        """The file `FILENAME` inside ``directory`` (created if missing)."""
        return cls(Path(directory) / cls.FILENAME, **kwargs)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._ERROR(f"{self._what} is closed")
        return self._conn

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction, taken with the write lock up front (no upgrade deadlock)."""
        return write_transaction(self._lock, self._connection, self._what, self._ERROR)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise self._ERROR(f"{self._what}: {e}") from e
