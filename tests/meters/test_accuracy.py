"""Accuracy of the meter against analytic energies (no hardware, no sleeping).

The devices draw power profiles with closed-form energy (`meters.backends.simulated`): steady,
bursty square waves, ramps. Their power reading is, as on Hopper, a 1 s trailing moving average
of the true power, so the power trace lags the truth; the energy counter (where the device has
one) is exact, or counts whole millijoules like NVML's.

What the meter must show, per window (each sealed chunk, and the whole run):

* with a counter, its energy is within 0.1 % of the analytic integral over the window, and the
  test checks that this is a real achievement: integrating the lagging power trace instead
  would miss by more than 0.1 % on the bursty and ramp profiles;
* without a counter (power only), the band it states covers its true error, and stays a band
  rather than a shrug.

How the power-only band covers what power readings cannot see (`accounting.integrate`):

* a 1 s averaged reading lags the truth by 0.5 s, which missed a 5 s window by up to ~23 %
  around a 450 W step: the kernel now corrects the lag (exact for power linear over the second
  before each window edge) and adds its residual, (w/2)(r − floor)(ceiling − r)/(ceiling −
  floor) per edge, to the band;
* instantaneous readings sampled every 0.1 s alias pulses shorter than the interval (+8.5 %
  over the whole run for 70 ms pulses): a reading of unknown or zero window is a point sample,
  coverage 0, and the unseen part of each interval is bounded by the range of its chunk's
  readings, widened by a tenth of it (the kernel's "Unseen power"), which holds whenever the
  chunk's readings see every level the load visits, and is nil on a steady load.

And why the NVML backend reads the driver's 1 s average by default: on square waves out of step
with the 0.1 s tick, integrated instantaneous readings miss the energy of a whole run by up to
~11 % (the issue's case, duty 0.3 and period 0.25 s: ±24 %), the lag-corrected average by
well under 1 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pytest

from thermoledger.meters.backends import (
    Bursty,
    PowerBackend,
    Profile,
    Ramp,
    SimulatedBackend,
    SimulatedDevice,
)
from thermoledger.meters.backends import steady as steady_profile
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.settings import PowerReading
from thermoledger.meters.spool import RunStatus
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_pynvml import FakeNvml, h100, p100
from thermoledger.meters.wire import ChunkPayload, DevicePayload

INTERVAL_S = 0.1
WINDOW_S = 5.0
TICKS = 600  # 60 s of metering: 12 windows per device
COUNTER_TOLERANCE = 1e-3  # 0.1 %

PROFILES: dict[str, Profile] = {
    "steady": steady_profile(420.0),
    "bursty-2s": Bursty(120.0, 650.0, period_s=2.0, duty=0.5, phase_s=0.3),
    "bursty-0.35s": Bursty(80.0, 700.0, period_s=0.35, duty=0.2),
    "bursty-7s": Bursty(150.0, 600.0, period_s=7.0, duty=0.3, phase_s=1.1),
    "ramp": Ramp(100.0, 650.0, duration_s=30.0, t_start_s=4.0),
}
# Profiles on which the lagging average, integrated, misses a window by more than 0.1 %.
LAGGING = ("bursty-2s", "bursty-7s", "ramp")


class ListSink:
    """Keeps sealed chunks in memory (the `ChunkSink` protocol, without disk)."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[ChunkPayload]] = {}

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        pass

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        pass

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        batch = list(chunks)
        for chunk in batch:
            self.chunks.setdefault(chunk["device_key"], []).append(chunk)
        return len(batch)

    def next_seqs(self, run_id: str) -> dict[str, int]:
        return {}

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        pass


