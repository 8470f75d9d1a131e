"""The FastAPI application factory.

``create_app(settings)`` builds everything from its argument (nothing is read at import): the
engine and session factory for ``settings.database_url``, the error table, the request guard
(`service.guard`: credentials from the headers before a body or a slot, body caps and
deadlines, the in-flight slots), and the routers — probes at the root (``/healthz``,
``/readyz``), the API under ``/api/v1``, OpenAPI at ``/docs``, Prometheus metrics at
``/metrics`` on a registry of this app's own, with every request timed, counted and logged by
`service.metrics.ObservabilityMiddleware`. The engine is disposed when the app shuts down.
Under several worker processes (`app_from_env` with ``PROMETHEUS_MULTIPROC_DIR`` set)
``/metrics`` merges every worker's figures instead, and each worker marks itself dead in the
metrics directory when it shuts down. The lifespan state carries ``Settings.header_timeout_s``
to the server's connections (`service.server`).

Routes are plain ``def`` functions: FastAPI runs them in its thread pool, each with one
synchronous session and one transaction (`service.deps.SessionDep`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from thermoledger.db import migrate
from thermoledger.db.engine import make_engine, make_sessionmaker
from thermoledger.db.types import utcnow

from . import pages
from .auth import Principal, check_token
from .errors import register_error_handlers
from .guard import RequestGuard, TokenGate
from .metrics import MULTIPROC_ENV, ObservabilityMiddleware, ServiceMetrics
from .metrics import router as metrics_router
from .routes import (
    audit,
    chunks,
    disclosures,
    estimates,
    factors,
    health,
    ledger,
    metrics_api,
    models,
    phases,
    plan,
    projects,
    rebasis,
    reports,
    rollups,
    runs,
    tokens,
)
from .server import HEADER_TIMEOUT_STATE
from .settings import Settings

__all__ = ["API_PREFIX", "app_from_env", "create_app"]

API_PREFIX = "/api/v1"
_VERSION = "0.1.0"
#: The sections of /docs, in reading order.
_OPENAPI_TAGS: list[dict[str, Any]] = [
    {"name": "health", "description": "Liveness and readiness."},
    {"name": "projects", "description": "Projects (admin scope)."},
    {"name": "tokens", "description": "API tokens: shown once, stored hashed, revocable."},
    {"name": "runs", "description": "Runs: create or upsert by client UUID, list, finish."},
    {"name": "chunks", "description": "Meter chunk ingest: all or nothing, idempotent."},
    {"name": "phases", "description": "Phases and declared work of a run."},
    {
        "name": "estimates",
        "description": "Estimated runs: device time × power × PUE, never metered.",
    },
    {"name": "reports", "description": "Per-run energy reports (JSON, CSV)."},
    {"name": "ledger", "description": "The append-only, hash-chained sustainability ledger."},
    {"name": "factors", "description": "Versioned emission factors, tariffs, project settings."},
    {"name": "rollups", "description": "Monthly and quarterly totals by project or tag."},
    {"name": "audit", "description": "Ledger verification and auditor exports."},
    {
        "name": "disclosures",
        "description": "EU AI Act, ESRS E1 and SPDX 3.0 AI exports, anchored in the ledger.",
    },
    {"name": "models", "description": "Training to inference amortisation per model."},
    {"name": "planning", "description": "Energy plans before a run."},
    {"name": "quality", "description": "Metrics over runs, joules to a target, fronts, trends."},
]


def create_app(settings: Settings, *, metrics_dir: Path | None = None) -> FastAPI:
    """Build the service for ``settings``.

    The database must already be migrated (``thermoledger-server migrate``); ``/readyz``
    answers 503 until it is.

    Args:
        settings: The process's settings.
        metrics_dir: The multiprocess metrics directory shared by the worker processes of one
            server (`app_from_env` passes ``PROMETHEUS_MULTIPROC_DIR``): ``/metrics`` then
            serves the sum of all workers. None (one process): a registry of this app's own.

    Returns:
        The ASGI application. Use it as a context manager (or under a server) so that its
        engine is disposed at shutdown.

    Raises:
        RuntimeError: ``metrics_dir`` is given but prometheus_client was imported without
            ``PROMETHEUS_MULTIPROC_DIR`` (`service.metrics.ServiceMetrics`).
    """
    metrics = ServiceMetrics(version=_VERSION, multiprocess_dir=metrics_dir)
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        metrics.started()
        try:
            # Lifespan state reaches the server's connections too (`service.server`).
            yield {HEADER_TIMEOUT_STATE: settings.header_timeout_s}
        finally:
            metrics.stopped()
            engine.dispose()

    app = FastAPI(
        title="thermoledger",
        version=_VERSION,
        summary="Per-run energy, compute and carbon ledger for ML jobs",
        openapi_tags=_OPENAPI_TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    sessions = make_sessionmaker(engine)
    app.state.sessionmaker = sessions
    app.state.schema_head = migrate.head()
    register_error_handlers(app)

    def verify(token: str) -> Principal:  # the gate's database look-up, in a worker thread
        with sessions() as session:
            return check_token(session, token=token, settings=settings, now=utcnow())

    app.state.gate = TokenGate(verify, settings=settings)
    app.add_middleware(RequestGuard, settings=settings, gate=app.state.gate)
    # Added last, so outermost: it also times and counts what the guard refuses.
    app.state.metrics = metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)

    app.include_router(health.router)
    app.include_router(metrics_router)
    api = APIRouter(prefix=API_PREFIX)
    # Chunk ingest first: routes are matched in order, and it is the hot path (the docs order
    # their sections by `_OPENAPI_TAGS`, not by this).
    for module in (
        chunks,
        projects,
        tokens,
        runs,
        estimates,
        phases,
        reports,
        ledger,
        rebasis,
        factors,
        rollups,
        audit,
        disclosures,
        models,
        plan,
        metrics_api,
    ):
        api.include_router(module.router)
    app.include_router(api)
    pages.install(app)  # HTML pages, /login, /static; HTML faces for the error table

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(chunks.SCHEMA_COMPONENTS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """The service for the ``THERMOLEDGER_*`` environment: uvicorn's factory when it runs
    several worker processes (``thermoledger-server serve --workers N``), whose metrics are
    merged through ``PROMETHEUS_MULTIPROC_DIR`` when it is set."""
    directory = os.environ.get(MULTIPROC_ENV, "").strip()
    return create_app(Settings(), metrics_dir=Path(directory) if directory else None)
