"""The service's error boundary: one table from domain errors to HTTP status codes.

Routes never catch exceptions. Domain code raises its own errors (`db.errors`' `NotFound`,
`Conflict`, `InvalidInput`; the accounting core's `DimensionMismatch`, `InvalidQuantity`; the
service's own below); `ERROR_TABLE` says what each becomes, and `register_error_handlers`
installs one handler per row. Starlette picks the handler by the exception's MRO, so a subclass
maps like its base unless it has a row of its own.

Every error response has the same JSON shape::

    {"detail": "chunks[3].samples.t_s[17]: ...", "code": "invalid_input",
     "field": "chunks[3].samples.t_s[17]",
     "errors": [{"field": "...", "message": "...", "type": "..."}, ...]}

``field`` is the path of the first refused field (``null`` when none applies); ``errors`` lists
every problem found, up to `MAX_LISTED_ERRORS`. Field paths are written the way a reader finds
them in the request body: ``chunks[3].samples.t_s[17]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from thermoledger.accounting.errors import DimensionMismatch, InvalidQuantity
from thermoledger.db.errors import Conflict, InvalidInput, MigrationError, NotFound

__all__ = [
    "ERROR_TABLE",
    "MAX_LISTED_ERRORS",
    "BodyTimeout",
    "ErrorRule",
    "Forbidden",
    "NotReady",
    "PayloadTooLarge",
    "ServiceError",
    "Unauthenticated",
    "error_response",
    "field_path",
    "register_error_handlers",
    "rule_for",
]

logger = logging.getLogger(__name__)

#: Most problems listed in one error response.
MAX_LISTED_ERRORS = 20


class ServiceError(Exception):
    """Base class of the errors the service layer itself raises."""


class Unauthenticated(PermissionError, ServiceError):
    """No credentials, or credentials that are not valid (unknown, revoked, expired)."""


class Forbidden(PermissionError, ServiceError):
    """Valid credentials without the scope the route needs."""


class PayloadTooLarge(HTTPException, ServiceError):
    """The request body exceeds ``Settings.max_body_bytes`` (413).

    An `HTTPException` so that FastAPI's own body reading passes it through unchanged instead
    of turning it into a 400.
    """

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {max_body_bytes} bytes")


class BodyTimeout(ServiceError):
    """The request body did not arrive in time (408; `service.guard`)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request body did not arrive within {timeout_s:g} s")


class NotReady(RuntimeError, ServiceError):
    """The database is unreachable or its schema is not at the newest migration."""


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """One row of the table: an exception class, its HTTP status and a stable error code."""

    error: type[Exception]
    status: int
    code: str


#: The one mapping from domain errors to HTTP (first match by class wins at registration).
ERROR_TABLE: tuple[ErrorRule, ...] = (
    ErrorRule(Unauthenticated, 401, "unauthenticated"),
    ErrorRule(Forbidden, 403, "forbidden"),
    ErrorRule(NotFound, 404, "not_found"),
    ErrorRule(BodyTimeout, 408, "body_timeout"),
    ErrorRule(Conflict, 409, "conflict"),
    # A constraint the validation above the database let through: refuse, never 500.
    ErrorRule(sa.exc.IntegrityError, 409, "constraint_violation"),
    ErrorRule(PayloadTooLarge, 413, "payload_too_large"),
    # A value the database cannot represent that the schemas let through: refuse, never 500.
    ErrorRule(sa.exc.DataError, 422, "invalid_value"),
    ErrorRule(DimensionMismatch, 422, "dimension_mismatch"),
    ErrorRule(InvalidQuantity, 422, "invalid_quantity"),
    ErrorRule(InvalidInput, 422, "invalid_input"),
    ErrorRule(pydantic.ValidationError, 422, "invalid_payload"),
    ErrorRule(RequestValidationError, 422, "invalid_request"),
    ErrorRule(NotReady, 503, "not_ready"),
    ErrorRule(MigrationError, 503, "not_ready"),
    ErrorRule(sa.exc.OperationalError, 503, "database_unavailable"),
    # No pooled connection came free in time (every one busy): as retryable as the above.
    ErrorRule(sa.exc.TimeoutError, 503, "database_unavailable"),
)

