"""FastAPI dependencies, as `Annotated` aliases the routes declare.

* `SessionDep`: one session and **one transaction per request**. It has ``scope="function"``,
  so the commit runs when the route returns and *before* the response is sent: a client never
  gets an acknowledgement for data that a failed commit then lost. An exception in the route
  rolls everything back (all-or-nothing ingest depends on it).
* `PrincipalDep`: who the request acts for (`service.auth.authenticate`).
* `IngestTenant`, `ReadTenant`: the project of a token holding that scope (403 otherwise).
* `RawBody`: the request body as bytes, for routes that parse it themselves (ingest).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from thermoledger.db.models import Scope
from thermoledger.db.types import utcnow

from .auth import Principal, Tenant, authenticate
from .settings import Settings

__all__ = [
    "IngestTenant",
    "PrincipalDep",
    "RawBody",
    "ReadTenant",
    "SessionDep",
    "SettingsDep",
    "get_principal",
    "get_session",
    "get_settings",
]


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with (async: no thread-pool hop for a lookup)."""
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """A session inside one transaction: committed on return, rolled back on error."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session, session.begin():
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
    return authenticate(
        session,
        authorization=request.headers.get("authorization"),
        settings=settings,
        now=utcnow(),
    )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _tenant_with(scope: Scope) -> Callable[[Principal], Coroutine[Any, Any, Tenant]]:
    async def tenant(principal: PrincipalDep) -> Tenant:  # async: no thread-pool hop
        return principal.require(scope)

    tenant.__name__ = f"tenant_with_{str(scope.name).lower()}"
    return tenant


IngestTenant = Annotated[Tenant, Depends(_tenant_with(Scope.INGEST))]
ReadTenant = Annotated[Tenant, Depends(_tenant_with(Scope.READ))]


async def read_body(request: Request) -> bytes:
    """The raw request body (size-capped by the app's body limit)."""
    return await request.body()


RawBody = Annotated[bytes, Depends(read_body)]
