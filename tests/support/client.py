"""The service under test: clean settings, the test client, projects with tokens, runs.

Tokens are issued the way the CLI issues them (`service.auth.issue_token` in a session), and
every helper asserts the status it expects, so a test reads as the steps a client takes.
"""

from __future__ import annotations

import os
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from thermoledger.db.models import Chunk, Device, Phase
from thermoledger.db.tokens import get_or_create_project
from thermoledger.service.auth import issue_token, parse_scopes
from thermoledger.service.settings import Settings

with warnings.catch_warnings():
    # Starlette's test client asks for the `httpx2` package and warns when it finds `httpx`.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

__all__ = [
    "OPERATOR_TOKEN",
    "Project",
    "TestClient",
    "bearer",
    "clean_settings",
    "create_run",
    "in_process",
    "make_project",
    "row_counts",
]

#: The bootstrap admin token the test services are configured with.
OPERATOR_TOKEN = "operator-" + "x" * 40


def clean_settings(**values: Any) -> Settings:
    """Settings from ``values`` only: THERMOLEDGER_* of the shell must not leak in."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("THERMOLEDGER_"):
                patch.delenv(name)
        return Settings(**values)


def in_process(client: TestClient) -> httpx.MockTransport:
    """An httpx transport that hands each request to the in-process service (for clients of
    the API that take a transport: the meter's uploader, the importers)."""

    def handle(request: httpx.Request) -> httpx.Response:
        answer = client.request(
            request.method,
            request.url.raw_path.decode("ascii"),
            content=request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    return httpx.MockTransport(handle)


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header for a token."""
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Project:
    """A project with one token per scope set, as bearer headers."""

    slug: str
    admin: dict[str, str]
    ingest: dict[str, str]
    read: dict[str, str]
    every: dict[str, str]
    token_ids: dict[str, int]


def make_project(app: FastAPI, slug: str | None = None) -> Project:
    """A new project with tokens, created directly in the database like the CLI does."""
    slug = slug or f"p-{uuid.uuid4().hex[:10]}"
    tokens: dict[str, str] = {}
    ids: dict[str, int] = {}
    with app.state.sessionmaker() as session, session.begin():
        project, _ = get_or_create_project(session, slug=slug)
        for name, scopes in (
            ("admin", ["admin"]),
            ("ingest", ["ingest"]),
            ("read", ["read"]),
            ("every", ["admin", "ingest", "read"]),
        ):
            issued = issue_token(
                session, project_id=project.id, name=name, scopes=parse_scopes(scopes)
            )
            tokens[name] = issued.token
            ids[name] = issued.record.id
    return Project(
        slug=slug,
        admin=bearer(tokens["admin"]),
        ingest=bearer(tokens["ingest"]),
        read=bearer(tokens["read"]),
        every=bearer(tokens["every"]),
        token_ids=ids,
    )


def create_run(client: TestClient, project: Project, **fields: Any) -> str:
    """Declare a new run (``PUT /runs/{id}``, expecting 201); returns its id."""
    run_id = str(uuid.uuid4())
    body = {"name": "train.py", "kind": "training", **fields}
    response = client.put(f"/api/v1/runs/{run_id}", json=body, headers=project.ingest)
    assert response.status_code == 201, response.text
    return run_id


def row_counts(app: FastAPI, run_id: str) -> dict[str, int]:
    """Rows this run owns in the tables ingest and phases write."""
    key = uuid.UUID(run_id)
    with app.state.engine.connect() as connection:
        return {
            model.__tablename__: connection.execute(
                sa.select(sa.func.count()).select_from(model).where(model.run_id == key)
            ).scalar_one()
            for model in (Device, Chunk, Phase)
        }
