"""Estimated runs: ``POST /runs/{run_id}/estimate`` records a run that was never metered.

The call creates the run when the project has none with this id (``name`` is then required),
or takes the existing one, which must have no metered chunks (409). A body that names its
``project`` must name the token's (409). It ends the run (finished)
if it is still running, labels it an estimate (``host_info["estimate"]``), and ledgers its
figures through `db.ledger.record_estimate` (method ``estimate``, the band, the provenance), all
in one transaction: a refusal writes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from thermoledger.accounting.estimates import RunEstimate
from thermoledger.db import ledger, runs
from thermoledger.db.errors import Conflict, InvalidInput, NotFound
from thermoledger.db.ledger import LedgerRecord
from thermoledger.db.models import RunStatus
from thermoledger.db.records import RunRecord
from thermoledger.db.types import utcnow

from ..deps import IngestTenant, SessionDep, SettingsDep
from ..estimate_schemas import EstimateCreate, EstimatePublic
from ..schemas import RunPublic
from ..settings import Settings

router = APIRouter(prefix="/runs", tags=["estimates"])

#: The ``host_info`` key that labels a run as estimated (ingest refuses chunks for such a run).
LABEL_KEY = runs.ESTIMATE_LABEL


def label(estimate: RunEstimate) -> dict[str, Any]:
    """What ``host_info["estimate"]`` shows wherever the run appears."""
    source = estimate.source
    return {
        "method": "estimate",
        "energy_basis": estimate.energy_basis,
        "it_energy_j": estimate.it_energy_j.value,
        "band_low_j": estimate.it_energy_j.low,
        "band_high_j": estimate.it_energy_j.high,
        "power_basis": estimate.power_basis,
        "source": source.source,
        "document": source.document,
        "page": source.page,
    }


def _end_time(
    body: EstimateCreate, estimate: RunEstimate, started_at: datetime, settings: Settings
) -> datetime:
    if body.ended_at is not None:
        return body.ended_at
    if estimate.duration_s is None:
        return max(utcnow(), started_at)
    try:
        end = started_at + timedelta(seconds=estimate.duration_s.value)
    except OverflowError:
        end = None
    if end is None or end > settings.latest_time:
        raise InvalidInput.one(
            "duration",
            f"the run would end after {settings.latest_time.isoformat()}, the latest time the "
            "service stores; give ended_at",
        )
    if end > utcnow():
        raise InvalidInput.one(
            "duration",
            f"the run would end at {end.isoformat()}, in the future: an estimate is of work "
            "done; give started_at (or ended_at)",
        )
    return end


def _default_start(body: EstimateCreate, estimate: RunEstimate, settings: Settings) -> datetime:
    """A new run's start when the request gives none: its end (``ended_at``, else now) less
    its duration, so that an estimate without dates describes work that has just finished."""
    end = body.ended_at or utcnow()
    if estimate.duration_s is None:
        return end
    try:
        start = end - timedelta(seconds=estimate.duration_s.value)
    except OverflowError:
        start = None
    if start is None or start < settings.earliest_time:
        raise InvalidInput.one(
            "duration",
            f"the run would start before {settings.earliest_time.isoformat()}, the earliest "
            "time the service stores; give started_at",
        )
    return start


def _find(session: Session, project_id: int, run_id: UUID) -> RunRecord | None:
    try:
        return runs.get_run(session, project_id=project_id, run_id=run_id)
    except NotFound:
        return None


def record_estimated_run(
    session: Session, *, project_id: int, run_id: UUID, body: EstimateCreate, settings: Settings
) -> tuple[RunRecord, bool, RunEstimate, list[LedgerRecord]]:
    """Create or take the run, end it, label it and ledger the estimate (the route's work, also
    the server CLI's ``estimate``), in the caller's transaction.

    Returns:
        The run, whether it was created, the estimate, and the ledger entries appended.

    Raises:
        InvalidQuantity, InvalidEstimate, InvalidInput: A refused field (422).
        Conflict: The run has metered chunks or measured figures, or another kind (409).
    """
    estimate = body.to_estimate()
    existing = _find(session, project_id, run_id)
    if existing is None and body.name is None:
        raise InvalidInput.one("name", "the run does not exist yet: give its name to create it")
    if existing is not None and ledger.has_measurements(
        session, project_id=project_id, run_id=run_id
    ):
        raise Conflict(
            f"run {run_id} has metered chunks: a measured run cannot also be estimated",
            field="run_id",
        )
    started_at = body.started_at or (
        existing.started_at if existing else _default_start(body, estimate, settings)
    )
    record, created = runs.upsert_run(
        session,
        project_id=project_id,
        run_id=run_id,
        name=body.name or (existing.name if existing else ""),
        kind=existing.kind if existing and "kind" not in body.model_fields_set else body.kind,
        started_at=started_at,
        tags=body.tags,
        host_info={LABEL_KEY: label(estimate)},
        simulated=False,
        max_host_info_bytes=settings.max_host_info_bytes,
    )
    if record.status in (RunStatus.RUNNING, RunStatus.LOST):
        record = runs.end_run(
            session,
            project_id=project_id,
            run_id=run_id,
            status=RunStatus.FINISHED,
            ended_at=_end_time(body, estimate, record.started_at, settings),
        )
    entries = ledger.record_estimate(
        session, project_id=project_id, run_id=run_id, estimate=estimate, supersede=body.supersede
    )
    return record, created, estimate, entries


@router.post(
    "/{run_id}/estimate",
    responses={
        201: {"model": EstimatePublic, "description": "the run was created and estimated"},
        409: {
            "description": "the run has metered chunks or measured figures; the body names "
            "another project than the token's; or (supersede false) the run has another estimate"
        },
        422: {"description": "an input is missing, contradictory or out of range (named)"},
    },
)
def post_estimate(
    run_id: UUID,
    body: EstimateCreate,
    tenant: IngestTenant,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> EstimatePublic:
    """Record an estimated run: device time × mean power (or TDP × utilisation) × PUE, or an
    energy its source states (``energy``) × PUE.

    For runs that were never metered (a publication's figures, a cloud bill, a scheduler's
    GPU-hours). Creates the run (201; ``name`` required) or estimates the project's existing run
    with this id (200), which must have no metered chunks (409). The run is ended if it is
    running (at ``ended_at``, else start + ``duration``, else now; never in the future; a new
    run without ``started_at`` ends at ``ended_at`` or now and starts ``duration`` earlier),
    labelled in
    ``host_info["estimate"]``, and its figures enter the ledger like a measured run's, with
    method ``estimate``, the band and the provenance. Posting the same estimate again appends
    nothing; another one supersedes the figures (or, with ``supersede`` false, is refused: 409).
    A ``project`` other than the token's is refused (409). 422 names the refused field.
    """
    if body.project is not None and body.project != tenant.slug:
        raise Conflict(
            f"this token belongs to project {tenant.slug!r}, not {body.project!r}: use a token "
            f"issued for {body.project!r}",
            field="project",
        )
    record, created, estimate, entries = record_estimated_run(
        session, project_id=tenant.id, run_id=run_id, body=body, settings=settings
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return EstimatePublic.of(RunPublic.of(record, tenant.slug), estimate, entries)
