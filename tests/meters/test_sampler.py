"""The sampler against simulated and fake-NVML devices on a manual clock (no sleeping).

Energies are checked against the profiles' closed forms; chunking against the left-sample rule
(chunks tile time, seqs are contiguous, chunk energies add up to the whole run).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from tests.support.builders import floats
from thermoledger.accounting.integrate import PowerModel, integrate_counter, integrate_power
from thermoledger.meters.backends import (
    Bursty,
    DeviceInfo,
    Method,
    PowerBackend,
    Ramp,
    Readings,
    SimulatedBackend,
    SimulatedDevice,
    idle,
    steady,
)
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.base import ReadingsBuffer, SystemClock
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.sampler import Sampler, TickSchedule
from thermoledger.meters.spool import RunStatus, Spool
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_pynvml import FakeNvml, Fault, h100, p100
from thermoledger.meters.wire import ChunkPayload, DevicePayload

RUN = "run-1"
HOST = "node"


class ListSink:
    """An in-memory `ChunkSink` that refuses to overwrite, like the spool (no fsync: fast)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.chunks: dict[str, list[ChunkPayload]] = {}
        self.devices: list[DevicePayload] = []
        self.status: dict[str, tuple[RunStatus, int | None]] = {}

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        self.status[run_id] = ("running", None)

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        self.devices = list(devices)

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        batch = list(chunks)
        for chunk in batch:
            stored = self.chunks.setdefault(chunk["device_key"], [])
            assert chunk["seq"] == len(stored), "a seq was skipped or reused"
            stored.append(chunk)
        return len(batch)

    def next_seqs(self, run_id: str) -> dict[str, int]:
        return {key: len(chunks) for key, chunks in self.chunks.items()}

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        self.status[run_id] = (status, exit_code)

    def of(self, position: int) -> list[ChunkPayload]:
        return self.chunks.get(f"{HOST}/SIM-{position}", [])


def _sampler(
    devices: Sequence[SimulatedDevice],
    *,
    interval_s: float = 0.1,
    chunk_s: float = 1.0,
    sink: ListSink | None = None,
    wrap: Any = None,
) -> tuple[Sampler, ManualClock, SimulatedBackend, ListSink]:
    clock = ManualClock()
    backend = SimulatedBackend(devices, clock=clock)
    sink = sink if sink is not None else ListSink()
    sampler = Sampler(
        wrap(backend, clock) if wrap is not None else backend,
        run_id=RUN,
        spool=sink,
        interval_s=interval_s,
        chunk_s=chunk_s,
        clock=clock,
        sleep=clock.advance,
        host=HOST,
    )
    return sampler, clock, backend, sink


def _profile_time(t_s: float, clock: ManualClock, backend: SimulatedBackend) -> float:
    """A chunk's unix time back on the profile's time axis (seconds since the backend opened)."""
    return t_s - (clock.wall_s() - clock.monotonic_s()) - backend.start_mono_s


def _true_energy_j(
    chunks: list[ChunkPayload], device: SimulatedDevice, clock: ManualClock, b: SimulatedBackend
) -> float:
    t0 = _profile_time(chunks[0]["t0_s"], clock, b)
    t1 = _profile_time(chunks[-1]["t1_s"], clock, b)
    return float(device.profile.energy_j(t0, t1))


FLEET = (
    SimulatedDevice(steady(300.0)),
    SimulatedDevice(Bursty(120.0, 650.0, period_s=2.0, phase_s=0.3), reading="average"),
    SimulatedDevice(Ramp(100.0, 600.0, duration_s=20.0, t_start_s=3.0), counter_offset_j=5e6),
    SimulatedDevice(idle(61.0), has_counter=False, reading="average"),
)


# -- chunking -----------------------------------------------------------------------------------


