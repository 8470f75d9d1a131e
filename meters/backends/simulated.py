"""Simulated GPUs with exact, closed-form energy, for demos, CI and tests without hardware.

Each device follows a deterministic power profile P(t) (watts, t in seconds since the backend was
opened) that also has a closed-form primitive F(t) with F' = P, so the energy over any window is
exact: E(t0, t1) = F(t1) - F(t0). The profiles:

- `Steady` (also `idle`): P = c, F = c·t.
- `Bursty`: a square wave between ``low_w`` and ``high_w`` with period T, duty d and phase φ.
  With u = t + φ, the time spent high in [0, u] is H(u) = ⌊u/T⌋·d·T + min(u mod T, d·T), so
  F = low·t + (high - low)·H(t + φ). Defined for negative t as well.
- `Ramp`: ``start_w`` until ``t_start_s``, linear to ``end_w`` over ``duration_s``, then constant.
  With s = clip(t, a, b) - a: F = start·t + (end - start)·(s²/(2D) + max(t - b, 0)).

A device reads either the instantaneous power P(t) (`Method.POWER_INSTANT`) or, like NVML's power
reading on Hopper, the trailing moving average over ``window_s`` (default 1 s), which is computed
exactly from the primitive: (F(t) - F(t - w)) / w (`Method.POWER_AVG`). Its counter is
``counter_offset_j + F(t) - F(0)`` joules, exact to float64.

A device may also report memory activity, as NVML's ``utilization.memory`` does (the percent
of the last sample period memory was busy, `base.ActivityReader`): ``memory_busy`` is a profile
of the busy indicator in [0, 1], and a reading is its exact mean over the last
``memory_period_s``, in whole percent like NVML's. None: the device has no such counter (NaN).

Everything is labelled: `DeviceInfo.simulated` is True and every name starts with "Simulated".
The clock is injectable, so tests step a `meters.testing.ManualClock` instead of sleeping.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from .base import (
    Clock,
    DeviceInfo,
    FlatBuffer,
    FloatArray,
    Method,
    Readings,
    SystemClock,
    UncertaintyHint,
)

Reading = Literal["instant", "average"]


class Profile(ABC):
    """A power profile with a closed-form energy. Times in seconds, power in watts."""

    @property
    @abstractmethod
    def label(self) -> str:
        """Short human description, e.g. ``"steady 300 W"``."""

    @abstractmethod
    def power_w(self, t_s: ArrayLike) -> FloatArray:
        """Instantaneous power P(t) in watts, elementwise."""

    @abstractmethod
    def primitive_j(self, t_s: ArrayLike) -> FloatArray:
        """A primitive F(t) of P in joules (F' = P; the origin is arbitrary), elementwise."""

    def energy_j(self, t0_s: ArrayLike, t1_s: ArrayLike) -> FloatArray:
        """Exact energy in joules drawn over [t0_s, t1_s], elementwise."""
        return self.primitive_j(t1_s) - self.primitive_j(t0_s)

    def average_power_w(self, t_s: ArrayLike, window_s: float = 1.0) -> FloatArray:
        """Exact trailing mean power in watts over [t_s - window_s, t_s], elementwise."""
        t = np.asarray(t_s, dtype=np.float64)
        return self.energy_j(t - window_s, t) / window_s

    # Scalar twins of the above for callers that evaluate one instant at a time (the fake NVML
    # answers one call per GPU): numpy costs microseconds per call on a scalar, float arithmetic
    # tens of nanoseconds. Subclasses override the first two with the same float operations as
    # their vectorised forms, so both give identical results.

    def power_at_w(self, t_s: float) -> float:
        """P(t) in watts at one instant ``t_s`` (seconds)."""
        return float(self.power_w(t_s))

    def primitive_at_j(self, t_s: float) -> float:
        """F(t) in joules at one instant ``t_s`` (seconds)."""
        return float(self.primitive_j(t_s))

    def energy_between_j(self, t0_s: float, t1_s: float) -> float:
        """Exact energy in joules drawn over [t0_s, t1_s] (seconds), as a float."""
        return self.primitive_at_j(t1_s) - self.primitive_at_j(t0_s)

    def average_power_at_w(self, t_s: float, window_s: float = 1.0) -> float:
        """Exact trailing mean power in watts over [t_s - window_s, t_s], as a float."""
        return self.energy_between_j(t_s - window_s, t_s) / window_s


@dataclass(frozen=True, slots=True)
class Steady(Profile):
    """Constant power ``level_w`` watts (the idle profile is a low steady one)."""

    level_w: float
    kind: str = "steady"

    @property
    def label(self) -> str:
        """E.g. ``"steady 300 W"``."""
        return f"{self.kind} {self.level_w:g} W"

    def power_w(self, t_s: ArrayLike) -> FloatArray:
        """P(t) = level_w."""
        return np.full_like(np.asarray(t_s, dtype=np.float64), self.level_w)

    def primitive_j(self, t_s: ArrayLike) -> FloatArray:
        """F(t) = level_w · t."""
        return self.level_w * np.asarray(t_s, dtype=np.float64)

    def power_at_w(self, t_s: float) -> float:
        """P(t) = level_w."""
        return float(self.level_w)

    def primitive_at_j(self, t_s: float) -> float:
        """F(t) = level_w · t."""
        return self.level_w * float(t_s)


def steady(power_w: float) -> Steady:
    """A steady load drawing ``power_w`` watts."""
    return Steady(power_w)


def idle(power_w: float = 60.0) -> Steady:
    """An idle GPU drawing ``power_w`` watts (default 60 W, typical of an idle data-centre GPU)."""
    return Steady(power_w, kind="idle")


@dataclass(frozen=True, slots=True)
class Bursty(Profile):
    """A square wave: ``high_w`` for ``duty`` of each ``period_s``, ``low_w`` otherwise.

    ``phase_s`` shifts the wave left: at t = -phase_s a high half starts.
    """

    low_w: float
    high_w: float
    period_s: float
    duty: float = 0.5
    phase_s: float = 0.0

    def __post_init__(self) -> None:
        if self.period_s <= 0 or not 0.0 <= self.duty <= 1.0:
            raise ValueError("Bursty needs period_s > 0 and 0 <= duty <= 1")

    @property
    def label(self) -> str:
        """E.g. ``"bursty 120-650 W, 2 s"``."""
        return f"bursty {self.low_w:g}-{self.high_w:g} W, {self.period_s:g} s"

    def power_w(self, t_s: ArrayLike) -> FloatArray:
        """P(t) = high_w when (t + phase) mod period < duty·period, else low_w."""
        u = np.asarray(t_s, dtype=np.float64) + self.phase_s
        high = np.mod(u, self.period_s) < self.duty * self.period_s
        return np.where(high, self.high_w, self.low_w)

    def primitive_j(self, t_s: ArrayLike) -> FloatArray:
        """F(t) = low·t + (high - low)·H(t + phase), H the time spent high since u = 0."""
        t = np.asarray(t_s, dtype=np.float64)
        u = t + self.phase_s
        on_s = self.duty * self.period_s
        # Take the remainder from the same floor as the period count: np.mod and np.floor round
        # independently and can disagree at a period boundary, which would make F step back.
        periods = np.floor(u / self.period_s)
        into_period_s = np.clip(u - periods * self.period_s, 0.0, self.period_s)
        time_high_s = periods * on_s + np.minimum(into_period_s, on_s)
        return self.low_w * t + (self.high_w - self.low_w) * time_high_s

    def power_at_w(self, t_s: float) -> float:
        """`power_w` at one instant, in float arithmetic."""
        u = float(t_s) + self.phase_s
        return float(self.high_w if u % self.period_s < self.duty * self.period_s else self.low_w)

    def primitive_at_j(self, t_s: float) -> float:
        """`primitive_j` at one instant, in float arithmetic (same operations, same result)."""
        t = float(t_s)
        u = t + self.phase_s
        on_s = self.duty * self.period_s
        periods = float(math.floor(u / self.period_s))
        into_period_s = min(max(u - periods * self.period_s, 0.0), self.period_s)
        time_high_s = periods * on_s + min(into_period_s, on_s)
        return self.low_w * t + (self.high_w - self.low_w) * time_high_s


@dataclass(frozen=True, slots=True)
class Ramp(Profile):
    """``start_w`` until ``t_start_s``, linear to ``end_w`` over ``duration_s``, then ``end_w``."""

    start_w: float
    end_w: float
    duration_s: float
    t_start_s: float = 0.0

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise ValueError("Ramp needs duration_s > 0")

    @property
    def label(self) -> str:
        """E.g. ``"ramp 100-600 W over 60 s"``."""
        return f"ramp {self.start_w:g}-{self.end_w:g} W over {self.duration_s:g} s"

    def power_w(self, t_s: ArrayLike) -> FloatArray:
        """Piecewise linear P(t)."""
        t = np.asarray(t_s, dtype=np.float64)
        s = np.clip(t, self.t_start_s, self.t_start_s + self.duration_s) - self.t_start_s
        return self.start_w + (self.end_w - self.start_w) * (s / self.duration_s)

    def primitive_j(self, t_s: ArrayLike) -> FloatArray:
        """F(t) = start·t + (end - start)·(s²/(2D) + max(t - b, 0)), s = clip(t, a, b) - a."""
        t = np.asarray(t_s, dtype=np.float64)
        t_end_s = self.t_start_s + self.duration_s
        s = np.clip(t, self.t_start_s, t_end_s) - self.t_start_s
        extra = s * s / (2.0 * self.duration_s) + np.maximum(t - t_end_s, 0.0)
        return self.start_w * t + (self.end_w - self.start_w) * extra

    def power_at_w(self, t_s: float) -> float:
        """`power_w` at one instant, in float arithmetic."""
        s = min(max(float(t_s), self.t_start_s), self.t_start_s + self.duration_s) - self.t_start_s
        return self.start_w + (self.end_w - self.start_w) * (s / self.duration_s)

    def primitive_at_j(self, t_s: float) -> float:
        """`primitive_j` at one instant, in float arithmetic (same operations, same result)."""
        t = float(t_s)
        t_end_s = self.t_start_s + self.duration_s
        s = min(max(t, self.t_start_s), t_end_s) - self.t_start_s
        extra = s * s / (2.0 * self.duration_s) + max(t - t_end_s, 0.0)
        return self.start_w * t + (self.end_w - self.start_w) * extra


@dataclass(frozen=True, slots=True)
class SimulatedDevice:
    """One simulated GPU.

    Attributes:
        profile: Its power profile.
        reading: ``"instant"`` reads P(t); ``"average"`` reads the trailing ``window_s`` mean.
        has_counter: Whether it offers an energy counter (False mimics a pre-Volta GPU).
        counter_offset_j: Counter value in joules when the backend opens (a GPU that has been up
            a while shows a large counter).
        power_limit_w: Reported power limit in watts.
        window_s: Averaging window in seconds for ``reading="average"``.
        memory_busy: Whether its memory is busy at each instant, in [0, 1] (a profile), or
            None: no memory-activity counter.
        memory_period_s: The sample period a memory-activity reading covers, s (NVML: 1/6 s
            to 1 s by product).
    """

    profile: Profile
    reading: Reading = "instant"
    has_counter: bool = True
    counter_offset_j: float = 0.0
    power_limit_w: float | None = 700.0
    window_s: float = 1.0
    memory_busy: Profile | None = None
    memory_period_s: float = 1.0


def default_fleet(n: int = 8) -> tuple[SimulatedDevice, ...]:
    """``n`` simulated GPUs cycling through steady, bursty, ramp and idle with distinct phases.

    Even positions read a 1 s average (like Hopper), odd ones instantaneous power. Each reports
    memory activity that follows its load: busy 40 % of the time when steady, in step with the
    bursts, rising with the ramp, never when idle.
    """
    fleet = []
    for i in range(n):
        profile: Profile
        memory: Profile
        match i % 4:
            case 0:
                profile = steady(300.0 + 10.0 * i)
                memory = steady(0.4)
            case 1:
                profile = Bursty(120.0, 650.0, period_s=2.0, duty=0.5, phase_s=0.3 * i)
                memory = Bursty(0.0, 0.7, period_s=2.0, duty=0.5, phase_s=0.3 * i)
            case 2:
                profile = Ramp(100.0, 600.0, duration_s=60.0, t_start_s=5.0 + i)
                memory = Ramp(0.05, 0.5, duration_s=60.0, t_start_s=5.0 + i)
            case _:
                profile = idle(60.0 + i)
                memory = steady(0.0)
        fleet.append(
            SimulatedDevice(
                profile,
                reading="average" if i % 2 == 0 else "instant",
                counter_offset_j=1.0e6 * (i + 1),
                memory_busy=memory,
            )
        )
    return tuple(fleet)


class SimulatedBackend:
    """A `PowerBackend` over simulated GPUs; time is ``clock.monotonic_s()`` minus the open time.

    Args:
        devices: The simulated devices (default: `default_fleet` of 8).
        clock: Time source (default: the system clocks).
    """

    def __init__(
        self, devices: Sequence[SimulatedDevice] | None = None, *, clock: Clock | None = None
    ) -> None:
        self._specs = tuple(default_fleet() if devices is None else devices)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.start_mono_s = self._clock.monotonic_s()
        """Monotonic time (s) of t = 0 for every profile."""
        self._infos = tuple(_info(i, spec) for i, spec in enumerate(self._specs))

    def devices(self) -> tuple[DeviceInfo, ...]:
        """The simulated devices, in array order."""
        return self._infos

    def elapsed_s(self) -> float:
        """Profile time now: seconds since the backend was opened."""
        return self._clock.monotonic_s() - self.start_mono_s

    def read(self) -> Readings:
        """Every device's power (instant or exact moving average) and counter, device by device.

        Each device is read at the clock's time when its turn comes (`read_device`); on a clock
        that does not move during the read (a `meters.testing.ManualClock`) that is one instant.
        """
        buffer = FlatBuffer(
            len(self._specs), t_wall_s=self._clock.wall_s(), t_mono_s=self._clock.monotonic_s()
        )
        for i in range(len(self._specs)):
            self.read_device(buffer, i)
        return buffer.freeze()

    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        """Device ``i`` at the clock's time now into slot ``i`` (`base.DeviceReader`).

        Stateless: safe on several threads at once.
        """
        spec = self._specs[i]
        t_mono_s = self._clock.monotonic_s()
        t_s = t_mono_s - self.start_mono_s
        if spec.reading == "average":
            buffer.set_power(
                i, float(spec.profile.average_power_w(t_s, spec.window_s)), Method.POWER_AVG
            )
        else:
            buffer.set_power(i, float(spec.profile.power_w(t_s)), Method.POWER_INSTANT)
        if spec.has_counter:
            buffer.set_energy(i, spec.counter_offset_j + float(spec.profile.energy_j(0.0, t_s)))
        buffer.t_mono_s[i] = t_mono_s  # the wall time follows from the tick's pair

    def memory_busy_frac(self, i: int) -> float:
        """Device ``i``'s memory-busy fraction over its last ``memory_period_s``, in whole
        percent as NVML reports it (`base.ActivityReader`); NaN without a counter."""
        spec = self._specs[i]
        if spec.memory_busy is None:
            return math.nan
        t_s = self._clock.monotonic_s() - self.start_mono_s
        fraction = spec.memory_busy.average_power_at_w(t_s, spec.memory_period_s)
        return min(100, max(0, round(100.0 * fraction))) / 100.0

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> SimulatedBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _info(index: int, spec: SimulatedDevice) -> DeviceInfo:
    average = spec.reading == "average"
    return DeviceInfo(
        backend="simulated",
        index=index,
        uid=f"SIM-{index}",
        name=f"Simulated GPU ({spec.profile.label})",
        power_limit_w=spec.power_limit_w,
        has_energy_counter=spec.has_counter,
        power_method=Method.POWER_AVG if average else Method.POWER_INSTANT,
        scope="gpu",
        simulated=True,
        uncertainty=UncertaintyHint(
            power_window_s=spec.window_s if average else 0.0,
            counter_resolution_j=0.0 if spec.has_counter else None,
            counter_update_s=0.0 if spec.has_counter else None,
            note="simulated: figures are exact by construction",
        ),
        note="simulated device: not a measurement",
    )
