"""API tokens: issuing, parsing, checking, and who a request acts for.

A token reads ``tl_<prefix>_<secret>``: ``prefix`` is 12 random hex digits, stored in clear and
unique, used to find the row; ``secret`` is 32 random bytes (URL-safe base64). Only the SHA-256
of the whole token is stored (see `db.models.ApiToken` for why a fast hash is right for 256-bit
secrets), and the comparison is constant-time. The token is shown once, when issued.

Who may do what:

* A **project token** carries scopes ``ingest``, ``read``, ``admin`` and acts only inside its
  project. ``admin`` manages that project's tokens and settings, and also **reads** the project
  (`Principal.granted`): whoever may set a project's region, factors and tokens may see the
  runs those settings price, so an admin token needs no second ``read`` token. It still does
  not ingest (a meter's token should not manage the project), and it grants nothing
  elsewhere: another project's rows answer 404, as if they did not exist.
* The **operator** is whoever presents ``Settings.bootstrap_admin_token`` (when set). It may
  create projects and manage the tokens of every project, and nothing else: it is bound to no
  project, so it can neither read nor ingest. Without that setting, projects are created only
  by the server CLI (``thermoledger-server token create --project X``), which is how a fresh
  install gets its first token.

``last_used_at`` is written at most once per ``Settings.last_used_interval_s`` per token, so a
busy meter costs no extra write per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from thermoledger.db.models import Scope
from thermoledger.db.records import TokenRecord
from thermoledger.db.tokens import add_token, find_token, touch_token

from .errors import Forbidden, Unauthenticated
from .settings import Settings

__all__ = [
    "SCOPE_NAMES",
    "IssuedToken",
    "Principal",
    "Tenant",
    "authenticate",
    "bearer_token",
    "check_token",
    "hash_token",
    "issue_token",
    "operator_principal",
    "parse_scopes",
    "scope_names",
    "well_formed",
]

_TOKEN_RE = re.compile(r"^tl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
SCOPE_NAMES: dict[str, Scope] = {"ingest": Scope.INGEST, "read": Scope.READ, "admin": Scope.ADMIN}


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A newly issued token: its record and the full token text (shown this once)."""

    record: TokenRecord
    token: str


@dataclass(frozen=True, slots=True)
class Tenant:
    """The project a request acts in."""

    id: int
    slug: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for.

    Attributes:
        project_id: The token's project; None for the operator.
        project_slug: Its slug; None for the operator.
        scopes: What the token may do.
        token_id: The token's id; None for the operator.
    """

    project_id: int | None
    project_slug: str | None
    scopes: Scope
    token_id: int | None

    @property
    def granted(self) -> Scope:
        """The scopes the token acts with: its own, and ``read`` wherever it holds ``admin``."""
        return self.scopes | Scope.READ if Scope.ADMIN in self.scopes else self.scopes

    @property
    def is_operator(self) -> bool:
        """Whether this is the operator (the bootstrap token), bound to no project."""
        return self.project_id is None

    def require(self, scope: Scope) -> Tenant:
        """The principal's project, if it holds ``scope`` inside a project.

        ``admin`` satisfies ``read`` too (`granted`), inside the token's own project only.

        Raises:
            Forbidden: The scope is missing, or this is the operator (who has no project).
        """
        if self.project_id is None or self.project_slug is None:
            raise Forbidden("the operator token manages projects and tokens only")
        if scope not in self.granted:
            raise Forbidden(f"this token lacks the {scope_names(scope)[0]!r} scope")
        return Tenant(self.project_id, self.project_slug)

    def may_administer(self, project_id: int) -> bool:
        """Whether it may manage the tokens of ``project_id``."""
        return self.is_operator or (self.project_id == project_id and Scope.ADMIN in self.scopes)


def hash_token(token: str) -> str:
    """SHA-256 (hex) of a token's full text, as stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_scopes(names: Iterable[str]) -> Scope:
    """``["ingest", "read"]`` → ``Scope.INGEST | Scope.READ``.

    Raises:
        ValueError: An unknown name, or none at all.
    """
    scopes = Scope(0)
    for name in names:
        try:
            scopes |= SCOPE_NAMES[name.strip().lower()]
        except KeyError:
            raise ValueError(
                f"unknown scope {name!r}; choose from {', '.join(SCOPE_NAMES)}"
            ) from None
    if not scopes:
        raise ValueError("at least one scope is required")
    return scopes


