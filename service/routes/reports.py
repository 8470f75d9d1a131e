"""Run reports, from SQL aggregates of the chunk summaries (raw samples are never read)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter

from db import repository
from service.deps import ReadTenant, SessionDep
from service.reports import report_dict

router = APIRouter(prefix="/runs/{run_id}/report", tags=["reports"])


@router.get("", responses={409: {"description": "the run has no measurements yet"}})
def get_report(run_id: UUID, tenant: ReadTenant, session: SessionDep) -> dict[str, Any]:
    """The run report: energy by device, host and phase, efficiency, bounds, cost, carbon."""
    return report_dict(repository.run_usage(session, project_id=tenant.id, run_id=run_id))
