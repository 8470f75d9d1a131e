"""The sampler's fast paths give what the general paths give.

- `FlatBuffer` (lists) and `ReadingsBuffer` (numpy): the same operations make the same tick.
- `NvmlBackend.read_flat` and `NvmlBackend.read`: the same figures, tick by tick, over a fake
  fleet with failing fields and calls, a counter reset, a lost GPU and GPUs on two calls.
- A sampler on `read_flat` and one on `read` (a backend that offers only the Protocol): the
  same chunks and summaries, bit for bit.
- A sampler that keeps plain readings as rows (`Sampler._plain`) and one that hands every
  reading to its chunker: the same chunks and summaries, bit for bit, summaries taken mid-chunk.
- `seal` of the chunks due together in one kernel call per group, and one call per chunk: the
  same chunks (floats to 1e-12 relative: the kernel may sum in another order), and one call per
  chunk is exactly the kernel's answer for that chunk alone.
- The spool's one-serialisation encoding: `content_hash`'s digest, a payload that parses back.
- The sampler's sleep: `Sampler.stop` cuts a long one short.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.meters import CountingPlain, ListSink
from thermoledger.accounting.integrate import PowerModel, summarize_chunks
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.base import (
    DeviceInfo,
    DeviceStatus,
    FlatBuffer,
    FlatReader,
    Method,
    Readings,
    ReadingsBuffer,
    UncertaintyHint,
    flat_readings,
)
from thermoledger.meters.backends.node import NodeBackend
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.backends.rapl import RaplBackend
from thermoledger.meters.backends.simulated import (
    Bursty,
    Ramp,
    SimulatedBackend,
    SimulatedDevice,
    steady,
)
from thermoledger.meters.chunker import DeviceChunker, SealJob, reading_model, seal
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.spool import Spool
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_powercap import FakePowercap
from thermoledger.meters.testing.fake_pynvml import FakeGpu, FakeNvml, Fault, a100, h100, p100, v100
from thermoledger.meters.wire import ChunkPayload, content_hash

RUN = "run-fast"
HOST = "node"


def _fleet(*, lasting: bool = True) -> list[FakeGpu]:
    """Every path of the NVML read: one call, two calls, failures of each kind.

    Faults start mid-chunk (chunks are 1 s), some with the power still read. Without
    ``lasting``: no GPU that fails for good (offers nothing, falls off the bus).
    """
    fleet = [
        h100(profile=steady(450.0)),
        h100(profile=Bursty(150.0, 680.0, period_s=2.0, duty=0.6, phase_s=0.4)),
        h100(profile=Ramp(120.0, 650.0, duration_s=30.0)),
        a100(profile=Bursty(100.0, 380.0, period_s=0.7, duty=0.3)),
        v100(profile=steady(250.0)),
        p100(profile=Bursty(90.0, 240.0, period_s=1.3, duty=0.5)),  # no counter, no fields
        h100(
            profile=steady(300.0),
            faults=(Fault(codes.NVML_ERROR_TIMEOUT, 1.32, 1.55, field_id=186),),
        ),
        h100(
            profile=steady(310.0),
            faults=(
                Fault(
                    codes.NVML_ERROR_NO_DATA, 2.32, 2.55, call="nvmlDeviceGetTotalEnergyConsumption"
                ),
            ),
        ),
        h100(profile=steady(330.0), reloads_at_s=(1.85,), counter_start_mj=5_000_000),
        h100(profile=steady(340.0), energy_field_offset_mj=10_000_000),  # two calls
        h100(profile=steady(350.0), faults=(Fault(codes.NVML_ERROR_NOT_SUPPORTED, 3.02, 3.25),)),
        h100(
            profile=steady(360.0),
            faults=(Fault(codes.NVML_ERROR_NO_PERMISSION, 3.62, 3.85, field_id=191),),
        ),
    ]
    if lasting:
        fleet += [p100(power_usage=False), h100(profile=steady(320.0), lost_at_s=2.45)]
    return fleet


def _nvml(clock: ManualClock, *, lasting: bool = True) -> NvmlBackend:
    fake = FakeNvml(_fleet(lasting=lasting), clock=clock)
    # The instantaneous field, which the faults above target (the default reads the average
    # field 185 where there is one: the same code paths with another field id).
    return NvmlBackend(nvml=fake, clock=clock, env={}, power_reading="instant")


class ReadingsOnly:
    """A backend that offers only the Protocol (the sampler then converts its `Readings`)."""

    def __init__(self, inner: NvmlBackend) -> None:
        self.inner = inner

    def devices(self) -> Sequence[DeviceInfo]:
        return self.inner.devices()

    def read(self) -> Readings:
        return self.inner.read()

    def memory_busy_frac(self, i: int) -> float:  # the same memory activity as the inner one
        return self.inner.memory_busy_frac(i)

    def close(self) -> None:
        self.inner.close()


class Blanking:
    """Simulated GPUs where device 2 now and then reads no power, with no status saying why."""

    def __init__(self, inner: SimulatedBackend) -> None:
        self.inner = inner
        self.reads = 0

    def devices(self) -> Sequence[DeviceInfo]:
        return self.inner.devices()

    def read(self) -> Readings:
        readings = self.inner.read()
        self.reads += 1
        if self.reads % 9 != 4:
            return readings
        power_w, methods = readings.power_w.copy(), readings.power_method.copy()
        power_w[2], methods[2] = math.nan, Method.NONE
        return dataclasses.replace(readings, power_w=power_w, power_method=methods)

    def close(self) -> None:
        self.inner.close()


def _as_json(value: Any) -> str:
    """Exact, NaN-aware comparison key (json writes floats with repr precision)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, sort_keys=True)


