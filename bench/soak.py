"""Soak: meters stream to a service that is SIGKILLed and restarted again and again; at the end
every sample that was sent is stored exactly once.

What runs, for ``--minutes``:

* the service (``thermoledger-server serve``, one uvicorn process) on a fixed 127.0.0.1 port
  over ``--backend`` (a SQLite file in a temporary directory, or a fresh schema of the local
  PostgreSQL server, ``THERMOLEDGER_BENCH_DATABASE_URL``, default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, dropped afterwards);
* ``--meters`` real ``thermoledger sidecar`` processes over ``--gpus`` simulated GPUs each
  (sampling every ``--interval`` s, ``--chunk`` s chunks), each with its own spool and run;
* ``--uploaders`` HTTP clients in this process that post one chunk per request every
  ``--upload-interval`` s and retry a request that failed (transport error, 5xx, 429) as a
  meter does, so a request cut by a kill comes back as a duplicate; their answered requests'
  latencies are the ingest latency below;
* every ``--kill-every`` s the service is SIGKILLed, stays down ``--down`` s and is restarted on
  the same port and database.

Then the meters get SIGTERM (they flush and drain their spools), the uploaders finish what they
have in flight, and the database is compared, chunk by chunk, with what was sent: every chunk
a meter's spool sealed and every chunk an uploader posted. Printed: samples (and chunks)
**sent**, **stored**, **lost** (sent, not stored) and **duplicated** (stored more than once, or
stored but never sent); the ingest latency percentiles; what each meter left in its spool.

Target: lost = 0 and duplicated = 0 (DESIGN §9: nothing acknowledged is lost, nothing is
counted twice); the exit status is 1 when they are not, or a spool did not drain.

``--shared-token`` gives every meter and uploader one token (a fleet sharing one secret)
instead of one each. Known limit this script reproduces: with more requests in flight in one
server process than its thread pool has threads (40), a request holding a database lock can
wait for a thread held by requests that wait for that lock, until a 30 s timeout; the service
then all but stops (30 s stalls, "database is locked" or pool-timeout errors, over and over).
``--backend sqlite --uploaders 45`` shows it on SQLite (the write lock), ``--backend postgres
--uploaders 50 --shared-token`` on PostgreSQL (the token's ``last_used_at`` row).

Run: ``.venv/bin/python bench/soak.py [--minutes 2] [--meters 4] [--uploaders 8] [--backend
sqlite|postgres] [--kill-every 20] [--down 2]``. Acknowledged chunks stay in a meter's spool
for an hour, so keep ``--minutes`` under 60.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from _support import database, issue_bench_token

from thermoledger.db.engine import make_engine
from thermoledger.db.models import Chunk, Device
from thermoledger.meters.spool import Spool

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60.0
T0_S = 1.76e9

ChunkKey = tuple[str, str, int]  # run id, device key (host/uid), seq


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _clean_env() -> dict[str, str]:
    skip = ("THERMOLEDGER_", "LOCAL_RANK", "RANK", "SLURM_", "OMPI_", "PMI_", "TORCHELASTIC_")
    return {k: v for k, v in os.environ.items() if not k.startswith(skip)}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100.0 * len(ordered)), 1) - 1]


class RestartableServer:
    """The service in a subprocess on a fixed port, which can be SIGKILLed and started again."""

    def __init__(self, database_url: str, log_path: Path) -> None:
        self.database_url = database_url
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "thermoledger.service.cli",
                    "serve",
                    "--database-url",
                    self.database_url,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=_clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server did not answer within {WAIT_S:.0f} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, requests in flight cut."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=WAIT_S)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class Meter:
    """A ``thermoledger sidecar`` process over simulated GPUs, with its own spool and run."""

    def __init__(self, args: argparse.Namespace, server: RestartableServer, token: str,
                 spool_dir: Path) -> None:  # fmt: skip
        self.run_id = str(uuid.uuid4())
        self.spool_dir = spool_dir
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "thermoledger.meters.cli", "sidecar", "--simulate",
                "--gpus", ",".join(str(i) for i in range(args.gpus)),
                "--interval", str(args.interval), "--chunk", str(args.chunk),
                "--server", server.url, "--token", token, "--run-id", self.run_id,
                "--name", "soak", "--spool-dir", str(spool_dir),
                "--upload-timeout", str(WAIT_S), "-q",
            ],
            cwd=ROOT,
            env=_clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def stop(self) -> tuple[int, str]:
        """SIGTERM and wait for the final upload; returns the exit status and stderr."""
        self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=2 * WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err

    def sealed(self) -> tuple[dict[ChunkKey, int], int]:
        """Every chunk its spool holds (key → samples), and how many are still pending."""
        with Spool.in_directory(self.spool_dir) as spool:
            chunks = spool.chunks(self.run_id)
            pending = spool.counts(self.run_id).pending
        return {(self.run_id, c.key.device_key, c.key.seq): c.payload["n"] for c in chunks}, pending


@dataclass
class Uploader:
    """One HTTP client posting one chunk per request, retrying failures like a meter."""

    host: str
    token: str
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sent: dict[ChunkKey, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    retried: int = 0
    duplicate_acks: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self, base_url: str, stop: threading.Event, samples: int, pause_s: float) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        device = _device(self.host)
        with httpx.Client(base_url=f"{base_url}/api/v1", headers=headers, timeout=30.0) as client:
            if not self._until_answered(
                stop, lambda: client.put(f"/runs/{self.run_id}", json={"name": self.host})
            ):
                return
            seq = 0
            while not stop.is_set() and not self.errors:
                chunk = _chunk(self.host, seq, samples)
                self.sent[(self.run_id, chunk["device_key"], seq)] = samples
                body = {"schema": 1, "devices": [device], "chunks": [chunk]}
                response = self._until_answered(
                    stop, lambda b=body: client.post(f"/runs/{self.run_id}/chunks", json=b)
                )
                if response is None:
                    return
                self.duplicate_acks += int(response.json()["duplicates"])
                seq += 1
                stop.wait(pause_s)

    def _until_answered(self, stop: threading.Event, send: Any) -> httpx.Response | None:
        """Send until the service answers 2xx (retrying what a meter retries); None on a
        refusal (recorded as an error). Once ``stop`` is set, retries for at most a minute."""
        delay_s = 0.1
        give_up_s = math.inf
        while True:
            started_s = time.perf_counter()
            try:
                response = send()
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code < 300:
                self.latencies_s.append(time.perf_counter() - started_s)
                return response  # type: ignore[no-any-return]
            if response is not None and response.status_code < 500 and response.status_code != 429:
                self.errors.append(f"{response.status_code}: {response.text[:300]}")
                return None
            self.retried += 1
            if stop.is_set():
                give_up_s = min(give_up_s, time.monotonic() + WAIT_S)
                if time.monotonic() > give_up_s:
                    self.errors.append("the service did not answer for a minute at the end")
                    return None
            time.sleep(delay_s)
            delay_s = min(2 * delay_s, 2.0)


def _device(host: str) -> dict[str, Any]:
    return {
        "key": f"{host}/GPU-{host}", "host": host, "kind": "gpu", "index": 0,
        "uid": f"GPU-{host}", "name": "NVIDIA H100 80GB HBM3", "power_limit_w": 700.0,
        "has_energy_counter": True, "power_method": "power_avg", "simulated": True,
    }  # fmt: skip


def _chunk(host: str, seq: int, n: int, interval_s: float = 0.1) -> dict[str, Any]:
    """Chunk ``seq`` of a steady 300 W over ``n`` samples, tiling time by seq."""
    t0_s = T0_S + seq * n * interval_s
    energy_j = 300.0 * n * interval_s
    return {
        "device_key": f"{host}/GPU-{host}", "seq": seq, "t0_s": t0_s,
        "t1_s": t0_s + n * interval_s, "n": n, "method": "power_avg", "energy_j": energy_j,
        "energy_low_j": 0.95 * energy_j, "energy_high_j": 1.05 * energy_j,
        "sensor_uncertainty_j": 0.05 * energy_j, "bound_below_j": 0.0, "bound_above_j": 0.0,
        "min_power_w": 300.0, "mean_power_w": 300.0, "max_power_w": 300.0, "gap_s": 0.0,
        "gap_count": 0, "reset_count": 0, "wrap_count": 0,
        "samples": {"t_s": [t0_s + i * interval_s for i in range(n)], "power_w": [300.0] * n},
    }  # fmt: skip


def _stored(database_url: str, run_ids: set[str]) -> dict[ChunkKey, list[int]]:
    """Every chunk row of these runs: key → the sample count of each row (two rows: twice)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(Chunk.run_id, Device.host, Device.uuid, Chunk.seq, Chunk.n)
                .join(Device, Device.id == Chunk.device_id)
                .where(Chunk.run_id.in_([uuid.UUID(r) for r in run_ids]))
            ).all()
    finally:
        engine.dispose()
    out: dict[ChunkKey, list[int]] = {}
    for run_id, host, uid, seq, n in rows:
        out.setdefault((str(run_id), f"{host}/{uid}", int(seq)), []).append(int(n))
    return out


