"""Fixtures for the service tests: the real app on SQLite and on PostgreSQL.

Each test module gets one migrated database per backend (module scope keeps the folder fast);
tests stay independent by using fresh run ids and fresh projects, and assert row counts per run.
The helpers they use (projects with tokens, runs, wire payloads) live in `tests.support`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.support import dbutil
from tests.support.client import (
    OPERATOR_TOKEN,
    Project,
    TestClient,
    clean_settings,
    create_run,
    make_project,
)
from thermoledger.db import migrate
from thermoledger.service.app import create_app
from thermoledger.service.settings import Settings


@pytest.fixture(scope="module", params=dbutil.BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database for this module: a SQLite file, or a throw-away PostgreSQL schema."""
    directory: Path = tmp_path_factory.mktemp("service-db")
    with dbutil.database_url(request.param, directory) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="module")
def settings(database_url: str) -> Settings:
    return clean_settings(
        database_url=database_url,
        max_body_bytes=256 * 1024,
        max_chunks_per_batch=50,
        max_samples_per_chunk=1_000,
        bootstrap_admin_token=OPERATOR_TOKEN,
    )


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a bug must show as the 500 a real client would get.
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def project(app: FastAPI) -> Project:
    return make_project(app)


@pytest.fixture
def other(app: FastAPI) -> Project:
    return make_project(app)


@pytest.fixture
def run_id(client: TestClient, project: Project) -> str:
    return create_run(client, project)
