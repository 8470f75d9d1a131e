"""The measurement-quality grade: the worst device sets it, each limit says what would lift it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from thermoledger.meters.api import Meter
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.backends.simulated import steady
from thermoledger.meters.control import ControlStore
from thermoledger.meters.quality import DeviceFacts, grade_run
from thermoledger.meters.summary import render_quality
from thermoledger.meters.testing.fake_pynvml import FakeNvml, h100


def _counter(key: str = "n/GPU-0", **facts: object) -> DeviceFacts:
    base: dict[str, object] = {
        "key": key,
        "method": "counter",
        "counter_update_s": 0.0,
        "coverage": 1.0,
        "edges": True,
    }
    return DeviceFacts(**{**base, **facts})  # type: ignore[arg-type]


def test_counters_with_their_edges_are_a() -> None:
    quality = grade_run([_counter(), _counter("n/GPU-1", counter_update_s=0.1)])
    assert quality.grade == "A"
    assert quality.limits == ()
    assert quality.improve == ()


@pytest.mark.parametrize(
    ("facts", "grade", "limit"),
    [
        ({"edges": False}, "B", "edges were not read"),
        ({"counter_update_s": None}, "B", "update period was not seen"),
        ({"method": "power_avg", "power_window_s": 1.0}, "B", "averaged power"),
        ({"coverage": 0.95}, "B", "cover 95.0 %"),
        ({"slow_readings": 3}, "B", "3 readings missed"),
        ({"method": "power_instant"}, "C", "instantaneous power"),
        ({"status": "lost"}, "C", "stopped answering"),
        ({"coverage": 0.5}, "C", "cover 50.0 %"),
        ({"method": "estimate"}, "D", "not a measurement"),
        ({"simulated": True}, "D", "simulated"),
    ],
)
def test_each_limit_lowers_the_grade_and_says_why(
    facts: dict[str, object], grade: str, limit: str
) -> None:
    quality = grade_run([_counter(), _counter("n/GPU-1", **facts)])
    assert quality.grade == grade
    assert any(limit in line and "n/GPU-1" in line for line in quality.limits)


def test_the_worst_device_sets_the_grade_and_each_fix_is_said_once() -> None:
    quality = grade_run(
        [
            _counter("a", method="power_instant"),
            _counter("b", method="power_instant"),
            _counter("c", method="power_avg"),
        ]
    )
    assert quality.grade == "C"
    assert len(quality.limits) == 3
    assert len(quality.improve) == 2  # instant readings' fix, said once; the averaged one
    lines = render_quality(quality)
    assert lines[0].startswith("  measurement quality: C")
    assert sum("to improve" in line for line in lines) == 2


def test_nothing_read_is_d() -> None:
    assert grade_run([]).grade == "D"


def _metered(tmp_path: Path, **gpu: object) -> Meter:
    fake = FakeNvml([h100(profile=steady(300.0), **gpu)])
    meter = Meter(
        "quality",
        backend=NvmlBackend(nvml=fake, env={}),
        spool_dir=tmp_path,
        env={},
    )
    meter.start()
    time.sleep(0.25)
    meter.stop()
    return meter


@pytest.mark.slow
def test_a_meter_grades_its_run_and_sends_the_grade_with_it(tmp_path: Path) -> None:
    meter = _metered(tmp_path)
    summary = meter.summary()
    assert summary.quality is not None
    assert summary.quality.grade == "A"
    with ControlStore.in_directory(tmp_path) as control:
        message = control.get(meter.run_id, "run")
    assert message is not None
    (info,) = message.body["host_info"].values()
    assert info["quality"]["grade"] == "A"
    assert info["quality"]["devices"][0]["method"] == "counter"


@pytest.mark.slow
def test_a_gpu_without_a_counter_on_averaged_power_is_b(tmp_path: Path) -> None:
    meter = _metered(tmp_path, has_counter=False, energy_field=False)
    quality = meter.summary().quality
    assert quality is not None
    assert quality.grade == "B"
    assert any("energy counter" in step for step in quality.improve)
