"""Fixtures of the fault suite: a live service on SQLite, on PostgreSQL, or on each; the app
in process on each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.e2e.liveserver import LiveServer, migrate_and_issue_token
from tests.faults.harness import LiveService
from tests.support import dbutil
from tests.support.client import OPERATOR_TOKEN
from thermoledger.db import migrate
from thermoledger.service.app import create_app
from thermoledger.service.settings import Settings


@contextmanager
def live_service(backend: str, tmp_path: Path) -> Iterator[LiveService]:
    """The service in a subprocess over a fresh, migrated database of ``backend``."""
    with dbutil.database_url(backend, tmp_path) as url:
        token = migrate_and_issue_token(url, project="faults")
        server = LiveServer(url, tmp_path / "server.log")
        server.start()
        try:
            yield LiveService(server, token, url)
        finally:
            server.stop()  # before the PostgreSQL schema is dropped


@pytest.fixture(params=dbutil.BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveService]:
    """The live service, once per backend."""
    with live_service(request.param, tmp_path) as live:
        yield live


@pytest.fixture
def sqlite_service(tmp_path: Path) -> Iterator[LiveService]:
    """The live service on a SQLite file."""
    with live_service("sqlite", tmp_path) as live:
        yield live


@pytest.fixture
def postgres_service(tmp_path: Path) -> Iterator[LiveService]:
    """The live service on a PostgreSQL schema (skipped without one; an error in CI)."""
    with live_service("postgres", tmp_path) as live:
        yield live


@pytest.fixture(params=dbutil.BACKENDS)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FastAPI]:
    """The app in this process (`TestClient`) over a fresh, migrated database of each backend."""
    with dbutil.database_url(request.param, tmp_path) as url:
        migrate.upgrade(url)
        # THERMOLEDGER_* is stripped from the environment by tests/conftest.py
        application = create_app(
            Settings(
                database_url=url,
                max_body_bytes=256 * 1024,
                max_chunks_per_batch=50,
                max_samples_per_chunk=1_000,
                bootstrap_admin_token=OPERATOR_TOKEN,
            )
        )
        try:
            yield application
        finally:
            application.state.engine.dispose()
