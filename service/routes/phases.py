"""Phases: named windows of a run with the work declared inside them."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response, status

from thermoledger.db import phases

from ..deps import IngestTenant, SessionDep
from ..quantities import parse_count, parse_flops
from ..schemas import PhaseCreate, PhasePublic

router = APIRouter(prefix="/runs/{run_id}/phases", tags=["phases"])


@router.post("", responses={201: {"model": PhasePublic, "description": "created"}})
def post_phase(
    run_id: UUID, body: PhaseCreate, tenant: IngestTenant, session: SessionDep, response: Response
) -> PhasePublic:
    """Record a phase; sending it again may close it (``t1_s``) or add its work.

    201 when created, 200 when it existed; 409 when a stored value would change.
    """
    record, created = phases.upsert_phase(
        session,
        project_id=tenant.id,
        run_id=run_id,
        name=body.name,
        t0_s=body.t0_s,
        t1_s=body.t1_s,
        flops=None if body.flops is None else parse_flops(body.flops, field="flops"),
        flops_dtype=body.dtype,
        tokens=None if body.tokens is None else parse_count(body.tokens, "tokens", field="tokens"),
        tags=body.tags,
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return PhasePublic.of(record)
