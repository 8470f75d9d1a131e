"""Benchmark: latency of ``GET /api/v1/runs/{id}/report`` on a large run.

The run: ``--devices`` GPUs (8) x ``--samples`` samples each (10^6, i.e. 27.8 h at 10 Hz),
sealed into 100-sample chunks (``--samples-per-chunk``): 10^4 chunks per device, 8 x 10^4 rows
in all, each with its raw samples as a compressed blob (so the table is as wide as a real one),
plus ``--phases`` phases (10 epochs tiling the run, by default) for the per-phase query.
Summaries come from the meter's kernel (`accounting.integrate.summarize_chunks`) over a
synthetic counter-and-power trace per device.

Reports read the running totals that ingest keeps (`db.models.DeviceTotal`, `PhaseTotal`),
never the chunks; the last line shows, for scale, what deriving them from the chunks costs
(`db.totals.rebuild_totals`, the scan a report would otherwise run).

The run is stored once through the store's bulk path (`db.chunks.ingest_chunks`, in
batches, no HTTP) to save time; on PostgreSQL the table is then ``VACUUM ANALYZE``d, as
autovacuum would have done to a table that size. Then the report is fetched ``--requests``
times (after ``--warmup`` untimed ones) through a real server (``thermoledger-server serve``,
one uvicorn process on a free 127.0.0.1 port) by one client, one request at a time, and the
client-side latencies are summarised as p50 / p95 / p99.

Target: p95 <= 50 ms, on SQLite and on PostgreSQL (``THERMOLEDGER_BENCH_DATABASE_URL``,
default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, in a fresh schema dropped
afterwards).

Run: ``.venv/bin/python bench/report.py [--samples 1e6] [--requests 100] [--backends
postgres,sqlite]``
"""

from __future__ import annotations

import argparse
import hashlib
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa
from _support import (
    LIMIT_W,
    Server,
    database,
    issue_bench_token,
    json_error,
    percentiles_ms,
)

from thermoledger.accounting.integrate import PowerModel, summarize_chunks
from thermoledger.db.chunks import ingest_chunks
from thermoledger.db.engine import make_engine, make_sessionmaker
from thermoledger.db.models import DeviceKind, DevicePowerMethod, EnergyMethod, RunKind
from thermoledger.db.phases import upsert_phase
from thermoledger.db.records import ChunkRow, DeviceSpec
from thermoledger.db.runs import declare_work, upsert_run
from thermoledger.db.tokens import get_or_create_project, get_project
from thermoledger.db.totals import rebuild_totals

TARGET_P95_MS = 50.0
BATCH_CHUNKS = 2_000


def _device_specs(count: int) -> list[DeviceSpec]:
    return [
        DeviceSpec(
            key=f"node-0/GPU-{i}",
            host="node-0",
            kind=DeviceKind.GPU,
            index=i,
            uid=f"GPU-bench-{i}",
            name="NVIDIA H100 80GB HBM3",
            power_limit_w=LIMIT_W,
            has_energy_counter=True,
            power_method=DevicePowerMethod.POWER_AVG,
            simulated=True,
        )
        for i in range(count)
    ]


def _chunk_rows(
    spec: DeviceSpec, *, samples: int, per_chunk: int, t0_s: float, seed: int
) -> Iterator[ChunkRow]:
    """One device's chunks, summarised by the meter's kernel, with their raw columns."""
    rng = np.random.default_rng(seed)
    n = samples + 1  # the last sample bridges the last chunk
    t = t0_s + 0.1 * np.arange(n) + rng.uniform(-1e-3, 1e-3, n)
    power_w = np.round(475.0 + 175.0 * np.sin(np.arange(n) / 3000.0) + rng.normal(0, 15.0, n), 3)
    counter_j = np.round(
        1.2e7 + np.concatenate([[0.0], np.cumsum(np.diff(t) * (power_w[1:] + power_w[:-1]) / 2)]),
        3,
    )
    s = summarize_chunks(
        t,
        power_w,
        chunk_starts=np.arange(0, samples, per_chunk),
        counter_j=counter_j,
        model=PowerModel(max_power_w=LIMIT_W, nominal_interval_s=0.1),
    )
    t_rel = (t - np.repeat(s.t0_s, s.n)[: t.size]).astype(np.float32)
    power32 = power_w.astype(np.float32)
    for k in range(len(s)):
        a = k * per_chunk
        b = a + per_chunk
        yield ChunkRow(
            position=k,
            device_key=spec.key,
            seq=k,
            t0_s=float(s.t0_s[k]),
            t1_s=float(s.t1_s[k]),
            n=per_chunk,
            energy_j=float(s.energy_j[k]),
            sensor_uncertainty_j=float(s.sensor_uncertainty_j[k]),
            bound_below_j=float(s.bound_below_j[k]),
            bound_above_j=float(s.bound_above_j[k]),
            min_power_w=float(s.min_power_w[k]),
            mean_power_w=float(s.mean_power_w[k]),
            max_power_w=float(s.max_power_w[k]),
            method=EnergyMethod.COUNTER,
            gap_s=float(s.gap_s[k]),
            gap_count=int(s.gap_count[k]),
            reset_count=int(s.reset_count[k]),
            wrap_count=int(s.wrap_count[k]),
            content_hash=hashlib.sha256(f"{spec.key}/{k}".encode()).hexdigest(),
            samples={"t_s": t_rel[a:b], "power_w": power32[a:b], "energy_j": counter_j[a:b]},
        )


