"""The fault suite's harness: a live service, meter processes, and what the database holds.

* `LiveService` wraps `tests.e2e.liveserver.LiveServer` (``thermoledger-server serve`` in a
  subprocess, SIGKILL-able, restartable on the same port and database) with its token.
* `Sidecar` is a real ``thermoledger sidecar`` process over simulated GPUs, streaming to the
  service: it can be killed with SIGKILL or stopped with SIGTERM (it then flushes, uploads
  for a bounded time and prints its summary table, whose total `Sidecar.stop` parses).
* `fingerprint` (row counts of every table, runs, running totals) is what a refused request
  must leave unchanged (the fuzz suites compare it before and after).
* `stored_seqs` and `ledger_problems` read the database back in SQL: the seqs stored per
  (run, device) with duplicates kept, and the invariants no fault may break (no chunk without
  its device and run, running totals equal to the sums over the chunks, phase totals equal to
  a rebuild from the chunks).
* `upload_until` plays one uploader as fast as the service answers (one new chunk per request,
  now and then a deliberate repeat), recording latencies and every non-200 answer;
  `issue_tokens` gives each uploader a token of its own.

Every wait is bounded (`WAIT_S`); nothing asserts on durations.
"""

from __future__ import annotations

import functools
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.e2e.liveserver import LiveServer
from tests.support.client import bearer
from tests.support.waiting import wait_until as _wait_until
from thermoledger.db.engine import make_engine, make_sessionmaker
from thermoledger.db.models import Chunk, Device, DeviceTotal, Phase, PhaseTotal, Run, Scope
from thermoledger.db.tokens import get_or_create_project
from thermoledger.db.totals import rebuild_totals
from thermoledger.meters.spool import Spool
from thermoledger.service.auth import issue_token

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
_TOTAL_LINE = re.compile(r"^\s+total\s+(?P<energy_j>\d+\.\d+)\s", re.MULTILINE)
_LAUNCHER_VARS = ("LOCAL_RANK", "RANK", "SLURM_", "OMPI_", "PMI_", "MPI_", "TORCHELASTIC_")


