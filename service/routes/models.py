"""Models: training runs amortised over the inference runs that serve them (`service.economics`).

Runs are linked to a model by the tag ``model=<tag>`` (set when the run is created).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from ..deps import ReadTenant, SessionDep
from ..economics import amortisation, pricing
from ..economics_schemas import AmortisationPublic

router = APIRouter(prefix="/models", tags=["models"])

ModelTag = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]


@router.get(
    "/{model_tag}/amortisation",
    responses={
        404: {"description": "no run carries the tag"},
        409: {"description": "no measured training run, or no inference energy per token"},
    },
)
def get_amortisation(
    model_tag: ModelTag,
    tenant: ReadTenant,
    session: SessionDep,
    tokens_served: Annotated[float | None, Query(gt=0, le=1e30)] = None,
    inference_j_per_token: Annotated[float | None, Query(ge=0, le=1e9)] = None,
    compare: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    region: Annotated[str | None, Query(max_length=16)] = None,
    pue: Annotated[str | None, Query(max_length=32)] = None,
    tariff_usd_per_kwh: Annotated[float | None, Query(ge=0, le=100)] = None,
    points: Annotated[int, Query(ge=2, le=1000)] = 64,
) -> AmortisationPublic:
    """Amortised J/token (USD/token with a tariff, gCO2e/token) as a function of tokens served.

    Also: the value at ``tokens_served`` (default: the tokens served so far), the parity volume
    where training's share per token equals the inference cost, and, with ``compare``, the
    break-even volume against another model.
    """
    return amortisation(
        session,
        project_id=tenant.id,
        model_tag=model_tag,
        pricing=pricing(region=region, pue=pue, tariff_usd_per_kwh=tariff_usd_per_kwh),
        tokens_served=tokens_served,
        inference_j_per_token=inference_j_per_token,
        compare=compare,
        points=points,
    )
