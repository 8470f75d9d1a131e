"""Benchmark: chunk ingest end to end (HTTP → service → database) against a raw bulk insert.

Each of ``--uploaders`` threads plays one node's meter: 8 GPUs (``--devices``), 10 s chunks
of 100 samples at 10 Hz (``--samples-per-chunk``), ``--chunks-per-batch`` chunks of every
device per POST (25: 200 chunks, the uploader's default batch), ``--batches`` POSTs, each
thread with its own keep-alive connection (``http.client``: a lean load generator, see
`service_path`), all against one real server started as a subprocess on
a free 127.0.0.1 port (``thermoledger-server serve``: uvicorn, one process; ``--workers N``
runs N uvicorn processes instead). Bodies are serialised before the clock starts (the meter's
cost, not the service's), once per encoding (``--encodings``: JSON lists, base64 float64
columns in JSON, `meters.wire.SAMPLES_F64_BASE64`, and the columnar binary batch the uploader
sends by default, `meters.wire.BATCH_BINARY`); the clock runs from the first POST to the last
acknowledgement. Every batch must come back 200, and every sample must be in the table. The
service path includes everything a real ingest does: auth, parsing, validation, hashing,
sample blob encoding (zlib only with ``--compress``, off as in the server's default), the
COPY, the running totals, the commit.

Databases: the local PostgreSQL server (``THERMOLEDGER_BENCH_DATABASE_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), in a fresh schema dropped afterwards;
and a SQLite file in a temporary directory.

Reference, measured in the same run on the same rows: a **raw bulk insert** into the same
chunk table by the same number of threads, one transaction per batch as the service commits,
with rows prepared before the clock starts (summary columns and raw-sample blobs encoded by
`db.samples` with the server's compression setting): binary ``COPY`` on PostgreSQL, an
``executemany`` INSERT on SQLite. No HTTP, no parsing, no validation, no hashing, no encoding.
``service / raw`` is the fraction of the database's own ingest rate the service keeps.

Targets: >= 1,000,000 samples/s into PostgreSQL, and >= 30 % of raw. The machine is shared
and noisy: raw and service runs alternate ``--rounds`` times and their medians are compared.

Run: ``.venv/bin/python bench/ingest.py [--uploaders 4] [--batches 25] [--backends
postgres,sqlite] [--encodings json,f64le-base64,binary] [--compress] [--workers 1] [--rounds 3]
[--profile]`` (a few minutes by default). ``--profile`` runs the service's request path
in-process (parse → validate → store → commit, no HTTP) under cProfile on PostgreSQL and
prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import pstats
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import httpx
import sqlalchemy as sa
from _support import Server, database, device_payloads, issue_bench_token, meter_chunks
from sqlalchemy.orm import Session

from thermoledger.db.chunks import ingest_chunks
from thermoledger.db.engine import make_engine, make_sessionmaker
from thermoledger.db.models import Chunk, Device, RunKind
from thermoledger.db.records import UNBOUNDED_J, DeviceSpec
from thermoledger.db.runs import upsert_run
from thermoledger.db.tokens import get_or_create_project
from thermoledger.db.types import utcnow
from thermoledger.meters.wire import (
    BATCH_BINARY,
    SAMPLE_ENCODINGS,
    ChunkPayload,
    DevicePayload,
    SampleEncoding,
    content_type,
    dumps_batch,
)
from thermoledger.service.ingest import PreparedBatch, prepare_batch, prepare_binary_batch
from thermoledger.service.schemas import IngestBatchIn

TARGET_SAMPLES_PER_S = 1_000_000
_CHUNK_T = cast(sa.Table, Chunk.__table__)


@dataclass(frozen=True)
class Workload:
    """Per uploader: its devices and its batches (in send order), serialised per encoding."""

    devices: list[list[DevicePayload]]
    batches: list[list[list[ChunkPayload]]]
    bodies: dict[SampleEncoding, list[list[bytes]]]
    samples: int

    def body_bytes(self, encoding: SampleEncoding) -> int:
        return sum(len(b) for bodies in self.bodies[encoding] for b in bodies)


def build_workload(args: argparse.Namespace, encodings: Sequence[SampleEncoding]) -> Workload:
    devices: list[list[DevicePayload]] = []
    batches: list[list[list[ChunkPayload]]] = []
    per_device = args.batches * args.chunks_per_batch
    for u in range(args.uploaders):
        host = f"node-{u}"
        devs = device_payloads(host, args.devices)
        chunks = meter_chunks(
            devs,
            chunks_per_device=per_device,
            samples_per_chunk=args.samples_per_chunk,
            seed=u,
        )
        devices.append(devs)
        k = args.chunks_per_batch
        batches.append(
            [
                [c for device_chunks in chunks for c in device_chunks[b * k : (b + 1) * k]]
                for b in range(args.batches)
            ]
        )
    bodies = {
        encoding: [
            [dumps_batch(devs, batch, samples_encoding=encoding) for batch in bs]
            for devs, bs in zip(devices, batches, strict=True)
        ]
        for encoding in encodings
    }
    samples = args.uploaders * args.batches * args.devices * args.chunks_per_batch
    return Workload(devices, batches, bodies, samples * args.samples_per_chunk)


def _run_threads(count: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` for i < count in threads started together; wall seconds."""
    barrier = threading.Barrier(count + 1)

    def task(i: int) -> None:
        barrier.wait()
        work(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(task, i) for i in range(count)]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
        return time.perf_counter() - start


