"""A real meter process killed with SIGKILL or stopped with SIGTERM, and what its spool holds.

The child (`tests.meters.crash_child`) meters simulated GPUs every 10 ms into 0.2 s chunks. Every
wait is bounded, so a broken child fails the test instead of hanging CI; nothing asserts on
wall-clock durations, only on the structure of what was stored.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.meters.crash_child import HOST, fleet
from tests.support.builders import floats
from thermoledger.accounting.integrate import PowerModel, summarize_chunks
from thermoledger.meters.backends import SimulatedBackend
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.spool import Spool, SpooledChunk
from thermoledger.meters.wire import content_hash

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
INTERVAL_S = 0.01
CHUNK_S = 0.2
KEYS = (f"{HOST}/SIM-0", f"{HOST}/SIM-1")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


def _spawn(spool: Path, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.meters.crash_child",
            str(spool),
            run_id,
            f"--interval-s={INTERVAL_S}",
            f"--chunk-s={CHUNK_S}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, str]]:
    spool_path = tmp_path / "spool.sqlite3"
    run_id = str(uuid.uuid4())
    process = _spawn(spool_path, run_id)
    try:
        yield process, spool_path, run_id
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=WAIT_S)


def _wait_for_chunks(
    process: subprocess.Popen[str], spool_path: Path, run_id: str, per_device: int
) -> None:
    """Poll (bounded) until every device has ``per_device`` sealed chunks in the spool."""
    deadline = time.monotonic() + WAIT_S
    while not spool_path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the child never created its spool"
        time.sleep(0.02)
    with Spool(spool_path) as spool:
        while True:
            seqs = spool.next_seqs(run_id)
            if all(seqs.get(key, 0) >= per_device for key in KEYS):
                return
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, f"only {seqs} chunks after {WAIT_S} s"
            time.sleep(0.02)


def _check_intact(chunks: list[SpooledChunk]) -> None:
    """Hashes match, seqs run 0, 1, 2 ..., chunks tile time, figures re-derive from samples."""
    assert [c.key.seq for c in chunks] == list(range(len(chunks)))
    for a, b in itertools.pairwise(chunks):
        assert a.payload["t1_s"] == b.payload["t0_s"]
    for k, c in enumerate(chunks):
        assert content_hash(c.payload) == c.content_hash
        samples = c.payload["samples"]
        t, p = floats(samples["t_s"]), floats(samples["power_w"])
        energy = samples.get("energy_j")
        counter = None if energy is None else floats(energy)
        assert len(t) == c.payload["n"]
        assert t[0] == c.payload["t0_s"]
        if t[-1] < c.payload["t1_s"]:
            # bridged: its last interval reaches the next chunk's first sample
            if k + 1 == len(chunks):
                continue  # the successor was the unsealed tail
            after = chunks[k + 1].payload["samples"]
            t.append(floats(after["t_s"])[0])
            p.append(floats(after["power_w"])[0])
            if counter is not None:
                after_energy = after.get("energy_j")
                counter.append(math.nan if after_energy is None else floats(after_energy)[0])
        again = summarize_chunks(
            np.array(t),
            p,
            chunk_starts=[0, len(t) - 1] if len(t) > c.payload["n"] else [0],
            counter_j=counter if c.payload["method"] == "counter" else None,
            model=PowerModel(method="power_avg", nominal_interval_s=INTERVAL_S, max_power_w=700.0),
        )
        # unix seconds resolve 0.24 µs: up to 2.4e-5 of a 10 ms interval for the trapezoid
        rel = 1e-12 if c.payload["method"] == "counter" else 1e-4
        assert again.energy_j[0] == pytest.approx(c.payload["energy_j"], rel=rel)


def test_kill_9_loses_at_most_the_unsealed_tail(
    child: tuple[subprocess.Popen[str], Path, str],
) -> None:
    process, spool_path, run_id = child
    _wait_for_chunks(process, spool_path, run_id, per_device=3)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=WAIT_S) == -signal.SIGKILL

    with Spool(spool_path) as spool:
        record = spool.run_status(run_id)
        assert record is not None
        assert record.status == "running"  # it never got to say goodbye
        before = spool.next_seqs(run_id)
        for key in KEYS:
            chunks = spool.chunks(run_id, key)
            assert len(chunks) >= 3
            _check_intact(chunks)
            # Every stored chunk was sealed by its successor's first sample (none was flushed):
            # nothing sealed was lost, only the open chunk that would have followed.
            assert all(floats(c.payload["samples"]["t_s"])[-1] < c.payload["t1_s"] for c in chunks)

        # A restarted meter with the same run id continues the numbering.
        with SimulatedBackend(fleet()) as backend:
            sampler = Sampler(
                backend,
                run_id=run_id,
                spool=spool,
                interval_s=INTERVAL_S,
                chunk_s=CHUNK_S,
                host=HOST,
            )
            sampler.run_ticks(5)
            sampler.stop(status="finished")
        for key in KEYS:
            seqs = [c.key.seq for c in spool.chunks(run_id, key)]
            assert seqs == list(range(before[key] + 1))
            old, new = spool.chunks(run_id, key)[-2:]
            assert new.payload["t0_s"] > old.payload["t1_s"]  # the lost tail: a hole, no overlap
        status = spool.run_status(run_id)
        assert status is not None
        assert status.status == "finished"


def test_sigterm_flushes_the_partial_chunk_and_finishes_the_run(
    child: tuple[subprocess.Popen[str], Path, str],
) -> None:
    process, spool_path, run_id = child
    _wait_for_chunks(process, spool_path, run_id, per_device=1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=WAIT_S)
    assert process.returncode == 0, err
    reported = json.loads(out.strip().splitlines()[-1])
    assert reported["unspooled"] == 0

    with Spool(spool_path) as spool:
        record = spool.run_status(run_id)
        assert record is not None
        assert record.status == "finished"
        for key in KEYS:
            chunks = spool.chunks(run_id, key)
            _check_intact(chunks)
            # The summary integrates the open chunk on the fly: the spool holds all it counted,
            # so the partial chunk was sealed and committed before the process exited.
            stored_j = sum(c.payload["energy_j"] for c in chunks)
            assert stored_j == pytest.approx(reported["energy_j"][key], rel=1e-12)