# -- buffers ------------------------------------------------------------------------------------


def _fill(buffer: ReadingsBuffer | FlatBuffer) -> None:
    buffer.stamp(0, 10.25)
    buffer.set_power(0, 301.5, Method.POWER_INSTANT)
    buffer.set_energy(0, 1234.5)
    buffer.stamp(1, 10.5, t_wall_s=1.7e9 + 3.0)
    buffer.set_power(1, 200.0, Method.POWER_AVG)
    buffer.fail(1, DeviceStatus.ERROR, "counter: timeout")
    buffer.fail(1, DeviceStatus.DENIED, "counter: refused")
    buffer.fail(1, DeviceStatus.ERROR, "again")  # a milder status does not win
    buffer.set_power(2, 100.0, Method.POWER_INSTANT)
    buffer.set_energy(2, 50.0)
    buffer.fail(2, DeviceStatus.LOST, "gone")  # clears what was read
    buffer.fail(3, DeviceStatus.NOT_SUPPORTED, "nothing")


def test_flat_buffer_makes_the_tick_a_readings_buffer_makes() -> None:
    numpy_buffer = ReadingsBuffer(5, t_wall_s=1.7e9, t_mono_s=10.0)
    flat_buffer = FlatBuffer(5, t_wall_s=1.7e9, t_mono_s=10.0)
    _fill(numpy_buffer)
    _fill(flat_buffer)
    expected = numpy_buffer.freeze()
    frozen = flat_buffer.freeze()
    for name in ("t_wall_s", "t_mono_s", "power_w", "energy_j"):
        np.testing.assert_array_equal(getattr(frozen, name), getattr(expected, name))
    for name in ("status", "power_method", "energy_method"):
        np.testing.assert_array_equal(getattr(frozen, name), getattr(expected, name))
        assert getattr(frozen, name).dtype == np.int8
    assert frozen.messages == expected.messages
    assert _as_json(flat_buffer.flat()) == _as_json(flat_readings(expected))
    assert frozen.status.tolist() == [0, 4, 1, 2, 0]
    assert frozen.messages[1] == "counter: timeout; counter: refused; again"


@pytest.mark.parametrize("value", [math.nan, -1.0, math.inf])
def test_flat_buffer_refuses_what_readings_refuse(value: float) -> None:
    buffer = FlatBuffer(1, t_wall_s=1.7e9, t_mono_s=10.0)
    with pytest.raises(ValueError, match="power_w"):
        buffer.set_power(0, value, Method.POWER_INSTANT)
    with pytest.raises(ValueError, match="energy_j"):
        buffer.set_energy(0, value)
    with pytest.raises(ValueError, match="without a method"):
        buffer.set_power(0, 1.0, Method.NONE)
    with pytest.raises(ValueError, match="without a method"):
        buffer.set_energy(0, 1.0, Method.NONE)