@dataclass
class Metered:
    """Chunks of one device and the map from chunk times (unix s) to profile time."""

    chunks: list[ChunkPayload]
    profile: Profile
    to_profile_s: Callable[[float], float]
    summary_band: tuple[float, float, float]

    def true_j(self, t0_s: float, t1_s: float) -> float:
        return float(self.profile.energy_j(self.to_profile_s(t0_s), self.to_profile_s(t1_s)))

    def windows(self) -> list[tuple[str, float, float, float, float, float]]:
        """(label, t0, t1, energy, low, high) for every chunk and for the whole run."""
        out = [
            (
                f"seq {c['seq']}",
                c["t0_s"],
                c["t1_s"],
                c["energy_j"],
                c["energy_low_j"],
                c["energy_high_j"],
            )
            for c in self.chunks
        ]
        energy, low, high = self.summary_band
        out.append(("run", self.chunks[0]["t0_s"], self.chunks[-1]["t1_s"], energy, low, high))
        return out


def _meter(
    backend: PowerBackend, clock: ManualClock, *, ticks: int = TICKS, chunk_s: float = WINDOW_S
) -> tuple[ListSink, Sampler]:
    sink = ListSink()
    sampler = Sampler(
        backend,
        run_id="accuracy",
        spool=sink,
        interval_s=INTERVAL_S,
        chunk_s=chunk_s,
        clock=clock,
        sleep=clock.advance,
        host="h",
    )
    sampler.run_ticks(ticks)
    return sink, sampler


def simulated(profile: Profile, *, has_counter: bool) -> Metered:
    clock = ManualClock()
    device = SimulatedDevice(profile, reading="average", has_counter=has_counter, window_s=1.0)
    backend = SimulatedBackend([device], clock=clock)
    sink, sampler = _meter(backend, clock)
    summary = sampler.stop().devices[0]
    offset_s = clock.wall_s() - clock.monotonic_s() + backend.start_mono_s
    return Metered(
        sink.chunks["h/SIM-0"],
        profile,
        lambda t_s: t_s - offset_s,
        (summary.energy_j, summary.energy_low_j, summary.energy_high_j),
    )


def fake_nvml(
    gpu_preset: Callable[..., Any],
    profile: Profile,
    *,
    reading: PowerReading = "average",
    ticks: int = TICKS,
    chunk_s: float = WINDOW_S,
    **gpu: Any,
) -> Metered:
    clock = ManualClock()
    nvml = FakeNvml([gpu_preset(profile=profile, **gpu)], clock=clock)
    backend = NvmlBackend(nvml=nvml, clock=clock, env={}, power_reading=reading)
    sink, sampler = _meter(backend, clock, ticks=ticks, chunk_s=chunk_s)
    summary = sampler.stop().devices[0]
    (chunks,) = sink.chunks.values()
    offset_s = clock.wall_s() - clock.monotonic_s() + nvml.loaded_mono_s
    return Metered(
        chunks,
        profile,
        lambda t_s: t_s - offset_s,
        (summary.energy_j, summary.energy_low_j, summary.energy_high_j),
    )


def _power_trace_j(m: Metered, chunk: ChunkPayload, following: ChunkPayload | None) -> float:
    """What integrating the chunk's (lagging) power samples would give (left-sample rule)."""
    t = cast(list[float], list(chunk["samples"]["t_s"]))
    p = cast(list[float], list(chunk["samples"]["power_w"]))
    if following is not None and t[-1] < chunk["t1_s"]:
        t.append(cast(list[float], following["samples"]["t_s"])[0])
        p.append(cast(list[float], following["samples"]["power_w"])[0])
    t_arr, p_arr = np.asarray(t), np.asarray(p)
    return float(np.sum(p_arr[:-1] * np.diff(t_arr)))


# -- with a counter -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_with_a_counter_every_window_is_within_0_1_percent(name: str) -> None:
    metered = simulated(PROFILES[name], has_counter=True)
    assert len(metered.chunks) >= 10
    assert {c["method"] for c in metered.chunks} == {"counter"}
    for label, t0, t1, energy, low, high in metered.windows():
        true = metered.true_j(t0, t1)
        assert energy == pytest.approx(true, rel=COUNTER_TOLERANCE), label
        assert low <= true <= high, label


