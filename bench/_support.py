"""Shared pieces of the service benchmarks: databases, a real server, synthetic meter data.

Not a test helper: the benchmarks run against the local PostgreSQL server (a fresh schema,
dropped afterwards) and a SQLite file in a temporary directory, and start the real service
(``thermoledger-server serve``, uvicorn) as a subprocess on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from thermoledger.accounting.integrate import PowerModel, summarize_chunks
from thermoledger.db import migrate
from thermoledger.db.engine import make_engine, make_sessionmaker, normalize_url
from thermoledger.db.models import Scope
from thermoledger.db.tokens import get_or_create_project
from thermoledger.meters.chunker import chunk_payload
from thermoledger.meters.wire import ChunkPayload, DevicePayload
from thermoledger.service.auth import issue_token

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "POSTGRES_ENV",
    "Server",
    "database",
    "device_payloads",
    "issue_bench_token",
    "meter_chunks",
]

POSTGRES_ENV = "THERMOLEDGER_BENCH_DATABASE_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA_PREFIX = "tl_bench_"
LIMIT_W = 700.0


@contextmanager
def _postgres_schema(base_url: str) -> Iterator[str]:
    """A fresh schema, reached through a URL whose search_path names it; dropped afterwards."""
    schema = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        normalize_url(base_url), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        try:
            url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql("SET lock_timeout = '30s'")
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        admin.dispose()


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A migrated, empty database: ``"postgres"`` (fresh schema) or ``"sqlite"`` (temp file)."""
    if backend == "postgres":
        with _postgres_schema(os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES_URL)) as url:
            migrate.upgrade(url)
            yield url
    elif backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tl-bench-") as directory:
            path = Path(directory) / "bench.db"
            sqlite_url = sa.URL.create("sqlite", database=str(path)).render_as_string()
            migrate.upgrade(sqlite_url)
            yield sqlite_url
    else:
        raise ValueError(f"unknown backend {backend!r}")


def issue_bench_token(url: str) -> str:
    """A token with ingest and read scopes for project ``bench`` (created if missing)."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            project, _ = get_or_create_project(session, slug="bench")
            issued = issue_token(
                session, project_id=project.id, name="bench", scopes=Scope.INGEST | Scope.READ
            )
        return issued.token
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def app_from_env() -> Any:
    """The service built from ``THERMOLEDGER_*`` (uvicorn ``--factory`` for several workers)."""
    from thermoledger.service.app import create_app
    from thermoledger.service.settings import Settings

    return create_app(Settings())


class Server:
    """The service under uvicorn in a subprocess on a free loopback port.

    One worker: ``thermoledger-server serve``, exactly what a user runs. More: uvicorn's own
    ``--workers`` (processes sharing the port) with `app_from_env`, as a deployment would run
    several processes or replicas.

    Args:
        database_url: The (migrated) database.
        env: Extra ``THERMOLEDGER_*`` settings for the server process.
        workers: Server processes.
    """

    def __init__(
        self, database_url: str, env: Mapping[str, str] | None = None, *, workers: int = 1
    ) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOLEDGER_")}
        child_env.update(env or {})
        address = ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        if workers == 1:
            command = [
                "-m",
                "thermoledger.service.cli",
                "serve",
                "--database-url",
                database_url,
                *address,
            ]
        else:
            child_env["THERMOLEDGER_DATABASE_URL"] = database_url
            command = [
                "-m",
                "uvicorn",
                "--factory",
                "--app-dir",
                str(Path(__file__).resolve().parent),
                "_support:app_from_env",
                "--workers",
                str(workers),
                *address,
            ]
        self._process = subprocess.Popen([sys.executable, *command], env=child_env)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"server exited with status {self._process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("server did not become ready within 30 s")

    def __exit__(self, *_: object) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def device_payloads(host: str, count: int) -> list[DevicePayload]:
    """``count`` H100s with energy counters on ``host``, as a meter describes them."""
    return [
        {
            "key": f"{host}/GPU-{host}-{i}",
            "host": host,
            "kind": "gpu",
            "index": i,
            "uid": f"GPU-{host}-{i}",
            "name": "NVIDIA H100 80GB HBM3",
            "power_limit_w": LIMIT_W,
            "has_energy_counter": True,
            "power_method": "power_avg",
            "simulated": True,
        }
        for i in range(count)
    ]


def meter_chunks(
    devices: Sequence[DevicePayload],
    *,
    chunks_per_device: int,
    samples_per_chunk: int,
    interval_s: float = 0.1,
    t0_s: float = 1.76e9,
    seed: int = 0,
) -> list[list[ChunkPayload]]:
    """Sealed wire chunks per device, summarised by the meter's own kernel.

    Each device draws 300–650 W with noise, read as NVML does (integer milliwatts, a 1 s
    average that lags the counter), sampled every ``interval_s`` with 1 ms jitter; its energy
    counter (integer millijoules) integrates the true power, so a chunk's counter mean can
    leave its [min, max] power as on real Hopper boards.

    Returns:
        Per device, its chunks in seq order (each with ``samples_per_chunk`` raw samples).
    """
    rng = np.random.default_rng(seed)
    out: list[list[ChunkPayload]] = []
    n = chunks_per_device * samples_per_chunk  # a meter's last chunk ends at its last sample
    for device in devices:
        t = t0_s + interval_s * np.arange(n) + rng.uniform(-1e-3, 1e-3, n)
        phase = rng.uniform(0, 2 * np.pi)
        true_w = 475.0 + 175.0 * np.sin(phase + np.arange(n) / 300.0) + rng.normal(0, 20.0, n)
        window = max(round(1.0 / interval_s), 1)
        lagged = np.convolve(true_w, np.full(window, 1.0 / window), mode="full")[:n]
        lagged[: window - 1] = true_w[: window - 1]
        power_w = np.round(lagged, 3)  # NVML: integer mW
        steps_j = np.diff(t) * (true_w[1:] + true_w[:-1]) / 2.0
        counter_j = np.round(1.2e7 + np.concatenate([[0.0], np.cumsum(steps_j)]), 3)
        s = summarize_chunks(
            t,
            power_w,
            chunk_starts=np.arange(0, n, samples_per_chunk),
            counter_j=counter_j,
            model=PowerModel(max_power_w=LIMIT_W, nominal_interval_s=interval_s),
        )
        chunks: list[ChunkPayload] = []
        for k in range(chunks_per_device):
            a = k * samples_per_chunk
            b = a + samples_per_chunk
            chunks.append(
                chunk_payload(
                    s,
                    k,
                    device_key=device["key"],
                    seq=k,
                    samples={
                        "t_s": t[a:b].tolist(),
                        "power_w": power_w[a:b].tolist(),
                        "energy_j": counter_j[a:b].tolist(),
                    },
                )
            )
        out.append(chunks)
    return out


def percentiles_ms(latencies_s: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Percentiles of latencies in milliseconds (linear interpolation)."""
    values: npt.NDArray[np.float64] = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return [float(np.percentile(values, q)) for q in qs]


def json_error(response: httpx.Response) -> Any:
    """The response's JSON body, or its text when it has none."""
    try:
        return response.json()
    except ValueError:
        return response.text
