"""End to end: a meter uploads to a real service on loopback, which is killed and restarted.

The service runs as a subprocess (`tests.e2e.liveserver.LiveServer`) on SQLite, and on
PostgreSQL when ``THERMOLEDGER_TEST_DATABASE_URL`` is set (under ``CI=true`` it must be). The
meter meters simulated devices on the real clock every 10 ms into 0.2 s chunks. Every wait is
bounded (30 s), so a hang fails instead of blocking; nothing asserts on durations.
"""

from __future__ import annotations

import io
import math
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.liveserver import LiveServer, migrate_and_issue_token
from tests.support import dbutil
from tests.support.client import bearer
from tests.support.waiting import wait_until
from thermoledger.db.engine import make_engine
from thermoledger.db.models import Chunk, Device
from thermoledger.meters import cli
from thermoledger.meters.api import Meter
from thermoledger.meters.backends import Bursty, SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.spool import Spool

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

WAIT_S = 30.0
HOST = "e2e-host"
FLEET = (
    SimulatedDevice(steady(300.0)),
    SimulatedDevice(Bursty(100.0, 600.0, period_s=0.5), has_counter=False, reading="average"),
)


@dataclass
class Service:
    server: LiveServer
    token: str
    database_url: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    def get(self, path: str) -> dict[str, Any]:
        response = httpx.get(f"{self.server.url}/api/v1/{path}", headers=self.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def stored_keys(self, run_id: str) -> list[tuple[str, int]]:
        """(device uid, seq) of every chunk row of the run, duplicates included."""
        engine = make_engine(self.database_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.select(Device.uuid, Chunk.seq)
                    .join(Device, Device.id == Chunk.device_id)
                    .where(Chunk.run_id == uuid.UUID(run_id))
                ).all()
        finally:
            engine.dispose()
        return sorted((str(uid), int(seq)) for uid, seq in rows)


@pytest.fixture(params=dbutil.BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    with dbutil.database_url(request.param, tmp_path) as url:
        token = migrate_and_issue_token(url)
        server = LiveServer(url, tmp_path / "server.log")
        server.start()
        try:
            yield Service(server, token, url)
        finally:
            server.stop()  # before the PostgreSQL schema is dropped


def make_meter(service: Service, spool_dir: Path, **options: Any) -> Meter:
    return Meter(
        "e2e",
        kind="training",
        server=service.server.url,
        token=service.token,
        backend=SimulatedBackend(FLEET),
        interval_s=0.01,
        chunk_s=0.2,
        spool_dir=spool_dir,
        env={},
        host=HOST,
        upload_timeout_s=WAIT_S,
        **options,
    )


def spooled_keys(spool_dir: Path, run_id: str) -> list[tuple[str, int]]:
    with Spool.in_directory(spool_dir) as spool:
        return sorted((c.key.device_key.split("/", 1)[1], c.key.seq) for c in spool.chunks(run_id))


def test_the_report_totals_equal_the_meters_own(service: Service, tmp_path: Path) -> None:
    m = make_meter(service, tmp_path)
    with m:
        with m.phase("train"):
            m.add_tokens(1000)
            m.add_flops(6e12, dtype="bf16")
            wait_until(
                lambda: all(d.chunks_sealed >= 3 for d in m.summary().devices), "three chunks"
            )
        m.declare_model(params=1_000_000)
    assert m.upload is not None
    assert m.upload.complete, m.upload
    summary = m.summary()

    report = service.get(f"runs/{m.run_id}/report")
    assert report["energy"]["total"]["energy_j"] == pytest.approx(summary.energy_j, rel=1e-9)
    by_device = {d["key"]: d["energy_j"] for d in report["energy"]["by_device"]}
    assert by_device == pytest.approx({d.key: d.energy_j for d in summary.devices}, rel=1e-9)
    assert report["run"]["status"] == "finished"
    assert report["run"]["simulated"] is True
    (phase,) = report["energy"]["by_phase"]
    assert phase["name"] == "train"
    assert phase["tokens"] == 1000
    assert phase["flops"] == 6e12
    assert 0 < phase["energy_j"] <= summary.energy_j
    run = service.get(f"runs/{m.run_id}")
    assert run["declared"] == {
        "flops": 6e12,
        "flops_dtype": "bf16",
        "tokens": 1000,
        "model_params": 1_000_000,
    }
    assert run["exit_code"] == 0
    assert service.stored_keys(m.run_id) == spooled_keys(tmp_path, m.run_id)


def test_a_service_killed_mid_run_loses_nothing_and_counts_nothing_twice(
    service: Service, tmp_path: Path
) -> None:
    m = make_meter(service, tmp_path).start()
    assert m.sampling
    spool = Spool.in_directory(tmp_path)
    try:
        wait_until(lambda: spool.counts(m.run_id).acked >= 4, "the first acknowledgements")
        service.server.kill()  # SIGKILL: no shutdown, requests in flight are cut
        sealed = len(spool.chunks(m.run_id))
        wait_until(
            lambda: len(spool.chunks(m.run_id)) >= sealed + 6, "chunks sealed while it is down"
        )
        assert spool.counts(m.run_id).pending > 0  # they wait for the service
        service.server.start()  # same port, same database
        at_restart = {c.key for c in spool.chunks(m.run_id)}
        wait_until(
            lambda: at_restart.isdisjoint(c.key for c in spool.pending(m.run_id, limit=10_000)),
            "the spool to drain after the restart",
        )
    finally:
        spool.close()
        summary = m.stop()
    assert m.upload is not None
    assert m.upload.complete, m.upload

    stored = service.stored_keys(m.run_id)
    assert len(stored) == len(set(stored))  # nothing twice
    assert stored == spooled_keys(tmp_path, m.run_id)  # nothing lost
    report = service.get(f"runs/{m.run_id}/report")
    assert report["energy"]["total"]["energy_j"] == pytest.approx(summary.energy_j, rel=1e-9)
    assert report["run"]["status"] == "finished"


def test_a_wrapped_job_records_phases_while_the_wrapper_meters_the_node(
    service: Service, tmp_path: Path
) -> None:
    """``thermoledger run`` samples; the job's own Meter records phases only: no double count."""
    child = (
        "import time\n"
        "from thermoledger import Meter\n"
        "with Meter('from-the-job') as m:\n"
        "    assert not m.sampling, 'the wrapper meters this node'\n"
        "    with m.phase('epoch-1'):\n"
        "        m.add_tokens(500)\n"
        "        time.sleep(0.5)\n"
    )
    run_id = str(uuid.uuid4())
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "RANK", "SLURM_"))
    }
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(
        [
            "run",
            "--simulate",
            "--gpus",
            "0,1",
            "--interval",
            "0.01",
            "--chunk",
            "0.2",
            "--server",
            service.server.url,
            "--token",
            service.token,
            "--name",
            "wrapped",
            "--run-id",
            run_id,
            "--spool-dir",
            str(tmp_path),
            "--upload-timeout",
            str(WAIT_S),
            "--",
            sys.executable,
            "-c",
            child,
        ],
        env=env,
        out=out,
        err=err,
    )
    assert code == 0, err.getvalue()
    assert "uploaded:" in err.getvalue()
    report = service.get(f"runs/{run_id}/report")
    assert report["run"]["name"] == "wrapped"
    assert len(report["energy"]["by_device"]) == 2  # the wrapper's two devices, once each
    (phase,) = report["energy"]["by_phase"]
    assert phase["name"] == "epoch-1"
    assert phase["tokens"] == 500
    assert service.get(f"runs/{run_id}")["declared"]["tokens"] == 500
    with Spool.in_directory(tmp_path) as spool:
        spooled_j = math.fsum(c.payload["energy_j"] for c in spool.chunks(run_id))
    assert report["energy"]["total"]["energy_j"] == pytest.approx(spooled_j, rel=1e-9)