def load_run(url: str, args: argparse.Namespace) -> tuple[uuid.UUID, int]:
    """Store the run through the store modules; returns its id and the number of chunks."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    run_id = uuid.uuid4()
    t0_s = 1.76e9
    specs = _device_specs(args.devices)
    duration_s = args.samples * 0.1
    stored = 0
    try:
        with sessions() as session, session.begin():
            project, _ = get_or_create_project(session, slug="bench")
            upsert_run(
                session,
                project_id=project.id,
                run_id=run_id,
                name="bench-report",
                kind=RunKind.TRAINING,
                started_at=datetime.fromtimestamp(t0_s, UTC),
                tags={},
                host_info={},
                simulated=True,
            )
            declare_work(
                session, project_id=project.id, run_id=run_id, flops=3e21, flops_dtype="bf16"
            )
            for p in range(args.phases):
                upsert_phase(
                    session,
                    project_id=project.id,
                    run_id=run_id,
                    name=f"epoch-{p}",
                    t0_s=t0_s + duration_s * p / args.phases,
                    t1_s=t0_s + duration_s * (p + 1) / args.phases,
                )
        for d, spec in enumerate(specs):
            rows = _chunk_rows(
                spec, samples=args.samples, per_chunk=args.samples_per_chunk, t0_s=t0_s, seed=d
            )
            while batch := [row for _, row in zip(range(BATCH_CHUNKS), rows, strict=False)]:
                with sessions() as session, session.begin():
                    ingest_chunks(
                        session, project_id=project.id, run_id=run_id, devices=[spec], chunks=batch
                    )
                stored += len(batch)
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE chunk")
                connection.exec_driver_sql("VACUUM ANALYZE device")
                connection.exec_driver_sql("VACUUM ANALYZE phase")
    finally:
        engine.dispose()
    return run_id, stored


def table_bytes(url: str) -> int:
    """On-disk size of the chunk table (PostgreSQL: with TOAST and indexes; SQLite: the file)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                size: int = connection.execute(
                    sa.text("SELECT pg_total_relation_size('chunk')")
                ).scalar_one()
                return size
            pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
            page_size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
            return int(pages) * int(page_size)
    finally:
        engine.dispose()


def rebuild_ms(url: str, run_id: uuid.UUID, repeats: int = 3) -> float:
    """Best time of `db.totals.rebuild_totals` (rolled back): the scan over every chunk that a
    report would need without the running totals."""
    engine = make_engine(url)
    best = float("inf")
    try:
        for _ in range(repeats):
            with make_sessionmaker(engine)() as session, session.begin():
                project_id = get_project(session, slug="bench").id
                start = time.perf_counter()
                rebuild_totals(session, project_id=project_id, run_id=run_id)
                best = min(best, time.perf_counter() - start)
                session.rollback()
    finally:
        engine.dispose()
    return best * 1e3


def measure(
    url: str, run_id: uuid.UUID, args: argparse.Namespace
) -> tuple[list[float], dict[str, Any]]:
    """Latencies of the report request (s), and the last report."""
    token = issue_bench_token(url)
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    report: dict[str, Any] = {}
    with Server(url) as server, httpx.Client(base_url=server.base_url, headers=headers) as client:
        path = f"/api/v1/runs/{run_id}/report"
        for i in range(args.warmup + args.requests):
            start = time.perf_counter()
            response = client.get(path, timeout=60)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {json_error(response)}")
            if i >= args.warmup:
                latencies.append(elapsed)
            report = response.json()
    return latencies, report


def _summary(latencies: Sequence[float]) -> str:
    p50, p95, p99 = percentiles_ms(latencies, (50, 95, 99))
    verdict = "met" if p95 <= TARGET_P95_MS else "MISSED"
    return (
        f"p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  p99 {p99:6.1f} ms  max "
        f"{max(latencies) * 1e3:6.1f} ms  (target p95 <= {TARGET_P95_MS:.0f} ms: {verdict})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="devices (8)")
    parser.add_argument("--samples", type=float, default=1e6, help="samples per device (1e6)")
    parser.add_argument("--samples-per-chunk", type=int, default=100, help="(100)")
    parser.add_argument("--phases", type=int, default=10, help="phases tiling the run (10)")
    parser.add_argument("--requests", type=int, default=100, help="timed requests (100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests first (5)")
    parser.add_argument("--backends", default="postgres,sqlite", help="postgres,sqlite")
    args = parser.parse_args()
    args.samples = int(args.samples)
    chunks = args.devices * (args.samples // args.samples_per_chunk)
    print(
        f"run       {args.devices} devices x {args.samples:,} samples = "
        f"{args.devices * args.samples:,} samples in {chunks:,} chunks of "
        f"{args.samples_per_chunk} samples, {args.phases} phases; "
        f"{args.requests} timed requests after {args.warmup} warm-up"
    )
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        with database(backend) as url:
            start = time.perf_counter()
            run_id, stored = load_run(url, args)
            load_s = time.perf_counter() - start
            size = table_bytes(url)
            latencies, report = measure(url, run_id, args)
            scan_ms = rebuild_ms(url, run_id)
        total = report["energy"]["total"]
        print(f"\n{backend}")
        print(
            f"  stored {stored:,} chunks in {load_s:.1f} s (store bulk path); chunk table "
            f"{size / 1e6:,.0f} MB"
        )
        print(
            f"  report: {total['energy_j'] / 3.6e6:,.1f} kWh "
            f"[{total['energy_low_j'] / 3.6e6:,.1f}, {total['energy_high_j'] / 3.6e6:,.1f}], "
            f"{len(report['energy']['by_device'])} devices, "
            f"{len(report['energy']['by_phase'])} phases"
        )
        print(f"  GET report  {_summary(latencies)}")
        print(
            f"  for scale: re-deriving the totals from the chunks (rebuild_totals) takes "
            f"{scan_ms:,.0f} ms"
        )


if __name__ == "__main__":
    main()
