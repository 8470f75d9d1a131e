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
  coverage 0, and the band is the honest [floor, ceiling] × time.
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


def _meter(backend: PowerBackend, clock: ManualClock) -> tuple[ListSink, Sampler]:
    sink = ListSink()
    sampler = Sampler(
        backend,
        run_id="accuracy",
        spool=sink,
        interval_s=INTERVAL_S,
        chunk_s=WINDOW_S,
        clock=clock,
        sleep=clock.advance,
        host="h",
    )
    sampler.run_ticks(TICKS)
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


def fake_nvml(gpu_preset: Callable[..., Any], profile: Profile) -> Metered:
    clock = ManualClock()
    nvml = FakeNvml([gpu_preset(profile=profile)], clock=clock)
    backend = NvmlBackend(nvml=nvml, clock=clock, power_reading="average")
    sink, sampler = _meter(backend, clock)
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
