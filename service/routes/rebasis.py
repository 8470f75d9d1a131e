"""Re-basis: ``POST /runs/{run_id}/rebasis`` re-prices an ended run on its project's basis now.

A run's carbon and cost are frozen in the ledger at its end, with the region, PUE and versions
of that moment (`db.basis`). A run that ended before its project had a region has no CO2e and
no cost; setting the region later changes nothing already ledgered, on purpose. This call is
the explicit way to re-price it: `db.ledger.record_rebasis` appends new facility-energy, CO2e
and cost entries derived from the run's ledgered IT energy with the project's current region
and PUE (and the versions valid at the run's end), each superseding the figure's current entry
and recording the reason and the basis it replaces. History is never edited; the measured IT
energy is not touched; calling it again with nothing changed appends nothing. Admin scope; a
running run is refused (409).
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from thermoledger.db import ledger
from thermoledger.db.models import Scope

from ..deps import AdminFirstRoute, AdminPrincipal, SessionDep
from ..ledger_schemas import LedgerEntryPublic, Text500

__all__ = ["RebasisCreate", "RebasisPublic", "router"]

router = APIRouter(prefix="/runs", tags=["ledger"], route_class=AdminFirstRoute)


class RebasisCreate(BaseModel):
    """Why the run is re-priced (kept in every new entry's provenance)."""

    model_config = ConfigDict(extra="forbid")

    reason: Text500 = Field(description="e.g. 'the project's region was set after the run'")


class RebasisPublic(BaseModel):
    """The entries a re-basis appended (none: the run already rests on the current basis)."""

    run_id: UUID
    changed: bool
    entries: list[LedgerEntryPublic]


@router.post(
    "/{run_id}/rebasis",
    responses={409: {"description": "the run has not ended, or has no measured figures"}},
)
def rebasis(
    run_id: UUID, body: RebasisCreate, principal: AdminPrincipal, session: SessionDep
) -> RebasisPublic:
    """Re-price an ended run on the project's current region, PUE and versions (admin)."""
    tenant = principal.require(Scope.ADMIN)
    entries = ledger.record_rebasis(
        session, project_id=tenant.id, run_id=run_id, reason=body.reason
    )
    return RebasisPublic(
        run_id=run_id, changed=bool(entries), entries=[LedgerEntryPublic.of(e) for e in entries]
    )
