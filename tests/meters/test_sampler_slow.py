"""Reading around slow devices: the sampler's threads, on a manual clock they share.

Every test runs the real sampler threads (`Sampler.start`) over the fake NVML (or a backend read
as a whole) on `tests.meters.shared_clock.SharedClock`: a slow call waits on its own thread
while the other thread ticks on, as in real time, and each run comes out the same every time.
Ticks are 0.1 s, chunks 1 s; the fake driver loads at t = 0, when the sampler starts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from tests.meters.shared_clock import SharedClock
from tests.meters.test_fast_path import _nvml as nvml_every_outcome
from thermoledger.meters.backends import (
    DeviceInfo,
    Readings,
    SimulatedBackend,
    SimulatedDevice,
    steady,
)
from thermoledger.meters.backends.base import DeviceReader, FlatBuffer
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.sampler import MeterSummary, Sampler
from thermoledger.meters.spool import RunStatus
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_pynvml import FakeGpu, FakeNvml, SlowCall, h100
from thermoledger.meters.wire import ChunkPayload, DevicePayload

RUN = "slow-run"
HOST = "node"
INTERVAL_S = 0.1
THREAD_NAME = f"thermoledger-sampler-{RUN}"


class Sink:
    """An in-memory `ChunkSink` (seqs must be contiguous); ``write_s`` makes writes slow."""

    def __init__(self, clock: ManualClock | None = None, write_s: float = 0.0) -> None:
        self.clock = clock
        self.write_s = write_s
        self.slow_writes = 0
        self.chunks: dict[str, list[ChunkPayload]] = {}

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        pass

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        pass

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        on_sampler = threading.current_thread().name == THREAD_NAME
        if self.clock is not None and self.write_s > 0 and on_sampler:
            self.slow_writes += 1
            self.clock.advance(self.write_s)  # on a sampler thread: this write takes time
        batch = list(chunks)
        for chunk in batch:
            stored = self.chunks.setdefault(chunk["device_key"], [])
            assert chunk["seq"] == len(stored), "a seq was skipped or reused"
            stored.append(chunk)
        return len(batch)

    def next_seqs(self, run_id: str) -> dict[str, int]:
        return {}

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        pass


class Recording(Sampler):
    """Records which sampler thread ran each scheduled tick (the edges run on the caller's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tick_threads: list[int] = []

    def _tick(self, **options: Any) -> None:
        if threading.current_thread().name == THREAD_NAME:
            self.tick_threads.append(threading.get_ident())
        super()._tick(**options)


def _clock() -> SharedClock:
    return SharedClock(lambda thread: thread.name == THREAD_NAME)


def _sampler(backend: Any, clock: ManualClock, sink: Sink) -> Recording:
    return Recording(
        backend,
        run_id=RUN,
        spool=sink,
        interval_s=INTERVAL_S,
        chunk_s=1.0,
        clock=clock,
        sleep=clock.advance,
        host=HOST,
    )


@contextlib.contextmanager
def _started(backend: Any, clock: SharedClock, sink: Sink) -> Iterator[Recording]:
    """A started sampler; if the test fails meanwhile, its threads are stopped all the same."""
    sampler = _sampler(backend, clock, sink)
    sampler.start()
    try:
        yield sampler
    except BaseException:
        clock.close()  # time stands still and nothing waits: the threads see the stop at once
        sampler.stop()
        raise


def _run(
    backend: Any,
    clock: SharedClock,
    *,
    seconds: float,
    sink: Sink | None = None,
) -> tuple[Recording, Sink, MeterSummary]:
    """Start a sampler, let ``seconds`` of shared time pass, stop it (time going on meanwhile)."""
    sink = sink if sink is not None else Sink()
    with _started(backend, clock, sink) as sampler:
        clock.advance(seconds)
        summary = clock.run_during(sampler.stop)
    return sampler, sink, summary


def _grid(
    summary: MeterSummary, sampler: Sampler, clock: ManualClock, start_s: float
) -> list[float]:
    """The sample times of a run on schedule: tick 0 (the opening edge, read by `start`), the
    ticks every 0.1 s, then the closing edge `stop` read once the threads were stopped (on the
    shared clock, when the last sleeping thread woke to see the stop)."""
    grid = [round(k * INTERVAL_S, 6) for k in range(summary.ticks - 1)]
    return grid + _relative([sampler.closed_at_s], clock, start_s)


def _times(sink: Sink, sampler: Sampler, position: int) -> list[float]:
    """A device's sample times (unix seconds) in the chunks stored.

    The last chunk's end is the closing edge's sample: its own last sample, or its bridge when
    the edge fell in a new time bin (a lone sample opens no chunk of its own).
    """
    times: list[float] = []
    chunks = sink.chunks.get(sampler.devices[position]["key"], [])
    for chunk in chunks:
        column = chunk["samples"]["t_s"]
        assert isinstance(column, list)  # the sampler's chunks carry lists (no encoding)
        times += column
    if chunks and chunks[-1]["t1_s"] > times[-1]:
        times.append(chunks[-1]["t1_s"])
    return times


def _relative(times: list[float], clock: ManualClock, start_mono_s: float) -> list[float]:
    """Unix times as seconds since ``start_mono_s`` (to the µs: unix seconds resolve 0.24 µs)."""
    offset_s = clock.wall_s() - clock.monotonic_s()
    return [round(t - offset_s - start_mono_s, 6) for t in times]


def _nvml(gpus: Sequence[FakeGpu], clock: ManualClock) -> tuple[NvmlBackend, FakeNvml]:
    fake = FakeNvml(gpus, clock=clock)
    return NvmlBackend(nvml=fake, clock=clock, env={}), fake


def _alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


# -- the steady state ---------------------------------------------------------------------------


def test_two_threads_take_turns_and_make_the_chunks_one_thread_makes_by_hand() -> None:
    # every outcome a GPU can have (faults, a counter reset, a GPU lost, two-call GPUs, ...)
    with _clock() as clock:
        backend = nvml_every_outcome(clock)
        assert isinstance(backend, DeviceReader)
        sampler, sink, summary = _run(backend, clock, seconds=4.45)
    hand_clock = ManualClock()
    hand_sink = Sink()
    by_hand = _sampler(nvml_every_outcome(hand_clock), hand_clock, hand_sink)
    by_hand.run_ticks(summary.ticks - 1)  # tick 0 (the opening edge) on
    # the closing edge, read by stop() at once, at 4.45 s (both clocks start at 1000 s)
    hand_clock.advance(1000.0 + 4.45 - hand_clock.monotonic_s())
    by_hand.mark(cut=False)
    hand_summary = by_hand.stop()

    threads = sampler.tick_threads
    assert len(set(threads)) == 2  # no spare was needed
    assert all(a != b for a, b in itertools.pairwise(threads))  # they take turns
    assert len(threads) == summary.ticks - 2  # besides the opening and the closing edges
    assert summary.overruns == 0
    assert sum(len(chunks) for chunks in sink.chunks.values()) > 50
    assert sink.chunks == hand_sink.chunks
    assert summary.devices == hand_summary.devices
    assert all("slow" not in d.missed for d in summary.devices)


def test_nvml_read_device_on_one_thread_per_gpu_fills_what_read_flat_fills() -> None:
    clocks = ManualClock(), ManualClock()
    whole, by_gpu = nvml_every_outcome(clocks[0]), nvml_every_outcome(clocks[1])
    n = len(by_gpu.devices())
    statuses: set[int] = set()
    for _ in range(45):
        flat = whole.read_flat()
        buffer = FlatBuffer(n, t_wall_s=clocks[1].wall_s(), t_mono_s=clocks[1].monotonic_s())
        readers = [threading.Thread(target=by_gpu.read_device, args=(buffer, i)) for i in range(n)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        assert repr(buffer.flat()) == repr(flat)  # NaN where absent, in both
        statuses.update(flat.status)
        for clock in clocks:
            clock.advance(INTERVAL_S)
    assert len(statuses) >= 4  # OK, lost, not supported, error, ...


# -- one slow call ------------------------------------------------------------------------------


def test_a_read_that_outlasts_a_tick_is_skipped_labelled_and_taken_when_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GPU 1's call at t = 1.0 (tick 10) takes 0.25 s: ticks 11 and 12 go on without it.
    fleet = [
        h100(profile=steady(300.0)),
        h100(profile=steady(250.0), slow_calls=(SlowCall(0.25, 0.95, 1.05),)),
        h100(profile=steady(350.0)),
    ]
    with caplog.at_level(logging.WARNING, logger="thermoledger.meters.sampler"), _clock() as clock:
        backend, fake = _nvml(fleet, clock)
        start_s = fake.loaded_mono_s
        sampler, sink, summary = _run(backend, clock, seconds=2.95)
    assert summary.ticks == 31  # 30 on the grid (tick 0 read by start()), the closing edge
    first, slow, last = (_relative(_times(sink, sampler, i), clock, start_s) for i in range(3))
    grid = _grid(summary, sampler, clock, start_s)
    # GPU 0 was read before the slow call in tick 10: the next tick delivered that reading.
    assert first == grid
    # GPU 1: read when it answered (timed at its call's middle), then on the grid again.
    assert slow == [t for t in grid if t < 1.0] + [1.125] + [t for t in grid if t >= 1.3]
    # GPU 2 came after GPU 1 in tick 10, which stopped at the slow call; read last from then on.
    assert last == [t for t in grid if t != 1.0]
    assert [d.missed for d in summary.devices] == [{}, {"slow": 2}, {}]
    assert [d.gap_count for d in summary.devices] == [0, 0, 0]  # no hole longer than 0.3 s
    assert [d.status for d in summary.devices] == ["ok", "ok", "ok"]  # labelled, then back
    assert summary.overruns == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if " is slow: " in w]) == 1
    assert sampler.devices[1]["key"] in warnings[0]