# Where a request part's name leads a pydantic location, it says nothing to the reader.
_LOCATION_ROOTS = frozenset({"body", "query", "path", "header", "cookie"})


def field_path(loc: Sequence[int | str]) -> str:
    """Render a pydantic location as a path: ``("chunks", 3, "t0_s")`` → ``chunks[3].t0_s``."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] in _LOCATION_ROOTS:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem(field: str | None, message: str, kind: str) -> dict[str, Any]:
    return {"field": field, "message": message, "type": kind}


def _pydantic_problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    problems = []
    for error in errors[:MAX_LISTED_ERRORS]:
        path = field_path(error.get("loc", ())) or "body"
        problems.append(_problem(path, str(error.get("msg", "invalid")), str(error.get("type"))))
    return problems


def _problems(exc: Exception, rule: ErrorRule) -> list[dict[str, Any]]:
    if isinstance(exc, RequestValidationError | pydantic.ValidationError):
        return _pydantic_problems(list(exc.errors()))
    if isinstance(exc, InvalidInput):
        return [_problem(p.field, p.message, rule.code) for p in exc.problems][:MAX_LISTED_ERRORS]
    if isinstance(exc, DimensionMismatch):
        message = f"expected a quantity of dimension {exc.expected}, got {exc.given}"
        return [_problem(exc.field, message, rule.code)]
    if isinstance(exc, sa.exc.IntegrityError):
        return [_problem(None, "the request contradicts a database constraint", rule.code)]
    if isinstance(exc, sa.exc.DataError):
        return [_problem(None, "a value is out of the range the database can store", rule.code)]
    if isinstance(exc, sa.exc.OperationalError | sa.exc.TimeoutError):
        return [_problem(None, "the database is unavailable", rule.code)]
    if isinstance(exc, HTTPException):
        return [_problem(None, str(exc.detail), rule.code)]
    field = getattr(exc, "field", None)
    message = str(exc)
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]  # the response puts the field in front itself
    return [_problem(field, message, rule.code)]


def rule_for(exc: Exception) -> ErrorRule | None:
    """The row of `ERROR_TABLE` that maps ``exc`` (by its MRO, as the handlers pick), if any."""
    rules = {rule.error: rule for rule in reversed(ERROR_TABLE)}
    for cls in type(exc).__mro__:
        rule = rules.get(cls)
        if rule is not None:
            return rule
    return None


def error_response(exc: Exception, rule: ErrorRule) -> JSONResponse:
    """The JSON error response for ``exc`` under ``rule`` (see the module docstring)."""
    problems = _problems(exc, rule)
    first = problems[0] if problems else _problem(None, str(exc), rule.code)
    field = first["field"]
    detail = f"{field}: {first['message']}" if field else str(first["message"])
    headers = {"WWW-Authenticate": "Bearer"} if rule.status == 401 else None
    body = {"detail": detail, "code": rule.code, "field": field, "errors": problems}
    return JSONResponse(status_code=rule.status, content=body, headers=headers)


def _handler(rule: ErrorRule) -> Callable[[Request, Exception], JSONResponse]:
    def handle(request: Request, exc: Exception) -> JSONResponse:
        if rule.status >= 500 or isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError):
            logger.warning("%s %s -> %d: %r", request.method, request.url.path, rule.status, exc)
        return error_response(exc, rule)

    return handle


def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    # Framework errors carry their own status (404 unknown path, 405, 413 body too large):
    # they only get the common body shape here.
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    response = error_response(exc, ErrorRule(HTTPException, exc.status_code, code))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def register_error_handlers(app: FastAPI) -> None:
    """Install one exception handler per row of `ERROR_TABLE`, and one for HTTP errors."""
    for rule in ERROR_TABLE:
        app.add_exception_handler(rule.error, _handler(rule))
    app.add_exception_handler(HTTPException, _http_handler)
