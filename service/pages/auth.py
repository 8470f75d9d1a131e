"""Who a page request acts for: a browser session opened with an API token, or a bearer header.

Pages accept the API's tokens, with the same rules (hashed, scoped, bound to one project;
`service.auth`), but a browser never keeps the token. The login form (``GET/POST /login``)
checks a token once and opens a **server-side session** (`db.sessions`): a random session id
(256 bits) goes into the cookie, and only its SHA-256 is stored, with the token it is bound to.

* ``tl_session``, the session id: ``HttpOnly`` (page scripts cannot read it; the pages have
  none anyway), ``SameSite=Lax``, ``Secure`` when the request came over HTTPS, ``Path=/``,
  expiring after ``Settings.session_max_age_s``. It is not an API credential: sent as a bearer
  token to the API it gets 401. Every page request checks the session (not expired, not
  revoked) *and* its token (not expired, not revoked), so revoking the token
  (``thermoledger-server token revoke``) or signing out (``POST /logout``, which revokes the
  session row) ends the session at once, even for a copy of the cookie.
* An ``Authorization: Bearer`` header, when present, wins over the cookie (scripts, curl).
* A ``?token=`` query parameter is **not** accepted, and never echoed: a token in a URL ends up
  in server logs, browser history and ``Referer`` headers, so `safe_next` drops it from every
  ``next`` target (the login form's hidden field, the redirect after signing in).

CSRF. Every form POST (``/login``, ``/logout``) is refused with 403 and changes nothing when

* the browser says it comes from another site: ``Sec-Fetch-Site`` other than ``same-origin``
  (or ``none``); or, from a browser that does not send that header, an ``Origin`` whose host is
  not this request's ``Host`` (or ``X-Forwarded-Host``), or ``Origin: null``;
* its hidden ``csrf`` field does not match: for ``/logout`` the session's own CSRF secret
  (stored in its row), for ``/login``, where no session exists yet, the random value of the
  short-lived ``tl_csrf`` cookie that ``GET /login`` set (a double submit: another site can
  neither read nor set it). Both are compared in constant time.

The forms are parsed with bounded work: at most `MAX_FORM_BYTES` and `MAX_FORM_FIELDS`; more,
or a body that is not UTF-8, is a 422 naming the problem.

A page needs the ``read`` scope and shows one project: the token's. Another project's run is
"not found", exactly as in the API. A page request without valid credentials raises
`LoginRequired`; `service.pages.install` answers it with a redirect to the login form (for a
GET) or the form with the reason (for the form's own POST).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Annotated
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from thermoledger.db.errors import InvalidInput
from thermoledger.db.models import Scope
from thermoledger.db.sessions import (
    create_session,
    find_session,
    purge_sessions,
    revoke_session,
)
from thermoledger.db.types import utcnow

from ..auth import Principal, Tenant, authenticate
from ..deps import RawBody, SessionDep, SettingsDep
from ..errors import Forbidden, Unauthenticated
from .render import render

__all__ = [
    "COOKIE",
    "LOGIN_CSRF_COOKIE",
    "LOGIN_CSRF_MAX_AGE_S",
    "MAX_FORM_BYTES",
    "MAX_FORM_FIELDS",
    "CsrfRefused",
    "LoginRequired",
    "PageTenant",
    "login_page",
    "page_tenant",
    "router",
    "safe_next",
]

#: The session cookie: a random session id, never an API token.
COOKIE = "tl_session"
#: The cookie that held the raw API token before sessions existed: cleared at login and logout.
_LEGACY_COOKIE = "tl_token"
#: The login form's double-submit cookie (a random value, also in the form's hidden field).
LOGIN_CSRF_COOKIE = "tl_csrf"
#: How long a login form may be left open before it must be reloaded, s.
LOGIN_CSRF_MAX_AGE_S = 3600
#: Largest form body parsed, bytes (a token, a ``next`` path and a CSRF value fit in far less;
#: within the service's cap on unauthenticated bodies).
MAX_FORM_BYTES = 8 * 1024
#: Most fields parsed from a form (the login form has three).
MAX_FORM_FIELDS = 8
_MAX_TOKEN_CHARS = 512
_MAX_NEXT_CHARS = 2048
#: Session ids and CSRF values: ``secrets.token_urlsafe(32)``, 256 bits.
_SECRET_BYTES = 32
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_SAME_SITE = frozenset({"same-origin", "none"})

router = APIRouter(include_in_schema=False)


class LoginRequired(Unauthenticated):
    """A page request without valid credentials (shown as the login form, not as JSON).

    Attributes:
        next: Where the form should lead after signing in (a path on this site), if known.
    """

    def __init__(self, message: str, *, next: str | None = None) -> None:
        super().__init__(message)
        self.next = next


class CsrfRefused(Forbidden):
    """A form POST that may have been forged by another site (403, nothing changed)."""


def _new_secret() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def _secret(value: str | None) -> str | None:
    """``value`` if it has the shape of a session id or CSRF value, else None (no lookup)."""
    return value if value is not None and _SECRET_RE.fullmatch(value) else None


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(
        given.encode("utf-8", errors="replace"), expected.encode("ascii")
    )


def _without_token(target: str) -> str:
    """``target`` without its ``token`` query parameters and without a fragment."""
    parts = urlsplit(target)
    fields = parts.query.split("&") if parts.query else []
    kept = [f for f in fields if unquote_plus(f.partition("=")[0]).strip().lower() != "token"]
    if len(kept) == len(fields) and not parts.fragment and "#" not in target:
        return target
    return parts.path + (f"?{'&'.join(kept)}" if kept else "")


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else the runs list (no open redirect).

    A ``token`` query parameter is dropped from it (a token is never echoed into a page or a
    redirect), and so is a fragment.
    """
    if (
        target
        and len(target) <= _MAX_NEXT_CHARS
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not any(ord(c) < 32 or ord(c) == 127 for c in target)
    ):
        return _without_token(target)
    return "/runs"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _authenticate(session: SessionDep, settings: SettingsDep, authorization: str) -> Principal:
    try:
        return authenticate(session, authorization=authorization, settings=settings, now=utcnow())
    except Unauthenticated as e:  # unknown, expired or revoked: back to the form, with why
        raise LoginRequired(f"{e}: sign in again") from e