def service_path(
    url: str, workload: Workload, *, encoding: SampleEncoding, compress: bool, workers: int
) -> float:
    """Seconds to POST every batch through a real server; checks every chunk was stored."""
    token = issue_bench_token(url)
    headers = {"Authorization": f"Bearer {token}"}
    env = {"THERMOLEDGER_COMPRESS_SAMPLES": "true" if compress else "false"}
    with Server(url, env, workers=workers) as server:
        run_id = str(uuid.uuid4())
        created = httpx.put(
            f"{server.base_url}/api/v1/runs/{run_id}",
            json={"name": "bench-ingest", "kind": "training", "simulated": True},
            headers=headers,
        )
        created.raise_for_status()

        def upload(i: int) -> None:
            # The load generator is http.client, one keep-alive connection per thread: httpx
            # costs ~2.5 ms of CPU per 500 kB POST against ~0.7 ms, and on a 2-core machine
            # shared with the server that CPU would be taken from the service under test (the
            # meters' own uploader uses httpx, on their own nodes).
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            sent = {**headers, "Content-Type": content_type(encoding)}
            try:
                for body in workload.bodies[encoding][i]:
                    connection.request("POST", f"/api/v1/runs/{run_id}/chunks", body, sent)
                    response = connection.getresponse()
                    answer = response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{response.status}: {answer[:500]!r}")
                    if json.loads(answer)["duplicates"]:
                        raise RuntimeError("duplicates in a fresh run")
            finally:
                connection.close()

        seconds = _run_threads(len(workload.devices), upload)
    _check_stored(url, run_id, workload)
    return seconds


def _check_stored(url: str, run_id: str, workload: Workload) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            samples = connection.execute(
                sa.select(sa.func.sum(_CHUNK_T.c.n)).where(_CHUNK_T.c.run_id == uuid.UUID(run_id))
            ).scalar_one()
    finally:
        engine.dispose()
    if samples != workload.samples:
        raise RuntimeError(f"stored {samples} samples, expected {workload.samples}")


def _raw_rows(
    url: str, run_id: uuid.UUID, workload: Workload, *, compress: bool
) -> list[list[list[tuple[Any, ...]]]]:
    """The rows the service would write, built before the clock starts: per uploader, per
    batch, one tuple per chunk in `_CHUNK_T` column order. Registers the run and devices."""
    engine = make_engine(url)
    names = [c.name for c in _CHUNK_T.columns]
    out: list[list[list[tuple[Any, ...]]]] = []
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            project, _ = get_or_create_project(session, slug="bench")
            upsert_run(
                session,
                project_id=project.id,
                run_id=run_id,
                name="bench-raw",
                kind=RunKind.TRAINING,
                started_at=utcnow(),
                tags={},
                host_info={},
                simulated=True,
            )
            for devs, batches in zip(workload.devices, workload.batches, strict=True):
                per_batch = []
                for chunks in batches:
                    parsed = IngestBatchIn.model_validate_json(dumps_batch(devs, chunks))
                    prepared = prepare_batch(
                        parsed,
                        max_chunks=10**6,
                        max_samples_per_chunk=10**6,
                        compress_samples=compress,
                    )
                    ids = _device_ids(session, project.id, run_id, prepared.devices)
                    now = utcnow()
                    rows = []
                    for c in prepared.chunks:
                        assert c.blob is not None
                        values = {
                            "run_id": run_id,
                            "device_id": ids[c.device_key],
                            "seq": c.seq,
                            "t0_s": c.t0_s,
                            "t1_s": c.t1_s,
                            "n": c.n,
                            "energy_j": c.energy_j,
                            "sensor_uncertainty_j": c.sensor_uncertainty_j,
                            "bound_below_j": c.bound_below_j,
                            "bound_above_j": min(c.bound_above_j, UNBOUNDED_J),
                            "min_power_w": c.min_power_w,
                            "mean_power_w": c.mean_power_w,
                            "max_power_w": c.max_power_w,
                            "method": c.method.value,
                            "gap_s": c.gap_s,
                            "gap_count": c.gap_count,
                            "reset_count": c.reset_count,
                            "wrap_count": c.wrap_count,
                            "content_hash": c.content_hash,
                            "samples": c.blob,
                            "created_at": now,
                            "mem_busy_frac": c.mem_busy_frac,
                        }
                        rows.append(tuple(values[name] for name in names))
                    per_batch.append(rows)
                out.append(per_batch)
    finally:
        engine.dispose()
    return out


