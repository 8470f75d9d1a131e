"""Who a page request acts for: the API's bearer tokens, carried by a header or a cookie.

Pages accept exactly the API's tokens, with the same rules (hashed, scoped, bound to one
project; `service.auth`). A browser cannot attach an ``Authorization`` header to a link, so the
login form (``GET/POST /login``) checks a token once and stores it in a cookie:

* ``tl_token``, ``HttpOnly`` (page scripts cannot read it; the pages have none anyway),
  ``SameSite=Lax`` (not sent with cross-site POSTs; every page is a read-only GET),
  ``Secure`` when the request came over HTTPS, ``Path=/``, expiring after `COOKIE_MAX_AGE_S`
  or when ``POST /logout`` clears it. The token itself is checked again on every request, so
  revoking it (``thermoledger-server token revoke``) ends the session at once.
* An ``Authorization: Bearer`` header, when present, wins over the cookie (scripts, curl).
* A ``?token=`` query parameter is **not** accepted: a token in a URL ends up in server logs,
  browser history and ``Referer`` headers.

A page needs the ``read`` scope and shows one project: the token's. Another project's run is
"not found", exactly as in the API. A page request without valid credentials raises
`LoginRequired`; `service.pages.install` answers it with a redirect to the login form (for a
GET) or the form with the reason (for the form's own POST).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from thermoledger.db.models import Scope
from thermoledger.db.types import utcnow

from ..auth import Principal, Tenant, authenticate
from ..deps import RawBody, SessionDep, SettingsDep
from ..errors import Unauthenticated
from .render import render

__all__ = [
    "COOKIE",
    "COOKIE_MAX_AGE_S",
    "LoginRequired",
    "PageTenant",
    "page_tenant",
    "router",
    "safe_next",
]

COOKIE = "tl_token"
#: How long the login cookie lives, s (12 h: a working day; the token may expire sooner).
COOKIE_MAX_AGE_S = 12 * 3600
_MAX_TOKEN_CHARS = 512

router = APIRouter(include_in_schema=False)


class LoginRequired(Unauthenticated):
    """A page request without valid credentials (shown as the login form, not as JSON)."""


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else the runs list (no open redirect)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not any(ord(c) < 32 for c in target)
    ):
        return target
    return "/runs"


def _authenticate(session: SessionDep, settings: SettingsDep, authorization: str) -> Principal:
    try:
        return authenticate(session, authorization=authorization, settings=settings, now=utcnow())
    except Unauthenticated as e:  # unknown, expired or revoked: back to the form, with why
        raise LoginRequired(f"{e}: sign in again") from e


def _principal(request: Request, session: SessionDep, settings: SettingsDep) -> Principal:
    authorization = request.headers.get("authorization")
    if authorization is None:
        token = request.cookies.get(COOKIE)
        if not token:
            raise LoginRequired("sign in with a token that has the 'read' scope")
        authorization = f"Bearer {token}"
    return _authenticate(session, settings, authorization)


def page_tenant(principal: Annotated[Principal, Depends(_principal)]) -> Tenant:
    """The project a page shows (403 without the ``read`` scope)."""
    return principal.require(Scope.READ)


PageTenant = Annotated[Tenant, Depends(page_tenant)]


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    """The login form."""
    return render(request, "login.html.j2", next=safe_next(next), error=None)


@router.post("/login")
def login(body: RawBody, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Check the submitted token; on success store it in the cookie and go to ``next``."""
    form = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=4)
    token = (form.get("token") or [""])[0].strip()
    target = safe_next((form.get("next") or [""])[0])
    if not token or len(token) > _MAX_TOKEN_CHARS:
        raise LoginRequired("paste a token (tl_…) that has the 'read' scope")
    principal = _authenticate(session, settings, f"Bearer {token}")
    if principal.project_id is None or Scope.READ not in principal.scopes:
        raise LoginRequired("this token cannot read runs: use one with the 'read' scope")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    """Forget the login cookie."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
