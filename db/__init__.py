"""thermoledger's database layer: typed SQLAlchemy 2.0 models, engines, migrations, the store.

* `db.models` — the tables (the target the migrations must match).
* `db.engine` — `make_engine` / `make_sessionmaker` for SQLite (embedded default) and
  PostgreSQL (psycopg 3), and the default SQLite location.
* `db.migrate` — `upgrade`, `downgrade`, `check`, `current`, `head`: Alembic driven from code;
  the only way the schema is made or changed.
* `db.samples` — the versioned codec of a chunk's raw sample arrays (numpy only).
* `db.types`, `db.errors` — portable column types and the error tree.
* The store, how the service and the server CLI read and write the tables, one module per
  concern, lowest layer first (each imports only from the layers before it; a test holds them
  to it): `db.records` (the plain records returned and taken, the storage constants),
  `db.tokens` (projects and API tokens), `db.runs` (runs, the tenancy-checked run lookup),
  `db.totals` (the running totals: kept, rebuilt, read by reports), then the two writers that
  keep the totals current, `db.phases` and `db.chunks` (ingest, with the PostgreSQL ``COPY``).

Nothing is re-exported here, so ``import db.samples`` does not import SQLAlchemy.
"""