# -- the NVML backend ---------------------------------------------------------------------------


def test_nvml_read_flat_gives_what_read_gives() -> None:
    clocks = ManualClock(), ManualClock()
    flat_backend, numpy_backend = _nvml(clocks[0]), _nvml(clocks[1])
    assert isinstance(flat_backend, FlatReader)
    assert flat_backend.energy_in_field.count(True) >= 8  # most GPUs take the one-call path
    statuses: set[int] = set()
    for _ in range(45):
        flat = flat_backend.read_flat()
        expected = flat_readings(numpy_backend.read())
        assert _as_json(flat) == _as_json(expected)
        statuses.update(flat.status)
        for clock in clocks:
            clock.advance(0.1)
    assert statuses == {int(s) for s in DeviceStatus}  # every outcome was met


# -- the sampler --------------------------------------------------------------------------------


class PerDevice(Sampler):
    """The general path only: every reading goes through `DeviceChunker.add`."""

    def _plain(
        self, t_mono: list[float], power: list[float], counter: list[float], status: list[int]
    ) -> bool:
        return False


def _run(
    backend: NvmlBackend | ReadingsOnly | Blanking | NodeBackend,
    clock: ManualClock,
    kind: type[Sampler] = Sampler,
) -> tuple[Sampler, ListSink, list[str]]:
    """Drive a sampler through chunks, repeats, a flush, a silence; its summaries (as JSON)."""
    sink = ListSink()
    frozen = [False]

    def sleep(dt_s: float) -> None:  # a frozen clock: ticks that read the same times again
        if not frozen[0]:
            clock.advance(dt_s)

    sampler = kind(
        backend,
        run_id=RUN,
        spool=sink,
        interval_s=0.1,
        chunk_s=1.0,
        clock=clock,
        sleep=sleep,
        host=HOST,
    )
    summaries = []

    def summarize() -> None:  # the one figure that differs is the CPU time
        summaries.append(_as_json(dataclasses.replace(sampler.summary(), cpu_s=0.0)))

    sampler.run_ticks(23)
    summarize()  # mid-chunk: hands the fast path's rows over
    frozen[0] = True
    sampler.run_ticks(3)
    frozen[0] = False
    sampler.run_ticks(4)
    sampler.flush()  # a seal without a bridge, mid-run
    sampler.run_ticks(20)
    summarize()
    clock.advance(2.5)  # silence: every device's chunk goes stale
    sampler.run_ticks(17)
    sampler.stop()
    summarize()
    return sampler, sink, summaries


def test_the_sampler_on_flat_readings_makes_the_chunks_it_makes_on_readings() -> None:
    clocks = ManualClock(), ManualClock()
    _, flat_sink, flat_summaries = _run(_nvml(clocks[0]), clocks[0])
    _, general_sink, general_summaries = _run(ReadingsOnly(_nvml(clocks[1])), clocks[1])
    assert len(flat_sink.chunks) > 80
    assert {c["method"] for c in flat_sink.chunks} == {"counter", "power_instant"}
    assert _as_json(flat_sink.chunks) == _as_json(general_sink.chunks)
    assert flat_summaries == general_summaries


def _node(clock: ManualClock, root: Path) -> NodeBackend:
    """Fake GPUs and RAPL packages with DRAM: counter-only devices beside GPUs with power."""
    tree = FakePowercap(root)
    for package in range(2):
        zone = tree.add_package(package, core=False)
        tree.drive(zone, Bursty(40.0, 190.0, period_s=0.7, duty=0.4), clock=clock)
        tree.drive(f"{zone}:0", steady(20.0 + package), clock=clock)
    rapl = RaplBackend(tree.root, read_text=tree.read_text, clock=clock)
    return NodeBackend([_nvml(clock, lasting=False), rapl], clock=clock)