def test_chunks_tile_time_with_contiguous_seqs() -> None:
    sampler, _, _, sink = _sampler(FLEET, chunk_s=1.0)
    sampler.run_ticks(253)
    sampler.stop()
    for i in range(len(FLEET)):
        chunks = sink.of(i)
        assert [c["seq"] for c in chunks] == list(range(26))
        for a, b in itertools.pairwise(chunks):
            # sealed by its successor's first sample, which ends it and opens the next
            assert a["t1_s"] == b["t0_s"] == b["samples"]["t_s"][0]
            assert a["samples"]["t_s"][0] == a["t0_s"]
            assert floats(a["samples"]["t_s"])[-1] < a["t1_s"]
        assert all(len(c["samples"]["t_s"]) == c["n"] for c in chunks)
        assert [c["n"] for c in chunks[:-1]] == [10] * 25
        last = chunks[-1]
        assert last["n"] == 3
        assert last["t1_s"] == last["samples"]["t_s"][-1]  # flushed: it ends at its own sample


def test_chunk_energies_add_up_to_the_whole_run() -> None:
    sampler, _, _, sink = _sampler(FLEET, chunk_s=1.0)
    sampler.run_ticks(157)
    summary = sampler.stop()
    for i, device in enumerate(FLEET):
        chunks = sink.of(i)
        t = np.concatenate([c["samples"]["t_s"][: c["n"]] for c in chunks])
        p = np.concatenate([c["samples"]["power_w"][: c["n"]] for c in chunks])
        if device.has_counter:
            counter = np.concatenate(
                [(c["samples"].get("energy_j") or [])[: c["n"]] for c in chunks]
            )
            assert counter.size == t.size
            whole = integrate_counter(t, counter).energy_j
            assert {c["method"] for c in chunks} == {"counter"}
        else:
            whole = integrate_power(
                t, p, model=PowerModel(method="power_avg", nominal_interval_s=0.1)
            ).energy_j
            assert {c["method"] for c in chunks} == {"power_avg"}
        chunk_sum = sum(c["energy_j"] for c in chunks)
        # The meter integrates run-relative seconds; the wire's unix seconds resolve 0.24 µs,
        # which the trapezoid over them feels (a counter difference does not).
        assert chunk_sum == pytest.approx(whole, rel=1e-12 if device.has_counter else 1e-6)
        assert summary.devices[i].energy_j == pytest.approx(chunk_sum, rel=1e-12)
    assert summary.energy_j == pytest.approx(sum(d.energy_j for d in summary.devices))


def test_counter_energy_matches_the_profile_within_0_1_percent() -> None:
    sampler, clock, backend, sink = _sampler(FLEET[:3], chunk_s=2.0)
    sampler.run_ticks(400)
    sampler.stop()
    for i, device in enumerate(FLEET[:3]):
        chunks = sink.of(i)
        metered = sum(c["energy_j"] for c in chunks)
        true = _true_energy_j(chunks, device, clock, backend)
        assert metered == pytest.approx(true, rel=1e-3)
        assert all(c["energy_low_j"] <= c["energy_j"] <= c["energy_high_j"] for c in chunks)


@pytest.mark.parametrize(
    "profile",
    [
        steady(300.0),
        Bursty(120.0, 650.0, period_s=2.0, duty=0.5, phase_s=0.3),
        Bursty(80.0, 700.0, period_s=0.35, duty=0.2),
        Ramp(100.0, 600.0, duration_s=15.0, t_start_s=2.0),
    ],
)
def test_the_band_of_averaged_power_covers_the_true_error(profile: Any) -> None:
    """Hopper-like: no counter, a 1 s trailing average; the lag is what the band must cover."""
    device = SimulatedDevice(profile, has_counter=False, reading="average")
    sampler, clock, backend, sink = _sampler([device], chunk_s=5.0)
    sampler.run_ticks(300)
    summary = sampler.stop().devices[0]
    true = _true_energy_j(sink.of(0), device, clock, backend)
    assert summary.method == "power_avg"
    assert summary.energy_low_j <= true <= summary.energy_high_j
    # A band, not a shrug. Each chunk carries the averaging residual of both its edges, and
    # chunk bounds add linearly, so the run's band holds all the interior edges too (their
    # errors cancel in the sum, their bounds do not): 26-38 % here, for 5 s chunks.
    assert summary.energy_high_j - summary.energy_low_j < 0.5 * true


