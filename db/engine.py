"""Engines and sessions for the two supported backends.

**SQLite** (the embedded default, one file under the user's data dir). Every connection gets:

* ``journal_mode=WAL``: readers never block the writer, and a crash cannot corrupt the file.
* ``synchronous=FULL``: in WAL mode this fsyncs the log at each commit. ``NORMAL`` would be
  faster but may lose the last commits on power loss, and the service acknowledges chunks after
  commit — the meter then deletes them from its spool — so ``NORMAL`` could lose acknowledged
  data (DESIGN §9). Ingest commits one batch per meter every ``chunk_s``; one fsync each is cheap.
* ``foreign_keys=ON`` (SQLite's default is off) and ``busy_timeout`` of 30 s.
* The file is private to the user who runs the service (it holds every project's runs, ledger
  and token hashes): created 0600 before SQLite first opens it, which gives the ``-wal``,
  ``-shm`` and ``-journal`` files the same mode (SQLite copies the database file's mode to
  them), whatever the umask; the data directory it creates is 0700. The umask is not changed
  (it is process-wide, and the service has threads). A file or a directory that already exists
  keeps its mode.
* Transactions are begun by SQLAlchemy with ``BEGIN IMMEDIATE`` instead of by the ``sqlite3``
  driver. The driver's legacy mode runs SELECTs and DDL outside any transaction and breaks
  SAVEPOINT; and a *deferred* transaction that reads, then writes, fails at once with
  ``database is locked`` when another writer committed in between (the busy timeout does not
  apply to that upgrade). ``IMMEDIATE`` takes the write lock up front and waits for it, so
  concurrent requests queue instead of failing. The price is that transactions are serialised,
  readers included — fine for one laptop; a shared deployment uses PostgreSQL.

**PostgreSQL** through psycopg 3 (``postgresql+psycopg://``), with ``pool_pre_ping`` so a
restarted server or a load balancer's idle cut does not surface as a failed request.
``postgresql://`` and ``postgres://`` URLs are read as psycopg 3.

The engine is synchronous: the service runs its routes in FastAPI's thread pool, the work per
request is a few short statements, and one code path serves the service, the migrations and the
CLI. An async engine would add a second driver (asyncpg/aiosqlite) for no measured gain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from platformdirs import user_data_dir
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from thermoledger._private_files import create_private_file, make_private_dirs

from .errors import UnsupportedDatabase

__all__ = [
    "SQLITE_BUSY_TIMEOUT_S",
    "default_sqlite_path",
    "default_sqlite_url",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
]

#: How long a SQLite connection waits for the write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0


def default_sqlite_path(data_dir: Path | None = None) -> Path:
    """Path of the embedded database, creating its directory.

    Args:
        data_dir: Directory to use; defaults to platformdirs' ``user_data_dir("thermoledger")``
            (e.g. ``~/.local/share/thermoledger`` on Linux).

    Returns:
        ``<data_dir>/thermoledger.db`` (the file itself is created on first connect). The
        directories created on the way are 0700; existing ones keep their modes.
    """
    directory = data_dir if data_dir is not None else Path(user_data_dir("thermoledger", False))
    make_private_dirs(directory)
    return directory / "thermoledger.db"


def default_sqlite_url(data_dir: Path | None = None) -> str:
    """SQLAlchemy URL of the embedded database (see `default_sqlite_path`)."""
    return URL.create("sqlite", database=str(default_sqlite_path(data_dir))).render_as_string()


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pin the driver thermoledger uses for its backend.

    Args:
        url: ``sqlite:///path``, ``sqlite://`` (in memory), ``postgresql+psycopg://...``; plain
            ``postgresql://`` and ``postgres://`` are taken as psycopg 3.

    Returns:
        The parsed URL with its driver made explicit.

    Raises:
        UnsupportedDatabase: Another backend, or another driver for a supported one.
    """
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as e:
        raise UnsupportedDatabase(f"not a database URL: {e}") from e
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql" and parsed.drivername in ("postgresql", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed.set(drivername="sqlite+pysqlite")
    raise UnsupportedDatabase(
        f"database backend {backend!r} with driver {driver!r} is not supported; "
        "use sqlite:///<path> or postgresql+psycopg://<user>@<host>/<db>"
    )


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """Create the engine for a SQLite or PostgreSQL URL, configured as the module describes.

    Args:
        url: The database URL (see `normalize_url`). A PostgreSQL URL may carry libpq options,
            e.g. ``?options=-csearch_path%3Dmy_schema`` to work in one schema.
        echo: Log every SQL statement (debugging).

    Returns:
        A new engine; the caller owns it and should ``dispose()`` it when done.

    Raises:
        UnsupportedDatabase: The URL names another backend or driver.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(parsed, echo=echo, pool_pre_ping=True)

    in_memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    options: dict[str, Any] = {}
    if in_memory:
        # One shared connection: every pooled thread must see the same in-memory database.
        options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    engine = sa.create_engine(parsed, echo=echo, **options)
    _configure_sqlite(engine, wal=not in_memory, path=None if in_memory else _file_path(parsed))
    return engine


def _file_path(url: URL) -> str | None:
    """The database file of a SQLite URL, or None where SQLite reads a URI (``file:…``)."""
    database = url.database or ""
    if database.startswith("file:") or str(url.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return database


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Session factory bound to ``engine``.

    Sessions keep loaded attributes after commit (``expire_on_commit=False``), so a store
    function can commit and still return what it wrote without another round trip.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def _configure_sqlite(engine: Engine, *, wal: bool, path: str | None) -> None:
    busy_timeout_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)

    if path is not None:

        @sa.event.listens_for(engine, "do_connect")
        def _private_file(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
            # Before every connect, not once: a file deleted while the engine lives comes back
            # private too. None: SQLAlchemy then connects as usual.
            create_private_file(path, missing_dir_ok=True)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take BEGIN away from the driver; the "begin" listener below issues it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
