"""Revision 0002 adds the recorded head; chains that exist when it runs keep verifying."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support import dbutil
from thermoledger.db import ledger, migrate
from thermoledger.db.engine import make_engine, make_sessionmaker
from thermoledger.db.models import LedgerSource
from thermoledger.db.tokens import get_or_create_project


@pytest.fixture(params=dbutil.BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with dbutil.database_url(request.param, tmp_path) as url:
        yield url


def test_a_downgrade_and_upgrade_keeps_the_chain_verifiable(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            project, _ = get_or_create_project(session, slug="lab")
            for i in range(3):
                ledger.append(
                    session,
                    project_id=project.id,
                    figure="offset",
                    value_si=float(i),
                    value_given=float(i),
                    unit_given="gCO2e",
                    source=LedgerSource.DECLARED,
                    accounted_at=datetime(2025, 1, 1, tzinfo=UTC),
                    provenance={"reference": "x"},
                )
        migrate.downgrade(database_url, "0001")
        migrate.upgrade(database_url)
        with make_sessionmaker(engine)() as session, session.begin():
            ((_slug, verdict),) = ledger.verify_projects(session, slug="lab")
        assert verdict.ok, verdict.problems
        assert verdict.head_seq == 3
    finally:
        engine.dispose()