#: `tests.support.waiting.wait_until` with the fault suite's longer deadline (work under load).
wait_until = functools.partial(_wait_until, timeout_s=WAIT_S, poll_s=0.05)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100.0 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass
class LiveService:
    """A running service, the database behind it and an ``ingest,read`` token."""

    server: LiveServer
    token: str
    database_url: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    def get(self, path: str) -> dict[str, Any]:
        """``GET /api/v1/<path>``, which must answer 200."""
        response = httpx.get(f"{self.url}/api/v1/{path}", headers=self.headers, timeout=WAIT_S)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def clean_env() -> dict[str, str]:
    """This environment without ``THERMOLEDGER_*`` or launcher variables (rank, SLURM)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("THERMOLEDGER_") and not k.startswith(_LAUNCHER_VARS)
    }


class Sidecar:
    """``thermoledger sidecar`` over ``gpus`` simulated GPUs, in its own process and spool.

    Args:
        service: Where it uploads.
        spool_dir: Its spool directory (a restarted sidecar reuses it).
        run_id: The run it meters (a restarted sidecar reuses it).
        gpus: How many simulated GPUs.
        interval_s: Sampling interval, s.
        chunk_s: Chunk length, s.
    """

    def __init__(
        self,
        service: LiveService,
        spool_dir: Path,
        *,
        run_id: str | None = None,
        gpus: int = 2,
        interval_s: float = 0.02,
        chunk_s: float = 0.2,
    ) -> None:
        self.service = service
        self.spool_dir = spool_dir
        self.run_id = run_id or str(uuid.uuid4())
        self.gpus = gpus
        self.interval_s = interval_s
        self.chunk_s = chunk_s
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Sidecar:
        """Start (or restart) the process."""
        assert self.process is None or self.process.poll() is not None
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "thermoledger.meters.cli",
                "sidecar",
                "--simulate",
                "--gpus",
                ",".join(str(i) for i in range(self.gpus)),
                "--interval",
                str(self.interval_s),
                "--chunk",
                str(self.chunk_s),
                "--server",
                self.service.url,
                "--token",
                self.service.token,
                "--run-id",
                self.run_id,
                "--name",
                "fault-suite",
                "--spool-dir",
                str(self.spool_dir),
                "--upload-timeout",
                str(WAIT_S / 2),
            ],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def counts(self) -> tuple[int, int]:
        """(pending, acked) chunks in its spool; (0, 0) before the spool exists."""
        if not (self.spool_dir / "spool.sqlite3").exists():
            return 0, 0
        with Spool.in_directory(self.spool_dir) as spool:
            counts = spool.counts(self.run_id)
        return counts.pending, counts.acked

    def spooled(self) -> dict[str, list[tuple[int, float]]]:
        """Per device key, (seq, energy_j) of every chunk its spool holds, by seq."""
        out: dict[str, list[tuple[int, float]]] = {}
        with Spool.in_directory(self.spool_dir) as spool:
            for c in spool.chunks(self.run_id):
                out.setdefault(c.key.device_key, []).append((c.key.seq, c.payload["energy_j"]))
        return out

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye, a request in flight cut."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        assert self.process.wait(timeout=WAIT_S) == -signal.SIGKILL
        self.process.communicate(timeout=WAIT_S)

    def stop(self) -> float:
        """SIGTERM, wait (bounded) for the final upload; returns the summary's total energy, J.

        Asserts exit 0 and a complete upload.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=WAIT_S)
        assert self.process.returncode == 0, err
        assert "uploaded:" in err, err
        match = _TOTAL_LINE.search(err)
        assert match is not None, err
        return float(match["energy_j"])

    def ensure_dead(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.communicate(timeout=WAIT_S)


@contextmanager
def sidecars(items: list[Sidecar]) -> Iterator[list[Sidecar]]:
    """Kill whatever is still running when the block ends (a failed test leaves no process)."""
    try:
        yield items
    finally:
        for item in items:
            item.ensure_dead()


# --------------------------------------------------------------------------- the database


@contextmanager
def _engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def table_counts(engine: sa.Engine) -> dict[str, int]:
    """Row count of every table the database holds (reflected: a table a new migration adds
    is counted without a change here)."""
    names = sorted(sa.inspect(engine).get_table_names())
    with engine.connect() as connection:
        return {
            name: connection.execute(
                sa.select(sa.func.count()).select_from(sa.table(name))
            ).scalar_one()
            for name in names
        }


def fingerprint(engine: sa.Engine) -> dict[str, Any]:
    """What a refused write must leave as it was: the row count of every table, every run's
    row (less ``updated_at``, which any touch moves) and every running total."""
    counts = table_counts(engine)
    with engine.connect() as connection:
        runs = connection.execute(sa.select(Run.__table__).order_by(*Run.__table__.primary_key))
        totals = connection.execute(
            sa.select(DeviceTotal.__table__).order_by(*DeviceTotal.__table__.primary_key)
        )
        runs_content = [
            tuple(v for k, v in row._mapping.items() if k != "updated_at") for row in runs
        ]
        totals_content = [tuple(row) for row in totals]
    return {"counts": counts, "runs": runs_content, "totals": totals_content}


@contextmanager
def database(database_url: str) -> Iterator[sa.Engine]:
    """An engine on a live service's database (disposed afterwards)."""
    with _engine(database_url) as engine:
        yield engine


def issue_tokens(database_url: str, count: int, *, project: str = "faults") -> list[str]:
    """``count`` new ``ingest,read`` tokens of ``project`` (created if missing), one meter each."""
    with _engine(database_url) as engine, make_sessionmaker(engine)() as session, session.begin():
        project_id = get_or_create_project(session, slug=project)[0].id
        issued = [
            issue_token(
                session, project_id=project_id, name=f"meter-{i}", scopes=Scope.INGEST | Scope.READ
            )
            for i in range(count)
        ]
    return [i.token for i in issued]


def stored_seqs(database_url: str) -> dict[tuple[str, str], list[int]]:
    """Per (run id, device key ``host/uid``), the seq of every chunk row, duplicates kept."""
    out: dict[tuple[str, str], list[int]] = {}
    with _engine(database_url) as engine, engine.connect() as connection:
        rows = connection.execute(
            sa.select(Chunk.run_id, Device.host, Device.uuid, Chunk.seq)
            .join(Device, Device.id == Chunk.device_id)
            .order_by(Chunk.run_id, Device.id, Chunk.seq)
        ).all()
    for run_id, host, uid, seq in rows:
        out.setdefault((str(run_id), f"{host}/{uid}"), []).append(int(seq))
    return out


def stored_energy_j(database_url: str) -> dict[str, float]:
    """Per run id, the sum of its chunks' energy, J."""
    with _engine(database_url) as engine, engine.connect() as connection:
        rows = connection.execute(
            sa.select(Chunk.run_id, sa.func.sum(Chunk.energy_j)).group_by(Chunk.run_id)
        ).all()
    return {str(run_id): float(total) for run_id, total in rows}


def gaps_in_order(stored: Mapping[tuple[str, str], list[int]]) -> list[str]:
    """Problems with ``stored``: a (run, device) whose seqs are not exactly 0, 1, ..., n-1."""
    return [
        f"run {run} device {key}: seqs {seqs[:10]}... ({len(seqs)} rows, {len(set(seqs))} distinct)"
        for (run, key), seqs in stored.items()
        if seqs != list(range(len(seqs)))
    ]


def ledger_problems(database_url: str) -> list[str]:
    """Invariants of the stored data no fault may break; returns what is broken (empty: none).

    * every chunk's device exists and belongs to the chunk's run; every device's run exists;
    * every device with chunks has one `DeviceTotal` row, and it equals the sums over its
      chunks (count, samples, energy, gaps, resets, span); no total without chunks;
    * every run's phase totals equal what `db.totals.rebuild_totals` derives from the
      chunks (recomputed in a transaction that is rolled back).
    """
    problems: list[str] = []
    with _engine(database_url) as engine:
        with engine.connect() as connection:
            orphans = connection.execute(
                sa.select(sa.func.count())
                .select_from(Chunk)
                .outerjoin(
                    Device, sa.and_(Device.id == Chunk.device_id, Device.run_id == Chunk.run_id)
                )
                .where(Device.id.is_(None))
            ).scalar_one()
            if orphans:
                problems.append(f"{orphans} chunk(s) without their device in their run")
            homeless = connection.execute(
                sa.select(sa.func.count())
                .select_from(Device)
                .outerjoin(Run, Run.id == Device.run_id)
                .where(Run.id.is_(None))
            ).scalar_one()
            if homeless:
                problems.append(f"{homeless} device(s) without their run")
            problems += _device_total_problems(connection)
        problems += _phase_total_problems(engine)
    return problems


def _device_total_problems(connection: sa.Connection) -> list[str]:
    sums = {
        (row.run_id, row.device_id): row
        for row in connection.execute(
            sa.select(
                Chunk.run_id,
                Chunk.device_id,
                sa.func.count().label("chunks"),
                sa.func.sum(Chunk.n).label("samples"),
                sa.func.sum(Chunk.energy_j).label("energy_j"),
                sa.func.sum(Chunk.gap_count).label("gap_count"),
                sa.func.sum(Chunk.reset_count).label("reset_count"),
                sa.func.min(Chunk.t0_s).label("t0_s"),
                sa.func.max(Chunk.t1_s).label("t1_s"),
            ).group_by(Chunk.run_id, Chunk.device_id)
        ).all()
    }
    totals = {
        (row.run_id, row.device_id): row
        for row in connection.execute(
            sa.select(
                DeviceTotal.run_id,
                DeviceTotal.device_id,
                DeviceTotal.chunks,
                DeviceTotal.samples,
                DeviceTotal.energy_j,
                DeviceTotal.gap_count,
                DeviceTotal.reset_count,
                DeviceTotal.t0_s,
                DeviceTotal.t1_s,
            )
        ).all()
    }
    problems = [f"device {key}: a running total without chunks" for key in totals.keys() - sums]
    problems += [f"device {key}: chunks without a running total" for key in sums.keys() - totals]
    for key in sums.keys() & totals.keys():
        want, kept = sums[key], totals[key]
        for name in ("chunks", "samples", "gap_count", "reset_count", "t0_s", "t1_s"):
            if getattr(want, name) != getattr(kept, name):
                problems.append(
                    f"device {key}: total {name} {getattr(kept, name)} != {getattr(want, name)}"
                )
        if not math.isclose(kept.energy_j, want.energy_j, rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"device {key}: total energy {kept.energy_j} J != {want.energy_j} J")
    return problems


def _phase_total_problems(engine: sa.Engine) -> list[str]:
    problems: list[str] = []
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        runs = session.execute(
            sa.select(Run.id, Run.project_id).where(Run.id.in_(sa.select(Phase.run_id).distinct()))
        ).all()
    for run_id, project_id in runs:
        with sessions() as session:
            session.begin()
            kept = _phase_totals(session, run_id)
            rebuild_totals(session, project_id=project_id, run_id=run_id)
            rebuilt = _phase_totals(session, run_id)
            session.rollback()
        if kept.keys() != rebuilt.keys():
            problems.append(f"run {run_id}: phase totals for {sorted(kept)} != {sorted(rebuilt)}")
            continue
        for key, energy_j in kept.items():
            if not math.isclose(energy_j, rebuilt[key], rel_tol=1e-9, abs_tol=1e-6):
                problems.append(
                    f"run {run_id} phase/device {key}: {energy_j} J != {rebuilt[key]} J"
                )
    return problems


def _phase_totals(session: Any, run_id: uuid.UUID) -> dict[tuple[int, int], float]:
    rows = session.execute(
        sa.select(PhaseTotal.phase_id, PhaseTotal.device_id, PhaseTotal.energy_j)
        .join(Phase, Phase.id == PhaseTotal.phase_id)
        .where(Phase.run_id == run_id)
    ).all()
    return {(int(p), int(d)): float(e) for p, d, e in rows}


# --------------------------------------------------------------------------- many uploaders


def wire_device(host: str) -> dict[str, Any]:
    """One GPU of ``host`` as a meter describes it (`meters.wire.DevicePayload`)."""
    return {
        "key": f"{host}/GPU-{host}",
        "host": host,
        "kind": "gpu",
        "index": 0,
        "uid": f"GPU-{host}",
        "name": "NVIDIA H100 80GB HBM3",
        "power_limit_w": 700.0,
        "has_energy_counter": True,
        "power_method": "power_avg",
        "simulated": True,
    }


def wire_chunk(host: str, seq: int, *, n: int = 10, interval_s: float = 0.1) -> dict[str, Any]:
    """Chunk ``seq`` of ``host``'s GPU: ``n`` samples of a steady 300 W, tiling time by seq."""
    power_w = 300.0
    t0_s = 1.76e9 + seq * n * interval_s
    duration_s = n * interval_s
    energy_j = power_w * duration_s
    return {
        "device_key": f"{host}/GPU-{host}",
        "seq": seq,
        "t0_s": t0_s,
        "t1_s": t0_s + duration_s,
        "n": n,
        "method": "power_avg",
        "energy_j": energy_j,
        "energy_low_j": energy_j * 0.95,
        "energy_high_j": energy_j * 1.05,
        "sensor_uncertainty_j": energy_j * 0.05,
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
            "t_s": [t0_s + i * interval_s for i in range(n)],
            "power_w": [power_w] * n,
        },
    }


