"""`Meter.record_phase`: a phase known only once it ended (a framework's evaluate/predict)."""

from __future__ import annotations

import time
from pathlib import Path

from thermoledger.meters.api import Meter
from thermoledger.meters.control import ControlStore


def _phases(spool_dir: Path, run_id: str) -> list[dict[str, object]]:
    with ControlStore.in_directory(spool_dir) as control:
        return [dict(m.body) for m in control.messages(run_id) if m.kind == "phase"]


def test_a_past_start_and_an_edge_now(tmp_path: Path) -> None:
    with Meter("r", backend="simulated", spool_dir=tmp_path, env={}) as meter:
        t0_s = time.time()
        meter.add_tokens(10)  # before the call: not this phase's work
        record = meter.record_phase("predict", t0_s=t0_s, dataset="test")
        assert record is not None
        assert record.t0_s == t0_s
        assert record.t1_s is not None
        assert record.t1_s >= t0_s
    (phase,) = _phases(tmp_path, meter.run_id)
    assert phase["name"] == "predict"
    assert phase["t0_s"] == t0_s
    assert phase["t1_s"] == record.t1_s
    assert phase["tags"] == {"dataset": "test"}
    assert "tokens" not in phase


def test_a_start_that_is_no_time_before_now_is_refused_visibly(tmp_path: Path) -> None:
    with Meter("r", backend="simulated", spool_dir=tmp_path, env={}) as meter:
        for bad in (time.time() + 3600, float("nan"), -1.0, True, "yesterday"):
            assert meter.record_phase("eval", t0_s=bad) is None  # type: ignore[arg-type]
        summary = meter.summary()
    assert _phases(tmp_path, meter.run_id) == []
    refused = [line for line in summary.refused_declarations if "record_phase" in line]
    assert len(refused) == 5
    assert all("need a unix time before now" in line for line in refused)


def test_nothing_is_recorded_where_the_meter_does_not_record(tmp_path: Path) -> None:
    meter = Meter("r", backend="simulated", spool_dir=tmp_path, env={})  # never started
    assert meter.record_phase("eval", t0_s=time.time() - 1) is None
