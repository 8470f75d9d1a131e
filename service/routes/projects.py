"""Projects and their tokens (admin).

Projects are created by the operator (`Settings.bootstrap_admin_token`) or the server CLI; a
project's ``admin`` token manages that project's tokens and sees no other project.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from thermoledger.db import tokens
from thermoledger.db.errors import NotFound

from ..auth import issue_token, parse_scopes, scope_names
from ..deps import PrincipalDep, SessionDep
from ..errors import Forbidden
from ..schemas import (
    SLUG_PATTERN,
    ProjectCreate,
    ProjectPublic,
    TokenCreate,
    TokenIssued,
    TokenPublic,
)

router = APIRouter(prefix="/projects", tags=["projects"])

SlugPath = Annotated[str, Path(pattern=SLUG_PATTERN)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_project(
    body: ProjectCreate, principal: PrincipalDep, session: SessionDep
) -> ProjectPublic:
    """Create a project (operator only; project tokens are bound to their own project)."""
    if not principal.is_operator:
        raise Forbidden("only the operator token or the server CLI creates projects")
    project = tokens.create_project(session, slug=body.slug, name=body.name or body.slug)
    return ProjectPublic(slug=project.slug, name=project.name, created_at=project.created_at)


def _administered(session: SessionDep, principal: PrincipalDep, slug: str) -> int:
    """The project's id if the principal administers it; 404 otherwise (existence not leaked)."""
    try:
        project = tokens.get_project(session, slug=slug)
    except NotFound:
        project = None
    if project is None or not principal.may_administer(project.id):
        if principal.project_slug == slug:
            raise Forbidden("this token lacks the 'admin' scope")
        raise NotFound("project", slug)
    return project.id


@router.post("/{slug}/tokens", status_code=status.HTTP_201_CREATED)
def create_token(
    slug: SlugPath, body: TokenCreate, principal: PrincipalDep, session: SessionDep
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
def list_tokens(slug: SlugPath, principal: PrincipalDep, session: SessionDep) -> list[TokenPublic]:
    """The project's tokens (never their secrets)."""
    project_id = _administered(session, principal, slug)
    return [
        TokenPublic.of(record, scope_names(record.scopes))
        for record in tokens.list_tokens(session, project_id=project_id)
    ]
