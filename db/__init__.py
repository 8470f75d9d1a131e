"""thermoledger's database layer: typed SQLAlchemy 2.0 models, engines, migrations.

* `db.models` — the tables (the target the migrations must match).
* `db.engine` — `make_engine` / `make_sessionmaker` for SQLite (embedded default) and
  PostgreSQL (psycopg 3), and the default SQLite location.
* `db.migrate` — `upgrade`, `downgrade`, `check`, `current`, `head`: Alembic driven from code;
  the only way the schema is made or changed.
* `db.samples` — the versioned codec of a chunk's raw sample arrays (numpy only).
* `db.types`, `db.errors` — portable column types and the error tree.

Nothing is re-exported here, so ``import db.samples`` does not import SQLAlchemy.
"""
