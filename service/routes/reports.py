"""Run reports, from SQL aggregates of the chunk summaries (raw samples are never read).

``GET .../report`` is the JSON report; ``GET .../report.csv`` the same figures as CSV rows per
device, host and phase with units in the headers (`service.report_csv`). Both carry carbon and
cost on the run's accounting basis — the ledger's, for a run whose end it froze
(`service.reports.run_report`) — so neither ever disagrees with the ledger.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response

from ..deps import ReadTenant, SessionDep
from ..report_csv import report_csv
from ..report_schemas import RunReportPublic
from ..reports import run_report

router = APIRouter(prefix="/runs/{run_id}/report", tags=["reports"])


@router.get("", responses={409: {"description": "the run has no measurements yet"}})
def get_report(run_id: UUID, tenant: ReadTenant, session: SessionDep) -> RunReportPublic:
    """The run report: energy by device, host and phase, efficiency, bounds, cost, carbon."""
    return run_report(session, project_id=tenant.id, run_id=run_id)


@router.get(
    ".csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "the report as CSV"},
        409: {"description": "the run has no measurements yet"},
    },
)
def get_report_csv(run_id: UUID, tenant: ReadTenant, session: SessionDep) -> Response:
    """The run report as CSV: a total row, then rows per device, host and phase."""
    return csv_response(run_report(session, project_id=tenant.id, run_id=run_id))


def csv_response(report: RunReportPublic) -> Response:
    """``report`` as a CSV download named after the run id."""
    return Response(
        content=report_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="run-{report.run.id}.csv"'},
    )
