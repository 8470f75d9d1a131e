"""NVML faults while a job runs: the job is unaffected, the gaps are labelled, the report says so.

End to end: ``thermoledger run`` over a scripted fake driver (`tests.faults.nvml_meter`: a
transient NotSupported, a GPU lost, a counter reset, slow calls) wraps a job that does fixed
work, prints its result and exits 3, and uploads to a live service. The wrapper must return the
job's exit code and pass its output through untouched; every device keeps its numbering; the
healthy GPU is sampled to the end; the gaps and the reset are in the stored chunks and in the
report's notes.

Slow calls, on a manual clock the sampler's threads share (`tests.meters.shared_clock`): a GPU
whose calls take 0.3 s is read when it answers, its missed ticks labelled ``slow`` and its
counter spanning the gaps, while the other thread keeps every other GPU on schedule, with no gap
and no deadline skipped; it recovers when the slow stretch ends. A call that never returns costs
one thread, not the sampling, and `Sampler.stop` returns without it, so the wrapper finishes.

Single-tick fault semantics (which NVML error becomes which status, the counter spanning a
transient gap, a lost GPU's last chunk sealed in time) are unit-tested in
``tests/meters/test_nvml.py`` and ``tests/meters/test_sampler.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.faults import nvml_meter
from tests.faults.harness import ROOT, WAIT_S, LiveService, clean_env, gaps_in_order
from tests.meters.shared_clock import SharedClock
from thermoledger.db.engine import make_engine
from thermoledger.db.models import Chunk, Device
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.backends.simulated import steady
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.spool import Spool
from thermoledger.meters.testing.fake_pynvml import FakeGpu, FakeNvml, SlowCall, default_uuid, h100

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

INTERVAL_S = 0.02
CHUNK_S = 0.25
JOB_EXIT = 3
WORK_ROUNDS = 50_000
JOB = f"""
import hashlib, sys, time
start_s = time.perf_counter()
digest = b"thermoledger"
for _ in range({WORK_ROUNDS}):
    digest = hashlib.sha256(digest).digest()
