"""Projects and their tokens (admin).

Projects are created by the operator (`Settings.bootstrap_admin_token`) or the server CLI; a
project's ``admin`` token manages that project's tokens and sees no other project. Every route
here needs the ``admin`` scope (or the operator), checked before the body is read
(`service.deps.AdminFirstRoute`): any other token gets 403, whatever the body or the slug.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from thermoledger.db import tokens
from thermoledger.db.errors import NotFound

from ..auth import Principal, issue_token, parse_scopes, scope_names
from ..deps import AdminFirstRoute, AdminPrincipal, SessionDep
from ..errors import Forbidden
from ..schemas import (
    SLUG_PATTERN,
    ProjectCreate,
    ProjectPublic,
    TokenCreate,
    TokenIssued,
    TokenPublic,
)

router = APIRouter(prefix="/projects", tags=["projects"], route_class=AdminFirstRoute)

SlugPath = Annotated[str, Path(pattern=SLUG_PATTERN)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_project(
    body: ProjectCreate, principal: AdminPrincipal, session: SessionDep
) -> ProjectPublic:
    """Create a project (operator only; project tokens are bound to their own project)."""
    if not principal.is_operator:
        raise Forbidden("only the operator token or the server CLI creates projects")
    project = tokens.create_project(session, slug=body.slug, name=body.name or body.slug)
    return ProjectPublic(slug=project.slug, name=project.name, created_at=project.created_at)


def _administered(session: SessionDep, principal: Principal, slug: str) -> int:
    """The project's id if the principal administers it; 404 otherwise (existence not leaked)."""
    try:
        project = tokens.get_project(session, slug=slug)
    except NotFound:
        project = None
    if project is None or not principal.may_administer(project.id):
        raise NotFound("project", slug)
    return project.id


@router.post("/{slug}/tokens", status_code=status.HTTP_201_CREATED)
def create_token(
    slug: SlugPath, body: TokenCreate, principal: AdminPrincipal, session: SessionDep
) -> TokenIssued:
    """Issue a token for the project; the response is the only time its secret is shown."""
    project_id = _administered(session, principal, slug)
    scopes = parse_scopes(body.scopes)
    issued = issue_token(
        session, project_id=project_id, name=body.name, scopes=scopes, expires_at=body.expires_at
    )
    public = TokenPublic.of(issued.record, scope_names(issued.record.scopes))
    return TokenIssued(**public.model_dump(), token=issued.token)


@router.get("/{slug}/tokens")
def list_tokens(
    slug: SlugPath, principal: AdminPrincipal, session: SessionDep
) -> list[TokenPublic]:
    """The project's tokens (never their secrets)."""
    project_id = _administered(session, principal, slug)
    return [
        TokenPublic.of(record, scope_names(record.scopes))
        for record in tokens.list_tokens(session, project_id=project_id)
    ]