@pytest.mark.parametrize("fleet", ["nvml", "simulated", "node"])
def test_rows_of_plain_readings_make_the_chunks_readings_one_by_one_make(
    fleet: str, tmp_path: Path
) -> None:
    clocks = ManualClock(), ManualClock()
    backends: tuple[NvmlBackend | Blanking | NodeBackend, ...]
    if fleet == "nvml":
        backends = (_nvml(clocks[0], lasting=False), _nvml(clocks[1], lasting=False))
    elif fleet == "simulated":
        backends = (
            Blanking(SimulatedBackend(clock=clocks[0])),
            Blanking(SimulatedBackend(clock=clocks[1])),
        )
    else:
        backends = (_node(clocks[0], tmp_path / "a"), _node(clocks[1], tmp_path / "b"))
    fast, fast_sink, fast_summaries = _run(backends[0], clocks[0], CountingPlain)
    _, sink, summaries = _run(backends[1], clocks[1], PerDevice)
    assert isinstance(fast, CountingPlain)
    assert fast.plain_ticks >= 30  # of 67: the fast path was taken
    assert len(sink.chunks) > 40
    if fleet == "node":  # the counter-only devices took it too, with their derived power
        assert {c["method"] for c in sink.chunks} >= {"counter"}
        assert sum("intel-rapl" in c["device_key"] for c in sink.chunks) >= 4 * 6
    assert _as_json(fast_sink.chunks) == _as_json(sink.chunks)
    assert fast_summaries == summaries
    if fleet == "simulated":
        missed = json.loads(summaries[-1])["devices"][2]["missed"]
        assert missed["no_power"] == 8  # readings without power and no status say why


# -- sealing ------------------------------------------------------------------------------------

H100 = UncertaintyHint(power_rel=0.05, power_abs_w=5.0)
INFOS = (
    DeviceInfo("nvml", 0, "GPU-0", "H100", 700.0, True, Method.POWER_INSTANT, uncertainty=H100),
    DeviceInfo("nvml", 1, "GPU-1", "H100", 700.0, True, Method.POWER_INSTANT, uncertainty=H100),
    DeviceInfo(
        "nvml",
        2,
        "GPU-2",
        "H100 averaged",
        700.0,
        True,
        Method.POWER_AVG,
        uncertainty=UncertaintyHint(power_rel=0.05, power_abs_w=5.0, power_window_s=1.0),
    ),
    DeviceInfo("nvml", 3, "GPU-3", "P100", 250.0, False, Method.POWER_INSTANT, uncertainty=H100),
    DeviceInfo(
        "rapl", 4, "intel-rapl:0", "package-0", None, True, Method.NONE, 5000.0, scope="package"
    ),
    DeviceInfo(
        "simulated",
        5,
        "SIM-5",
        "Simulated",
        None,
        True,
        Method.POWER_INSTANT,
        simulated=True,
        uncertainty=UncertaintyHint(power_rel=0.02, power_window_s=0.0),
    ),
)
ORIGIN_S = 500.0


def _chunkers() -> list[DeviceChunker]:
    return [
        DeviceChunker(
            info,
            key=f"{HOST}/{info.uid}",
            first_seq=0,
            interval_s=0.1,
            chunk_s=1.0,
            origin_mono_s=ORIGIN_S,
            unix_offset_s=1.7e9,
        )
        for info in INFOS
    ]


def _stream(ticks: int) -> list[list[tuple[float, float, float]]]:
    """Per tick and device: (t_mono_s, power_w, counter_j), with holes, a reset, a silence."""
    rng = np.random.default_rng(7)
    counters = [1.0e6, 2.0e6, 3.0e6, math.nan, 4000.0, 10.0]
    out = []
    for k in range(ticks):
        row = []
        for d in range(len(INFOS)):
            t = ORIGIN_S + 0.1 * k + 2e-5 * d + rng.uniform(0.0, 1e-3)
            p = float(rng.uniform(40.0, 650.0))
            if d != 3:
                counters[d] += p * 0.1
            if d == 0 and k == 57:
                counters[d] = 3.0  # driver reload
            if d == 4:
                counters[d] %= 5000.0  # RAPL wraps
            c = counters[d]
            if rng.uniform() < 0.03:
                p = math.nan
            if rng.uniform() < 0.03:
                c = math.nan
            if d == 1 and 81 <= k < 112:
                p = c = math.nan  # silent for 3 s: a stale seal
            row.append((t, p, c))
        out.append(row)
    return out