def soak(args: argparse.Namespace, database_url: str, workdir: Path) -> int:
    """Run the soak against ``database_url``; print the figures; return the exit status."""
    clients = args.meters + args.uploaders
    if args.shared_token:
        tokens = [issue_bench_token(database_url)] * clients
    else:
        tokens = [issue_bench_token(database_url) for _ in range(clients)]
    server = RestartableServer(database_url, workdir / "server.log")
    server.start()
    meters = [Meter(args, server, tokens[i], workdir / f"meter-{i}") for i in range(args.meters)]
    uploaders = [Uploader(f"soak-{i}", tokens[args.meters + i]) for i in range(args.uploaders)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=u.run, args=(server.url, stop, args.samples, args.upload_interval))
        for u in uploaders
    ]
    for thread in threads:
        thread.start()
    started_s = time.monotonic()
    end_s = started_s + 60.0 * args.minutes
    kills = 0
    try:
        while (next_kill_s := started_s + (kills + 1) * args.kill_every) + args.down < end_s:
            time.sleep(max(next_kill_s - time.monotonic(), 0.0))
            server.kill()
            kills += 1
            time.sleep(args.down)
            server.start()
        time.sleep(max(end_s - time.monotonic(), 0.0))
        stop.set()
        for thread in threads:
            thread.join()
        meter_exits = [m.stop() for m in meters]
        elapsed_s = time.monotonic() - started_s
    finally:
        stop.set()
        for m in meters:
            if m.process.poll() is None:
                m.process.kill()
        server.stop()

    sent: dict[ChunkKey, int] = {}
    pending = 0
    for m in meters:
        sealed, left = m.sealed()
        sent.update(sealed)
        pending += left
    for u in uploaders:
        sent.update(u.sent)
    stored = _stored(database_url, {k[0] for k in sent} | {u.run_id for u in uploaders})
    lost = {k: n for k, n in sent.items() if k not in stored}
    duplicated = sum(sum(ns[1:]) for ns in stored.values()) + sum(
        sum(ns) for k, ns in stored.items() if k not in sent
    )
    wrong_n = [k for k, ns in stored.items() if k in sent and ns[0] != sent[k]]

    errors = [f"{u.host}: {e}" for u in uploaders for e in u.errors]
    errors += [f"meter {i}: exit {code}: {err.strip()[-300:]}"
               for i, (code, err) in enumerate(meter_exits) if code != 0]  # fmt: skip
    latencies_ms = [1e3 * s for u in uploaders for s in u.latencies_s]
    chunks_by_kind = Counter("meter" if k[0] in {m.run_id for m in meters} else "uploader"
                             for k in sent)  # fmt: skip
    ok = not lost and duplicated == 0 and not wrong_n and pending == 0 and not errors
    tokens_used = "one shared token" if args.shared_token else "a token each"
    print(
        f"soak      {args.backend}, {elapsed_s / 60:.1f} min: {args.meters} meters x {args.gpus} "
        f"simulated GPUs ({args.interval:g} s samples, {args.chunk:g} s chunks) + "
        f"{args.uploaders} uploaders ({args.samples} samples per chunk every "
        f"{args.upload_interval:g} s), {tokens_used}"
        f"; service SIGKILLed {kills} time(s), {args.down:g} s down each"
    )
    print(
        f"samples   sent {sum(sent.values()):,}  stored {sum(sum(ns) for ns in stored.values()):,}"
        f"  lost {sum(lost.values()):,}  duplicated {duplicated:,}"
        f"   (target: lost 0, duplicated 0: {'met' if ok else 'MISSED'})"
    )
    print(
        f"chunks    sent {len(sent):,} ({chunks_by_kind['meter']:,} by meters, "
        f"{chunks_by_kind['uploader']:,} by uploaders)  stored {len(stored):,}  lost {len(lost):,}"
        f"  stored twice {sum(len(ns) > 1 for ns in stored.values())}  wrong sample count "
        f"{len(wrong_n)}"
    )
    print(
        f"ingest    {len(latencies_ms):,} requests answered; latency p50 "
        f"{_percentile(latencies_ms, 50):.1f} ms, p90 {_percentile(latencies_ms, 90):.1f} ms, "
        f"p99 {_percentile(latencies_ms, 99):.1f} ms, max {max(latencies_ms, default=math.nan):.1f}"
        f" ms; {sum(u.retried for u in uploaders):,} attempts failed (down, 5xx, 429) and were "
        f"retried ({sum(u.duplicate_acks for u in uploaders)} came back as duplicates)"
    )
    print(f"spools    {pending} chunk(s) left unsent in the meters' spools (target 0)")
    for line in errors[:10]:
        print(f"error     {line}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="how long (2)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--meters", type=int, default=4, help="sidecar processes (4)")
    parser.add_argument("--gpus", type=int, default=2, help="simulated GPUs per meter (2)")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling interval, s (0.1)")
    parser.add_argument("--chunk", type=float, default=1.0, help="chunk length, s (1)")
    parser.add_argument("--uploaders", type=int, default=8, help="HTTP uploaders (8)")
    parser.add_argument("--samples", type=int, default=100, help="samples per uploaded chunk")
    parser.add_argument("--upload-interval", type=float, default=0.1, help="s between posts")
    parser.add_argument("--kill-every", type=float, default=20.0, help="s between kills (20)")
    parser.add_argument("--down", type=float, default=2.0, help="s the service stays down (2)")
    parser.add_argument("--shared-token", action="store_true", help="one token for everyone")
    args = parser.parse_args()
    if args.kill_every <= args.down:
        parser.error("--kill-every must exceed --down")
    with database(args.backend) as url, tempfile.TemporaryDirectory(prefix="tl-soak-") as tmp:
        status = soak(args, url, Path(tmp))
    sys.exit(status)


if __name__ == "__main__":
    main()