@dataclass
class Uploaded:
    """What one uploader sent and what the service answered.

    Attributes:
        run_id: Its run.
        host: Its host (its device key is ``host/GPU-host``).
        chunks: Distinct chunks sent, seqs 0..chunks-1.
        stored: Chunks the service said it stored.
        duplicates: Chunks the service said it already had (every deliberate repeat).
        repeats: Chunks sent again on purpose (a retry after a lost answer).
        errors: Every answer that was not 200, and every transport error.
        latencies_s: Wall time of each request, s.
    """

    run_id: str
    host: str
    chunks: int = 0
    stored: int = 0
    duplicates: int = 0
    repeats: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)


def upload_until(
    base_url: str, token: str, deadline_s: float, *, host: str, repeat_every: int = 10
) -> Uploaded:
    """Declare a run, then post one new chunk per request until ``deadline_s`` (monotonic;
    at least one, however late).

    Every ``repeat_every``-th request also carries the previous chunk again, as a meter does
    after a timeout: the service must acknowledge it as a duplicate.
    """
    run_id = str(uuid.uuid4())
    out = Uploaded(run_id=run_id, host=host)
    headers = bearer(token)
    with httpx.Client(base_url=f"{base_url}/api/v1", headers=headers, timeout=WAIT_S) as client:
        declared = client.put(f"/runs/{run_id}", json={"name": host, "kind": "training"})
        if declared.status_code not in (200, 201):
            out.errors.append(f"PUT run: {declared.status_code} {declared.text[:200]}")
            return out
        device = wire_device(host)
        while out.chunks == 0 or time.monotonic() < deadline_s:
            chunks = [wire_chunk(host, out.chunks)]
            repeat = out.chunks > 0 and out.chunks % repeat_every == 0
            if repeat:
                chunks.insert(0, wire_chunk(host, out.chunks - 1))
            body = {"schema": 1, "devices": [device], "chunks": chunks}
            started_s = time.perf_counter()
            try:
                response = client.post(f"/runs/{run_id}/chunks", json=body)
            except httpx.TransportError as e:
                out.errors.append(f"{type(e).__name__}: {e}")
                break
            out.latencies_s.append(time.perf_counter() - started_s)
            if response.status_code != 200:
                out.errors.append(f"POST chunks: {response.status_code} {response.text[:200]}")
                break
            answer = response.json()
            out.stored += int(answer["stored"])
            out.duplicates += int(answer["duplicates"])
            out.repeats += int(repeat)
            out.chunks += 1
    return out