def _session_principal(request: Request, session: SessionDep) -> Principal:
    """The principal of the request's session cookie (and the session's CSRF secret, kept on
    ``request.state.csrf`` for the pages' sign-out form)."""
    session_id = _secret(request.cookies.get(COOKIE))
    if session_id is None:
        raise LoginRequired("sign in with a token that has the 'read' scope")
    now = utcnow()
    found = find_session(session, session_hash=_session_hash(session_id))
    if found is None or not found.live(now):
        raise LoginRequired("your session has ended: sign in again")
    token = found.token
    if token.revoked_at is not None:
        raise LoginRequired("the token of this session was revoked: sign in again")
    if token.expires_at is not None and token.expires_at <= now:
        raise LoginRequired("the token of this session expired: sign in again")
    request.state.csrf = found.csrf
    return Principal(
        project_id=token.project_id,
        project_slug=token.project_slug,
        scopes=token.scopes,
        token_id=token.id,
    )


def _principal(request: Request, session: SessionDep, settings: SettingsDep) -> Principal:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        return _authenticate(session, settings, authorization)
    return _session_principal(request, session)


def page_tenant(request: Request, principal: Annotated[Principal, Depends(_principal)]) -> Tenant:
    """The project a page shows (403 without the ``read`` scope).

    Its slug is left on ``request.state.project`` too, so that an error page the request ends
    in (`service.pages._html_error`) keeps the site's navigation and a way back.
    """
    tenant = principal.require(Scope.READ)
    request.state.project = tenant.slug
    return tenant


PageTenant = Annotated[Tenant, Depends(page_tenant)]