def test_the_summary_integrates_the_open_chunk_on_the_fly() -> None:
    sampler, clock, backend, sink = _sampler([FLEET[0], FLEET[1]], chunk_s=10.0)
    sampler.run_ticks(137)  # 13 samples into the second chunk, nothing flushed
    summary = sampler.summary()
    assert [len(sink.of(i)) for i in range(2)] == [1, 1]
    first_t0 = _profile_time(sink.of(0)[0]["t0_s"], clock, backend)
    last_t = clock.monotonic_s() - backend.start_mono_s  # the 137th tick read just now
    assert summary.devices[0].energy_j == pytest.approx(300.0 * (last_t - first_t0), rel=1e-9)
    assert summary.devices[0].samples == 137
    assert summary.devices[0].chunks_sealed == 1
    assert summary.devices[0].method == "counter"
    assert summary.ticks == 137
    # the final summary counts the same energy once the tail is sealed
    final = sampler.stop()
    assert final.devices[0].energy_j == pytest.approx(summary.devices[0].energy_j, rel=1e-12)


def test_a_mid_run_flush_keeps_the_tiling() -> None:
    sampler, _, _, sink = _sampler([FLEET[1]], chunk_s=1.0)
    sampler.run_ticks(15)
    flushed = sampler.flush()
    assert len(flushed) == 1
    assert sampler.flush() == []  # nothing new to seal
    sampler.run_ticks(20)
    summary = sampler.stop()
    chunks = sink.of(0)
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    for a, b in itertools.pairwise(chunks):
        assert a["t1_s"] == b["t0_s"]
    assert sum(c["energy_j"] for c in chunks) == pytest.approx(summary.devices[0].energy_j)


# -- schedule -----------------------------------------------------------------------------------


class SlowBackend:
    """Wraps a backend; each read takes ``work_s`` seconds of manual-clock time (after it reads).

    ``slow`` maps tick numbers to a longer work time.
    """

    def __init__(
        self,
        inner: PowerBackend,
        clock: ManualClock,
        work_s: float,
        slow: Mapping[int, float] | None = None,
    ) -> None:
        self.inner = inner
        self.clock = clock
        self.work_s = work_s
        self.slow = dict(slow or {})
        self.reads = 0

    def devices(self) -> Sequence[DeviceInfo]:
        return self.inner.devices()

    def read(self) -> Readings:
        readings = self.inner.read()
        self.clock.advance(self.slow.get(self.reads, self.work_s))
        self.reads += 1
        return readings

    def close(self) -> None:
        self.inner.close()


def _tick_times(sink: ListSink) -> np.ndarray:
    chunks = sink.of(0)
    return np.array(
        [t for c in chunks for t in c["samples"]["t_s"][: c["n"]]] + [chunks[-1]["t1_s"]]
    )


def test_the_schedule_does_not_drift_with_work_in_each_tick() -> None:
    sampler, _, _, sink = _sampler(
        [FLEET[0]], chunk_s=5.0, wrap=lambda b, c: SlowBackend(b, c, work_s=0.037)
    )
    sampler.run_ticks(1000)
    summary = sampler.stop()
    t = np.unique(_tick_times(sink))
    assert t.size == 1000
    # tick k at start + k·interval (not k·(interval + work)): 999 intervals after the first
    assert t[-1] - t[0] == pytest.approx(99.9, abs=1e-6)
    assert np.diff(t) == pytest.approx(0.1, abs=1e-6)
    assert summary.overruns == 0


def test_an_overrun_skips_missed_deadlines_and_never_bursts() -> None:
    slow = {10: 0.25, 20: 0.35, 30: 0.1}  # 2, 3 and 0 deadlines missed (0.1 ends on one)
    sampler, _, _, sink = _sampler(
        [FLEET[0]], chunk_s=5.0, wrap=lambda b, c: SlowBackend(b, c, 0.01, slow)
    )
    sampler.run_ticks(50)
    summary = sampler.stop()
    t = np.unique(_tick_times(sink))
    k = (t - t[0]) / 0.1
    assert k == pytest.approx(np.round(k), abs=1e-6)  # every tick on the grid
    assert np.diff(t).min() == pytest.approx(0.1, abs=1e-6)  # never two ticks in one slot
    assert summary.overruns == 5
    assert round(k[-1]) == 49 + 5