def test_a_slow_call_holds_one_thread_and_a_spare_joins_once_for_all() -> None:
    slow = (SlowCall(0.55, 0.95, 1.05), SlowCall(0.55, 2.95, 3.05))  # calls at 1.0 and 3.0
    fleet = [h100(profile=steady(300.0)), h100(profile=steady(250.0), slow_calls=slow)]
    alive: list[int] = []
    with _clock() as clock:
        backend, _ = _nvml(fleet, clock)
        with _started(backend, clock, Sink()) as sampler:
            for seconds in (1.2, 1.0, 1.0, 1.0):  # at 1.2 and 3.2 a call hangs; by 2.2, 4.2 not
                clock.advance(seconds)
                alive.append(len(_alive()))
            summary = clock.run_during(sampler.stop)
    # one thread in the call, two ticking; the one back stays as a spare for the next time
    assert alive == [3, 3, 3, 3]
    assert len(set(sampler.tick_threads)) == 3
    assert summary.devices[0].missed == {}
    assert summary.devices[1].missed == {"slow": 10}  # ticks 11-15 and 31-35
    assert summary.overruns == 0


# -- several slow devices, a slow backend, a slow spool -----------------------------------------


def test_two_gpus_turning_slow_together_leave_the_others_on_schedule() -> None:
    slow = (SlowCall(0.3, 1.0, 2.0),)
    power_w = (300.0, 250.0, 200.0, 350.0)
    fleet = [
        h100(profile=steady(300.0)),
        h100(profile=steady(250.0), slow_calls=slow),
        h100(profile=steady(200.0), slow_calls=slow),
        h100(profile=steady(350.0)),
    ]
    most = 0
    with _clock() as clock:
        backend, fake = _nvml(fleet, clock)
        with _started(backend, clock, sink := Sink()) as sampler:
            for _ in range(30):  # the slow stretch and after it, a tick at a time
                clock.advance(INTERVAL_S)
                most = max(most, len(_alive()))
            clock.advance(0.45)
            after = len(_alive())
            summary = clock.run_during(sampler.stop)
        start_s = fake.loaded_mono_s
    grid = _grid(summary, sampler, clock, start_s)
    assert _relative(_times(sink, sampler, 0), clock, start_s) == grid
    # GPU 3 comes after both in the order they were read in until they turned slow: tick 10
    # stopped at GPU 1, tick 11 at GPU 2, each before reaching it. From then on the slow ones
    # are read last, and GPU 3 is on the grid again.
    assert _relative(_times(sink, sampler, 3), clock, start_s) == [
        t for t in grid if t not in (1.0, 1.1)
    ]
    assert [summary.devices[i].missed for i in (0, 3)] == [{}, {}]
    for position in (1, 2):
        d = summary.devices[position]
        assert d.missed["slow"] >= 5
        assert d.gap_count >= 1  # its own calls took 0.3 s: gaps, but only its own
        assert d.energy_j == pytest.approx(power_w[position] * d.duration_s, rel=1e-3)
    assert most == len(fleet)  # two threads in the slow calls, two spares ticking
    assert after == 3  # once the calls came back: two free threads and one spare
    assert summary.overruns == 0


