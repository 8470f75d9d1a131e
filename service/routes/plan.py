"""Planning: a training run's FLOPs, energy, duration, cost and CO2e before it starts."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ReadTenant, SessionDep
from ..economics import PlanRequest, plan
from ..economics_schemas import PlanPublic

router = APIRouter(prefix="/plan", tags=["planning"])


@router.post("", responses={409: {"description": "no efficiency to plan with"}})
def post_plan(body: PlanRequest, tenant: ReadTenant, session: SessionDep) -> PlanPublic:
    """Estimate a planned training run from N, D and the hardware, with a range.

    Energy rests on the FLOP/J measured on the project's comparable runs (same hardware and
    dtype), else on the datasheet; the answer says which, and flags D far from Chinchilla's
    20·N. With ``target_loss`` or ``inference_tokens`` it also gives the N and D that minimise
    training + lifetime inference cost at that loss, beside the Chinchilla point
    (``inference_aware``).
    """
    return plan(session, project_id=tenant.id, request=body)
