"""Migrations are the only schema path: they must build exactly what the models describe."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from tests.support.dbrows import gpu_run
from thermoledger.db import migrate
from thermoledger.db.chunks import ingest_chunks
from thermoledger.db.engine import make_engine, make_sessionmaker
from thermoledger.db.errors import MigrationError, SchemaDrift
from thermoledger.db.models import (
    Base,
    EnergyMethod,
)
from thermoledger.db.records import ChunkRow
from thermoledger.db.runs import run_key
from thermoledger.db.totals import rebuild_totals

TABLES = {table.name for table in Base.metadata.sorted_tables}


def _table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_check_downgrade_upgrade(database_url: str) -> None:
    assert migrate.current(database_url) is None

    migrate.upgrade(database_url)
    assert migrate.current(database_url) == migrate.head()
    assert _table_names(database_url) == TABLES | {"alembic_version"}
    migrate.check(database_url)

    migrate.downgrade(database_url, "base")
    assert migrate.current(database_url) is None
    assert _table_names(database_url) == {"alembic_version"}

    migrate.upgrade(database_url)
    migrate.check(database_url)


def test_check_fails_when_schema_drifts(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE project ADD COLUMN stray INTEGER")
    finally:
        engine.dispose()
    with pytest.raises(SchemaDrift, match="stray"):
        migrate.check(migrated_url)


def test_check_refuses_a_database_behind_head(database_url: str) -> None:
    with pytest.raises(MigrationError, match="not up to date"):
        migrate.check(database_url)


def test_unknown_revision_is_a_migration_error(database_url: str) -> None:
    with pytest.raises(MigrationError):
        migrate.upgrade(database_url, "no-such-revision")


def test_every_check_constraint_is_in_the_database(migrated_url: str) -> None:
    # `alembic check` does not compare CHECK constraints; compare their names instead.
    engine = make_engine(migrated_url)
    try:
        inspector = sa.inspect(engine)
        for table in Base.metadata.sorted_tables:
            expected = {str(c.name) for c in table.constraints if isinstance(c, sa.CheckConstraint)}
            found = {str(c["name"]) for c in inspector.get_check_constraints(table.name)}
            assert found == expected, table.name
    finally:
        engine.dispose()


def test_upgrade_through_a_live_connection(database_url: str) -> None:
    """env.py also accepts a connection whose transaction the caller owns.

    Rolling that transaction back undoes the whole upgrade, on SQLite too: DDL is
    transactional there only because `db.engine` issues BEGIN itself.
    """
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            command.upgrade(migrate.make_config(connection=connection), "head")
            assert "chunk" in sa.inspect(connection).get_table_names()
            transaction.rollback()
        assert migrate.current(database_url) is None
        assert _table_names(database_url) == set()
        with engine.begin() as connection:
            command.upgrade(migrate.make_config(connection=connection), "head")
        assert migrate.current(database_url) == migrate.head()
    finally:
        engine.dispose()


def test_scripts_come_from_the_installed_package() -> None:
    location = migrate.script_location()
    assert (location / "env.py").is_file()
    revisions = sorted(p.name for p in (location / "versions").glob("*.py"))
    assert revisions == [
        "0001_initial.py",
        "0002_ledger_head_project_accounting.py",
        "0003_device_covers.py",
        "0004_browser_sessions.py",
        "0005_run_ids_per_project.py",
        "0006_run_metrics.py",
        "0007_energy_decomposition.py",
    ]
    assert migrate.head() == "0007"


def test_autogenerate_writes_plain_types(database_url: str) -> None:
    """A drafted revision never imports `db`: application types render as what they store."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"target_metadata": Base.metadata, "compare_type": True}
            )
            operations = produce_migrations(context, Base.metadata).upgrade_ops
            assert operations is not None
            code = render_python_code(operations, render_item=migrate.render_item)
    finally:
        engine.dispose()
    assert "db." not in code
    assert "sa.DateTime(timezone=True)" in code
    assert "sa.String(length=16)" in code
    assert "op.create_table('chunk'" in code


