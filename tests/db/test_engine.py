"""Engine construction: URL handling, SQLite's pragmas and transaction control, default path."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import dbutil
from thermoledger.db.engine import (
    SQLITE_BUSY_TIMEOUT_S,
    default_sqlite_path,
    default_sqlite_url,
    make_engine,
    make_sessionmaker,
    normalize_url,
)
from thermoledger.db.errors import StorageError, UnsupportedDatabase


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///x.db", "sqlite+pysqlite"),
        ("sqlite+pysqlite:///x.db", "sqlite+pysqlite"),
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
    ],
)
def test_normalize_url_pins_the_driver(given: str, driver: str) -> None:
    assert normalize_url(given).drivername == driver


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "sqlite+aiosqlite:///x", "nonsense"]
)
def test_other_backends_are_refused(url: str) -> None:
    with pytest.raises(UnsupportedDatabase):
        make_engine(url)
    assert issubclass(UnsupportedDatabase, ValueError)
    assert issubclass(UnsupportedDatabase, StorageError)


def test_sqlite_connections_are_configured(tmp_path: Path) -> None:
    engine = make_engine(dbutil.sqlite_url(tmp_path))
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA synchronous").scalar() == 2  # FULL
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_S * 1000
    finally:
        engine.dispose()


def test_sqlite_transactions_cover_reads_ddl_and_savepoints(tmp_path: Path) -> None:
    engine = make_engine(dbutil.sqlite_url(tmp_path))
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            assert connection.in_transaction()
            connection.rollback()  # DDL is undone: the driver did not autocommit it
            assert not sa.inspect(connection).has_table("t")
            connection.rollback()

        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            savepoint = connection.begin_nested()
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
            savepoint.rollback()
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT x FROM t").scalars().all() == [1]
    finally:
        engine.dispose()


def test_sqlite_writers_wait_for_each_other(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE + busy timeout: a second writer queues instead of 'database is locked'."""
    engine = make_engine(dbutil.sqlite_url(tmp_path))
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        first_holds_lock = threading.Event()
        errors: list[BaseException] = []

        def second_writer() -> None:
            try:
                first_holds_lock.wait()
                with engine.begin() as connection:
                    connection.exec_driver_sql("INSERT INTO t VALUES (2)")
            except BaseException as e:  # reported to the main thread
                errors.append(e)

        thread = threading.Thread(target=second_writer)
        thread.start()
        with engine.begin() as connection:
            # A read first: a deferred transaction would fail its later write if the other
            # writer slipped in between; IMMEDIATE already holds the lock.
            connection.exec_driver_sql("SELECT count(*) FROM t").scalar()
            first_holds_lock.set()
            time.sleep(0.05)  # give the second writer time to hit the lock
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        thread.join(timeout=SQLITE_BUSY_TIMEOUT_S)
        assert not errors
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT x FROM t").scalars().all() == [1, 2]
    finally:
        engine.dispose()


def test_in_memory_sqlite_is_shared_across_threads() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        seen: list[bool] = []

        def look() -> None:
            with engine.connect() as connection:
                seen.append(sa.inspect(connection).has_table("t"))

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        assert seen == [True]
    finally:
        engine.dispose()


def test_default_sqlite_location_is_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "thermoledger"
    path = default_sqlite_path(data_dir)
    assert path == data_dir / "thermoledger.db"
    assert data_dir.is_dir()
    url = default_sqlite_url(data_dir)
    assert sa.make_url(url).database == str(path)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            assert session.scalar(sa.text("SELECT 1")) == 1
    finally:
        engine.dispose()
    assert path.is_file()
