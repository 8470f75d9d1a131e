"""Signing a test client in through the login form, the way a browser does.

The form is CSRF-protected (`service.pages.auth`): ``GET /login`` sets the short-lived
``tl_csrf`` cookie and puts the same value in the form's hidden ``csrf`` field; the POST must
send both. Pages a session shows carry the session's own CSRF value in the sign-out form.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from tests.support.client import TestClient

__all__ = ["FORM", "HTML", "form_csrf", "sign_in", "sign_out"]

HTML = {"Accept": "text/html"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_CSRF_RE = re.compile(r'<input type="hidden" name="csrf" value="([^"]*)">')


def form_csrf(html: str) -> str:
    """The ``csrf`` hidden field of a page's form."""
    match = _CSRF_RE.search(html)
    assert match, "no csrf field in the page"
    return match.group(1)


def sign_in(client: TestClient, token: str, next: str = "/runs", **headers: str) -> Any:
    """Open the login form, post ``token`` with its CSRF value; the response (not followed)."""
    form = client.get(f"/login?next={quote(next, safe='')}", headers=HTML)
    assert form.status_code == 200, form.text[:2000]
    return client.post(
        "/login",
        data={"token": token, "next": next, "csrf": form_csrf(form.text)},
        headers=headers,
        follow_redirects=False,
    )


def sign_out(client: TestClient, page: str = "/runs") -> Any:
    """Post the sign-out form of ``page`` (not followed)."""
    shown = client.get(page, headers=HTML)
    assert shown.status_code == 200, shown.text[:2000]
    return client.post("/logout", data={"csrf": form_csrf(shown.text)}, follow_redirects=False)
