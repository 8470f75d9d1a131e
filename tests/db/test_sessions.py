"""`db.sessions`: browser sessions found by their hash, bound to a token, revoked, purged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from thermoledger.db import sessions
from thermoledger.db.models import BrowserSession, Scope
from thermoledger.db.tokens import add_token, create_project, revoke_token

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _hash(n: int) -> str:
    return f"{n:064x}"


def _token(session: Session, slug: str = "alpha") -> int:
    project = create_project(session, slug=slug, name=slug)
    token = add_token(
        session,
        project_id=project.id,
        name="t",
        prefix=f"{slug[:4]:0<12}"[:12],
        token_hash="a" * 64,
        scopes=Scope.READ,
    )
    return token.id


def test_a_session_is_found_by_its_hash_with_its_token(session: Session) -> None:
    token_id = _token(session)
    opened = sessions.create_session(
        session, session_hash=_hash(1), token_id=token_id, csrf="c" * 43, now=T0, max_age_s=60
    )
    found = sessions.find_session(session, session_hash=_hash(1))
    assert found is not None
    assert found == opened
    assert found.token.id == token_id
    assert found.token.project_slug == "alpha"
    assert found.expires_at == T0 + timedelta(seconds=60)
    assert found.live(T0)
    assert not found.live(T0 + timedelta(seconds=60))
    assert sessions.find_session(session, session_hash=_hash(2)) is None


def test_revoking_is_idempotent_and_shows(session: Session) -> None:
    token_id = _token(session)
    sessions.create_session(
        session, session_hash=_hash(1), token_id=token_id, csrf="c", now=T0, max_age_s=60
    )
    assert sessions.revoke_session(session, session_hash=_hash(1), now=T0 + timedelta(seconds=1))
    later = T0 + timedelta(seconds=2)
    assert not sessions.revoke_session(session, session_hash=_hash(1), now=later)
    found = sessions.find_session(session, session_hash=_hash(1))
    assert found is not None
    assert found.revoked_at == T0 + timedelta(seconds=1)
    assert not found.live(T0 + timedelta(seconds=2))


def test_the_bound_tokens_revocation_is_seen(session: Session) -> None:
    token_id = _token(session)
    sessions.create_session(
        session, session_hash=_hash(1), token_id=token_id, csrf="c", now=T0, max_age_s=60
    )
    revoke_token(session, token_id=token_id, project_id=None, now=T0)
    found = sessions.find_session(session, session_hash=_hash(1))
    assert found is not None
    assert found.token.revoked_at == T0


def test_purge_deletes_dead_sessions_in_bounded_batches(session: Session) -> None:
    token_id = _token(session)
    for n in range(5):  # expired at T0 + 10 s
        sessions.create_session(
            session, session_hash=_hash(n), token_id=token_id, csrf="c", now=T0, max_age_s=10
        )
    sessions.create_session(
        session, session_hash=_hash(9), token_id=token_id, csrf="c", now=T0, max_age_s=100
    )
    sessions.create_session(
        session, session_hash=_hash(8), token_id=token_id, csrf="c", now=T0, max_age_s=100
    )
    sessions.revoke_session(session, session_hash=_hash(8), now=T0)
    later = T0 + timedelta(seconds=20)
    assert sessions.purge_sessions(session, now=later, limit=4) == 4
    assert sessions.purge_sessions(session, now=later, limit=4) == 2
    assert sessions.purge_sessions(session, now=later, limit=4) == 0
    assert session.scalars(sa.select(BrowserSession.hash)).all() == [_hash(9)]


def test_a_session_needs_a_token_and_a_lifetime(session: Session) -> None:
    token_id = _token(session)
    with pytest.raises(ValueError, match="max_age_s"):
        sessions.create_session(
            session, session_hash=_hash(1), token_id=token_id, csrf="c", now=T0, max_age_s=0
        )
    with pytest.raises(ValueError, match="no token"):
        sessions.create_session(
            session, session_hash=_hash(1), token_id=token_id + 1, csrf="c", now=T0, max_age_s=1
        )


def test_deleting_a_token_deletes_its_sessions(session: Session) -> None:
    token_id = _token(session)
    sessions.create_session(
        session, session_hash=_hash(1), token_id=token_id, csrf="c", now=T0, max_age_s=60
    )
    session.commit()
    session.execute(sa.text("DELETE FROM api_token WHERE id = :id"), {"id": token_id})
    assert sessions.find_session(session, session_hash=_hash(1)) is None
    assert session.scalar(sa.select(sa.func.count()).select_from(BrowserSession)) == 0