def scope_names(scopes: Scope) -> list[str]:
    """``Scope.INGEST | Scope.READ`` → ``["ingest", "read"]``."""
    return [name for name, flag in SCOPE_NAMES.items() if flag in scopes]


def issue_token(
    session: Session,
    *,
    project_id: int,
    name: str,
    scopes: Scope,
    expires_at: datetime | None = None,
) -> IssuedToken:
    """Generate a token for a project and store its hash.

    Raises:
        NotFound: No such project (`db.errors`).
    """
    prefix = secrets.token_hex(6)
    token = f"tl_{prefix}_{secrets.token_urlsafe(32)}"
    record = add_token(
        session,
        project_id=project_id,
        name=name,
        prefix=prefix,
        token_hash=hash_token(token),
        scopes=scopes,
        expires_at=expires_at,
    )
    return IssuedToken(record=record, token=token)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header's value.

    Raises:
        Unauthenticated: The header is missing or is not a bearer header.
    """
    if not authorization:
        raise Unauthenticated("missing Authorization header: send 'Bearer tl_...'")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthenticated("the Authorization header must read 'Bearer <token>'")
    return credentials.strip()


_OPERATOR = Principal(project_id=None, project_slug=None, scopes=Scope.ADMIN, token_id=None)


def operator_principal(token: str, settings: Settings) -> Principal | None:
    """The operator, if ``token`` is ``Settings.bootstrap_admin_token`` (constant-time)."""
    operator = settings.bootstrap_admin_token
    if operator is not None and hmac.compare_digest(
        token.encode("utf-8"), operator.get_secret_value().encode("utf-8")
    ):
        return _OPERATOR
    return None


def well_formed(token: str) -> bool:
    """Whether ``token`` reads ``tl_<prefix>_<secret>`` (says nothing about its validity)."""
    return _TOKEN_RE.match(token) is not None


def _check(
    session: Session, *, token: str, settings: Settings, now: datetime
) -> tuple[Principal, TokenRecord | None]:
    operator = operator_principal(token, settings)
    if operator is not None:
        return operator, None
    match = _TOKEN_RE.match(token)
    if match is None:
        raise Unauthenticated("malformed token: expected tl_<prefix>_<secret>")
    stored = find_token(session, prefix=match.group(1))
    if stored is None or not hmac.compare_digest(stored.hash, hash_token(token)):
        raise Unauthenticated("invalid token")
    record = stored.record
    if record.revoked_at is not None:
        raise Unauthenticated("token revoked")
    if record.expires_at is not None and record.expires_at <= now:
        raise Unauthenticated("token expired")
    principal = Principal(
        project_id=record.project_id,
        project_slug=record.project_slug,
        scopes=record.scopes,
        token_id=record.id,
    )
    return principal, record


def check_token(session: Session, *, token: str, settings: Settings, now: datetime) -> Principal:
    """Who ``token`` acts for, read only: `authenticate` without recording the use.

    The request guard (`service.guard`) calls it from the headers, before a request's body is
    read; the route then authenticates in full.

    Raises:
        Unauthenticated: Malformed, unknown, revoked or expired token.
    """
    return _check(session, token=token, settings=settings, now=now)[0]


def authenticate(
    session: Session, *, authorization: str | None, settings: Settings, now: datetime
) -> Principal:
    """Check a request's ``Authorization`` header and say who it acts for.

    Args:
        session: The request's session (``last_used_at`` is updated inside its transaction).
        authorization: The header's value, if any.
        settings: For the operator token and the ``last_used_at`` interval.
        now: The current time (aware).

    Raises:
        Unauthenticated: Missing, malformed, unknown, revoked or expired token.
    """
    principal, record = _check(
        session, token=bearer_token(authorization), settings=settings, now=now
    )
    if record is not None:
        interval = timedelta(seconds=settings.last_used_interval_s)
        if record.last_used_at is None or now - record.last_used_at >= interval:
            touch_token(session, token_id=record.id, now=now)
    return principal
