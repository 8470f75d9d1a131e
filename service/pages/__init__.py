"""Server-rendered pages: runs, run reports, comparisons, models and planning.

`install` adds them to an app built by `service.app.create_app`: the page routes
(`service.pages.views`), the login form and its server-side sessions (`service.pages.auth`),
the static stylesheet under ``/static``, an HTML face for the service's error table, and the
security headers of every response (`service.pages.headers`).

Errors. The service maps domain errors to HTTP once (`service.errors.ERROR_TABLE`). A browser
navigating to a page asks for ``text/html``; for such a request outside ``/api`` the same
status and message are rendered as an HTML page instead of the JSON body, and a missing or
expired login (`service.pages.auth.LoginRequired`) becomes a redirect to the login form.
API clients (no ``text/html`` in ``Accept``, or any path under ``/api``) get JSON as before.

No build step: templates are Jinja2 files, charts are inline SVG computed in Python
(`service.pages.charts`), the stylesheet is one static file, and there is no JavaScript.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from . import auth, quality, views
from .auth import LoginRequired, login_page, safe_next
from .headers import SecurityHeaders
from .render import render

__all__ = ["STATIC_DIR", "install"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_API_PREFIX = "/api/"
_NOT_PAGES = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/static/")
_HEADINGS = {
    401: "Sign in required",
    403: "Not allowed",
    404: "Not found",
    409: "Not available",
    413: "Too large",
    422: "Check the request",
}


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(_API_PREFIX) or path.startswith(_NOT_PAGES):
        return False
    return "text/html" in request.headers.get("accept", "")


def _html_error(request: Request, response: Response) -> Response:
    try:
        body = json.loads(bytes(response.body))
    except (ValueError, TypeError):
        return response
    status = response.status_code
    return render(
        request,
        "error.html.j2",
        status_code=status,
        status=status,
        heading=_HEADINGS.get(status, "Something went wrong" if status >= 500 else "Error"),
        detail=body.get("detail", ""),
        problems=body.get("errors", []),
        # The signed-in project when the page got that far (`auth.page_tenant`): the error
        # keeps the navigation; before sign-in there is none to show.
        project=getattr(request.state, "project", None),
    )


def _with_html(handler: Callable[[Request, Exception], Response]) -> Callable[..., Response]:
    def handle(request: Request, exc: Exception) -> Response:
        response = handler(request, exc)
        return _html_error(request, response) if _wants_html(request) else response

    return handle


def _login_required(request: Request, exc: Exception) -> Response:
    if request.method in ("GET", "HEAD"):
        # safe_next drops a ?token= from the target: it is never copied into the form
        target = safe_next(
            request.url.path + (f"?{request.url.query}" if request.url.query else "")
        )
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    then = exc.next if isinstance(exc, LoginRequired) else None
    return login_page(
        request,
        next=safe_next(then or request.query_params.get("next")),
        error=str(exc),
        status_code=401,
    )


def install(app: FastAPI) -> None:
    """Add the pages, the login form, ``/static``, HTML error pages and the security headers
    (`service.pages.headers.SecurityHeaders`, outermost at the time of the call) to ``app``.

    Call it after `service.errors.register_error_handlers` (it wraps the handlers registered
    there, so the status and message of every error stay those of the one table) and after the
    app's own middleware (so that the headers reach what those answer themselves, too).
    """
    handlers: dict[Any, Callable[..., Any]] = app.exception_handlers
    for key, handler in list(handlers.items()):
        if not inspect.iscoroutinefunction(handler):
            handlers[key] = _with_html(handler)
    app.add_exception_handler(LoginRequired, _login_required)
    app.include_router(auth.router)
    app.include_router(views.router)
    app.include_router(quality.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(SecurityHeaders)
