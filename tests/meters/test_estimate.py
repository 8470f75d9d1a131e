"""The CPU estimate: /proc/stat utilisation × TDP, labelled, with a wide band."""

from __future__ import annotations

from pathlib import Path

import pytest

from thermoledger.meters.backends import DeviceStatus, Method
from thermoledger.meters.backends.estimate import BAND_REL, CpuEstimateBackend, cpu_times
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.testing import ManualClock


def _stat(path: Path, busy: int, idle: int) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice (guest inside user)
    path.write_text(f"cpu  {busy - 10} 0 0 {idle} 0 5 5 0 7 0\ncpu0 1 2 3 4\nintr 1 2\n")


def test_cpu_times_reads_the_aggregate_line() -> None:
    assert cpu_times("cpu  10 1 2 30 3 1 1 1 4 0\ncpu0 1 1 1 1\n") == (16, 49)
    assert cpu_times("cpu 1 2 3 4\n") == (6, 10)  # an old kernel: no iowait and after
    with pytest.raises(ValueError, match="no aggregate"):
        cpu_times("cpu0 1 2 3 4\n")


def test_power_is_utilisation_since_the_last_reading_times_tdp(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _stat(stat, busy=1_000, idle=9_000)
    clock = ManualClock()
    backend = CpuEstimateBackend(200.0, proc_stat=stat, clock=clock)
    (info,) = backend.devices()
    assert (info.backend, info.kind, info.scope) == ("estimate", "cpu", "package")
    assert info.power_method is Method.ESTIMATE
    assert info.name == "CPU estimate (utilisation × 200 W TDP)"
    assert info.uncertainty.power_rel == BAND_REL == 0.5
    assert "not a measurement" in info.note
    _stat(stat, busy=1_300, idle=9_100)  # 300 busy of 400 jiffies: 75 %
    readings = backend.read()
    assert readings.power_w[0] == pytest.approx(150.0)
    assert readings.power_method_of(0) is Method.ESTIMATE
    readings = backend.read()  # within the same jiffy: the last utilisation again
    assert readings.power_w[0] == pytest.approx(150.0)
    _stat(stat, busy=1_300, idle=9_500)  # idle
    assert backend.read().power_w[0] == pytest.approx(0.0)


def test_an_unreadable_stat_is_an_error_never_zero(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _stat(stat, busy=10, idle=90)
    backend = CpuEstimateBackend(100.0, proc_stat=stat)
    stat.unlink()
    readings = backend.read()
    assert readings.status_of(0) is DeviceStatus.ERROR
    assert readings.power_w[0] != readings.power_w[0]  # NaN


def test_the_sampler_seals_estimate_chunks_with_a_fifty_percent_band(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _stat(stat, busy=50, idle=50)  # half busy since boot: the first reading's estimate
    clock = ManualClock()
    backend = CpuEstimateBackend(100.0, proc_stat=stat, clock=clock)
    jiffies = [50, 50]

    def sleep(dt_s: float) -> None:  # the node stays half busy
        jiffies[0] += 5
        jiffies[1] += 5
        _stat(stat, busy=jiffies[0], idle=jiffies[1])
        clock.advance(dt_s)

    sampler = Sampler(
        backend, run_id="r", clock=clock, sleep=sleep, interval_s=0.1, chunk_s=1.0, host="h"
    )
    sampler.run_ticks(21)
    (d,) = sampler.stop().devices
    assert d.method == "estimate"
    assert d.energy_j == pytest.approx(50.0 * d.duration_s, rel=1e-9)
    assert d.sensor_uncertainty_j == pytest.approx(0.5 * d.energy_j, rel=1e-9)
    with pytest.raises(ValueError, match="positive"):
        CpuEstimateBackend(0.0, proc_stat=stat)