def _drive(
    chunkers: list[DeviceChunker], stream: list[list[tuple[float, float, float]]], *, together: bool
) -> list[ChunkPayload]:
    """Feed the stream as the sampler does; seal each tick's chunks together or one by one."""
    sealed: list[ChunkPayload] = []

    def seal_all(jobs: list[SealJob]) -> None:
        batches = [jobs] if together else [[job] for job in jobs]
        for batch in batches:
            payloads, failures = seal(batch)
            assert failures == []
            sealed.extend(payloads)

    for k, row in enumerate(stream):
        jobs = [job for ch, r in zip(chunkers, row, strict=True) if (job := ch.add(*r))]
        now_s = max(t for t, _, _ in row) + 1e-3
        jobs += [job for ch in chunkers if (job := ch.seal_stale(now_s))]
        if k == 133:
            jobs += [job for ch in chunkers if (job := ch.flush())]
        seal_all(jobs)
    seal_all([job for ch in chunkers if (job := ch.flush())])
    return sealed


def _assert_same(a: Any, b: Any, *, rel: float, where: str = "chunk") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], rel=rel, where=f"{where}.{key}")
    elif isinstance(a, float) and where.split(".")[-1] not in ("t_s", "power_w", "energy_j"):
        assert a == pytest.approx(b, rel=rel, abs=1e-9, nan_ok=True), where
    else:
        assert a == b, where  # strings, ints, and sample lists exactly


def test_sealing_together_makes_the_chunks_of_sealing_one_by_one() -> None:
    stream = _stream(190)
    together, alone = _chunkers(), _chunkers()
    a = _drive(together, stream, together=True)
    b = _drive(alone, stream, together=False)
    assert len(a) == len(b) > 100
    assert {c["method"] for c in a} == {"counter", "power_avg", "power_instant"}
    assert sum(c["reset_count"] for c in a) >= 1
    assert sum(c["wrap_count"] for c in a) >= 1
    assert sum(c["gap_count"] for c in a) >= 1
    for chunk_a, chunk_b in zip(a, b, strict=True):
        _assert_same(dict(chunk_a), dict(chunk_b), rel=1e-12)
    for ch_a, ch_b in zip(together, alone, strict=True):
        _assert_same(
            dataclasses.asdict(ch_a.summary()), dataclasses.asdict(ch_b.summary()), rel=1e-12
        )


@pytest.mark.parametrize("bridged", [True, False])
def test_a_chunk_sealed_alone_is_the_kernels_answer_for_it(bridged: bool) -> None:
    info = INFOS[2]  # averaged power with a known window: the kernel's longest path
    chunker = _chunkers()[2]
    job = None
    for k in range(25):
        job = chunker.add(ORIGIN_S + 0.1 * k, 100.0 + 7.0 * k, 1000.0 + 13.0 * k) or job
    if not bridged:
        job = chunker.flush()
    assert job is not None
    assert job.bridged == bridged
    t, p, c = (np.array(x) for x in (job.t_s, job.power_w, job.counter_j))
    (payload,), _ = seal([job])
    coverage, window_s = reading_model(info, interval_s=0.1)
    s = summarize_chunks(  # the one call per chunk the sampler used to make
        t,
        p,
        chunk_starts=[0, t.size - 1] if bridged else [0],
        counter_j=c,
        model=PowerModel(
            method="power_avg",
            nominal_interval_s=0.1,
            max_power_w=700.0,
            sensor_rel_error=0.05,
            sensor_abs_error_w=5.0,
            coverage_fraction=coverage,
            averaging_window_s=window_s,
        ),
    )
    for name in ("energy_j", "energy_low_j", "energy_high_j", "sensor_uncertainty_j"):
        assert payload[name] == float(getattr(s, name)[0]), name
    assert payload["n"] == int(s.n[0]) == (t.size - 1 if bridged else t.size)
    assert payload["t1_s"] == float(s.t1_s[0]) + ORIGIN_S + 1.7e9


