"""Alembic environment: runs thermoledger's migrations against the database in the Config.

Driven by `db.migrate`, never by an ``alembic.ini``. The database comes from
``config.attributes``: ``"connection"`` (a live connection whose transaction the caller owns) or
``"url"`` (an engine is made with `db.engine.make_engine` and disposed afterwards).

All revisions run in one transaction on both backends: PostgreSQL has transactional DDL, and so
does SQLite once the driver stops committing around DDL (which `db.engine` arranges), so a
failed upgrade leaves the schema as it was. ``render_as_batch`` on SQLite makes autogenerate
write ALTERs as table rebuilds, the only way SQLite can change most constraints; `render_item`
makes it write application types as the plain types they store.

To draft a new revision, autogenerate against a SQLite database at head — batch operations run
on PostgreSQL too, plain ALTERs do not run on SQLite — then review it by hand and let the
migration tests run ``db.migrate.check`` on both backends::

    from alembic import command
    from thermoledger.db.migrate import make_config
    command.revision(make_config(url=URL_AT_HEAD, stdout=sys.stdout), "what changed",
                     autogenerate=True, rev_id="0002")
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from thermoledger.db.engine import make_engine
from thermoledger.db.errors import MigrationError
from thermoledger.db.migrate import render_item
from thermoledger.db.models import Base


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=sqlite,
        render_item=render_item,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise MigrationError("offline (--sql) migrations are not supported; give a database")
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("url")
    if url is None:
        raise MigrationError("no database given: set Config.attributes['url'] or ['connection']")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


_main()
