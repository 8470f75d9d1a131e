"""Projects (the tenants) and their API tokens.

A token belongs to one project and is stored as its public prefix and the SHA-256 of its secret
(`service.auth` makes and checks them); the secret itself is never stored. Lookups made for a
project (`list_tokens`, `revoke_token`) are filtered by ``project_id``, so a token of another
project is indistinguishable from a missing one; authentication finds a token by its prefix
alone (`find_token`). The functions follow the store modules' conventions (`db.records`).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .errors import Conflict, NotFound
from .models import ApiToken, Project, Scope
from .records import ProjectRecord, StoredToken, TokenRecord, _project_record, _token_record
from .types import utcnow

__all__ = [
    "add_token",
    "create_project",
    "find_token",
    "get_or_create_project",
    "get_project",
    "list_tokens",
    "revoke_token",
    "touch_token",
]


def create_project(session: Session, *, slug: str, name: str) -> ProjectRecord:
    """Create a project.

    Raises:
        Conflict: The slug is taken.
    """
    if session.scalar(sa.select(Project.id).where(Project.slug == slug)) is not None:
        raise Conflict(f"project {slug!r} already exists", field="slug")
    row = Project(slug=slug, name=name)
    session.add(row)
    session.flush()
    return _project_record(row)


def get_project(session: Session, *, slug: str) -> ProjectRecord:
    """The project with this slug.

    Raises:
        NotFound: No such project.
    """
    row = session.scalars(sa.select(Project).where(Project.slug == slug)).one_or_none()
    if row is None:
        raise NotFound("project", slug)
    return _project_record(row)


def get_or_create_project(
    session: Session, *, slug: str, name: str | None = None
) -> tuple[ProjectRecord, bool]:
    """The project with this slug, created (named ``name`` or the slug) if missing.

    Returns:
        The project and whether it was created.
    """
    try:
        return get_project(session, slug=slug), False
    except NotFound:
        return create_project(session, slug=slug, name=name or slug), True


def add_token(
    session: Session,
    *,
    project_id: int,
    name: str,
    prefix: str,
    token_hash: str,
    scopes: Scope,
    expires_at: datetime | None = None,
) -> TokenRecord:
    """Store a new token's public prefix and SHA-256 hash (the secret itself is never stored).

    Raises:
        NotFound: No project with this id.
    """
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound("project", project_id)
    row = ApiToken(
        project_id=project_id,
        name=name,
        prefix=prefix,
        hash=token_hash,
        scopes=scopes,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return _token_record(row, project.slug)


@functools.lru_cache(maxsize=1)
def _find_token_statement() -> sa.Select[Any]:
    """`find_token`'s query with Core (every request runs it: no ORM load), built once."""
    t, p = cast(sa.Table, ApiToken.__table__), cast(sa.Table, Project.__table__)
    return (
        sa.select(
            t.c.id,
            t.c.project_id,
            p.c.slug,
            t.c.name,
            t.c.prefix,
            t.c.scopes,
            t.c.created_at,
            t.c.last_used_at,
            t.c.expires_at,
            t.c.revoked_at,
            t.c.hash,
        )
        .join_from(t, p, p.c.id == t.c.project_id)
        .where(t.c.prefix == sa.bindparam("prefix"))
    )


def find_token(session: Session, *, prefix: str) -> StoredToken | None:
    """The token with this public prefix (revoked and expired ones included), or None."""
    row = session.execute(_find_token_statement(), {"prefix": prefix}).one_or_none()
    if row is None:
        return None
    *fields, token_hash = row
    return StoredToken(record=TokenRecord(*fields), hash=token_hash)


def touch_token(session: Session, *, token_id: int, now: datetime) -> None:
    """Record that the token was used at ``now`` (callers throttle how often)."""
    session.execute(sa.update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def list_tokens(session: Session, *, project_id: int) -> list[TokenRecord]:
    """The project's tokens, oldest first (no secrets, no hashes)."""
    rows = session.execute(
        sa.select(ApiToken, Project.slug)
        .join(Project, Project.id == ApiToken.project_id)
        .where(ApiToken.project_id == project_id)
        .order_by(ApiToken.id)
    ).all()
    return [_token_record(token, slug) for token, slug in rows]


def revoke_token(
    session: Session, *, token_id: int, project_id: int | None, now: datetime | None = None
) -> TokenRecord:
    """Revoke a token (idempotent: revoking a revoked token keeps its first revocation time).

    Args:
        session: The caller's session.
        token_id: The token to revoke.
        project_id: Only a token of this project is found; None: any project (operator).
        now: Revocation time (default: the current time).

    Raises:
        NotFound: No such token in the project.
    """
    query = sa.select(ApiToken, Project.slug).join(Project, Project.id == ApiToken.project_id)
    query = query.where(ApiToken.id == token_id)
    if project_id is not None:
        query = query.where(ApiToken.project_id == project_id)
    row = session.execute(query).one_or_none()
    if row is None:
        raise NotFound("token", token_id)
    token, slug = row
    if token.revoked_at is None:
        token.revoked_at = now or utcnow()
        session.flush()
    return _token_record(token, slug)