# -- spool and sleep ----------------------------------------------------------------------------


@pytest.mark.parametrize("high_j", [3100.0, math.inf])
def test_the_spool_stores_a_chunk_under_its_content_hash(tmp_path: Path, high_j: float) -> None:
    clock = ManualClock()
    backend = SimulatedBackend([SimulatedDevice(steady(300.0))], clock=clock)
    sink = ListSink()
    sampler = Sampler(
        backend, run_id=RUN, spool=sink, clock=clock, sleep=clock.advance, chunk_s=1.0, host=HOST
    )
    sampler.run_ticks(12)
    sampler.stop()
    chunk = dict(sink.chunks[0])
    chunk["energy_high_j"] = high_j  # inf: an unbounded band (a counter reset)
    with Spool.in_directory(tmp_path) as spool:
        spool.open_run(RUN)
        spool.put_devices(RUN, sampler.devices)
        assert spool.put_chunks(RUN, [chunk]) == 1  # type: ignore[list-item]
        assert spool.put_chunks(RUN, [chunk]) == 0  # type: ignore[list-item]
        (stored,) = spool.chunks(RUN)
    assert stored.payload == chunk
    assert stored.content_hash == content_hash(chunk)


def test_stop_cuts_a_long_sleep_short() -> None:
    sampler = Sampler(
        SimulatedBackend([SimulatedDevice(steady(300.0))]),
        run_id=RUN,
        interval_s=3600.0,
        chunk_s=3600.0,
        host=HOST,
    )
    sampler.start()
    thread = sampler._thread
    assert thread is not None
    summary = sampler.stop(timeout_s=60.0)
    assert not thread.is_alive()  # woken, not waited out (an hour)
    assert summary.ticks == 2  # the opening and the closing edges, read by start() and stop()


def test_a_sampler_without_devices_ticks() -> None:
    clock = ManualClock()
    sampler = Sampler(
        SimulatedBackend([], clock=clock), run_id=RUN, clock=clock, sleep=clock.advance, host=HOST
    )
    sampler.run_ticks(5)
    assert sampler.stop().ticks == 5


class FailingTick(Sampler):
    """A meter bug: every tick raises."""

    def _tick(self, **options: Any) -> None:
        raise RuntimeError("bug")


def test_a_failed_tick_still_waits_for_the_next_deadline() -> None:
    clock = ManualClock()
    sampler = FailingTick(
        SimulatedBackend([SimulatedDevice(steady(300.0))], clock=clock),
        run_id=RUN,
        clock=clock,
        sleep=clock.advance,
        host=HOST,
    )
    start_s = clock.monotonic_s()
    for k in range(1, 4):
        with pytest.raises(RuntimeError, match="bug"):
            sampler.step()
        assert clock.monotonic_s() == pytest.approx(start_s + 0.1 * (k - 1))  # on schedule


def test_an_unusable_power_limit_is_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """A driver that reports a 0 W limit must not stop the meter: bounds use the trace's peak."""
    info = DeviceInfo("nvml", 0, "GPU-0", "H100", 0.0, False, Method.POWER_INSTANT)
    with caplog.at_level(logging.WARNING, logger="thermoledger.meters.chunker"):
        chunker = DeviceChunker(
            info,
            key=f"{HOST}/GPU-0",
            first_seq=0,
            interval_s=0.1,
            chunk_s=1.0,
            origin_mono_s=ORIGIN_S,
            unix_offset_s=1.7e9,
        )
    assert "unusable power limit" in caplog.text
    jobs = [chunker.add(ORIGIN_S + 0.1 * i, 300.0, math.nan) for i in range(25)]
    sealed, failed = seal([job for job in jobs if job is not None])
    assert failed == []
    assert [c["seq"] for c in sealed] == [0, 1]
    assert chunker.summary().energy_j == pytest.approx(300.0 * 2.4)
