"""Token revocation (admin scope or the operator, checked before anything else:
`service.deps.AdminFirstRoute`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from thermoledger.db import tokens
from thermoledger.db.models import Scope

from ..deps import AdminFirstRoute, AdminPrincipal, SessionDep
from ..schemas import INT32_MAX

router = APIRouter(prefix="/tokens", tags=["tokens"], route_class=AdminFirstRoute)


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=INT32_MAX)],
    principal: AdminPrincipal,
    session: SessionDep,
) -> Response:
    """Revoke a token of the caller's project (any project for the operator); idempotent."""
    project_id = None if principal.is_operator else principal.require(Scope.ADMIN).id
    tokens.revoke_token(session, token_id=token_id, project_id=project_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