async def _same_origin(request: Request) -> None:  # async: no thread-pool hop
    """Refuse a form POST that the browser says comes from another site (headers only, so it
    runs before the body is read).

    ``Sec-Fetch-Site``, which browsers set themselves and no page can forge, decides when
    present; an older browser's ``Origin`` otherwise (``null``, as sent from a sandboxed frame or
    a ``data:`` page, is refused).
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site.strip().lower() not in _SAME_SITE:
            raise CsrfRefused("csrf: refused a form posted from another site")
        return
    origin = request.headers.get("origin")
    if origin is None:
        return
    hosts = {request.headers.get("host", "").strip().lower()}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip().lower())
    try:
        origin_host = urlsplit(origin.strip()).netloc.lower()
    except ValueError:
        origin_host = ""
    if not origin_host or origin_host not in hosts:
        raise CsrfRefused("csrf: refused a form posted from another origin")


def _form(body: bytes) -> dict[str, str]:
    """A urlencoded form's fields (the first of repeated ones), parsed with bounded work.

    Raises:
        InvalidInput: Too large, too many fields, or not UTF-8 (422).
    """
    if len(body) > MAX_FORM_BYTES:
        raise InvalidInput.one("body", f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput.one("body", "the form is not UTF-8 text") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise InvalidInput.one("body", f"the form has more than {MAX_FORM_FIELDS} fields") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def _delete_cookie(response: Response, name: str, request: Request) -> None:
    response.delete_cookie(name, path="/", httponly=True, secure=_secure(request))


def login_page(
    request: Request, *, next: str, error: str | None, status_code: int = 200
) -> HTMLResponse:
    """The login form, with its double-submit CSRF value in a hidden field and the cookie.

    An existing well-formed ``tl_csrf`` cookie is reused (two open tabs both work) and its
    lifetime renewed.
    """
    nonce = _secret(request.cookies.get(LOGIN_CSRF_COOKIE)) or _new_secret()
    max_age_s: float = request.app.state.settings.session_max_age_s
    response = render(
        request,
        "login.html.j2",
        status_code=status_code,
        next=next,
        error=error,
        csrf=nonce,
        max_age_h=f"{max_age_s / 3600:.3g}",
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        nonce,
        max_age=LOGIN_CSRF_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    """The login form."""
    return login_page(request, next=safe_next(next), error=None)


@router.post("/login", dependencies=[Depends(_same_origin)])
def login(body: RawBody, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Check the submitted token; on success open a session, set its cookie, go to ``next``."""
    form = _form(body)
    expected = _secret(request.cookies.get(LOGIN_CSRF_COOKIE))
    if expected is None or not _matches(form.get("csrf"), expected):
        raise CsrfRefused(
            "csrf: the sign-in form expired or was not sent from this site: reload it and "
            "sign in again"
        )
    token = form.get("token", "").strip()
    target = safe_next(form.get("next"))
    if not token or len(token) > _MAX_TOKEN_CHARS:
        raise LoginRequired("paste a token (tl_…) that has the 'read' scope", next=target)
    principal = _authenticate(session, settings, f"Bearer {token}")
    if principal.token_id is None or Scope.READ not in principal.granted:
        raise LoginRequired(
            "this token cannot read runs: use one with the 'read' scope", next=target
        )
    now = utcnow()
    previous = _secret(request.cookies.get(COOKIE))
    if previous is not None:  # signing in again replaces the browser's session
        revoke_session(session, session_hash=_session_hash(previous), now=now)
    purge_sessions(session, now=now)
    session_id = _new_secret()
    create_session(
        session,
        session_hash=_session_hash(session_id),
        token_id=principal.token_id,
        csrf=_new_secret(),
        now=now,
        max_age_s=settings.session_max_age_s,
    )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(settings.session_max_age_s),
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    _delete_cookie(response, LOGIN_CSRF_COOKIE, request)
    _delete_cookie(response, _LEGACY_COOKIE, request)
    return response


@router.post("/logout", dependencies=[Depends(_same_origin)])
def logout(body: RawBody, request: Request, session: SessionDep) -> Response:
    """Revoke the browser's session server-side and drop its cookie.

    A live session must send its CSRF value; a cookie of a session that has already ended
    (or none) is simply dropped.
    """
    form = _form(body)
    session_id = _secret(request.cookies.get(COOKIE))
    if session_id is not None:
        session_hash = _session_hash(session_id)
        found = find_session(session, session_hash=session_hash)
        if found is not None and found.revoked_at is None:
            if not _matches(form.get("csrf"), found.csrf):
                raise CsrfRefused(
                    "csrf: the sign-out form was not sent from this site: reload the page and "
                    "sign out again"
                )
            revoke_session(session, session_hash=session_hash, now=utcnow())
    response = RedirectResponse("/login", status_code=303)
    _delete_cookie(response, COOKIE, request)
    _delete_cookie(response, _LEGACY_COOKIE, request)
    return response
