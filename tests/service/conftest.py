"""Fixtures for the service tests: the real app on SQLite and on PostgreSQL.

Each test module gets one migrated database per backend (module scope keeps the folder fast);
tests stay independent by using fresh run ids and fresh projects, and assert row counts per run.
Tokens are issued the way the CLI issues them (`service.auth.issue_token` in a session).
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from tests import dbutil
from thermoledger.db import migrate
from thermoledger.db.models import Chunk, Device, Phase
from thermoledger.service.app import create_app
from thermoledger.service.auth import issue_token, parse_scopes
from thermoledger.service.settings import Settings

with warnings.catch_warnings():
    # Starlette's test client asks for the `httpx2` package and warns when it finds `httpx`.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

OPERATOR_TOKEN = "operator-" + "x" * 40
T0_S = 1_760_000_000.0
LIMIT_W = 700.0


def _clean_settings(**values: Any) -> Settings:
    """Settings from ``values`` only: THERMOLEDGER_* of the shell must not leak in."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("THERMOLEDGER_"):
                patch.delenv(name)
        return Settings(**values)


@pytest.fixture(scope="module", params=dbutil.BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database for this module: a SQLite file, or a throw-away PostgreSQL schema."""
    directory: Path = tmp_path_factory.mktemp("service-db")
    with dbutil.database_url(request.param, directory) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="module")
def settings(database_url: str) -> Settings:
    return _clean_settings(
        database_url=database_url,
        max_body_bytes=256 * 1024,
        max_chunks_per_batch=50,
        max_samples_per_chunk=1_000,
        bootstrap_admin_token=OPERATOR_TOKEN,
    )


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a bug must show as the 500 a real client would get.
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@dataclass(frozen=True)
class Project:
    """A project with one token per scope set, as bearer headers."""

    slug: str
    admin: dict[str, str]
    ingest: dict[str, str]
    read: dict[str, str]
    every: dict[str, str]
    token_ids: dict[str, int]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_project(app: FastAPI, slug: str | None = None) -> Project:
    """A new project with tokens, created directly in the database like the CLI does."""
    from thermoledger.db.tokens import get_or_create_project

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


@pytest.fixture
def project(app: FastAPI) -> Project:
    return make_project(app)


@pytest.fixture
def other(app: FastAPI) -> Project:
    return make_project(app)


def create_run(client: TestClient, project: Project, **fields: Any) -> str:
    run_id = str(uuid.uuid4())
    body = {"name": "train.py", "kind": "training", **fields}
    response = client.put(f"/api/v1/runs/{run_id}", json=body, headers=project.ingest)
    assert response.status_code == 201, response.text
    return run_id


@pytest.fixture
def run_id(client: TestClient, project: Project) -> str:
    return create_run(client, project)


# --------------------------------------------------------------------------- ingest payloads


def device(
    index: int = 0, *, host: str = "node-0", limit_w: float | None = LIMIT_W
) -> dict[str, Any]:
    """A wire device (`meters.wire.DevicePayload`)."""
    return {
        "key": f"{host}/gpu{index}",
        "host": host,
        "kind": "gpu",
        "index": index,
        "uid": f"GPU-{host}-{index}",
        "name": "NVIDIA H100 80GB HBM3",
        "power_limit_w": limit_w,
        "has_energy_counter": True,
        "power_method": "power_avg",
        "simulated": False,
    }


def chunk(
    seq: int,
    *,
    device_index: int = 0,
    host: str = "node-0",
    power_w: float = 300.0,
    n: int = 10,
    interval_s: float = 1.0,
    t0_s: float | None = None,
) -> dict[str, Any]:
    """A wire chunk of constant power: chunk ``seq`` covers [T0 + seq·n·dt, T0 + (seq+1)·n·dt).

    Its energy is exactly power × duration (left-sample rule: the last interval reaches the
    next chunk's first sample), with a ±2 % band.
    """
    start = T0_S + seq * n * interval_s if t0_s is None else t0_s
    duration_s = n * interval_s
    energy_j = power_w * duration_s
    return {
        "device_key": f"{host}/gpu{device_index}",
        "seq": seq,
        "t0_s": start,
        "t1_s": start + duration_s,
        "n": n,
        "method": "counter",
        "energy_j": energy_j,
        "energy_low_j": energy_j * 0.98,
        "energy_high_j": energy_j * 1.02,
        "sensor_uncertainty_j": energy_j * 0.02,
        "bound_below_j": 0.0,
        "bound_above_j": 0.0,
        "min_power_w": power_w,
        "mean_power_w": power_w,
        "max_power_w": power_w,
        "gap_s": 0.0,
        "gap_count": 0,
        "reset_count": 0,
        "wrap_count": 0,
        "samples": {
            "t_s": [start + i * interval_s for i in range(n)],
            "power_w": [power_w] * n,
        },
    }


def batch(
    chunks: list[dict[str, Any]], devices: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A wire batch (`meters.wire.IngestBatch`); devices default to those the chunks name."""
    if devices is None:
        seen: dict[str, dict[str, Any]] = {}
        for c in chunks:
            host, gpu = c["device_key"].split("/")
            seen.setdefault(c["device_key"], device(int(gpu.removeprefix("gpu")), host=host))
        devices = list(seen.values())
    return {"schema": 1, "devices": devices, "chunks": chunks}


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