def test_tick_schedule_deadlines() -> None:
    schedule = TickSchedule(100.0, 0.5)
    assert schedule.claim(100.0) == (0, 0)
    assert schedule.deadline_s(0) == 100.0
    assert schedule.claim(100.2) == (1, 0)  # tick 0 ended at 100.2: tick 1 is next
    assert schedule.deadline_s(1) == 100.5
    # the tick due at 100.5 ends exactly on the next deadline: not late, nothing skipped
    assert schedule.claim(100.0 + 2 * 0.5) == (2, 0)
    assert schedule.claim(102.3) == (5, 2)  # the tick due at 101.0 ran late: 101.5, 102.0 skipped
    assert schedule.deadline_s(5) == 102.5
    with pytest.raises(ValueError, match="interval_s"):
        TickSchedule(0.0, 0.0)


def test_two_threads_take_turns_and_one_covers_for_the_other() -> None:
    schedule = TickSchedule(0.0, 0.1)
    assert [schedule.claim(0.0), schedule.claim(0.0)] == [(0, 0), (1, 0)]  # at start
    assert schedule.claim(0.001) == (2, 0)  # A, done with tick 0: the other one has tick 1
    assert schedule.claim(0.101) == (3, 0)  # B
    # A hangs in tick 2 until 0.75: B alone takes every deadline, nothing is skipped
    assert [schedule.claim(t) for t in (0.301, 0.401, 0.501, 0.601)] == [
        (4, 0),
        (5, 0),
        (6, 0),
        (7, 0),
    ]
    assert schedule.claim(0.75) == (8, 0)  # A is back: the next deadline nobody has
    assert schedule.claim(0.701) == (9, 0)  # B, done with tick 7: they take turns again


# -- faults -------------------------------------------------------------------------------------


def _nvml_sampler(gpus: list[Any], ticks: int) -> tuple[Sampler, ListSink]:
    clock = ManualClock()
    fake = FakeNvml(gpus, clock=clock)
    backend = NvmlBackend(nvml=fake, clock=clock, env={})
    sink = ListSink()
    sampler = Sampler(
        backend,
        run_id=RUN,
        spool=sink,
        interval_s=0.1,
        chunk_s=1.0,
        clock=clock,
        sleep=clock.advance,
        host=HOST,
    )
    sampler.run_ticks(ticks)
    return sampler, sink


def test_a_gpu_that_falls_off_the_bus_is_a_labelled_gap_and_the_others_continue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = [h100(profile=steady(300.0)), h100(profile=steady(200.0), lost_at_s=3.45)]
    with caplog.at_level(logging.WARNING, logger="thermoledger.meters.sampler"):
        sampler, sink = _nvml_sampler(gpus, ticks=100)
        # Its open chunk (3.0 .. 3.4 s) is sealed once a whole chunk period passed in silence,
        # not held in memory until the end, where a crash would lose it.
        lost_chunks = sink.chunks[sampler.devices[1]["key"]]
        assert len(lost_chunks) == 4
        assert lost_chunks[-1]["t1_s"] - lost_chunks[0]["t0_s"] == pytest.approx(3.4)
        assert lost_chunks[-1]["n"] == len(lost_chunks[-1]["samples"]["t_s"]) == 5
        summary = sampler.stop()
    assert len(sink.chunks[sampler.devices[1]["key"]]) == 4  # nothing left to flush
    alive, lost = summary.devices
    assert lost.status == "lost"
    assert "GPU is lost" in lost.message
    assert lost.missed == {"lost": 65}
    assert lost.energy_j == pytest.approx(200.0 * 3.4, rel=1e-3)
    assert alive.missed == {}
    assert alive.energy_j == pytest.approx(300.0 * 9.9, rel=1e-3)
    assert [c["seq"] for c in sink.chunks[sampler.devices[0]["key"]]] == list(range(10))
    lost_warnings = [r for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost_warnings) == 1  # logged once, not per tick