@pytest.mark.parametrize("name", LAGGING)
def test_the_lagging_power_trace_alone_would_miss_by_more_than_0_1_percent(name: str) -> None:
    """Control: the counter figure above is not within 0.1 % by luck of an easy profile."""
    metered = simulated(PROFILES[name], has_counter=True)
    chunks = metered.chunks
    worst = max(
        abs(_power_trace_j(metered, c, nxt) - metered.true_j(c["t0_s"], c["t1_s"]))
        / metered.true_j(c["t0_s"], c["t1_s"])
        for c, nxt in zip(chunks, [*chunks[1:], None], strict=True)
    )
    assert worst > COUNTER_TOLERANCE


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_an_h100_through_fake_nvml_counts_millijoules_within_0_1_percent(name: str) -> None:
    metered = fake_nvml(h100, PROFILES[name])
    assert {c["method"] for c in metered.chunks} == {"counter"}
    for label, t0, t1, energy, _, _ in metered.windows():
        assert energy == pytest.approx(metered.true_j(t0, t1), rel=COUNTER_TOLERANCE), label


# -- power only ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "steady",
        "bursty-2s",
        "bursty-0.35s",
        "bursty-7s",
        "ramp",
    ],
)
def test_without_a_counter_the_band_covers_the_true_error(name: str) -> None:
    metered = simulated(PROFILES[name], has_counter=False)
    assert {c["method"] for c in metered.chunks} == {"power_avg"}
    for label, t0, t1, energy, low, high in metered.windows():
        true = metered.true_j(t0, t1)
        assert low <= true <= high, f"{label}: {true} J outside [{low}, {high}] ({energy} J)"
        assert high - low < 0.5 * true, f"{label}: a band, not a shrug"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_without_a_counter_the_whole_run_band_covers_the_true_error(name: str) -> None:
    """Over the whole run the averaging lag cancels except at its ends: the band holds."""
    metered = simulated(PROFILES[name], has_counter=False)
    _, t0, t1, energy, low, high = metered.windows()[-1]
    true = metered.true_j(t0, t1)
    assert low <= true <= high, f"{true} J outside [{low}, {high}] ({energy} J)"


@pytest.mark.parametrize(
    "name",
    [
        "steady",
        "bursty-2s",
        "bursty-7s",
        "ramp",
        "bursty-0.35s",
    ],
)
def test_a_pre_volta_gpu_through_fake_nvml_states_a_covering_band(name: str) -> None:
    """P100: no counter, instantaneous power sampled every 0.1 s: the band must cover bursts."""
    metered = fake_nvml(p100, PROFILES[name])
    assert {c["method"] for c in metered.chunks} == {"power_instant"}
    for label, t0, t1, energy, low, high in metered.windows():
        true = metered.true_j(t0, t1)
        assert low <= true <= high, f"{label}: {true} J outside [{low}, {high}] ({energy} J)"
        assert math.isfinite(high)


# -- averaged or instantaneous power: square waves out of step with the tick --------------------

SQUARE_LOW_W, SQUARE_HIGH_W = 60.0, 600.0
# Periods from 0.05 to 2 s that are not a whole number of ticks (or of half ticks): the readings
# land on ever new phases of the wave. Each with duties 0.1 ... 0.9.
OUT_OF_STEP_S = (0.053, 0.13, 0.37, 0.71, 1.37, 1.93)
DUTIES = (0.1, 0.3, 0.5, 0.7, 0.9)


def _power_only(profile: Profile, reading: PowerReading) -> Metered:
    """An H100 without its counter, so every chunk's energy comes from power readings."""
    return fake_nvml(h100, profile, reading=reading, chunk_s=10.0, has_counter=False)


