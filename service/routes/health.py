"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (the database is usable)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from fastapi import APIRouter, Request

from ..errors import NotReady
from ..schemas import HealthPublic, ReadyPublic

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> HealthPublic:
    """Liveness: answers as long as the process serves requests; touches nothing."""
    return HealthPublic()


@router.get("/readyz", responses={503: {"description": "database unreachable or not migrated"}})
def readyz(request: Request) -> ReadyPublic:
    """Readiness: the database answers and its schema is at the newest migration."""
    engine: sa.Engine = request.app.state.engine
    head: str = request.app.state.schema_head
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    except sa.exc.SQLAlchemyError as e:
        raise NotReady(f"database unreachable: {type(e).__name__}") from e
    if revision != head:
        raise NotReady(
            f"database schema is at {revision or 'no revision'}, this server needs {head}: "
            "run `thermoledger-server migrate`"
        )
    return ReadyPublic(revision=head)