def test_a_device_back_after_a_long_outage_keeps_the_tiling_and_the_counter_spans_it() -> None:
    fault = Fault(codes.NVML_ERROR_TIMEOUT, 2.55, 5.05)  # silent for more than a chunk period
    sampler, sink = _nvml_sampler([h100(profile=steady(300.0), faults=(fault,))], ticks=80)
    summary = sampler.stop().devices[0]
    chunks = sink.chunks[sampler.devices[0]["key"]]
    assert summary.missed == {"error": 25}
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    for a, b in itertools.pairwise(chunks):
        assert a["t1_s"] == b["t0_s"]
    # chunk 2 (2.0 .. 2.5 s) was sealed during the outage; its last sample opened chunk 3, which
    # spans the outage as one gap up to the first sample after it
    assert chunks[2]["n"] == len(chunks[2]["samples"]["t_s"]) == 6
    outage = chunks[3]
    assert (outage["n"], outage["gap_count"]) == (1, 1)
    assert outage["gap_s"] == pytest.approx(2.6)
    assert outage["energy_j"] == pytest.approx(300.0 * 2.6, rel=1e-3)
    assert summary.energy_j == pytest.approx(300.0 * 7.9, rel=1e-3)


def test_a_transient_fault_is_a_gap_inside_a_chunk_and_the_counter_spans_it() -> None:
    fault = Fault(codes.NVML_ERROR_TIMEOUT, 2.05, 2.65)  # 6 ticks fail entirely
    sampler, sink = _nvml_sampler([h100(profile=steady(300.0), faults=(fault,))], ticks=50)
    summary = sampler.stop().devices[0]
    chunks = sink.chunks[sampler.devices[0]["key"]]
    assert summary.missed == {"error": 6}
    assert [c["gap_count"] for c in chunks] == [0, 0, 1, 0, 0]
    assert chunks[2]["gap_s"] == pytest.approx(0.7)
    assert summary.energy_j == pytest.approx(300.0 * 4.9, rel=1e-3)  # counted through the gap
    assert summary.status == "ok"


def test_a_missing_counter_reading_falls_back_to_power_for_that_chunk() -> None:
    fault = Fault(codes.NVML_ERROR_TIMEOUT, 1.25, 1.35, call="nvmlDeviceGetTotalEnergyConsumption")
    sampler, sink = _nvml_sampler([h100(profile=steady(300.0), faults=(fault,))], ticks=30)
    summary = sampler.stop().devices[0]
    chunks = sink.chunks[sampler.devices[0]["key"]]
    # the power reading it falls back to is the driver's 1 s average (the default)
    assert [c["method"] for c in chunks] == ["counter", "power_avg", "counter"]
    assert "energy_j" not in chunks[1]["samples"]
    assert summary.method == "mixed"
    assert summary.missed == {}  # the power reading still made it a sample
    assert summary.energy_j == pytest.approx(300.0 * 2.9, rel=1e-3)


class FlakyBackend:
    """Raises on every ``every``-th read."""

    def __init__(self, inner: PowerBackend, every: int) -> None:
        self.inner = inner
        self.every = every
        self.reads = 0

    def devices(self) -> Sequence[DeviceInfo]:
        return self.inner.devices()

    def read(self) -> Readings:
        self.reads += 1
        if self.reads % self.every == 0:
            raise RuntimeError("driver hiccup")
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


def test_an_exception_in_read_is_a_counted_gap_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="thermoledger.meters.sampler"):
        sampler, _, _, sink = _sampler([FLEET[0]], wrap=lambda b, c: FlakyBackend(b, 4))
        sampler.run_ticks(40)
        summary = sampler.stop()
    assert summary.read_errors == 10
    assert summary.devices[0].missed == {"exception": 10}
    assert summary.devices[0].samples == 30
    assert [c["seq"] for c in sink.of(0)] == list(range(4))
    assert len([r for r in caplog.records if "driver hiccup" in r.getMessage()]) == 1


def test_the_thread_survives_failing_reads_and_summary_is_safe_meanwhile() -> None:
    clock = SystemClock()
    backend = FlakyBackend(SimulatedBackend([FLEET[0], FLEET[1]], clock=clock), every=2)
    sink = ListSink()
    sampler = Sampler(
        backend, run_id=RUN, spool=sink, interval_s=0.002, chunk_s=0.02, clock=clock, host=HOST
    )
    sampler.start()
    with pytest.raises(RuntimeError, match="by hand"):
        sampler.step()
    deadline = time.monotonic() + 30.0
    energies = [0.0]
    while (now := sampler.summary()).ticks < 40:  # read from another thread while it runs
        energies.append(now.devices[0].energy_j)
        assert time.monotonic() < deadline, "the sampler thread stopped ticking"
        time.sleep(0.005)
    summary = sampler.stop(status="finished")
    assert summary.read_errors >= 20
    energies.append(summary.devices[0].energy_j)
    assert energies[-1] > 0
    assert energies == sorted(energies)  # the running total never goes back
    assert sink.status[RUN] == ("finished", None)
    with pytest.raises(RuntimeError, match="starts once"):
        sampler.start()


