"""Memory activity: read about once a second per GPU, aggregated per chunk by time.

The backends read NVML's ``utilization.memory`` (AMD SMI's ``umc_activity``) as a fraction, NaN
where there is none; the sampler asks on every ``activity_interval_s``-th tick only, never at
the edges; each sealed chunk carries the readings' time-weighted mean as ``mem_busy_frac``
(each reading standing for the interval back to the one before it, at most
`ACTIVITY_HOLD_S`), absent where no reading covers it. Checked on manual clocks against the
fakes' closed-form truth, with the fakes refusing where the real libraries do.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from tests.support.meters import ListSink, open_nvml
from thermoledger.meters.backends import NodeBackend, SimulatedBackend, SimulatedDevice
from thermoledger.meters.backends import amdsmi as amd_codes
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.amdsmi import AmdSmiBackend
from thermoledger.meters.backends.base import ActivityReader, DeviceInfo, Method
from thermoledger.meters.backends.simulated import Bursty, steady
from thermoledger.meters.chunker import ACTIVITY_HOLD_S, DeviceChunker, seal
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_amdsmi import FakeAmdSmi, mi250x, mi300x
from thermoledger.meters.testing.fake_amdsmi import Fault as AmdFault
from thermoledger.meters.testing.fake_pynvml import Fault, h100
from thermoledger.meters.wire import ChunkPayload

HOST = "node"
UTILIZATION = "nvmlDeviceGetUtilizationRates"


class _Sink(ListSink):
    """The sealed chunks in memory, by device."""

    def of(self, key: str) -> list[ChunkPayload]:
        return [c for c in self.chunks if c["device_key"].endswith(key)]


# --------------------------------------------------------------------------- the chunker


def _chunker(clock: ManualClock) -> DeviceChunker:
    info = DeviceInfo(
        backend="simulated",
        index=0,
        uid="SIM-0",
        name="Simulated GPU",
        power_limit_w=700.0,
        has_energy_counter=False,
        power_method=Method.POWER_AVG,
        simulated=True,
    )
    return DeviceChunker(
        info,
        key="node/SIM-0",
        first_seq=0,
        interval_s=1.0,
        chunk_s=10.0,
        origin_mono_s=clock.monotonic_s(),
        unix_offset_s=clock.wall_s() - clock.monotonic_s(),
    )


def _seal_one(chunker: DeviceChunker, start_s: float, times_s: list[float]) -> ChunkPayload:
    """Samples at ``times_s`` (s after ``start_s``) then a bridge: one sealed chunk."""
    jobs = [job for t in times_s if (job := chunker.add(start_s + t, 300.0, math.nan))]
    (payload,), failures = seal(jobs)
    assert not failures
    return payload


def test_the_chunk_mean_is_weighted_by_the_time_each_reading_stands_for() -> None:
    clock = ManualClock()
    ch = _chunker(clock)
    origin = clock.monotonic_s()
    # readings at 1 s (0.2) and 4 s (0.8): the first stands for [0, 1]; the second for
    # [2, 4] only (ACTIVITY_HOLD_S = 2 s back), so the 1-2 s stretch is unobserved
    ch.add_activity(origin + 1.0, 0.2)
    ch.add_activity(origin + 4.0, 0.8)
    ch.add_activity(origin + 6.0, math.nan)  # failed: [4, 6] unobserved
    ch.add_activity(origin + 9.0, 0.5)  # stands for [7, 9]
    ch.add_activity(origin + 11.0, 1.0)  # after the chunk's end: the next chunk's
    payload = _seal_one(ch, origin, [float(t) for t in range(0, 11)])
    assert ACTIVITY_HOLD_S == 2.0
    expected = (1.0 * 0.2 + 2.0 * 0.8 + 2.0 * 0.5) / (1.0 + 2.0 + 2.0)
    assert payload["mem_busy_frac"] == pytest.approx(expected, rel=1e-12)
    # the next chunk starts at 10 s: the 11 s reading covers [10, 11] only
    second = _seal_one(ch, origin, [float(t) for t in range(11, 21)])
    assert second["mem_busy_frac"] == pytest.approx(1.0)


def test_a_chunk_without_readings_has_no_mem_busy_frac() -> None:
    clock = ManualClock()
    ch = _chunker(clock)
    origin = clock.monotonic_s()
    payload = _seal_one(ch, origin, [float(t) for t in range(0, 11)])
    assert "mem_busy_frac" not in payload
    ch.add_activity(origin + 12.0, math.nan)  # only failed readings: still none
    payload = _seal_one(ch, origin, [float(t) for t in range(11, 21)])
    assert "mem_busy_frac" not in payload


# --------------------------------------------------------------------------- the backends


def test_nvml_reads_utilization_memory_as_a_fraction_over_the_sample_period() -> None:
    # memory busy for 0.25 s of every second, in phase with the clock
    busy = Bursty(0.0, 1.0, period_s=1.0, duty=0.25)
    backend, fake, clock = open_nvml([h100(memory_busy=busy), h100(memory_busy=steady(0.376))])
    assert isinstance(backend, ActivityReader)
    clock.advance(5.0)
    assert backend.memory_busy_frac(0) == pytest.approx(0.25)
    assert backend.memory_busy_frac(1) == pytest.approx(0.38)  # whole percent, as NVML reports
    assert fake.calls[(UTILIZATION, 0)] == 1


def test_nvml_stops_asking_a_gpu_that_has_no_such_counter_and_survives_faults() -> None:
    mig = ("MIG-1b7c2d30-0000-4000-8000-00000000000a",)
    fault = Fault(codes.NVML_ERROR_TIMEOUT, start_s=0.0, end_s=2.0, call=UTILIZATION)
    backend, fake, clock = open_nvml(
        [h100(utilization=False), h100(mig_devices=mig), h100(faults=(fault,))]
    )
    for _ in range(3):
        assert math.isnan(backend.memory_busy_frac(0))
        assert math.isnan(backend.memory_busy_frac(1))  # NOT_SUPPORTED on MIG, as documented
    assert fake.calls[(UTILIZATION, 0)] == 1  # asked once: NOT_SUPPORTED is for good
    assert fake.calls[(UTILIZATION, 1)] == 1
    assert math.isnan(backend.memory_busy_frac(2))  # a timeout: this reading only
    clock.advance(3.0)
    assert backend.memory_busy_frac(2) == 0.0  # the fake's default: memory idle
    backend.close()
    assert math.isnan(backend.memory_busy_frac(2))  # closed: nothing asked


def test_amd_smi_reads_umc_activity_and_means_a_packages_two_dies() -> None:
    clock = ManualClock()
    primary, secondary = mi250x(umc_busy=steady(0.3))
    secondary = dataclasses.replace(secondary, umc_busy=steady(0.5))
    fake = FakeAmdSmi(
        [
            mi300x(umc_busy=steady(0.42)),
            mi300x(umc_busy=None),
            mi300x(activity=False),
            primary,
            secondary,
        ],
        clock=clock,
    )
    fake_fault = AmdFault(amd_codes.AMDSMI_STATUS_BUSY, call="amdsmi_get_gpu_activity")
    backend = AmdSmiBackend(amdsmi=fake, clock=clock)
    clock.advance(2.0)
    assert backend.memory_busy_frac(0) == pytest.approx(0.42)
    assert math.isnan(backend.memory_busy_frac(1))  # "N/A"
    assert math.isnan(backend.memory_busy_frac(2))  # NOT_SUPPORTED ...
    assert math.isnan(backend.memory_busy_frac(2))
    assert fake.calls[("amdsmi_get_gpu_activity", 2)] == 1  # ... asked once
    assert backend.memory_busy_frac(3) == pytest.approx(0.4)  # the package: both dies' mean
    assert math.isnan(backend.memory_busy_frac(4))  # the secondary die has no figures
    faulty = FakeAmdSmi([mi300x(faults=(fake_fault,))], clock=clock)
    assert math.isnan(AmdSmiBackend(amdsmi=faulty, clock=clock).memory_busy_frac(0))


def test_a_node_passes_activity_through_and_has_none_for_parts_without() -> None:
    clock = ManualClock()
    simulated = SimulatedBackend(
        [SimulatedDevice(steady(300.0), memory_busy=steady(0.6)), SimulatedDevice(steady(80.0))],
        clock=clock,
    )
    backend, _, _ = open_nvml([h100(memory_busy=steady(0.2))], clock=clock)
    node = NodeBackend([backend, simulated], clock=clock)
    clock.advance(2.0)
    assert node.memory_busy_frac(0) == pytest.approx(0.2)
    assert node.memory_busy_frac(1) == pytest.approx(0.6)
    assert math.isnan(node.memory_busy_frac(2))  # a simulated device without the counter


# --------------------------------------------------------------------------- the sampler


def _run(gpus: list[Any], ticks: int, **sampler: Any) -> tuple[_Sink, Any, Sampler]:
    backend, fake, clock = open_nvml(gpus)
    sink = _Sink()
    s = Sampler(
        backend,
        run_id="r",
        spool=sink,
        interval_s=0.1,
        chunk_s=10.0,
        clock=clock,
        sleep=clock.advance,
        host=HOST,
        **sampler,
    )
    s.run_ticks(ticks)
    s.flush()
    return sink, fake, s


def test_the_sampler_reads_memory_activity_once_a_second_not_every_tick() -> None:
    sink, fake, _ = _run([h100(), h100()], 300)  # 30 s at 10 Hz
    for gpu in (0, 1):
        assert fake.calls[(UTILIZATION, gpu)] == 30  # once per 10 ticks
        assert fake.calls[("nvmlDeviceGetFieldValues", gpu)] >= 300  # power: every tick
    assert all(c["mem_busy_frac"] == 0.0 for c in sink.chunks)
    _, fake, _ = _run([h100()], 100, activity_interval_s=0.5)
    assert fake.calls[(UTILIZATION, 0)] == 20
    sink, fake, _ = _run([h100()], 100, activity_interval_s=0.0)
    assert fake.calls[(UTILIZATION, 0)] == 0
    assert all("mem_busy_frac" not in c for c in sink.chunks)


def test_the_edges_do_not_read_memory_activity() -> None:
    backend, fake, clock = open_nvml([h100()])
    sampler = Sampler(backend, run_id="r", interval_s=0.1, chunk_s=10.0, clock=clock, host=HOST)
    sampler.start()
    sampler.mark()
    sampler.mark()
    sampler.stop()
    assert fake.calls[(UTILIZATION, 0)] == 0


def test_chunks_carry_the_memory_busy_fraction_the_gpu_reported() -> None:
    wave = Bursty(0.0, 1.0, period_s=2.0, duty=0.5)  # busy half the time, in 1 s halves
    ramp = Bursty(0.0, 1.0, period_s=20.0, duty=0.3)  # busy the first 6 s of every 20 s
    sink, _, _ = _run(
        [h100(memory_busy=steady(0.37)), h100(memory_busy=wave), h100(memory_busy=ramp)], 400
    )
    keys = list(dict.fromkeys(c["device_key"] for c in sink.chunks))  # the GPUs in order
    by_device = [[c for c in sink.chunks if c["device_key"] == k] for k in keys]
    assert len(by_device) == 3
    assert all(c["mem_busy_frac"] == pytest.approx(0.37) for c in by_device[0])
    # a reading each second at the half second sees half of a busy second and half of an
    # idle one: 0.5, the truth, whatever the chunk
    assert all(c["mem_busy_frac"] == pytest.approx(0.5, abs=0.01) for c in by_device[1])
    # busy 6 s in chunk 0, idle in chunk 1: readings at 0.5 .. 9.5 s see 0.5, 1 x5, 0.5, 0 x3
    chunks = by_device[2]
    assert chunks[0]["mem_busy_frac"] == pytest.approx((0.5 * 0.5 + 5.0 + 0.5 * 1.0) / 9.5)
    assert chunks[1]["mem_busy_frac"] == pytest.approx(0.0)
