"""Browser sessions of the pages: opened at login, checked on every page, revoked at logout.

A session is found by the SHA-256 of its id (the id itself lives only in the browser's
cookie, `service.pages.auth`). `find_session` returns the session with the API token it is
bound to, revoked and expired ones included, in one query: the caller decides whether both are
still valid, so that revoking the token ends the session at once. Revocation is idempotent;
`purge_sessions` deletes a bounded number of dead rows (expired or revoked), so a
busy login form never turns into a long delete. The functions follow the store modules'
conventions (`db.records`): the caller's transaction, keyword-only arguments, plain records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .models import ApiToken, BrowserSession, Project
from .records import TokenRecord, _token_record

__all__ = [
    "PURGE_BATCH",
    "SessionRecord",
    "create_session",
    "find_session",
    "purge_sessions",
    "revoke_session",
]

#: Most rows one `purge_sessions` call deletes (bounded work per login).
PURGE_BATCH = 100


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A browser session and the API token it is bound to.

    Attributes:
        id: The row's id (not the secret session id, which is never stored).
        project_id: The project the session shows (the token's).
        csrf: The per-session CSRF secret the pages put in their forms.
        created_at: When it was opened.
        expires_at: When it stops being accepted.
        revoked_at: When it was closed (logout), or None.
        token: The bound API token, as stored now (its revocation, expiry and scopes).
    """

    id: int
    project_id: int
    csrf: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    token: TokenRecord

    def live(self, now: datetime) -> bool:
        """Whether the session itself is open at ``now`` (the token is checked separately)."""
        return self.revoked_at is None and now < self.expires_at


def create_session(
    session: Session,
    *,
    session_hash: str,
    token_id: int,
    csrf: str,
    now: datetime,
    max_age_s: float,
) -> SessionRecord:
    """Open a session bound to ``token_id`` (its project is the token's).

    Args:
        session: The caller's session.
        session_hash: SHA-256 (hex) of the random session id the cookie carries.
        token_id: The API token the user signed in with.
        csrf: The session's CSRF secret.
        now: Creation time.
        max_age_s: Lifetime, s (> 0).

    Raises:
        ValueError: ``max_age_s`` is not positive, or no such token.
    """
    if not max_age_s > 0:
        raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
    token = session.get(ApiToken, token_id)
    if token is None:
        raise ValueError(f"no token with id {token_id}")
    slug = session.scalars(sa.select(Project.slug).where(Project.id == token.project_id)).one()
    row = BrowserSession(
        hash=session_hash,
        token_id=token_id,
        project_id=token.project_id,
        csrf=csrf,
        created_at=now,
        expires_at=now + timedelta(seconds=max_age_s),
    )
    session.add(row)
    session.flush()
    return _record(row, _token_record(token, slug))


def find_session(session: Session, *, session_hash: str) -> SessionRecord | None:
    """The session with this hash and its bound token (revoked and expired ones too), or None."""
    row = session.execute(
        sa.select(BrowserSession, ApiToken, Project.slug)
        .join(ApiToken, ApiToken.id == BrowserSession.token_id)
        .join(Project, Project.id == ApiToken.project_id)
        .where(BrowserSession.hash == session_hash)
    ).one_or_none()
    if row is None:
        return None
    browser, token, slug = row
    return _record(browser, _token_record(token, slug))


def revoke_session(session: Session, *, session_hash: str, now: datetime) -> bool:
    """Close the session with this hash (idempotent: a first revocation time is kept).

    Returns:
        Whether an open session was closed by this call.
    """
    result = session.execute(
        sa.update(BrowserSession)
        .where(BrowserSession.hash == session_hash, BrowserSession.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def purge_sessions(session: Session, *, now: datetime, limit: int = PURGE_BATCH) -> int:
    """Delete at most ``limit`` dead sessions: expired or revoked.

    A replayed cookie of a deleted session finds no row, which is refused the same way.

    Returns:
        How many rows were deleted.
    """
    dead = sa.or_(BrowserSession.expires_at <= now, BrowserSession.revoked_at.is_not(None))
    ids = session.scalars(
        sa.select(BrowserSession.id).where(dead).order_by(BrowserSession.id).limit(limit)
    ).all()
    if not ids:
        return 0
    session.execute(
        sa.delete(BrowserSession)
        .where(BrowserSession.id.in_(ids))
        .execution_options(synchronize_session=False)
    )
    return len(ids)


def _record(row: BrowserSession, token: TokenRecord) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        project_id=row.project_id,
        csrf=row.csrf,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        token=token,
    )