def test_a_failing_spool_keeps_chunks_in_memory_until_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ListSink(failures=3)
    with caplog.at_level(logging.WARNING, logger="thermoledger.meters.sampler"):
        sampler, _, _, _ = _sampler([FLEET[0]], sink=sink)
        sampler.run_ticks(11)  # chunk 0 sealed at tick 10, its first write fails
        assert sampler.summary().unspooled == 1
        assert sink.of(0) == []
        sampler.run_ticks(40)
        summary = sampler.stop()
    assert summary.spool_errors == 3
    assert summary.unspooled == 0
    assert [c["seq"] for c in sink.of(0)] == list(range(5))
    assert len([r for r in caplog.records if "disk full" in r.getMessage()]) == 1


# -- counter-only devices (RAPL-like) -----------------------------------------------------------


class CounterOnly:
    """A simulated backend with its power readings removed, like RAPL (counter, no power)."""

    def __init__(self, inner: SimulatedBackend, clock: ManualClock) -> None:
        self.inner = inner
        self.clock = clock
        self._devices = tuple(
            DeviceInfo(
                backend="rapl",
                index=d.index,
                uid=d.uid,
                name=d.name,
                power_limit_w=None,
                has_energy_counter=True,
                power_method=Method.NONE,
                counter_wrap_j=None,
                scope="package",
                simulated=True,
            )
            for d in inner.devices()
        )

    def devices(self) -> Sequence[DeviceInfo]:
        return self._devices

    def read(self) -> Readings:
        inner = self.inner.read()
        buffer = ReadingsBuffer(
            len(inner), t_wall_s=float(inner.t_wall_s[0]), t_mono_s=float(inner.t_mono_s[0])
        )
        for i, energy_j in enumerate(inner.energy_j.tolist()):
            buffer.set_energy(i, energy_j)
        return buffer.freeze()

    def close(self) -> None:
        self.inner.close()


def test_a_counter_only_device_gets_power_from_counter_differences() -> None:
    device = SimulatedDevice(Ramp(50.0, 250.0, duration_s=4.0, t_start_s=1.0))
    sampler, clock, backend, sink = _sampler([device], chunk_s=1.0, wrap=CounterOnly)
    sampler.run_ticks(63)
    summary = sampler.stop().devices[0]
    chunks = sink.of(0)
    assert sampler.devices[0]["power_method"] == "counter"
    assert sampler.devices[0]["kind"] == "cpu"
    assert {c["method"] for c in chunks} == {"counter"}
    assert summary.energy_j == pytest.approx(_true_energy_j(chunks, device, clock, backend))
    t = np.array([t for c in chunks for t in c["samples"]["t_s"]])
    p = np.array([p for c in chunks for p in c["samples"]["power_w"]])
    assert np.all(np.isfinite(p))
    # each power sample is the mean over the interval before it (the first: the one after it)
    tp = np.array([_profile_time(x, clock, backend) for x in t])
    expected = device.profile.energy_j(tp - 0.1, tp) / 0.1
    expected[0] = device.profile.energy_j(tp[0], tp[0] + 0.1) / 0.1
    assert p == pytest.approx(expected, rel=1e-6)  # tp carries unix-time rounding


# -- spool and restart --------------------------------------------------------------------------


