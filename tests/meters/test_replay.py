"""Replay: the CSV trace round-trips exactly and replays faithfully against a clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thermoledger.meters.backends import (
    DeviceStatus,
    Method,
    ReplayBackend,
    SimulatedBackend,
    read_trace,
    write_trace,
)
from thermoledger.meters.errors import TraceFormatError
from thermoledger.meters.testing import ManualClock


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """Two GPUs: ``a`` every 0.5 s with a gap and a counter reset; ``b`` starts late, no counter."""
    path = tmp_path / "trace.csv"
    write_trace(
        path,
        t_s=[10.0, 10.5, 11.0, 12.5, 13.0, 10.5, 11.5],
        device=["a", "a", "a", "a", "a", "b", "b"],
        power_w=[300.0, 310.0, np.nan, 0.1 + 0.2, 305.0, 80.0, 82.5],
        energy_j=[1000.0, 1155.0, 1310.0, 5.0, 157.5, np.nan, np.nan],
    )
    return path


def test_round_trip_is_exact(trace: Path) -> None:
    a, b = read_trace(trace)
    assert (a.device, b.device) == ("a", "b")
    assert a.t_s.tolist() == [10.0, 10.5, 11.0, 12.5, 13.0]
    np.testing.assert_array_equal(a.power_w, [300.0, 310.0, np.nan, 0.1 + 0.2, 305.0])
    np.testing.assert_array_equal(a.energy_j, [1000.0, 1155.0, 1310.0, 5.0, 157.5])
    assert np.isnan(b.energy_j).all()
    assert trace.read_text().splitlines()[0] == "t_s,device,power_w,energy_j"
    assert "11.0,a,,1310.0" in trace.read_text()  # not recorded is empty, never 0


def test_rows_are_ordered_per_device_on_load(tmp_path: Path) -> None:
    path = tmp_path / "shuffled.csv"
    write_trace(path, t_s=[2.0, 1.0, 3.0], device=["x"] * 3, power_w=[2, 1, 3], energy_j=[2, 1, 3])
    (x,) = read_trace(path)
    assert x.t_s.tolist() == [1.0, 2.0, 3.0]
    assert x.power_w.tolist() == [1.0, 2.0, 3.0]


def test_replay_returns_recorded_samples_at_their_recorded_times(trace: Path) -> None:
    clock = ManualClock(monotonic_s=500.0, wall_s=1_700_000_000.0)
    backend = ReplayBackend(trace, clock=clock, power_method=Method.POWER_AVG)
    devices = backend.devices()
    assert [d.uid for d in devices] == ["replay:a", "replay:b"]
    assert all(d.backend == "replay" and d.simulated for d in devices)
    assert devices[0].power_method is Method.POWER_AVG
    assert devices[0].has_energy_counter
    assert not devices[1].has_energy_counter

    first = backend.read()  # replay time 10.0: b has no sample yet
    assert first.status.tolist() == [DeviceStatus.OK, DeviceStatus.ERROR]
    assert first.power_w[0] == 300.0
    assert first.energy_j[0] == 1000.0
    assert "no recorded sample yet" in first.messages[1]

    clock.advance(0.75)  # replay time 10.75: latest samples are a@10.5 and b@10.5
    tick = backend.read()
    assert tick.t_mono_s.tolist() == [500.5, 500.5]
    assert tick.t_wall_s.tolist() == [1_700_000_000.5, 1_700_000_000.5]
    assert tick.power_w.tolist() == [310.0, 80.0]
    assert tick.energy_method.tolist() == [Method.COUNTER, Method.NONE]

    clock.advance(0.5)  # 11.25: a's sample at 11.0 has no power recorded
    tick = backend.read()
    assert tick.status[0] == DeviceStatus.ERROR
    assert np.isnan(tick.power_w[0])
    assert tick.energy_j[0] == 1310.0

    clock.advance(1.0)  # 12.25: inside a's gap, the 11.0 sample repeats with its own time
    assert backend.read().t_mono_s[0] == 501.0

    clock.advance(0.5)  # 12.75: the counter restarted (driver reload) and is passed on raw
    tick = backend.read()
    assert tick.energy_j[0] == 5.0
    assert tick.power_w[0] == 0.1 + 0.2
    assert not backend.finished

    clock.advance(10.0)
    assert backend.finished
    assert backend.read().energy_j[0] == 157.5  # the last sample stays


def test_a_simulated_run_recorded_and_replayed_reads_the_same(tmp_path: Path) -> None:
    record_clock = ManualClock()
    simulated = SimulatedBackend(clock=record_clock)
    rows: dict[str, list[object]] = {"t_s": [], "device": [], "power_w": [], "energy_j": []}
    ticks = []
    for _ in range(12):
        readings = simulated.read()
        ticks.append(readings)
        for i, device in enumerate(simulated.devices()):
            rows["t_s"].append(readings.t_mono_s[i] - simulated.start_mono_s)
            rows["device"].append(device.uid)
            rows["power_w"].append(readings.power_w[i])
            rows["energy_j"].append(readings.energy_j[i])
        record_clock.advance(0.25)
    path = tmp_path / "sim.csv"
    write_trace(path, **rows)  # type: ignore[arg-type]

    replay_clock = ManualClock(monotonic_s=7.0)
    replay = ReplayBackend(path, clock=replay_clock)
    assert [d.uid for d in replay.devices()] == [f"replay:{d.uid}" for d in simulated.devices()]
    for recorded in ticks:
        replayed = replay.read()
        np.testing.assert_array_equal(replayed.power_w, recorded.power_w)
        np.testing.assert_array_equal(replayed.energy_j, recorded.energy_j)
        replay_clock.advance(0.25)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("time,device,power_w,energy_j\n", "header"),
        ("", "header"),
        ("t_s,device,power_w,energy_j\n0,a,1\n", "4 fields"),
        ("t_s,device,power_w,energy_j\nx,a,1,2\n", "t_s is not a number"),
        ("t_s,device,power_w,energy_j\ninf,a,1,2\n", "finite"),
        ("t_s,device,power_w,energy_j\n,a,1,2\n", "t_s is empty"),
        ("t_s,device,power_w,energy_j\n0,,1,2\n", "empty device"),
        ("t_s,device,power_w,energy_j\n0,a,-5,2\n", "power_w must be >= 0"),
        ("t_s,device,power_w,energy_j\n0,a,5,inf\n", "energy_j must be >= 0"),
    ],
)
def test_malformed_traces_are_refused_with_the_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceFormatError, match=match):
        read_trace(path)


def test_write_trace_refuses_ragged_columns_and_bad_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same length"):
        write_trace(tmp_path / "x.csv", t_s=[0.0], device=["a", "b"], power_w=[1], energy_j=[1])
    with pytest.raises(ValueError, match="comma-free"):
        write_trace(tmp_path / "x.csv", t_s=[0.0], device=["a,b"], power_w=[1], energy_j=[1])


def test_replay_needs_a_power_method() -> None:
    with pytest.raises(ValueError, match="power method"):
        ReplayBackend([], power_method=Method.COUNTER)
