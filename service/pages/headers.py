"""Security headers on every response of the app: no framing, no sniffing, no caching.

`SecurityHeaders` is a pure ASGI middleware (`service.pages.install` adds it, outermost) that
adds, to every HTTP response that does not set them itself:

* ``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'``: no other
  site may frame a page (clickjacking). The pages' own renderer (`service.pages.render`) sends
  a stricter policy of its own (`PAGE_CSP`: no scripts at all, the stylesheet from this site).
* ``X-Content-Type-Options: nosniff``: a CSV export or a JSON answer is never run as HTML.
* ``Cache-Control: no-store``: pages, reports and exports hold a project's figures; a shared
  computer's browser cache or a proxy must not keep them. The static stylesheet is exempt.
* ``Referrer-Policy: same-origin``: links out of a page say nothing about where they came from.
  Not ``no-referrer``: under it a browser sends ``Origin: null`` with the pages' own form
  POSTs, which the CSRF check of `service.pages.auth` must then refuse.

API JSON responses get them too: they cost a few bytes and a scripted client ignores them.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PAGE_CSP", "SECURITY_HEADERS", "SecurityHeaders"]

#: The policy of the rendered pages: they have no script, one stylesheet from this site (and
#: inline ``style`` attributes for chart colours), inline SVG, a ``data:`` favicon, and forms
#: that post to this site.
PAGE_CSP = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: Added to every response unless it sets the header itself.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
)
_NO_STORE = ("cache-control", "no-store")
_STATIC_PREFIX = "/static/"


class SecurityHeaders:
    """Add `SECURITY_HEADERS` (and ``Cache-Control: no-store`` outside ``/static``) to every
    HTTP response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
        defaults = SECURITY_HEADERS
        if not path.startswith(_STATIC_PREFIX):
            defaults = (*defaults, _NO_STORE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", []))
                headers = MutableHeaders(scope=message)
                for name, value in defaults:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