def test_a_restarted_sampler_resumes_numbering_from_the_spool(tmp_path: Any) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        clock = ManualClock()
        for _ in range(2):
            backend = SimulatedBackend(FLEET[:2], clock=clock)
            sampler = Sampler(
                backend,
                run_id=RUN,
                spool=spool,
                chunk_s=1.0,
                clock=clock,
                sleep=clock.advance,
                host=HOST,
            )
            sampler.run_ticks(25)  # two chunks sealed, the third open: lost (no stop)
            clock.advance(5.0)
        for key in (f"{HOST}/SIM-0", f"{HOST}/SIM-1"):
            chunks = spool.chunks(RUN, key)
            assert [c.key.seq for c in chunks] == [0, 1, 2, 3]
            assert chunks[2].payload["t0_s"] > chunks[1].payload["t1_s"]  # the lost tail
        record = spool.run_status(RUN)
        assert record is not None
        assert record.status == "running"
        assert record.metadata["chunk_s"] == 1.0
        assert [d["key"] for d in spool.devices(RUN)] == [f"{HOST}/SIM-0", f"{HOST}/SIM-1"]


def test_settings_are_checked() -> None:
    backend = SimulatedBackend(FLEET[:1], clock=ManualClock())
    with pytest.raises(ValueError, match="interval_s"):
        Sampler(backend, run_id=RUN, interval_s=0.0)
    with pytest.raises(ValueError, match="chunk_s"):
        Sampler(backend, run_id=RUN, interval_s=1.0, chunk_s=0.5)
    with pytest.raises(ValueError, match="chunk_s"):
        Sampler(backend, run_id=RUN, chunk_s=math.inf)


def test_the_summary_of_a_sampler_that_never_ticked() -> None:
    sampler, _, _, sink = _sampler(FLEET[:2])
    summary = sampler.stop(status="failed", exit_code=2)
    assert summary.energy_j == 0.0
    assert [d.method for d in summary.devices] == ["none", "none"]
    assert all(math.isnan(d.peak_power_w) for d in summary.devices)
    assert sink.chunks == {}
    assert sink.status[RUN] == ("failed", 2)


def test_concurrent_summaries_from_threads_do_not_disturb_ticks() -> None:
    sampler, _, _, _ = _sampler(FLEET, chunk_s=0.5)
    stop = threading.Event()
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            while not stop.is_set():
                sampler.summary()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    readers = [threading.Thread(target=poll) for _ in range(2)]
    for reader in readers:
        reader.start()
    sampler.run_ticks(200)
    stop.set()
    for reader in readers:
        reader.join(timeout=30.0)
    assert errors == []
    assert sampler.stop().ticks == 200


def test_a_gpu_offering_nothing_is_summarised_but_kept_off_the_wire() -> None:
    sampler, sink = _nvml_sampler([h100(profile=steady(300.0)), p100(power_usage=False)], 25)
    summary = sampler.stop()
    mute = summary.devices[1]
    assert (mute.method, mute.energy_j, mute.status) == ("none", 0.0, "not_supported")
    assert mute.missed == {"not_supported": 25}
    assert sampler.devices[1]["power_method"] == "none"
    assert [d["key"] for d in sink.devices] == [sampler.devices[0]["key"]]
    assert list(sink.chunks) == [sampler.devices[0]["key"]]


def test_a_chunking_failure_drops_one_device_chunk_and_metering_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sampler, _, _, sink = _sampler(FLEET[:2], chunk_s=1.0)
    sampler.run_ticks(5)
    broken = sampler._chunkers[1]
    # A sample the kernel refuses in device 1's open chunk (the chunker never builds one: this
    # stands for a meter bug). Both devices' chunk 0 go to the kernel in one call; the refusal
    # costs device 1's chunk only.
    broken._p[0] = -1.0
    with caplog.at_level(logging.WARNING, logger="thermoledger.meters.sampler"):
        sampler.run_ticks(30)
        summary = sampler.stop()
    assert summary.devices[1].missed == {"internal": 10}  # chunk 0 (its bridge went too)
    assert [c["seq"] for c in sink.of(1)] == [0, 1, 2]  # numbering goes on
    assert [c["seq"] for c in sink.of(0)] == [0, 1, 2, 3]
    assert sink.of(1)[0]["t0_s"] > sink.of(0)[0]["t1_s"]  # restarted after the bridge
    failures = [r for r in caplog.records if "chunking failed" in r.getMessage()]
    assert len(failures) == 1
    assert "power" in failures[0].getMessage()  # the kernel's own message
