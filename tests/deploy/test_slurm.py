"""The SLURM prolog/epilog pair, run as slurmd would run them, in a fake SLURM environment.

The prolog starts one meter (simulated backend) in the background and returns at once; the meter
takes its run id from ``SLURM_JOB_ID``; the epilog stops it with SIGTERM and waits. Afterwards
the meter is gone, the run is marked finished in the spool, and every joule the meter counted is
in a sealed chunk (the partial chunk was flushed, not lost). Both scripts exit 0 whatever
happens (a failing prolog or epilog drains a SLURM node).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.deploy import DEPLOY
from thermoledger.meters.runid import resolve_run_id
from thermoledger.meters.spool import Spool

PROLOG = DEPLOY / "slurm" / "prolog.sh"
EPILOG = DEPLOY / "slurm" / "epilog.sh"
WAIT_S = 30.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell scripts"),
]


def slurm_env(tmp_path: Path, job_id: str, **extra: str) -> dict[str, str]:
    """What slurmd gives a prolog, plus the scripts' settings pointed at ``tmp_path``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "THERMOLEDGER_")) and k not in ("LOCAL_RANK", "RANK")
    }
    env.update(
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="train-llm",
        SLURM_JOB_USER="alice",
        SLURM_JOB_GPUS="0,1",
        THERMOLEDGER_SLURM_CONF=str(tmp_path / "absent.env"),
        THERMOLEDGER_BIN=f"{shlex.quote(sys.executable)} -m thermoledger.meters.cli",
        THERMOLEDGER_USER="",
        THERMOLEDGER_SPOOL_DIR=str(tmp_path / "spool"),
        THERMOLEDGER_RUN_DIR=str(tmp_path / "run"),
        THERMOLEDGER_BACKEND="simulated",
        THERMOLEDGER_INTERVAL_S="0.01",
        THERMOLEDGER_CHUNK_S="0.1",
        THERMOLEDGER_LOG_FORMAT="json",
        THERMOLEDGER_STOP_TIMEOUT_S="20",
    )
    env.update(extra)
    return env


def run_script(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=WAIT_S, check=False
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running any more.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def chunks_of(spool_dir: Path, run_id: str) -> int:
    if not (spool_dir / "spool.sqlite3").exists():
        return 0
    with Spool.in_directory(spool_dir) as spool:
        return len(spool.chunks(run_id))


def test_prolog_starts_a_meter_for_the_job_and_epilog_stops_it_cleanly(tmp_path: Path) -> None:
    env = slurm_env(tmp_path, "424242")
    run_id = resolve_run_id(None, {"SLURM_JOB_ID": "424242"}).run_id
    spool_dir = tmp_path / "spool"
    started = run_script(PROLOG, env)
    assert started.returncode == 0, started.stderr
    pidfile = tmp_path / "run" / "424242.pid"
    pid = int(pidfile.read_text())
    try:
        deadline = time.monotonic() + WAIT_S
        while chunks_of(spool_dir, run_id) < 3:
            assert alive(pid), (tmp_path / "run" / "424242.log").read_text()
            assert time.monotonic() < deadline, "the meter sealed no chunk"
            time.sleep(0.05)
        # The process in the pid file is the meter itself (not a shell around it).
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"thermoledger.meters.cli" in cmdline
        assert b"sidecar" in cmdline
        stopped = run_script(EPILOG, env)
        assert stopped.returncode == 0, stopped.stderr
        assert not alive(pid), "the epilog returned while the meter still ran"
    finally:
        if alive(pid):
            os.kill(pid, 9)
    assert not pidfile.exists()
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "424242.log").read_text().splitlines()
        if line.strip()
    ]
    assert records
    assert all(r["run_id"] == run_id for r in records)
    (summary,) = [r for r in records if r.get("event") == "summary"]
    assert "stopped by SIGTERM" in summary["message"]
    assert summary["devices"] == 2  # SLURM_JOB_GPUS=0,1
    with Spool.in_directory(spool_dir) as spool:
        record = spool.run_status(run_id)
        chunks = spool.chunks(run_id)
    assert record is not None
    assert record.status == "finished"
    assert record.metadata["name"] == "train-llm"
    # Flushed: the sealed chunks hold all the energy the meter reported at its end.
    stored_j = math.fsum(c.payload["energy_j"] for c in chunks)
    assert stored_j == pytest.approx(summary["energy_j"], rel=1e-9)


def test_epilog_without_a_meter_and_prolog_outside_slurm_do_nothing(tmp_path: Path) -> None:
    env = slurm_env(tmp_path, "7")
    done = run_script(EPILOG, env)
    assert done.returncode == 0, done.stderr
    env.pop("SLURM_JOB_ID")
    done = run_script(PROLOG, env)
    assert done.returncode == 0
    assert not (tmp_path / "run").exists()


def test_prolog_never_runs_the_meter_as_root_for_a_missing_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the drop to an unprivileged user applies when slurmd runs the prolog as root")
    env = slurm_env(tmp_path, "8", THERMOLEDGER_USER="no-such-user-thermoledger")
    done = run_script(PROLOG, env)
    assert done.returncode == 0  # logged, the job goes on
    assert not (tmp_path / "run" / "8.pid").exists()
