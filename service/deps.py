"""FastAPI dependencies, as `Annotated` aliases the routes declare.

* `SessionDep`: one session and **one transaction per request**. It has ``scope="function"``,
  so the commit runs when the route returns and *before* the response is sent: a client never
  gets an acknowledgement for data that a failed commit then lost. An exception in the route
  rolls everything back (all-or-nothing ingest depends on it).
* `PrincipalDep`: who the request acts for (`service.auth.authenticate`).
* `AdminPrincipal`: the same, holding the ``admin`` scope or being the operator (403
  otherwise). Routers that serve it use `AdminFirstRoute`, which refuses a token without that
  scope from the request guard's verdict *before* the body is read or validated, so a
  read-only token cannot probe an admin route's schema through 422s.
* `IngestTenant`, `ReadTenant`: the project of a token holding that scope (403 otherwise).
* `RawBody`: the request body as bytes, for routes that parse it themselves (ingest).

A route whose whole work is synchronous may instead be ``async`` and run it in **one**
thread-pool hop, opening its transaction there (`request_transaction`) and authenticating
inside it (`authenticate_request`), declaring `ingest_precheck` for what the dependencies
decide up front. The dependencies above cost three hops per request (the session's enter and
exit, the principal) besides the route's own: on chunk ingest, the busiest route, solving them
was ~11 % of the server's GIL time under load (py-spy).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from thermoledger.db.models import Scope
from thermoledger.db.types import utcnow

from . import timebounds
from .auth import Principal, Tenant, authenticate
from .errors import Forbidden
from .guard import verified_principal
from .settings import Settings

__all__ = [
    "AdminFirstRoute",
    "AdminPrincipal",
    "IngestTenant",
    "PrincipalDep",
    "RawBody",
    "ReadTenant",
    "SessionDep",
    "SettingsDep",
    "authenticate_request",
    "get_principal",
    "get_session",
    "get_settings",
    "ingest_precheck",
    "request_transaction",
    "require_admin",
]


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with (async: no thread-pool hop for a lookup).

    It also binds their stored time range for the request's schemas (`service.timebounds`):
    every authenticated route resolves it before FastAPI validates the query and the body,
    and being async it runs in the request's own context, where the binding stays.
    """
    settings: Settings = request.app.state.settings
    timebounds.bind(settings)
    return settings


@contextmanager
def request_transaction(request: Request) -> Iterator[Session]:
    """A session of the app's database inside one transaction: committed when the block
    ends, rolled back when it raises."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session, session.begin():
        yield session


def get_session(request: Request) -> Iterator[Session]:
    """A session inside one transaction: committed on return, rolled back on error."""
    with request_transaction(request) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# Declares the scheme in OpenAPI (the "Authorize" button of /docs); the header itself is read
# raw below, so that a malformed one gets our 401 message rather than a silent None.
_bearer_scheme = HTTPBearer(auto_error=False, description="tl_<prefix>_<secret>")


def get_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Principal:
    """Authenticate the request's bearer token (401 when missing or invalid)."""
    return authenticate_request(request, session, settings)


def authenticate_request(request: Request, session: Session, settings: Settings) -> Principal:
    """Who the request's bearer token acts for, checked in full in ``session`` (401 when
    missing or invalid; `service.auth.authenticate`)."""
    return authenticate(
        session,
        authorization=request.headers.get("authorization"),
        settings=settings,
        now=utcnow(),
    )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _check_admin(principal: Principal) -> Principal:
    if principal.is_operator or Scope.ADMIN in principal.scopes:
        return principal
    raise Forbidden("this token lacks the 'admin' scope")


async def require_admin(principal: PrincipalDep) -> Principal:  # async: no thread-pool hop
    """The principal, if it is the operator or holds the ``admin`` scope (403 otherwise)."""
    return _check_admin(principal)


AdminPrincipal = Annotated[Principal, Depends(require_admin)]


def _declares(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return dependant.call is call or any(_declares(d, call) for d in dependant.dependencies)


class AdminFirstRoute(APIRoute):
    """A route that, when it declares `AdminPrincipal`, refuses a token without the ``admin``
    scope before FastAPI reads and validates the body (FastAPI parses the body before it
    solves dependencies, so a dependency alone would answer a bad body with 422 first).

    The check uses the request guard's verdict (`service.guard.verified_principal`); the
    route's own `AdminPrincipal` then authenticates in full. Without a verdict (no valid
    bearer token) nothing is decided here: the dependency answers 401.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not _declares(self.dependant, require_admin):
            return handler

        async def admin_first(request: Request) -> Response:
            principal = verified_principal(request.scope)
            if principal is not None:
                _check_admin(principal)
            return await handler(request)

        return admin_first


def _tenant_with(scope: Scope) -> Callable[[Principal], Coroutine[Any, Any, Tenant]]:
    async def tenant(principal: PrincipalDep) -> Tenant:  # async: no thread-pool hop
        return principal.require(scope)

    tenant.__name__ = f"tenant_with_{str(scope.name).lower()}"
    return tenant


IngestTenant = Annotated[Tenant, Depends(_tenant_with(Scope.INGEST))]
ReadTenant = Annotated[Tenant, Depends(_tenant_with(Scope.READ))]


async def ingest_precheck(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> None:
    """For an ingest route that authenticates inside its own thread-pool hop: refuses a token
    without the ``ingest`` scope from the request guard's verdict, before FastAPI validates
    the path (403 before 422, as with `IngestTenant`), and declares the bearer scheme in
    OpenAPI. Only a pre-check: the route still authenticates in full (`authenticate_request`).
    """
    principal = verified_principal(request.scope)
    if principal is not None:
        principal.require(Scope.INGEST)


async def read_body(request: Request) -> bytes:
    """The raw request body (size-capped by the app's body limit)."""
    return await request.body()


RawBody = Annotated[bytes, Depends(read_body)]