def _device_ids(
    session: Session, project_id: int, run_id: uuid.UUID, specs: Sequence[DeviceSpec]
) -> dict[str, int]:
    """Register the devices (as ingest does, with no chunks) and return their row ids."""
    ingest_chunks(session, project_id=project_id, run_id=run_id, devices=specs, chunks=[])
    rows = session.execute(
        sa.select(Device.host, Device.device_index, Device.id).where(Device.run_id == run_id)
    ).all()
    by_slot = {(host, index): row_id for host, index, row_id in rows}
    return {s.key: by_slot[(s.host, s.index)] for s in specs}


def raw_path(url: str, workload: Workload, *, compress: bool) -> float:
    """Seconds for the same rows through a bare bulk insert, one transaction per batch."""
    run_id = uuid.uuid4()
    rows = _raw_rows(url, run_id, workload, compress=compress)
    engine = make_engine(url)
    names = [c.name for c in _CHUNK_T.columns]
    postgres = engine.dialect.name == "postgresql"
    copy_sql = f"COPY chunk ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
    copy_types = [_pg_type(c) for c in _CHUNK_T.columns]
    insert = _CHUNK_T.insert()

    def write(i: int) -> None:
        with engine.connect() as connection:
            for batch in rows[i]:
                with connection.begin():
                    if postgres:
                        driver = connection.connection.driver_connection
                        assert driver is not None
                        with driver.cursor() as cursor, cursor.copy(copy_sql) as copy:
                            copy.set_types(copy_types)
                            for row in batch:
                                copy.write_row(row)
                    else:
                        params = [dict(zip(names, r, strict=True)) for r in batch]
                        connection.execute(insert, params)

    try:
        seconds = _run_threads(len(rows), write)
    finally:
        engine.dispose()
    _check_stored(url, str(run_id), workload)
    return seconds


def _pg_type(column: sa.Column[Any]) -> str:
    return {
        "run_id": "uuid",
        "device_id": "int8",
        "seq": "int4",
        "n": "int4",
        "gap_count": "int4",
        "reset_count": "int4",
        "wrap_count": "int4",
        "method": "varchar",
        "content_hash": "varchar",
        "samples": "bytea",
        "created_at": "timestamptz",
    }.get(column.name, "float8")