def test_0005_keeps_every_stored_run_under_its_id(database_url: str) -> None:
    """Runs stored before run ids were scoped to projects keep their id as their key and take
    it as the id their project knows them by; downgrading is refused only once two projects
    share an id."""
    migrate.upgrade(database_url, "0004")
    engine = make_engine(database_url)
    old, shared = uuid.uuid4(), uuid.uuid4()
    insert_run = sa.text(
        "INSERT INTO run (id, project_id, name, kind, status, started_at, tags, host_info, "
        "simulated, created_at, updated_at) VALUES (:id, :p, 'job', 'training', 'running', "
        ":t, '{}', '{}', false, :t, :t)"
    ).bindparams(sa.bindparam("id", type_=sa.Uuid()), sa.bindparam("t", type_=sa.DateTime()))
    try:
        with engine.begin() as connection:
            for slug in ("a", "b"):
                connection.execute(
                    sa.text(
                        "INSERT INTO project (slug, name, created_at) VALUES (:s, :s, :t)"
                    ).bindparams(sa.bindparam("t", type_=sa.DateTime())),
                    {"s": slug, "t": datetime(2025, 1, 1)},
                )
            connection.execute(insert_run, {"id": old, "p": 1, "t": datetime(2025, 1, 1)})
        migrate.upgrade(database_url)
        with engine.begin() as connection:
            rows = connection.execute(sa.text("SELECT id, client_id FROM run")).all()
            assert [(uuid.UUID(str(a)), uuid.UUID(str(b))) for a, b in rows] == [(old, old)]
        migrate.downgrade(database_url, "0004")  # nothing shared yet: allowed
        migrate.upgrade(database_url)
        with engine.begin() as connection:
            # project 2 registers an id project 1 holds (what `db.runs.upsert_run` writes)
            for key, project in ((shared, 1), (run_key(2, shared), 2)):
                connection.execute(
                    sa.text(
                        "INSERT INTO run (id, client_id, project_id, name, kind, status, "
                        "started_at, tags, host_info, simulated, created_at, updated_at) VALUES "
                        "(:id, :c, :p, 'job', 'training', 'running', :t, '{}', '{}', false, "
                        ":t, :t)"
                    ).bindparams(
                        sa.bindparam("id", type_=sa.Uuid()),
                        sa.bindparam("c", type_=sa.Uuid()),
                        sa.bindparam("t", type_=sa.DateTime()),
                    ),
                    {"id": key, "c": shared, "p": project, "t": datetime(2025, 1, 1)},
                )
        with pytest.raises(MigrationError, match="share their id"):
            migrate.downgrade(database_url, "0004")
        assert migrate.current(database_url) == migrate.head()
    finally:
        engine.dispose()


def test_0007_fills_the_decomposition_totals_of_stored_runs_and_goes_back(
    database_url: str,
) -> None:
    """Runs stored before 0007 get their quietest sustained chunk from their chunks, by the
    rule ingest applies (so the kept totals equal a rebuild), and both sums start at 0 (no
    stored chunk has memory activity); downgrading drops the columns and keeps the rest."""
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            project_id, run_id = _stored_run(session)
        kept = _decomposition_totals(engine)
        assert kept[0][0] == pytest.approx(250.0)  # the 250 W chunk, not the 1 s or reset ones
        migrate.downgrade(database_url, "0006")
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("device_total")}
            assert "quiet_power_w" not in columns
            assert connection.execute(sa.text("SELECT count(*) FROM chunk")).scalar_one() == 6
        migrate.upgrade(database_url)
        migrate.check(database_url)
        filled = _decomposition_totals(engine)
        assert filled == [(kept[0][0], kept[0][1], 0.0, 0.0)]
        with make_sessionmaker(engine)() as session, session.begin():
            rebuild_totals(session, project_id=project_id, run_id=run_id)
        assert _decomposition_totals(engine) == filled
    finally:
        engine.dispose()


def _stored_run(session: Session) -> tuple[int, uuid.UUID]:
    """A run of six 10 s chunks (one of 1 s, one with a reset) with memory activity, ingested."""
    powers = (400.0, 250.0, 300.0, 100.0, 90.0, 260.0)
    with session.begin():
        project_id, run_id, device = gpu_run(session, slug="m0007", name="steady")
        rows = []
        for k, power in enumerate(powers):
            t0 = 1.76e9 + 10.0 * k
            length = 1.0 if k == 3 else 10.0  # too short to be sustained
            rows.append(
                ChunkRow(
                    position=k,
                    device_key=device.key,
                    seq=k,
                    t0_s=t0,
                    t1_s=t0 + length,
                    n=5,
                    energy_j=power * length,
                    sensor_uncertainty_j=0.02 * power * length,
                    bound_below_j=0.0,
                    bound_above_j=0.0,
                    min_power_w=power,
                    mean_power_w=power,
                    max_power_w=power,
                    method=EnergyMethod.COUNTER,
                    gap_s=0.0,
                    gap_count=0,
                    reset_count=1 if k == 4 else 0,  # a reset: its energy a lower bound
                    wrap_count=0,
                    content_hash=f"{k:064x}",
                    mem_busy_frac=0.5,
                )
            )
        ingest_chunks(session, project_id=project_id, run_id=run_id, devices=[device], chunks=rows)
    return project_id, run_id


def _decomposition_totals(engine: sa.Engine) -> list[tuple[float | None, ...]]:
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                sa.text(
                    "SELECT quiet_power_w, quiet_power_high_w, mem_busy_s, mem_observed_s "
                    "FROM device_total"
                )
            )
        ]
