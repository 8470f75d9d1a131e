"""Test databases for any test folder: a SQLite file, or a throw-away PostgreSQL schema.

PostgreSQL comes from ``THERMOLEDGER_TEST_DATABASE_URL`` (CI: ``postgresql+psycopg://
postgres@127.0.0.1:5432/test``). Each use gets its own schema ``tl_test_<8 hex>``, reached by a
URL whose libpq ``options`` set ``search_path`` to it. So every engine made from that URL —
the service's, Alembic's (its ``alembic_version`` table included) — works inside the schema
without knowing it, and the schema is dropped with CASCADE afterwards.

Without the variable the PostgreSQL leg is skipped — except under ``CI=true``, where a missing
variable fails, as does an unreachable server whenever the variable is set: a CI run must never
go green by quietly not testing PostgreSQL.

Use from a conftest::

    @pytest.fixture(params=dbutil.BACKENDS)
    def database_url(request, tmp_path):
        with dbutil.database_url(request.param, tmp_path) as url:
            yield url
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from thermoledger.db.engine import normalize_url

ENV_VAR = "THERMOLEDGER_TEST_DATABASE_URL"
SCHEMA_PREFIX = "tl_test_"

#: Parameters for a fixture that runs a test once per backend.
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def in_ci() -> bool:
    """Whether the suite runs in CI (``CI`` set to a true value), where skips become failures."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def sqlite_url(directory: Path) -> str:
    """URL of a fresh SQLite file in ``directory``."""
    return sa.URL.create("sqlite", database=str(directory / "thermoledger.db")).render_as_string()


def postgres_base_url() -> str:
    """The configured PostgreSQL URL; skips the test (fails in CI) when none is configured."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        message = f"{ENV_VAR} is not set: PostgreSQL tests cannot run"
        if in_ci():
            pytest.fail(message + " (CI=true: this is an error, not a skip)")
        pytest.skip(message)
    return url


def schema_url(base_url: str, schema: str) -> str:
    """``base_url`` with libpq ``options`` that put ``schema`` first on the search path."""
    url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """Create a unique schema, yield a URL that works inside it, drop it (CASCADE) afterwards.

    Every engine made from the yielded URL must be disposed before the block ends; otherwise
    the DROP waits for their locks (bounded by a lock timeout, then fails loudly).
    """
    schema = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        normalize_url(base_url),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    try:
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        except sa.exc.OperationalError as e:
            pytest.fail(f"{ENV_VAR} is set but PostgreSQL is unreachable: {e}")
        try:
            yield schema_url(base_url, schema)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql("SET lock_timeout = '10s'")
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        admin.dispose()


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database of ``backend`` (``"sqlite"`` or ``"postgres"``)."""
    if backend == "sqlite":
        yield sqlite_url(tmp_path)
    elif backend == "postgres":
        with postgres_schema(postgres_base_url()) as url:
            yield url
    else:
        raise ValueError(f"unknown test database backend {backend!r}")