def profile(
    url: str, workload: Workload, *, encoding: SampleEncoding, compress: bool, top: int
) -> None:
    """The request path in-process (no HTTP) under cProfile, on one uploader's batches."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions() as session, session.begin():
        token_project = get_or_create_project(session, slug="bench")[0].id
        run_id = uuid.uuid4()
        upsert_run(
            session,
            project_id=token_project,
            run_id=run_id,
            name="bench-profile",
            kind=RunKind.TRAINING,
            started_at=utcnow(),
            tags={},
            host_info={},
            simulated=True,
        )

    def handle_all() -> None:
        for body in workload.bodies[encoding][0]:
            with sessions() as session, session.begin():
                prepared = _prepare(body, encoding, compress=compress)
                ingest_chunks(
                    session,
                    project_id=token_project,
                    run_id=run_id,
                    devices=prepared.devices,
                    chunks=prepared.chunks,
                    compress_samples=compress,
                )

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(handle_all)
    seconds = time.perf_counter() - start
    engine.dispose()
    samples = workload.samples // len(workload.devices)
    print(
        f"\nprofile ({encoding}): {samples:,} samples in {seconds:.2f} s in-process, cProfile "
        f"({samples / seconds:,.0f} samples/s with profiling overhead)"
    )
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def _prepare(body: bytes, encoding: SampleEncoding, *, compress: bool) -> PreparedBatch:
    limits: dict[str, Any] = {
        "max_chunks": 10**6,
        "max_samples_per_chunk": 10**6,
        "compress_samples": compress,
    }
    if encoding == BATCH_BINARY:
        return prepare_binary_batch(body, **limits)
    return prepare_batch(IngestBatchIn.model_validate_json(body), **limits)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--uploaders", type=int, default=4, help="concurrent uploaders (4)")
    parser.add_argument("--devices", type=int, default=8, help="devices per uploader (8)")
    parser.add_argument("--samples-per-chunk", type=int, default=100, help="(100: 10 s at 10 Hz)")
    parser.add_argument("--chunks-per-batch", type=int, default=25, help="per device (25)")
    parser.add_argument("--batches", type=int, default=25, help="POSTs per uploader (25)")
    parser.add_argument("--backends", default="postgres,sqlite", help="postgres,sqlite")
    parser.add_argument(
        "--encodings",
        default="json,f64le-base64,binary",
        help="batch encodings (json,f64le-base64,binary)",
    )
    parser.add_argument(
        "--compress", action="store_true", help="zlib the raw blobs (off, as the server default)"
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (1)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate raw and service this many times; medians are compared (3)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process path")
    parser.add_argument("--top", type=int, default=25, help="profile rows to print (25)")
    args = parser.parse_args()
    compress = args.compress
    encodings: list[SampleEncoding] = []
    for name in args.encodings.split(","):
        if name.strip() not in SAMPLE_ENCODINGS:
            parser.error(f"unknown encoding {name!r}; use {', '.join(SAMPLE_ENCODINGS)}")
        encodings.append(cast(SampleEncoding, name.strip()))

    t = time.perf_counter()
    workload = build_workload(args, encodings)
    per_batch = args.devices * args.chunks_per_batch * args.samples_per_chunk
    sizes = ", ".join(f"{e} {workload.body_bytes(e) / workload.samples:.1f}" for e in encodings)
    print(
        f"workload  {args.uploaders} uploaders x {args.batches} batches x {args.devices} devices "
        f"x {args.chunks_per_batch} chunks x {args.samples_per_chunk} samples = "
        f"{workload.samples:,} samples ({per_batch:,} per batch; body B/sample: {sizes}; "
        f"blobs {'zlib' if compress else 'uncompressed'}; built in {time.perf_counter() - t:.1f} s)"
    )
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        # Raw and service runs alternate, so a burst of load on the (shared) machine hits both;
        # the medians are compared.
        results: dict[str, list[float]] = {"raw": [], **{e: [] for e in encodings}}
        with database(backend) as url:
            for _ in range(max(args.rounds, 1)):
                results["raw"].append(raw_path(url, workload, compress=compress))
                for encoding in encodings:
                    seconds = service_path(
                        url, workload, encoding=encoding, compress=compress, workers=args.workers
                    )
                    results[encoding].append(seconds)
            if args.profile and backend == "postgres":
                for encoding in encodings:
                    profile(url, workload, encoding=encoding, compress=compress, top=args.top)
        raw_s = statistics.median(results["raw"])
        raw_rate = workload.samples / raw_s
        rounds = len(results["raw"])
        print(f"\n{backend} (median of {rounds} alternating rounds; range in brackets)")
        print(
            f"  {'raw bulk insert':<37} {raw_s:6.2f} s {raw_rate:>12,.0f} samples/s  "
            f"{_range(workload.samples, results['raw'])}"
        )
        for encoding in encodings:
            seconds = statistics.median(results[encoding])
            rate = workload.samples / seconds
            fraction = rate / raw_rate
            verdicts = [f"{fraction:.0%} of raw (>= 30 %: {_verdict(fraction >= 0.30)})"]
            if backend == "postgres":
                verdicts.append(f">= 1M/s: {_verdict(rate >= TARGET_SAMPLES_PER_S)}")
            label = f"HTTP -> service, samples {encoding}"
            print(
                f"  {label:<37} {seconds:6.2f} s {rate:>12,.0f} samples/s  "
                f"{_range(workload.samples, results[encoding])}  {'; '.join(verdicts)}"
            )


def _range(samples: int, seconds: list[float]) -> str:
    rates = [samples / s / 1e6 for s in seconds]
    return f"[{min(rates):.2f}-{max(rates):.2f} M/s]"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    main()
