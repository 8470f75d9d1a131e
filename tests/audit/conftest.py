"""Fixtures for the audit tests: the real app on SQLite and PostgreSQL, and ledger helpers.

One migrated database per module and backend (as in the service tests); tests stay apart by
using fresh projects, and fresh regions where they add shared factor versions.
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
    make_project,
)
from thermoledger.db import migrate
from thermoledger.service.app import create_app
from thermoledger.service.settings import Settings


@pytest.fixture(scope="module", params=dbutil.BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    directory: Path = tmp_path_factory.mktemp("audit-db")
    with dbutil.database_url(request.param, directory) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="module")
def settings(database_url: str) -> Settings:
    return clean_settings(database_url=database_url, bootstrap_admin_token=OPERATOR_TOKEN)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def project(app: FastAPI) -> Project:
    return make_project(app)


@pytest.fixture
def other(app: FastAPI) -> Project:
    return make_project(app)
