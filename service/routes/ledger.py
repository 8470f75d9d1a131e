"""The project's ledger: list and read entries (read scope), post figures by hand (admin).

Runs' figures are appended when a run ends (`db.ledger.record_run_end`, from the finish and
fail routes). What is posted here — offsets, embodied carbon, a figure metered elsewhere, a
correction naming the seq it ``supersedes`` — is appended the same way; nothing is ever edited.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, status

from thermoledger.db import ledger
from thermoledger.db.models import Scope

from ..deps import AdminFirstRoute, AdminPrincipal, ReadTenant, SessionDep
from ..ledger_schemas import (
    INT64_MAX,
    FigureName,
    LedgerEntryCreate,
    LedgerEntryPublic,
    LedgerPage,
    parse_edge_quantity,
)

# Posting needs the admin scope, refused before the body is read.
router = APIRouter(prefix="/ledger", tags=["ledger"], route_class=AdminFirstRoute)

MAX_PAGE = 500


@router.get("")
def list_entries(
    tenant: ReadTenant,
    session: SessionDep,
    run_id: UUID | None = None,
    figure: FigureName | None = None,
    after: Annotated[
        int, Query(ge=0, le=INT64_MAX, description="list entries with seq > after")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> LedgerPage:
    """The project's entries, oldest first, optionally of one run or one figure."""
    records = ledger.list_entries(
        session,
        project_id=tenant.id,
        run_id=run_id,
        figure=figure,
        after_seq=after,
        limit=limit + 1,
    )
    page = records[:limit]
    next_after = page[-1].seq if len(records) > limit else None
    return LedgerPage(items=[LedgerEntryPublic.of(r) for r in page], next_after=next_after)


@router.get("/{seq}")
def get_entry(
    seq: Annotated[int, Path(ge=1, le=INT64_MAX)], tenant: ReadTenant, session: SessionDep
) -> LedgerEntryPublic:
    """One entry, by its seq in the project's chain."""
    return LedgerEntryPublic.of(ledger.get_entry(session, project_id=tenant.id, seq=seq))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "the superseded entry was already superseded"}},
)
def post_entry(
    body: LedgerEntryCreate, principal: AdminPrincipal, session: SessionDep
) -> LedgerEntryPublic:
    """Append a figure by hand (admin scope). The quantity's dimension must be the figure's."""
    tenant = principal.require(Scope.ADMIN)
    spec = ledger.FIGURES[body.figure]
    quantity, unit = parse_edge_quantity(body.quantity, spec.dimension, field="quantity")
    record = ledger.post_entry(
        session,
        project_id=tenant.id,
        figure=body.figure,
        value_si=float(quantity.to(spec.unit_si).magnitude),
        value_given=float(quantity.magnitude),
        unit_given=unit,
        source=body.source,
        reference=body.reference,
        run_id=body.run_id,
        at=body.at,
        supersedes=body.supersedes,
        note=body.note,
        recorded_by={"token_id": principal.token_id},
    )
    return LedgerEntryPublic.of(record)