time.sleep(3.0)  # outlast every scripted fault
print(digest.hex(), flush=True)
print(f"job: {{time.perf_counter() - start_s:.3f}} s", file=sys.stderr)
sys.exit({JOB_EXIT})
"""


def _expected_digest() -> str:
    digest = b"thermoledger"
    for _ in range(WORK_ROUNDS):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def _chunks_by_gpu(database_url: str, run_id: str) -> dict[int, list[Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(
                    Device.device_index,
                    Chunk.seq,
                    Chunk.t0_s,
                    Chunk.t1_s,
                    Chunk.gap_count,
                    Chunk.gap_s,
                    Chunk.reset_count,
                )
                .join(Device, Device.id == Chunk.device_id)
                .where(Chunk.run_id == uuid.UUID(run_id))
                .order_by(Device.device_index, Chunk.seq)
            ).all()
    finally:
        engine.dispose()
    out: dict[int, list[Any]] = {}
    for row in rows:
        out.setdefault(int(row.device_index), []).append(row)
    return out


def test_nvml_faults_leave_the_job_alone_and_are_labelled_up_to_the_report(
    sqlite_service: LiveService, tmp_path: Path
) -> None:
    service = sqlite_service
    job = tmp_path / "job.py"
    job.write_text(JOB)
    run_id = str(uuid.uuid4())
    env = clean_env()
    env.pop("CUDA_VISIBLE_DEVICES", None)
    wrapper = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.faults.nvml_meter",
            "run",
            "--backend",
            "nvml",
            "--interval",
            str(INTERVAL_S),
            "--chunk",
            str(CHUNK_S),
            "--server",
            service.url,
            "--token",
            service.token,
            "--run-id",
            run_id,
            "--spool-dir",
            str(tmp_path / "spool"),
            "--upload-timeout",
            str(WAIT_S / 2),
            "--",
            sys.executable,
            str(job),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    # The job: its exit code and its output, exactly as without the meter.
    assert wrapper.returncode == JOB_EXIT, wrapper.stderr
    assert wrapper.stdout == _expected_digest() + "\n"
    assert "job: " in wrapper.stderr
    # The wrapper's own summary labels what it missed, per device.
    assert "missed readings: lost" in wrapper.stderr
    assert "missed readings: error" in wrapper.stderr
    assert "uploaded:" in wrapper.stderr

    host = socket.gethostname()
    key = {i: f"{host}/{default_uuid(i)}" for i in range(len(nvml_meter.FLEET))}
    chunks = _chunks_by_gpu(service.database_url, run_id)
    assert sorted(chunks) == list(range(len(nvml_meter.FLEET)))  # every GPU, the lost one too
    assert not gaps_in_order({("run", key[i]): [c.seq for c in cs] for i, cs in chunks.items()})
    end_s = {i: cs[-1].t1_s for i, cs in chunks.items()}
    start_s = min(cs[0].t0_s for cs in chunks.values())
    # The healthy GPU is metered to the end; the lost one stops where it fell off the bus.
    assert end_s[nvml_meter.CONTROL] == pytest.approx(max(end_s.values()), abs=INTERVAL_S)
    assert end_s[nvml_meter.LOST] < end_s[nvml_meter.CONTROL] - 1.0
    assert end_s[nvml_meter.LOST] - start_s < nvml_meter.LOST_AT_S + CHUNK_S
    # The refusal and the slow calls are gaps inside chunks; the reload is a counted reset.
    assert sum(c.gap_count for c in chunks[nvml_meter.REFUSING]) >= 1
    assert sum(c.gap_count for c in chunks[nvml_meter.SLOW]) >= 1
    assert sum(c.reset_count for c in chunks[nvml_meter.RELOADED]) >= 1

    report = service.get(f"runs/{run_id}/report")
    notes = report["notes"]
    for gpu in (nvml_meter.REFUSING, nvml_meter.SLOW):
        assert any(n.startswith(f"{key[gpu]}: ") and "sampling gap(s)" in n for n in notes), notes
    assert any(n.startswith(f"{key[nvml_meter.RELOADED]}: 1 counter reset(s)") for n in notes)
    by_device = {d["key"]: d for d in report["energy"]["by_device"]}
    for gpu, power_w in ((nvml_meter.CONTROL, 300.0), (nvml_meter.REFUSING, 350.0)):
        d = by_device[key[gpu]]
        # energy from the counter, which spans the gaps: exact up to the mJ resolution
        assert d["energy_j"] == pytest.approx(power_w * d["duration_s"], rel=1e-3)
    reloaded = by_device[key[nvml_meter.RELOADED]]
    true_j = 450.0 * reloaded["duration_s"]
    assert reloaded["energy_low_j"] <= true_j <= reloaded["energy_high_j"]
    run = service.get(f"runs/{run_id}")
    assert (run["status"], run["exit_code"]) == ("failed", JOB_EXIT)


def test_the_report_notes_a_gpu_lost_mid_run(sqlite_service: LiveService, tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    env = clean_env()
    env.pop("CUDA_VISIBLE_DEVICES", None)
    subprocess.run(
        [
            sys.executable, "-m", "tests.faults.nvml_meter", "run", "--backend", "nvml",
            "--interval", str(INTERVAL_S), "--chunk", str(CHUNK_S),
            "--server", sqlite_service.url, "--token", sqlite_service.token,
            "--run-id", run_id, "--spool-dir", str(tmp_path / "spool"),
            "--upload-timeout", str(WAIT_S / 2), "-q",
            "--", sys.executable, "-c", "import time; time.sleep(2.5)",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S, check=True,
    )  # fmt: skip
    notes = "\n".join(sqlite_service.get(f"runs/{run_id}/report")["notes"])
    lost_key = f"{socket.gethostname()}/{default_uuid(nvml_meter.LOST)}"
    assert any(lost_key in line and "lost" in line for line in notes.splitlines()), notes


# --------------------------------------------------------------------------- slow calls

SLOW_FROM_S = 2.0
SLOW_UNTIL_S = 4.0
RUN_S = 7.0
TICK_S = 0.05


def _run_slow(tmp_path: Path, gpus: list[FakeGpu]) -> tuple[Sampler, list[dict[str, Any]], float]:
    """Sample ``gpus`` with the sampler's own threads for `RUN_S` seconds of shared manual time.

    Returns the sampler (stopped), the chunks of every device, and the unix time of the fake
    driver's load. A slow call waits on its own thread while the other thread goes on
    (`SharedClock`), as it would in real time, with no real sleeping.
    """
    clock = SharedClock(lambda thread: thread.name == "thermoledger-sampler-slow")
    with clock:
        fake = FakeNvml(gpus, clock=clock)
        backend = NvmlBackend(nvml=fake, clock=clock, env={})
        with Spool(tmp_path / "spool.sqlite3") as spool:
            sampler = Sampler(
                backend,
                run_id="slow",
                spool=spool,
                interval_s=TICK_S,
                chunk_s=1.0,
                clock=clock,
                sleep=clock.advance,
                host="h",
            )
            sampler.start()
            try:
                clock.advance(RUN_S - (clock.monotonic_s() - fake.loaded_mono_s))
                clock.run_during(sampler.stop)  # the threads wake up to see the stop
            except BaseException:
                clock.close()  # time stands still and nothing waits: they see the stop at once
                sampler.stop()
                raise
            chunks = [dict(c.payload) for c in spool.chunks("slow")]
    return sampler, chunks, clock.wall_s() - clock.monotonic_s() + fake.loaded_mono_s


def _healthy_and_slow() -> list[FakeGpu]:
    return [
        h100(profile=steady(300.0)),
        h100(profile=steady(250.0), slow_calls=(SlowCall(0.3, SLOW_FROM_S, SLOW_UNTIL_S),)),
    ]


def test_a_slow_gpu_is_sampled_when_it_answers_labelled_and_recovers(tmp_path: Path) -> None:
    sampler, chunks, t0_s = _run_slow(tmp_path, _healthy_and_slow())
    summary = sampler.summary()
    slow = sampler.devices[1]
    own = [c for c in chunks if c["device_key"] == slow["key"]]
    assert [c["seq"] for c in own] == list(range(len(own)))
    times = [t - t0_s for c in own for t in c["samples"]["t_s"]]
    during = [t for t in times if SLOW_FROM_S + 0.5 <= t < SLOW_UNTIL_S]
    assert len(during) >= 4  # still sampled while its calls take 0.3 s, when it answers
    assert len(during) < (SLOW_UNTIL_S - SLOW_FROM_S - 0.5) / TICK_S / 2  # but slower
    # the slow stretch is labelled as gaps; once it is over the schedule is kept again
    assert sum(c["gap_count"] for c in own if c["t0_s"] - t0_s < SLOW_UNTIL_S) >= 1
    assert all(c["gap_count"] == 0 for c in own if c["t0_s"] - t0_s >= SLOW_UNTIL_S + 0.5)
    # the ticks it could not be read in are missed readings labelled "slow"; it is OK again
    by_key = {d.key: d for d in summary.devices}
    assert set(by_key[slow["key"]].missed) == {"slow"}
    assert by_key[slow["key"]].status == "ok"
    # the counters span the gaps: energy stays exact (mJ resolution)
    for device, power_w in zip(sampler.devices, (300.0, 250.0), strict=True):
        d = by_key[device["key"]]
        assert d.energy_j == pytest.approx(power_w * d.duration_s, rel=1e-3)


def test_a_slow_gpu_leaves_the_others_on_schedule(tmp_path: Path) -> None:
    sampler, chunks, t0_s = _run_slow(tmp_path, _healthy_and_slow())
    healthy = sampler.devices[0]["key"]
    own = [c for c in chunks if c["device_key"] == healthy]
    assert all(c["gap_count"] == 0 for c in own)
    # every tick read it, on the grid, the slow stretch included; no deadline was skipped
    times = [t - t0_s for c in own for t in c["samples"]["t_s"]]
    assert times[0] == pytest.approx(0.0, abs=1e-6)
    assert times[-1] >= RUN_S - TICK_S - 1e-6
    assert all(b - a == pytest.approx(TICK_S, abs=1e-6) for a, b in itertools.pairwise(times))
    summary = sampler.summary()
    assert summary.overruns == 0
    assert summary.devices[0].missed == {}


def test_a_hung_nvml_call_does_not_hold_up_stop(tmp_path: Path) -> None:
    """A call that does not return stalls one sampler thread: the others tick on, and `stop`
    returns while it hangs."""
    hang_s = 3.0
    fake = FakeNvml([h100(slow_calls=(SlowCall(hang_s, 0.2, 0.25),))])
    backend = NvmlBackend(nvml=fake, env={})
    with Spool(tmp_path / "spool.sqlite3") as spool:
        sampler = Sampler(
            backend, run_id="hung", spool=spool, interval_s=0.01, chunk_s=0.05, host="h"
        )
        sampler.start()
        deadline_s = time.monotonic() + WAIT_S
        # the tick that started in the window is stuck now, and the others tick on without the
        # device (a missed reading labelled "slow")
        while fake.now_s() < 0.4 or "slow" not in sampler.summary().devices[0].missed:
            assert time.monotonic() < deadline_s
            time.sleep(0.02)
        summary = sampler.stop(timeout_s=0.2)
        threads = [t for t in threading.enumerate() if t.name == "thermoledger-sampler-hung"]
        # the one in the hung read and the two that went on meanwhile: never more than the
        # devices plus two
        assert len(threads) <= 3
        assert any(t.is_alive() for t in threads)  # stop returned while the read was still hung
        assert summary.devices[0].chunks_sealed >= 1  # what was sealed before the hang is kept
        assert len(spool.chunks("hung")) == summary.devices[0].chunks_sealed
        for thread in threads:
            thread.join(WAIT_S)  # the hung read returns; it adds nothing after stop
            assert not thread.is_alive()
        assert sampler.summary().ticks == summary.ticks