class HangsOnce:
    """A backend read as a whole (no per-device reads) whose read at ``at_s`` takes ``hang_s``."""

    def __init__(self, inner: SimulatedBackend, clock: ManualClock, at_s: float, hang_s: float):
        self.inner = inner
        self.clock = clock
        self.at_s = at_s
        self.hang_s = hang_s
        self.start_s = clock.monotonic_s()

    def devices(self) -> Sequence[DeviceInfo]:
        return self.inner.devices()

    def read(self) -> Readings:
        if abs(self.clock.monotonic_s() - self.start_s - self.at_s) < 1e-9:
            self.clock.advance(self.hang_s / 2)
            readings = self.inner.read()
            self.clock.advance(self.hang_s / 2)
            return readings
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


def test_a_backend_read_as_a_whole_that_hangs_makes_every_device_slow_not_late() -> None:
    with _clock() as clock:
        inner = SimulatedBackend(
            [SimulatedDevice(steady(300.0)), SimulatedDevice(steady(200.0))], clock=clock
        )
        backend = HangsOnce(inner, clock, at_s=1.0, hang_s=0.25)
        assert not isinstance(backend, DeviceReader)
        sampler, sink, summary = _run(backend, clock, seconds=2.95)
        start_s = backend.start_s
    grid = _grid(summary, sampler, clock, start_s)
    for position in (0, 1):
        times = _relative(_times(sink, sampler, position), clock, start_s)
        # the hung read is taken when it returns (its own time), ticks 11 and 12 went without
        assert times == [t for t in grid if t < 1.0] + [1.125] + [t for t in grid if t >= 1.3]
        assert summary.devices[position].missed == {"slow": 2}
    assert summary.overruns == 0
    assert len(set(sampler.tick_threads)) == 3  # a spare covered while the read hung


def test_a_slow_spool_write_holds_up_no_tick() -> None:
    fleet = [h100(profile=steady(300.0)), h100(profile=steady(200.0))]
    with _clock() as clock:
        backend, fake = _nvml(fleet, clock)
        sink = Sink(clock, write_s=0.35)  # every write from a sampler thread takes 0.35 s
        sampler, sink, summary = _run(backend, clock, seconds=3.45, sink=sink)
        start_s = fake.loaded_mono_s
    assert sink.slow_writes >= 3  # one per chunk period
    grid = _grid(summary, sampler, clock, start_s)
    for position in (0, 1):
        assert _relative(_times(sink, sampler, position), clock, start_s) == grid
    assert summary.overruns == 0
    assert summary.unspooled == 0  # the other thread left its chunks to the next write
    assert [len(c) for c in sink.chunks.values()] == [4, 4]