def _run_error(metered: Metered) -> float:
    _, t0, t1, energy, _, _ = metered.windows()[-1]
    true = metered.true_j(t0, t1)
    return (energy - true) / true


def _assert_every_band_covers(metered: Metered, what: str) -> None:
    for label, t0, t1, energy, low, high in metered.windows():
        true = metered.true_j(t0, t1)
        assert low <= true <= high, f"{what} {label}: {true} J outside [{low}, {high}] ({energy} J)"


def test_the_issues_square_wave_averaged_against_instantaneous_over_many_phases() -> None:
    """Duty 0.3, period 0.25 s, read every 0.1 s, at 20 phases of the wave.

    Instantaneous readings land on 5 phases of the wave and see 1 or 2 of them high (20 or 40 %
    of the time against 30 %): about ±24 % over the run. The driver's 1 s average sees all of
    it: within 0.2 %. Every band, chunk and run, covers the truth (the instantaneous one by the
    observed range: both levels are seen in every chunk).
    """
    errors: dict[PowerReading, list[float]] = {"average": [], "instant": []}
    for phase_s in np.linspace(0.0, 0.25, 20, endpoint=False).tolist():
        wave = Bursty(SQUARE_LOW_W, SQUARE_HIGH_W, period_s=0.25, duty=0.3, phase_s=phase_s)
        for reading, found in errors.items():
            metered = _power_only(wave, reading)
            assert {c["method"] for c in metered.chunks} == {
                "power_avg" if reading == "average" else "power_instant"
            }
            _assert_every_band_covers(metered, f"{reading} at phase {phase_s}")
            found.append(_run_error(metered))
    average, instant = np.abs(errors["average"]), np.abs(errors["instant"])
    assert average.max() < 0.005
    assert instant.max() > 0.2  # the aliasing the issue reports
    assert average.max() < instant.max() / 40


def test_square_waves_out_of_step_average_well_and_instant_bands_cover() -> None:
    """Every period in OUT_OF_STEP_S × every duty in DUTIES, at a random phase each."""
    rng = np.random.default_rng(7)
    errors: dict[PowerReading, list[float]] = {"average": [], "instant": []}
    for period_s in OUT_OF_STEP_S:
        for duty in DUTIES:
            phase_s = float(rng.uniform(0.0, period_s))
            wave = Bursty(
                SQUARE_LOW_W, SQUARE_HIGH_W, period_s=period_s, duty=duty, phase_s=phase_s
            )
            for reading, found in errors.items():
                metered = _power_only(wave, reading)
                _assert_every_band_covers(metered, f"{reading}, {period_s} s, duty {duty}")
                found.append(_run_error(metered))
    average, instant = np.abs(errors["average"]), np.abs(errors["instant"])
    assert average.max() < 0.01  # 0.66 % at worst when written
    assert instant.max() > 0.08  # 11 % at worst when written
    assert average.max() < instant.max() / 10
    assert np.median(average) < np.median(instant) / 10


def test_on_a_steady_load_the_instantaneous_band_is_far_narrower_than_zero_to_limit() -> None:
    metered = _power_only(steady_profile(300.0), "instant")
    _, t0, t1, energy, low, high = metered.windows()[-1]
    true = metered.true_j(t0, t1)
    assert energy == pytest.approx(true, rel=1e-6)
    zero_to_limit = 700.0 * (t1 - t0)  # the band point samples had before
    assert high - low < 0.1 * zero_to_limit
    for chunk in metered.chunks:
        # no spread in the readings: beyond the sensor's ±5 %, only a level rare enough to
        # hide between all of a chunk's readings (3/n of its time, out to 0 W or 700 W)
        duration_s = chunk["t1_s"] - chunk["t0_s"]
        share = chunk["bound_below_j"] / (300.0 * duration_s)
        assert 0.0 < share <= 3.0 / chunk["n"]
        assert chunk["bound_above_j"] == pytest.approx(share * 400.0 * duration_s, rel=1e-9)
