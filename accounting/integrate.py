"""Energy integration: power traces and energy counters to joules, with gaps, resets and bounds.

Everything here is plain float64 numpy arrays in SI units (seconds, watts, joules) and imports
only numpy and the standard library, so the light meter process can summarise its chunks with
the same code the service uses for reports (the meter must never import pint).

Integration rule
    A power trace (t_s, power_w) is modelled as **piecewise linear** between samples: interval
    i, from sample i to sample i+1, holds energy e_i = dt_i · (p_i + p_{i+1}) / 2 (trapezoid).
    Window and cumulative energies use the exact integral of that same model (quadratic inside
    an interval), so a window whose edges fall on samples gets exactly the trapezoid sum, and
    adjacent windows add up to the whole to float rounding.

Averaged readings (``averaging_window_s`` w > 0)
    A reading r(t) that is the trailing moving average of the true power over [t − w, t]
    (NVML on Hopper: w = 1 s) lags P by w/2: integrated as if it were P(t), a window cut at a
    450 W step misses by up to 450 W × w/2. Read as the power at t − w/2, the readings over
    [a, b] describe the true energy over [a − w/2, b − w/2]; the chunk and window edges stay
    at sample times (a chunk's samples must lie inside its [t0_s, t1_s], and counter chunks
    of the same device tile on those times), so the two half-windows are traded at the edges:
    E(a, b) ≈ ∫_a^b r dt + (w/2)·(r(b) − r(a)). In terms of P this weighs [a − w, a] and
    [b − w, b] with zero-mean linear ramps, so the estimate is **exact whenever P is linear
    over the window before each edge** (a steady load, a ramp, a step more than w before an
    edge), needs no sample after b (a meter seals a chunk at its bridge sample), and
    telescopes: chunks and adjacent windows still add up to the whole. Residual: at each edge
    the error is ∫ P·h over the edge's [t − w, t], with h a ramp from +1/2 down to −1/2.
    That interval is exactly the one the edge's reading averages, so P's mean there is r(t):
    the worst P within [floor, ceiling] with that mean sits at the ceiling for the first
    u·w and at the floor after (u = (r − floor)/(ceiling − floor)), which bounds the error by
    (w/2)·(r − floor)(ceiling − r)/(ceiling − floor) per edge, at most (ceiling − floor)·w/8
    (r midway); both signs are possible. This is a bound when the ceiling is the device's
    power limit (``max_power_w``); with the trace's own peak it is an assumption. An edge
    that meets a gap is not corrected, and may be off by the whole lag, (ceiling − floor) ×
    w/2. The corrected energy is clipped at 0 (only noise could drive it below), and a
    chunk's min/max power widen to include its mean (the true mean may pass the extremes of
    the smoothed readings).

Gaps
    Interval i is a **gap** when dt_i > gap_factor × nominal interval (default factor 3). The
    nominal interval is the caller's (the meter knows its own period) or else the median
    interval of the trace: exact up to 65 536 intervals, beyond that the median of 64 runs of
    1 024 consecutive intervals spread evenly over the trace (a deterministic estimate that
    costs next to nothing beside the integration). Gaps are always detected and reported
    (count, seconds, where) and handled by an explicit policy: ``"exclude"`` (default; the gap
    counts 0 J and the result reports what a linear bridge would have added), ``"bridge"``
    (the linear bridge is counted, and labelled), ``"hold"`` (the last reading is held over
    the gap). Whatever the policy, the band says what the gap could have held: between
    ``min_power_w`` (default 0 W) and the ceiling, times its length. The ceiling is
    ``max_power_w`` (the device's power limit) when the caller gives it, which makes it a
    bound; otherwise it is the trace's own peak, which is an assumption, not a bound
    (reported as ``ceiling_power_w``).

Chunks tile the trace by the **left-sample rule**
    Interval i belongs to the chunk holding sample i. A chunk therefore spans from its first
    sample to the first sample of the next chunk of the same trace (its last interval bridges
    to the next chunk); the last chunk of a trace ends at its last sample. Every interval is
    counted exactly once, chunk energies sum to the trace's energy, and t1_s of one chunk is
    t0_s of the next. A meter seals chunk k when the first sample of chunk k+1 has arrived.
    Chunk min/max power are over the samples the chunk's intervals touch (so they include the
    next chunk's first sample), which keeps min ≤ mean ≤ max.

Counters
    A cumulative counter (J since an origin; convert NVML's mJ first) gives energy by
    differencing. A decrease is a **wrap** when the caller gives ``wrap_j`` (the modulus, e.g.
    RAPL's max_energy_range) and the wrapped difference is physically plausible: at most
    ``max_power_w`` × dt, or without a limit at most twice the highest rate the same trace shows
    between ordinary readings (a heuristic; at most one wrap per interval is assumed). Any other
    decrease is a **reset** (driver reload): the post-reset value is energy consumed since the
    reload, so it is counted as a lower bound for that interval; the part before the reload is
    unknown, bounded above by max(0, max_power_w × dt − post-reset value), or unbounded (+inf)
    without ``max_power_w``. Energy is neither lost nor invented; resets and wraps are counted
    and listed. Sampling gaps do not lose counter energy (the counter integrates through them);
    they are still reported.

Uncertainty model
    Every result carries ``energy_j`` (the estimate) and a band ``[energy_low_j, energy_high_j]``
    built from two kinds of term, kept apart so aggregation can combine each correctly:

    * ``sensor_uncertainty_j`` (symmetric, systematic for one device): for power-derived energy
      ∫ max(sensor_rel_error · P, sensor_abs_error_w) dt over the measured intervals, defaults
      ±5 % of reading or ±5 W whichever is larger (NVML's ±5 % statement, nvidia-smi's ±5 W).
      For counters, ``counter_rel_error`` × energy, default 2 %: a choice, not a datasheet
      figure. The counter is accumulated on the device at the sensor's own rate, so the
      sampling, aliasing and coverage errors of polled power vanish; what remains is the
      sensor's gain error, for which NVIDIA publishes no counter figure. Pass a calibrated
      value when you have one.
    * ``bound_below_j`` / ``bound_above_j`` (one-sided, worst case, not statistical): gaps (see
      above), counter resets, **coverage** and the **averaging residual**. When readings cover
      only ``coverage_fraction`` c of the time (A100/H100 instantaneous readings: about 0.25,
      Yang et al., SC24; c = 0 for point samples), the unseen 1 − c of each interval may have
      drawn anything between ``min_power_w`` and the ceiling, so interval energy e lies in
      [e − (1−c)(e − floor·dt), e + (1−c)(ceil·dt − e)]. This is wide on purpose; it is the
      honest price of part-time sampling. Prefer the counter. The averaging residual
      (at most (ceiling − floor) × w/8 per window edge, × w/2 per gap edge; see "Averaged
      readings")
      is added to both bounds: it is a worst case of either sign, and like aliasing it is
      correlated across the devices of one job (they step together), so it must add
      linearly rather than root-sum-square with the sensor term.

    The band is energy_low_j = max(0, E − sensor − bound_below), energy_high_j = E + sensor +
    bound_above; terms add linearly inside one trace. Across devices (`aggregate_energy`), rows
    of the same device add linearly first (its sensor error is systematic); then sensor errors
    of different devices combine as independent (root-sum-square, the default) or linearly
    (``combine="linear"``, conservative: e.g. GPUs of one model may share a calibration bias).
    Bounds always add linearly (aliasing is correlated across ranks of one job).

Many traces at once
    The **segmented form** is concatenated arrays plus ``offsets`` (length traces + 1, from 0
    to the total length; trace k is ``[offsets[k], offsets[k+1])``); `segments_from_rows` and
    `segments_from_list` build it from a 2-D (devices × samples) array or a list of traces.

Speed
    The power kernel streams memory once: it walks the arrays in cache-sized blocks with
    preallocated buffers (``out=``), validates and detects gaps on each block while it is in
    cache, and forms the trapezoid sum with two dot products (no per-interval temporaries).
    The sensor term costs nothing while every reading is above abs/rel (100 W by default);
    the trace's peak is read only when a bound needs it (a gap, partial coverage or an
    averaging window without ``max_power_w``). The lag correction and the residual cost a
    few operations per chunk, after the kernel, and nothing at all when w = 0.
    ``bench/integrate.py`` measures it against a memory-bandwidth reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, NoReturn, TypeAlias

import numpy as np
import numpy.typing as npt

from .errors import AccountingError, InvalidSamples

__all__ = [
    "COMBINES",
    "COUNTER_REL_ERROR",
    "GAP_POLICIES",
    "METHODS",
    "POWER_METHODS",
    "SENSOR_ABS_ERROR_W",
    "SENSOR_REL_ERROR",
    "ChunkSummaries",
    "Combine",
    "CounterEnergy",
    "EnergyCurve",
    "EnergyTotals",
    "GapPolicy",
    "GapReport",
    "InvalidArgument",
    "InvalidSamples",
    "Method",
    "PowerEnergy",
    "PowerEnergyBatch",
    "PowerMethod",
    "WindowEnergy",
    "aggregate_energy",
    "counter_energy_curve",
    "integrate_counter",
    "integrate_power",
    "integrate_power_rows",
    "integrate_power_segments",
    "power_energy_curve",
    "segments_from_list",
    "segments_from_rows",
    "summarize_chunks",
    "window_energy",
]

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

Method = Literal["counter", "power_avg", "power_instant", "estimate"]
"""How an energy figure was obtained: counter differences, trapezoid over averaged power
readings, trapezoid over instantaneous readings, or an estimate (e.g. TDP × time)."""
METHODS: Final[tuple[Method, ...]] = ("counter", "power_avg", "power_instant", "estimate")
PowerMethod = Literal["power_avg", "power_instant", "estimate"]
POWER_METHODS: Final[tuple[PowerMethod, ...]] = ("power_avg", "power_instant", "estimate")
GapPolicy = Literal["exclude", "bridge", "hold"]
GAP_POLICIES: Final[tuple[GapPolicy, ...]] = ("exclude", "bridge", "hold")
Combine = Literal["independent", "linear"]
COMBINES: Final[tuple[Combine, ...]] = ("independent", "linear")

SENSOR_REL_ERROR: Final = 0.05
"""Power sensor accuracy, relative part (NVML: ±5 % of current draw)."""
SENSOR_ABS_ERROR_W: Final = 5.0
"""Power sensor accuracy, absolute part in W (nvidia-smi: ±5 W); the larger of the two counts."""
COUNTER_REL_ERROR: Final = 0.02
"""Default relative error of an energy counter (a documented choice; see the module docstring)."""

_BLOCK_SAMPLES: Final = 1 << 17  # 1 MiB per float64 array: a block stays in L3 while worked on
_MEDIAN_SAMPLE: Final = 1 << 16
_MEDIAN_RUNS: Final = 64
_SPARSE_FRACTION: Final = 0.125  # below this share of low readings, correct them one by one
_PROBE_STRIDE: Final = 64
_WRAP_RATE_FACTOR: Final = 2.0
# Stand-in for intervals that must pass the "time increases" check but count for nothing.
_TINY: Final = float(np.nextafter(0.0, 1.0))


class InvalidArgument(ValueError, AccountingError):
    """A parameter is out of range (e.g. coverage_fraction > 1) or a window is malformed."""


# --------------------------------------------------------------------------- result types


@dataclass(frozen=True, slots=True)
class GapReport:
    """The gaps found in one or more traces, one entry per gap, in time order per trace.

    Attributes:
        segment: Trace the gap belongs to (0 for a single trace).
        index: Index, within its trace, of the sample before the gap.
        start_s: Time of the sample before the gap, s.
        end_s: Time of the sample after the gap, s.
        fill_j: Energy the gap policy counted for the gap, J (0 under ``"exclude"``).
        bridge_j: Energy a linear bridge over the gap would count, J.
    """

    segment: IntArray
    index: IntArray
    start_s: FloatArray
    end_s: FloatArray
    fill_j: FloatArray
    bridge_j: FloatArray

    def __len__(self) -> int:
        return int(self.index.size)

    def select(self, segment: int) -> GapReport:
        """The gaps of one trace."""
        keep = self.segment == segment
        return GapReport(
            segment=self.segment[keep],
            index=self.index[keep],
            start_s=self.start_s[keep],
            end_s=self.end_s[keep],
            fill_j=self.fill_j[keep],
            bridge_j=self.bridge_j[keep],
        )


@dataclass(frozen=True, slots=True)
class PowerEnergy:
    """Energy of one power trace (trapezoid rule), with its gaps and uncertainty band.

    Attributes:
        energy_j: Best estimate, J: measured intervals plus what the gap policy counted.
        energy_low_j: Lower end of the band, J (never below 0).
        energy_high_j: Upper end of the band, J.
        sensor_uncertainty_j: Symmetric sensor error, J (systematic for the device).
        bound_below_j: One-sided worst-case width below, J (coverage, gaps).
        bound_above_j: One-sided worst-case width above, J (coverage, gaps).
        duration_s: Time from first to last sample, s (gaps included).
        n_samples: Number of samples.
        method: How the power was read (``power_avg``, ``power_instant``, ``estimate``).
        gap_policy: Policy applied to gaps.
        coverage_fraction: Fraction of time the readings represent (1 for averaged power).
        averaging_window_s: Moving-average window the readings were corrected for, s.
        nominal_interval_s: Nominal sampling interval used for gap detection, s (NaN when the
            trace has no interval and none was given).
        gap_threshold_s: Intervals longer than this are gaps, s.
        gap_count: Number of gaps.
        gap_s: Total length of the gaps, s.
        gap_fill_j: Energy the gap policy counted for gaps, J (included in energy_j).
        gap_energy_bridge_j: Energy a linear bridge over the gaps would count, J.
        ceiling_power_w: Power ceiling the bounds used, W: max_power_w when given, else the
            trace's peak; NaN when no bound needed one.
        gaps: Where the gaps are.
    """

    energy_j: float
    energy_low_j: float
    energy_high_j: float
    sensor_uncertainty_j: float
    bound_below_j: float
    bound_above_j: float
    duration_s: float
    n_samples: int
    method: PowerMethod
    gap_policy: GapPolicy
    coverage_fraction: float
    nominal_interval_s: float
    gap_threshold_s: float
    gap_count: int
    gap_s: float
    gap_fill_j: float
    gap_energy_bridge_j: float
    ceiling_power_w: float
    gaps: GapReport
    averaging_window_s: float = 0.0


@dataclass(frozen=True, slots=True)
class PowerEnergyBatch:
    """`PowerEnergy` for many traces at once: each array field has one entry per trace.

    Attributes are those of `PowerEnergy` (same units) plus ``offsets``, the segment offsets
    the traces came from. ``gaps`` lists the gaps of all traces with their trace number.
    """

    offsets: IntArray
    energy_j: FloatArray
    energy_low_j: FloatArray
    energy_high_j: FloatArray
    sensor_uncertainty_j: FloatArray
    bound_below_j: FloatArray
    bound_above_j: FloatArray
    duration_s: FloatArray
    n_samples: IntArray
    method: PowerMethod
    gap_policy: GapPolicy
    coverage_fraction: float
    nominal_interval_s: FloatArray
    gap_threshold_s: FloatArray
    gap_count: IntArray
    gap_s: FloatArray
    gap_fill_j: FloatArray
    gap_energy_bridge_j: FloatArray
    ceiling_power_w: FloatArray
    gaps: GapReport
    averaging_window_s: float = 0.0

    def __len__(self) -> int:
        return int(self.energy_j.size)

    def trace(self, k: int) -> PowerEnergy:
        """The result of trace ``k`` as a `PowerEnergy`."""
        return PowerEnergy(
            energy_j=float(self.energy_j[k]),
            energy_low_j=float(self.energy_low_j[k]),
            energy_high_j=float(self.energy_high_j[k]),
            sensor_uncertainty_j=float(self.sensor_uncertainty_j[k]),
            bound_below_j=float(self.bound_below_j[k]),
            bound_above_j=float(self.bound_above_j[k]),
            duration_s=float(self.duration_s[k]),
            n_samples=int(self.n_samples[k]),
            method=self.method,
            gap_policy=self.gap_policy,
            coverage_fraction=self.coverage_fraction,
            nominal_interval_s=float(self.nominal_interval_s[k]),
            gap_threshold_s=float(self.gap_threshold_s[k]),
            gap_count=int(self.gap_count[k]),
            gap_s=float(self.gap_s[k]),
            gap_fill_j=float(self.gap_fill_j[k]),
            gap_energy_bridge_j=float(self.gap_energy_bridge_j[k]),
            ceiling_power_w=float(self.ceiling_power_w[k]),
            gaps=self.gaps.select(k),
            averaging_window_s=self.averaging_window_s,
        )


@dataclass(frozen=True, slots=True)
class CounterEnergy:
    """Energy from a cumulative energy counter, with its resets, wraps and uncertainty band.

    Attributes:
        energy_j: Counted energy, J (post-reset values counted as lower bounds).
        energy_low_j: Lower end of the band, J.
        energy_high_j: Upper end of the band, J (+inf if a reset is unbounded).
        sensor_uncertainty_j: Symmetric counter error, J (counter_rel_error × energy).
        bound_below_j: One-sided width below, J (0: a counter never overcounts a reset).
        bound_above_j: Unknown energy before resets, J (+inf without max_power_w).
        duration_s: Time from first to last reading, s.
        n_samples: Number of readings.
        method: Always ``"counter"``.
        reset_count: Number of resets (decreases that are not wraps).
        wrap_count: Number of wrap-arounds.
        reset_index: For each reset, index of the reading before it.
        reset_unknown_j: For each reset, the most energy that may be missing, J (+inf when
            unbounded).
        wrap_index: For each wrap, index of the reading before it.
    """

    energy_j: float
    energy_low_j: float
    energy_high_j: float
    sensor_uncertainty_j: float
    bound_below_j: float
    bound_above_j: float
    duration_s: float
    n_samples: int
    method: Method
    reset_count: int
    wrap_count: int
    reset_index: IntArray
    reset_unknown_j: FloatArray
    wrap_index: IntArray


@dataclass(frozen=True, slots=True)
class ChunkSummaries:
    """Per-chunk summaries as a struct of arrays (one entry per chunk, traces in order).

    Attributes:
        segment: Trace each chunk belongs to.
        chunk_index: Time-bin number floor((t0 − origin_s) / chunk_s) when chunks come from
            ``chunk_s``; otherwise the chunk's ordinal within its trace.
        first_index: Index of the chunk's first sample in the (concatenated) arrays.
        t0_s: Time of the chunk's first sample, s.
        t1_s: End of the chunk, s: first sample of the next chunk of the trace, or the chunk's
            own last sample for the last chunk.
        n: Number of samples in the chunk.
        energy_j, energy_low_j, energy_high_j: Estimate and band, J.
        sensor_uncertainty_j, bound_below_j, bound_above_j: Band terms, J (module docstring).
        min_power_w, max_power_w: Extremes of the power samples the chunk touches, W (for
            lag-corrected averaged readings, widened to include mean_power_w).
        mean_power_w: energy_j / counted time, W, where counted time excludes gaps under
            ``"exclude"`` (power methods); the mean of the chunk's samples when that time is 0.
        gap_s, gap_count: Gaps inside the chunk (seconds, count).
        reset_count, wrap_count: Counter resets and wraps inside the chunk.
        method: Method of each chunk's energy figure.
    """

    segment: IntArray
    chunk_index: IntArray
    first_index: IntArray
    t0_s: FloatArray
    t1_s: FloatArray
    n: IntArray
    energy_j: FloatArray
    energy_low_j: FloatArray
    energy_high_j: FloatArray
    sensor_uncertainty_j: FloatArray
    bound_below_j: FloatArray
    bound_above_j: FloatArray
    min_power_w: FloatArray
    mean_power_w: FloatArray
    max_power_w: FloatArray
    gap_s: FloatArray
    gap_count: IntArray
    reset_count: IntArray
    wrap_count: IntArray
    method: npt.NDArray[np.str_]

    def __len__(self) -> int:
        return int(self.n.size)


@dataclass(frozen=True, slots=True)
class EnergyCurve:
    """Cumulative energy of one trace, for exact slicing into windows (`window_energy`).

    Inside interval i the modelled power goes linearly from ``rate_start_w[i]`` to
    ``rate_end_w[i]`` (the readings for measured intervals; the policy's fill for gaps; the
    interval's mean rate for counters), and the cumulative energy is its exact integral.

    Attributes:
        t_s: Sample times, s.
        energy_j: Cumulative energy at each sample, J (0 at the first).
        rate_start_w, rate_end_w: Modelled power at the ends of each interval, W.
        sensor_j: Cumulative sensor uncertainty, J.
        bound_below_j, bound_above_j: Cumulative one-sided bounds, J (finite parts).
        unbounded_start_s, unbounded_end_s: Intervals whose upper bound is infinite (counter
            resets without max_power_w), s.
        method: Method of the energy figures.
        averaging_window_s: Moving-average window w of the readings, s (0: none); a window
            [a, b) then gets the lag correction (w/2)(r(b) − r(a)).
        floor_power_w, ceiling_power_w: The power range the averaging residual assumes, W.
    """

    t_s: FloatArray
    energy_j: FloatArray
    rate_start_w: FloatArray
    rate_end_w: FloatArray
    sensor_j: FloatArray
    bound_below_j: FloatArray
    bound_above_j: FloatArray
    unbounded_start_s: FloatArray
    unbounded_end_s: FloatArray
    method: Method
    averaging_window_s: float = 0.0
    floor_power_w: float = 0.0
    ceiling_power_w: float = math.nan


@dataclass(frozen=True, slots=True)
class WindowEnergy:
    """Energy of windows [start_s, end_s), one entry per window.

    Attributes:
        start_s, end_s: The windows, s.
        covered_s: Part of each window inside the trace, s (energy outside it is not known).
        energy_j, energy_low_j, energy_high_j: Estimate and band, J.
        sensor_uncertainty_j, bound_below_j, bound_above_j: Band terms, J; within an interval
            they are shared out in proportion to time.
    """

    start_s: FloatArray
    end_s: FloatArray
    covered_s: FloatArray
    energy_j: FloatArray
    energy_low_j: FloatArray
    energy_high_j: FloatArray
    sensor_uncertainty_j: FloatArray
    bound_below_j: FloatArray
    bound_above_j: FloatArray


@dataclass(frozen=True, slots=True)
class EnergyTotals:
    """Energy summed per group key (`aggregate_energy`), one entry per distinct key.

    Attributes:
        key: The distinct group keys, sorted.
        energy_j, energy_low_j, energy_high_j: Sum and band, J.
        sensor_uncertainty_j: Combined sensor error, J (root-sum-square over devices for
            ``combine="independent"``, plain sum for ``"linear"``).
        bound_below_j, bound_above_j: Summed one-sided bounds, J.
        n_devices: Distinct devices in each group.
        n_rows: Input rows in each group.
        combine: How sensor errors of different devices were combined.
    """

    key: npt.NDArray[np.generic]
    energy_j: FloatArray
    energy_low_j: FloatArray
    energy_high_j: FloatArray
    sensor_uncertainty_j: FloatArray
    bound_below_j: FloatArray
    bound_above_j: FloatArray
    n_devices: IntArray
    n_rows: IntArray
    combine: Combine

    def __len__(self) -> int:
        return int(self.energy_j.size)


# --------------------------------------------------------------------------- input checks


def _as_1d(values: npt.ArrayLike, name: str) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidSamples(f"{name}: not convertible to float64 numbers ({e})") from e
    if array.ndim != 1:
        raise InvalidSamples(f"{name}: expected a 1-D array, got shape {array.shape}")
    return array


def _check_lengths(t: FloatArray, values: FloatArray, t_name: str, v_name: str) -> None:
    if t.size != values.size:
        raise InvalidSamples(
            f"mismatched lengths: {t_name} has {t.size} samples, {v_name} has {values.size}"
        )


def _check_param(
    name: str,
    value: float,
    *,
    low: float,
    low_open: bool = False,
    high: float = math.inf,
    allow_inf: bool = False,
) -> float:
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise InvalidArgument(f"{name} must be a finite number, got {value}")
    if value < low or (low_open and value == low) or value > high:
        lo = "(" if low_open else "["
        raise InvalidArgument(f"{name} must lie in {lo}{low}, {high}], got {value}")
    return value


@dataclass(frozen=True, slots=True)
class _PowerOptions:
    method: PowerMethod
    gap_policy: GapPolicy
    gap_factor: float
    nominal_interval_s: float | None
    max_power_w: float | None
    min_power_w: float
    sensor_rel_error: float
    sensor_abs_error_w: float
    coverage_fraction: float
    averaging_window_s: float


def _power_options(
    *,
    method: str,
    gap_policy: str,
    gap_factor: float,
    nominal_interval_s: float | None,
    max_power_w: float | None,
    min_power_w: float,
    sensor_rel_error: float,
    sensor_abs_error_w: float,
    coverage_fraction: float,
    averaging_window_s: float,
) -> _PowerOptions:
    if method not in POWER_METHODS:
        raise InvalidArgument(f"method must be one of {POWER_METHODS}, got {method!r}")
    if gap_policy not in GAP_POLICIES:
        raise InvalidArgument(f"gap_policy must be one of {GAP_POLICIES}, got {gap_policy!r}")
    gap_factor = _check_param("gap_factor", gap_factor, low=1.0, high=math.inf, allow_inf=True)
    if nominal_interval_s is not None:
        nominal_interval_s = _check_param(
            "nominal_interval_s", nominal_interval_s, low=0.0, low_open=True
        )
    min_power_w = _check_param("min_power_w", min_power_w, low=0.0)
    if max_power_w is not None:
        max_power_w = _check_param("max_power_w", max_power_w, low=min_power_w, low_open=True)
    return _PowerOptions(
        method=method,
        gap_policy=gap_policy,
        gap_factor=gap_factor,
        nominal_interval_s=nominal_interval_s,
        max_power_w=max_power_w,
        min_power_w=min_power_w,
        sensor_rel_error=_check_param("sensor_rel_error", sensor_rel_error, low=0.0),
        sensor_abs_error_w=_check_param("sensor_abs_error_w", sensor_abs_error_w, low=0.0),
        coverage_fraction=_check_param("coverage_fraction", coverage_fraction, low=0.0, high=1.0),
        averaging_window_s=_check_param("averaging_window_s", averaging_window_s, low=0.0),
    )


def _first_invalid(
    t: FloatArray,
    v: FloatArray,
    seg_off: IntArray,
    stop: int,
    *,
    t_name: str,
    v_name: str,
    v_unit: str,
    v_max: float | None = None,
) -> str | None:
    """Describe the first bad sample among the first ``stop`` (exact, vectorised, slow path)."""
    t = t[:stop]
    v = v[:stop]
    found: list[tuple[int, int, str]] = []  # (index, kind order, message)

    def first(mask: BoolArray) -> int | None:
        hits = np.flatnonzero(mask)
        return int(hits[0]) if hits.size else None

    if (i := first(~np.isfinite(t))) is not None:
        found.append((i, 0, f"{t_name}[{i}] is {float(t[i])!r}, not a finite time"))
    if (i := first(~np.isfinite(v))) is not None:
        found.append((i, 1, f"{v_name}[{i}] is {float(v[i])!r}, not a finite value"))
    with np.errstate(invalid="ignore"):
        if (i := first(v < 0)) is not None:
            found.append((i, 2, f"{v_name}[{i}] = {float(v[i])!r} {v_unit} is negative"))
        if v_max is not None and (i := first(v > v_max)) is not None:
            found.append(
                (i, 3, f"{v_name}[{i}] = {float(v[i])!r} {v_unit} exceeds wrap_j = {v_max!r}")
            )
        if t.size > 1:
            back = ~(t[1:] > t[:-1]) & np.isfinite(t[1:]) & np.isfinite(t[:-1])
            cross = seg_off[1:-1] - 1
            back[cross[cross < back.size]] = False
            if (i := first(back)) is not None:
                found.append(
                    (
                        i + 1,
                        4,
                        f"{t_name}[{i + 1}] = {float(t[i + 1])!r} s is not after {t_name}[{i}] = "
                        f"{float(t[i])!r} s (time must strictly increase)",
                    )
                )
    if not found:
        return None
    index, _, message = min(found)
    if seg_off.size > 2:
        k = int(np.searchsorted(seg_off, index, side="right")) - 1
        message += f" (trace {k}, sample {index - int(seg_off[k])})"
    return message


def _power_problem(t: FloatArray, p: FloatArray, seg_off: IntArray, stop: int) -> str | None:
    return _first_invalid(t, p, seg_off, stop, t_name="t_s", v_name="power_w", v_unit="W")


def _raise_invalid(t: FloatArray, p: FloatArray, seg_off: IntArray, stop: int) -> NoReturn:
    message = _power_problem(t, p, seg_off, stop)
    raise InvalidSamples(message or "values too large: the energy overflows float64")


def _offsets(offsets: npt.ArrayLike, n: int) -> IntArray:
    try:
        off = np.asarray(offsets)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"offsets: not an array of integers ({e})") from e
    if off.ndim != 1 or off.size < 2 or not np.issubdtype(off.dtype, np.integer):
        raise InvalidArgument("offsets must be a 1-D integer array [0, ..., n] of length traces+1")
    off = off.astype(np.int64)
    if off[0] != 0 or off[-1] != n or np.any(np.diff(off) < 0):
        raise InvalidArgument(
            f"offsets must start at 0, end at the sample count {n} and never decrease"
        )
    return off


def _nonempty(off: IntArray) -> IntArray:
    """Offsets of the non-empty traces only (strictly increasing, from 0 to n)."""
    return np.unique(off)


def segments_from_rows(
    t_s: npt.ArrayLike, values: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Turn equal-length traces (devices × samples) into the segmented form.

    Args:
        t_s: Sample times, s: shape (n,) shared by every row, or (rows, n).
        values: Power in W (or counter in J), shape (rows, n).

    Returns:
        ``(t_s, values, offsets)``: concatenated 1-D arrays and offsets of length rows + 1.
    """
    v = np.asarray(values, dtype=np.float64)
    t = np.asarray(t_s, dtype=np.float64)
    if v.ndim != 2:
        raise InvalidSamples(f"values: expected a 2-D (rows × samples) array, got {v.shape}")
    rows, n = v.shape
    if t.ndim == 1 and t.size == n:
        t_flat = np.tile(t, rows)
    elif t.shape == v.shape:
        t_flat = np.ascontiguousarray(t).reshape(-1)
    else:
        raise InvalidSamples(
            f"mismatched shapes: t_s {t.shape} must be ({n},) or equal to values {v.shape}"
        )
    offsets = np.arange(rows + 1, dtype=np.int64) * n
    return t_flat, np.ascontiguousarray(v).reshape(-1), offsets


def segments_from_list(
    t_s: list[npt.ArrayLike], values: list[npt.ArrayLike]
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Turn a list of traces of any lengths into the segmented form.

    Args:
        t_s: One array of sample times (s) per trace.
        values: One array of power (W) or counter (J) readings per trace.

    Returns:
        ``(t_s, values, offsets)``: concatenated 1-D arrays and offsets of length traces + 1.
    """
    if len(t_s) != len(values):
        raise InvalidSamples(f"mismatched lengths: {len(t_s)} time arrays, {len(values)} values")
    ts = [_as_1d(x, f"t_s[{k}]") for k, x in enumerate(t_s)]
    vs = [_as_1d(x, f"values[{k}]") for k, x in enumerate(values)]
    for k, (a, b) in enumerate(zip(ts, vs, strict=True)):
        _check_lengths(a, b, f"t_s[{k}]", f"values[{k}]")
    offsets = np.zeros(len(ts) + 1, dtype=np.int64)
    np.cumsum([a.size for a in ts], out=offsets[1:])
    empty = np.empty(0, dtype=np.float64)
    return (
        np.concatenate(ts) if ts else empty,
        np.concatenate(vs) if vs else empty,
        offsets,
    )


# --------------------------------------------------------------------------- gap thresholds


def _nominal_intervals(t: FloatArray, seg_off: IntArray) -> FloatArray:
    """Median interval of each (non-empty) trace, NaN for traces without an interval.

    A trace of up to _MEDIAN_SAMPLE intervals uses all of them. A longer one uses
    _MEDIAN_RUNS runs of consecutive intervals spread evenly over it (_MEDIAN_SAMPLE in all):
    contiguous runs read a few hundred KiB instead of touching every page of the trace.
    Short traces are handled together: sorted by (trace, interval), middle elements picked.
    """
    nseg = seg_off.size - 1
    out = np.full(nseg, np.nan)
    m = np.maximum(np.diff(seg_off) - 1, 0)  # intervals per trace
    run = _MEDIAN_SAMPLE // _MEDIAN_RUNS
    for k in np.flatnonzero(m > _MEDIAN_SAMPLE).tolist():
        first = int(seg_off[k]) + np.linspace(0, int(m[k]) - run, _MEDIAN_RUNS).astype(np.int64)
        idx = (first[:, None] + np.arange(run)).reshape(-1)
        with np.errstate(invalid="ignore"):
            out[k] = float(np.median(t[idx + 1] - t[idx]))
    small = np.flatnonzero((m > 0) & (m <= _MEDIAN_SAMPLE))
    if small.size == 0:
        return out
    counts = m[small]
    total = int(counts.sum())
    seg = np.repeat(np.arange(small.size), counts)
    base = np.cumsum(counts) - counts
    idx = seg_off[small][seg] + np.arange(total) - base[seg]
    with np.errstate(invalid="ignore"):
        dts = t[idx + 1] - t[idx]
    if small.size == 1:
        out[small[0]] = float(np.median(dts))
        return out
    sorted_dt = dts[np.lexsort((dts, seg))]
    out[small] = 0.5 * (sorted_dt[base + (counts - 1) // 2] + sorted_dt[base + counts // 2])
    return out


def _thresholds(
    t: FloatArray, seg_off: IntArray, opts: _PowerOptions
) -> tuple[FloatArray, FloatArray]:
    nseg = seg_off.size - 1
    if opts.nominal_interval_s is not None:
        nominal = np.full(nseg, opts.nominal_interval_s)
        nominal[np.diff(seg_off) < 2] = np.nan
    else:
        nominal = _nominal_intervals(t, seg_off)
    with np.errstate(invalid="ignore"):
        thr = nominal * opts.gap_factor
    thr[~(thr > 0)] = np.inf  # traces without intervals: nothing can be a gap
    return nominal, thr


# --------------------------------------------------------------------------- power kernel


@dataclass(frozen=True, slots=True)
class _Layout:
    """Traces (segments) and groups (whole traces or chunks) over the concatenated samples.

    ``seg_off`` and ``grp_off`` are strictly increasing offsets from 0 to n; every trace start
    is a group start, so no group crosses a trace.
    """

    n: int
    seg_off: IntArray
    grp_off: IntArray

    @property
    def grp_seg(self) -> IntArray:
        return np.searchsorted(self.seg_off, self.grp_off[:-1], side="right") - 1

    @property
    def grp_last(self) -> IntArray:
        """Last sample each group's intervals reach (the next group's first, within a trace)."""
        seg_end = self.seg_off[1:][self.grp_seg]
        return np.minimum(self.grp_off[1:], seg_end - 1)


@dataclass(frozen=True, slots=True)
class _PowerSums:
    e2: FloatArray  # per group: 2 × trapezoid energy of measured (non-gap) intervals
    s2: FloatArray  # per group: 2 × sensor uncertainty
    xf2: FloatArray  # per group: 2 × Σ max(0, floor·dt − e_i) (coverage, readings below floor)
    xc2: FloatArray  # per group: 2 × Σ max(0, e_i − ceil·dt) (coverage, readings above ceiling)
    pmin: FloatArray | None  # per group, over its own samples (only when asked for)
    pmax: FloatArray | None  # per group, over its own samples (when asked for, or gaps seen)
    gap_idx: IntArray  # global index of the sample before each gap, ascending
    gap_dt: FloatArray


def _power_kernel(
    t: FloatArray,
    p: FloatArray,
    lay: _Layout,
    thr_seg: FloatArray,
    opts: _PowerOptions,
    *,
    want_stats: bool,
) -> _PowerSums:
    """Stream the arrays once, block by block, and sum each group's interval terms.

    Per block, while it is in cache: interval lengths into a buffer; validation (min interval
    > 0, max interval finite, min power >= 0 and not NaN, finite energy: that catches +inf
    power too) and gap detection on that buffer; gaps and the non-intervals between traces set
    to length 0; the trapezoid sum as dot(dt, p[1:]) + dot(dt, p[:-1]). The sensor term is
    rel × energy when every reading is above abs/rel (the usual case), else corrected at the
    few low readings, or recomputed densely when many are low. Blocks inside one group take
    these dot-product paths; blocks that straddle groups (chunks) form per-interval products
    and reduce them with np.add.reduceat. The power peak, needed only as a bound's ceiling
    without max_power_w, is tracked from the first gap on; the part before it is read once
    at the end.
    """
    n = lay.n
    ng = lay.grp_off.size - 1
    e2 = np.zeros(ng)
    s2 = np.zeros(ng)
    xf2 = np.zeros(ng)
    xc2 = np.zeros(ng)
    pmin = np.full(ng, np.inf) if want_stats else None
    pmax = np.full(ng, -np.inf)
    gap_idx: list[IntArray] = []
    gap_dt: list[FloatArray] = []
    if n == 0:
        return _PowerSums(e2, s2, xf2, xc2, pmin, pmax, np.zeros(0, np.int64), np.zeros(0))

    rel = opts.sensor_rel_error
    abs_w = opts.sensor_abs_error_w
    q_floor = abs_w / rel if rel > 0 else math.inf
    floor_w = opts.min_power_w
    ceil_w = opts.max_power_w if opts.max_power_w is not None else math.inf
    partial = opts.coverage_fraction < 1.0
    want_floor = partial and floor_w > 0.0
    want_ceil = partial and opts.max_power_w is not None
    needs_ceiling = partial or opts.averaging_window_s > 0.0
    track = want_stats or want_ceil or (needs_ceiling and opts.max_power_w is None)
    lazy_peak = opts.max_power_w is None and not track
    peak_from = 0  # samples before this were not tracked (lazy peak)

    size = min(_BLOCK_SAMPLES, n)
    # dbuf[1 + i] holds interval i of the block; dbuf[0] and dbuf[mi + 1] stay 0, so the
    # intervals either side of sample j are dbuf[j] and dbuf[j + 1].
    dbuf = np.zeros(size + 2)
    psbuf = np.empty(size)
    wbuf = np.empty(size)
    xbuf = np.empty(size)
    qbuf = np.empty(size + 1)
    mbuf = np.empty(size + 1, dtype=np.bool_)
    b_start = np.arange(0, n, size, dtype=np.int64)
    b_end = np.minimum(b_start + size, n)
    excl = lay.seg_off[1:] - 1  # last sample of each trace: its "interval" is not one
    ex_lo = np.searchsorted(excl, b_start).tolist()
    ex_hi = np.searchsorted(excl, b_end).tolist()
    g_lo = (np.searchsorted(lay.grp_off, b_start, side="right") - 1).tolist()
    g_hi = (np.searchsorted(lay.grp_off, b_end - 1, side="right") - 1).tolist()
    k_lo = (np.searchsorted(lay.seg_off, b_start, side="right") - 1).tolist()
    k_hi = (np.searchsorted(lay.seg_off, b_end - 1, side="right") - 1).tolist()
    thr_list = thr_seg.tolist()
    dot = np.dot
    vmin = np.minimum.reduce
    vmax = np.maximum.reduce

    for b, (s0, s1) in enumerate(zip(b_start.tolist(), b_end.tolist(), strict=True)):
        last = s1 == n
        mi = s1 - s0 - 1 if last else s1 - s0  # interval slots in this block
        d = dbuf[1 : mi + 1]
        dbuf[mi + 1] = 0.0
        np.subtract(t[s0 + 1 : s0 + mi + 1], t[s0 : s0 + mi], out=d)
        ex: IntArray | None = None
        dropped_s = 0.0  # length of the slots that will not count (non-intervals, gaps)
        if ex_hi[b] > ex_lo[b]:
            ex = excl[ex_lo[b] : ex_hi[b]] - s0
            ex = ex[ex < mi]
            dropped_s += float(d[ex].sum())
            d[ex] = 0.0
        pn = p[s0 : s0 + mi + 1]  # samples the interval slots touch
        j0, j1 = g_lo[b], g_hi[b]
        single = j0 == j1 and mi > 0
        # In a one-group block the first half of the trapezoid sum is taken now, while p
        # streams in from memory (the dot costs nothing extra there); gaps are taken out below.
        e_right = float(dot(d, pn[1:])) if single else 0.0
        if ex is not None:
            d[ex] = _TINY  # passes the "time increases" check; counts for nothing
        pmn = float(vmin(pn))
        dmn, dmx = (float(vmin(d)), float(vmax(d))) if mi else (1.0, 0.0)
        if not (dmn > 0.0 and pmn >= 0.0 and dmx < math.inf):
            _raise_invalid(t, p, lay.seg_off, min(s1 + 1, n))
        if mi == 0 and not math.isfinite(pmn):
            _raise_invalid(t, p, lay.seg_off, s1)

        kl, kh = k_lo[b], k_hi[b]
        gi: IntArray | None = None
        if kl == kh:
            if dmx > thr_list[kl]:
                gi = np.flatnonzero(d > thr_list[kl])
        else:
            cuts = lay.seg_off[kl + 1 : kh + 1] - s0
            lengths = np.diff(np.concatenate(([0], cuts, [s1 - s0])))
            thr_arr = np.repeat(thr_seg[kl : kh + 1], lengths)[:mi]
            if dmx > float(thr_arr.min()):
                gi = np.flatnonzero(d > thr_arr)
        if gi is not None and gi.size:
            gdt = d[gi].copy()
            gap_idx.append(gi + s0)
            gap_dt.append(gdt)
            dropped_s += float(gdt.sum())
            if single:
                e_right -= float(dot(gdt, pn[gi + 1]))
            d[gi] = 0.0
            if lazy_peak:
                lazy_peak = False
                track = True
                peak_from = s0
        if ex is not None:
            d[ex] = 0.0

        pb = p[s0:s1]  # the block's own samples (group statistics)
        if j0 == j1:  # the whole block lies in one group: dot products, no temporaries
            e = e_right + float(dot(d, pn[:-1])) if mi else 0.0
            if not math.isfinite(e):
                _raise_invalid(t, p, lay.seg_off, min(s1 + 1, n))
            e2[j0] += e
            pmx = float(vmax(pb)) if track else math.nan
            if track:
                pmax[j0] = max(pmax[j0], pmx)
            if pmin is not None:
                pmin[j0] = min(pmin[j0], float(vmin(pb)))
            low_floor = want_floor and pmn < floor_w
            over_ceil = want_ceil and max(pmx, float(pn[-1])) > ceil_w
            if low_floor or over_ceil:
                w = wbuf[:mi]
                np.add(pn[1:], pn[:-1], out=psbuf[:mi])
                np.multiply(d, psbuf[:mi], out=w)
                x = xbuf[:mi]
                if low_floor:
                    np.multiply(d, 2.0 * floor_w, out=x)
                    np.subtract(x, w, out=x)
                    np.maximum(x, 0.0, out=x)
                    xf2[j0] += float(x.sum())
                if over_ceil:
                    np.multiply(d, -2.0 * ceil_w, out=x)
                    np.add(x, w, out=x)
                    np.maximum(x, 0.0, out=x)
                    xc2[j0] += float(x.sum())
            if rel == 0.0:
                s2[j0] += 2.0 * abs_w * (float(t[s0 + mi] - t[s0]) - dropped_s)
            elif pmn >= q_floor:  # every reading above abs/rel: the error is rel × energy
                s2[j0] += rel * e
            elif mi:
                top = max(pmx, float(pn[-1])) if track else float(vmax(pn))
                if top <= q_floor:  # every reading low: the error is abs × time
                    s2[j0] += 2.0 * abs_w * (float(t[s0 + mi] - t[s0]) - dropped_s)
                    continue
                # Σ d_i (q_i + q_{i+1}) with q = max(p, abs/rel) is the energy sum plus,
                # at each low reading j, (abs/rel − p_j) × (interval before + interval after).
                # A strided probe guesses whether the low readings are few enough for that.
                probe = pn[::_PROBE_STRIDE]
                low = None
                if np.count_nonzero(probe < q_floor) <= _SPARSE_FRACTION * probe.size:
                    low = np.flatnonzero(np.less(pn, q_floor, out=mbuf[: mi + 1]))
                if low is not None and low.size <= 2 * _SPARSE_FRACTION * (mi + 1):
                    lift = q_floor - pn[low]
                    s2[j0] += rel * (e + float(dot(lift, dbuf[low] + dbuf[low + 1])))
                else:
                    q = qbuf[: mi + 1]
                    np.maximum(pn, q_floor, out=q)
                    s2[j0] += rel * (float(dot(d, q[1:])) + float(dot(d, q[:-1])))
            continue

        # The block straddles groups: per-slot products, reduced per group piece.
        ms = s1 - s0
        dd = dbuf[1 : ms + 1]  # a padded last slot (no interval) is already 0
        ps = psbuf[:ms]
        w = wbuf[:ms]
        if ms > mi:
            psbuf[mi] = 0.0
        np.add(pn[1:], pn[:-1], out=ps[:mi])
        np.multiply(dd, ps, out=w)
        loc = lay.grp_off[j0 : j1 + 1] - s0
        loc[0] = 0
        ep = np.add.reduceat(w, loc)
        if not np.all(np.isfinite(ep)):
            _raise_invalid(t, p, lay.seg_off, min(s1 + 1, n))
        e2[j0 : j1 + 1] += ep
        if track:
            np.maximum(pmax[j0 : j1 + 1], np.maximum.reduceat(pb, loc), out=pmax[j0 : j1 + 1])
        if pmin is not None:
            np.minimum(pmin[j0 : j1 + 1], np.minimum.reduceat(pb, loc), out=pmin[j0 : j1 + 1])
        x = xbuf[:ms]
        if want_floor and pmn < floor_w:
            np.multiply(dd, 2.0 * floor_w, out=x)
            np.subtract(x, w, out=x)
            np.maximum(x, 0.0, out=x)
            xf2[j0 : j1 + 1] += np.add.reduceat(x, loc)
        if want_ceil and float(vmax(pn)) > ceil_w:
            np.multiply(dd, -2.0 * ceil_w, out=x)
            np.add(x, w, out=x)
            np.maximum(x, 0.0, out=x)
            xc2[j0 : j1 + 1] += np.add.reduceat(x, loc)
        if rel == 0.0:
            s2[j0 : j1 + 1] += 2.0 * abs_w * np.add.reduceat(dd, loc)
        elif pmn >= q_floor:
            s2[j0 : j1 + 1] += rel * ep
        else:
            q = qbuf[: mi + 1]
            np.maximum(pn, q_floor, out=q)
            np.add(q[1:], q[:-1], out=ps[:mi])
            np.multiply(dd, ps, out=w)
            s2[j0 : j1 + 1] += rel * np.add.reduceat(w, loc)

    single = np.flatnonzero(np.diff(lay.seg_off) == 1)  # their time never entered a check
    if single.size and not np.all(np.isfinite(t[lay.seg_off[single]])):
        _raise_invalid(t, p, lay.seg_off, n)
    if peak_from > 0:  # the peak was tracked from the first gap on: read the part before it
        starts = lay.grp_off[:-1][lay.grp_off[:-1] < peak_from]
        before = np.maximum.reduceat(p[:peak_from], starts)
        np.maximum(pmax[: starts.size], before, out=pmax[: starts.size])
    return _PowerSums(
        e2,
        s2,
        xf2,
        xc2,
        pmin,
        pmax if track else None,
        np.concatenate(gap_idx) if gap_idx else np.zeros(0, np.int64),
        np.concatenate(gap_dt) if gap_dt else np.zeros(0),
    )


@dataclass(frozen=True, slots=True)
class _GroupEnergy:
    energy_j: FloatArray
    sensor_j: FloatArray
    below_j: FloatArray
    above_j: FloatArray
    duration_s: FloatArray
    counted_s: FloatArray
    gap_s: FloatArray
    gap_count: IntArray
    gap_fill_j: FloatArray
    gap_bridge_j: FloatArray
    pmin: FloatArray | None
    pmax: FloatArray | None
    seg_nominal_s: FloatArray
    seg_threshold_s: FloatArray
    seg_ceiling_w: FloatArray
    gaps: GapReport


def _power_groups(
    t: FloatArray, p: FloatArray, lay: _Layout, opts: _PowerOptions, *, want_stats: bool
) -> _GroupEnergy:
    """Run the kernel and turn its sums into per-group energies, gaps and band terms."""
    nominal, thr = _thresholds(t, lay.seg_off, opts)
    sums = _power_kernel(t, p, lay, thr, opts, want_stats=want_stats)
    ng = lay.grp_off.size - 1
    nseg = lay.seg_off.size - 1
    grp_seg = lay.grp_seg
    first = lay.grp_off[:-1]
    duration = t[lay.grp_last] - t[first] if ng else np.zeros(0)

    gi = sums.gap_idx
    gdt = sums.gap_dt
    g_grp = np.searchsorted(lay.grp_off, gi, side="right") - 1
    g_seg = grp_seg[g_grp]
    bridge = 0.5 * gdt * (p[gi] + p[gi + 1])
    fill = {"exclude": np.zeros_like(gdt), "bridge": bridge, "hold": gdt * p[gi]}[opts.gap_policy]
    gap_s = _sum_by(g_grp, gdt, ng)
    gap_count = np.bincount(g_grp, minlength=ng).astype(np.int64)
    gap_fill = _sum_by(g_grp, fill, ng)
    gap_bridge = _sum_by(g_grp, bridge, ng)

    partial = opts.coverage_fraction < 1.0
    ceiling = np.full(nseg, np.nan)
    if opts.max_power_w is not None:
        ceiling[:] = opts.max_power_w
    elif sums.pmax is not None and ng:  # tracked whenever a gap or coverage needs it
        seg_first_grp = np.searchsorted(lay.grp_off, lay.seg_off[:-1])
        ceiling = np.maximum.reduceat(sums.pmax, seg_first_grp)
        ceiling[np.isinf(ceiling)] = np.nan  # traces whose peak nothing needed

    floor_w = opts.min_power_w
    gap_lo = np.maximum(fill - floor_w * gdt, 0.0)
    gap_hi = np.maximum(ceiling[g_seg] * gdt - fill, 0.0)
    below = _sum_by(g_grp, gap_lo, ng)
    above = _sum_by(g_grp, gap_hi, ng)

    e_meas = 0.5 * sums.e2
    measured_s = duration - gap_s
    if partial:
        unseen = 1.0 - opts.coverage_fraction
        g_ceil = ceiling[grp_seg]
        below += unseen * np.maximum(e_meas - floor_w * measured_s + 0.5 * sums.xf2, 0.0)
        above += unseen * np.maximum(g_ceil * measured_s - e_meas + 0.5 * sums.xc2, 0.0)

    energy = e_meas + gap_fill
    w = opts.averaging_window_s
    if w > 0.0:
        # Lag correction: ∫_a^b r dt + (w/2)(r(b) − r(a)) estimates the true energy over
        # [a, b], exactly when P is linear over [a − w, a] and [b − w, b] (module docstring).
        last = lay.grp_last
        spans = duration > 0
        shift = np.where(spans, 0.5 * w * (p[last] - p[first]), 0.0) if ng else np.zeros(0)
        energy = np.maximum(energy + shift, 0.0)
        # Residual of the two edges (module docstring); an edge that meets a gap is not
        # corrected, so it may be off by the whole lag, (ceiling − floor) × w/2.
        g_ceil = ceiling[grp_seg]
        swing = np.maximum(g_ceil - floor_w, 0.0) if ng else np.zeros(0)
        edges = _edge_residual(p[first], w, floor_w, g_ceil) + _edge_residual(
            p[last], w, floor_w, g_ceil
        )
        residual = np.where(spans, edges, 0.0) + swing * gap_count * w
        below += residual
        above += residual

    counted = measured_s if opts.gap_policy == "exclude" else duration
    gaps = GapReport(
        segment=g_seg.astype(np.int64),
        index=(gi - lay.seg_off[g_seg]).astype(np.int64),
        start_s=t[gi],
        end_s=t[gi + 1],
        fill_j=fill,
        bridge_j=bridge,
    )
    return _GroupEnergy(
        energy_j=energy,
        sensor_j=0.5 * sums.s2,
        below_j=below,
        above_j=above,
        duration_s=duration,
        counted_s=counted,
        gap_s=gap_s,
        gap_count=gap_count,
        gap_fill_j=gap_fill,
        gap_bridge_j=gap_bridge,
        pmin=sums.pmin,
        pmax=sums.pmax,
        seg_nominal_s=nominal,
        seg_threshold_s=thr,
        seg_ceiling_w=ceiling,
        gaps=gaps,
    )


def _edge_residual(
    reading_w: FloatArray, window_s: float, floor_w: float, ceiling_w: float | FloatArray
) -> FloatArray:
    """Worst lag-corrected error at a window edge whose averaged reading is r, J.

    (w/2)·(r − floor)(ceiling − r)/(ceiling − floor): the most ∫P·h can reach over the
    edge's averaging window when P stays in [floor, ceiling] with mean r (module docstring).
    """
    span = np.maximum(np.asarray(ceiling_w, dtype=np.float64) - floor_w, 0.0)
    up = np.clip(reading_w - floor_w, 0.0, span)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 0.5 * window_s * up * (span - up) / span
    return np.where(span > 0, out, 0.0)


def _sum_by(index: IntArray, weights: FloatArray, size: int) -> FloatArray:
    """Sum of weights per index value 0..size-1 (float64 whatever the stubs of bincount say)."""
    return np.bincount(index, weights=weights, minlength=size).astype(np.float64)


def _band(
    energy: FloatArray, sensor: FloatArray, below: FloatArray, above: FloatArray
) -> tuple[FloatArray, FloatArray]:
    low = np.maximum(energy - sensor - below, 0.0)
    high = energy + sensor + above
    return low, high


# --------------------------------------------------------------------------- public: power


def integrate_power_segments(
    t_s: npt.ArrayLike,
    power_w: npt.ArrayLike,
    offsets: npt.ArrayLike,
    *,
    method: PowerMethod = "power_avg",
    gap_policy: GapPolicy = "exclude",
    gap_factor: float = 3.0,
    nominal_interval_s: float | None = None,
    max_power_w: float | None = None,
    min_power_w: float = 0.0,
    sensor_rel_error: float = SENSOR_REL_ERROR,
    sensor_abs_error_w: float = SENSOR_ABS_ERROR_W,
    coverage_fraction: float = 1.0,
    averaging_window_s: float = 0.0,
) -> PowerEnergyBatch:
    """Integrate many power traces given in segmented form (trapezoid rule, gaps handled).

    Each trace is validated and integrated on its own: its own nominal interval, gaps and
    peak; the interval between the last sample of one trace and the first of the next is not
    an interval. Empty traces give 0 J.

    Args:
        t_s: Concatenated sample times, s (strictly increasing within each trace).
        power_w: Concatenated power readings, W (finite, >= 0).
        offsets: Trace k is ``[offsets[k], offsets[k+1])``; length traces + 1, from 0 to n.
        method: Label of the power readings (``power_avg``, ``power_instant``, ``estimate``).
        gap_policy: ``"exclude"`` (gap counts 0 J), ``"bridge"`` (linear) or ``"hold"``.
        gap_factor: An interval longer than gap_factor × nominal interval is a gap (>= 1;
            ``math.inf`` disables gap detection).
        nominal_interval_s: Nominal sampling interval, s; default the median interval of
            each trace.
        max_power_w: Device power limit, W: ceiling of the gap and coverage bounds. Without
            it the trace's own peak is used (an assumption, not a bound).
        min_power_w: Floor of the gap and coverage bounds, W (default 0: a strict floor).
        sensor_rel_error: Relative sensor accuracy (default 0.05).
        sensor_abs_error_w: Absolute sensor accuracy, W (default 5); per reading the larger
            of the two applies.
        coverage_fraction: Fraction of each interval the readings represent, in [0, 1]
            (about 0.25 for A100/H100 instantaneous readings; 1 for averaged power; 0 for
            point samples, whose band is the honest [floor, ceiling] × time).
        averaging_window_s: Window w of a trailing moving-average reading, s (NVML on
            Hopper: 1 s); 0 (default) for readings taken as the power at their own time.
            With w > 0 the estimate is lag-corrected and the band gains the averaging
            residual (module docstring, "Averaged readings").

    Returns:
        One entry per trace (see `PowerEnergyBatch`).

    Raises:
        InvalidSamples: Mismatched lengths, NaN/inf, negative power or time not increasing;
            the message names the problem and the first bad index (and trace).
        InvalidArgument: A parameter out of range or malformed offsets.
    """
    opts = _power_options(
        method=method,
        gap_policy=gap_policy,
        gap_factor=gap_factor,
        nominal_interval_s=nominal_interval_s,
        max_power_w=max_power_w,
        min_power_w=min_power_w,
        sensor_rel_error=sensor_rel_error,
        sensor_abs_error_w=sensor_abs_error_w,
        coverage_fraction=coverage_fraction,
        averaging_window_s=averaging_window_s,
    )
    t = _as_1d(t_s, "t_s")
    p = _as_1d(power_w, "power_w")
    _check_lengths(t, p, "t_s", "power_w")
    off = _offsets(offsets, t.size)
    seg_off = _nonempty(off)
    lay = _Layout(n=t.size, seg_off=seg_off, grp_off=seg_off)
    g = _power_groups(t, p, lay, opts, want_stats=False)
    if not np.all(np.isfinite(g.energy_j)):
        raise InvalidSamples("values too large: the energy overflows float64")

    # Scatter the non-empty traces' results back to every trace (empty ones stay 0 / NaN).
    nseg_all = off.size - 1
    sizes = np.diff(off)
    where = np.flatnonzero(sizes > 0)

    def full(values: FloatArray, empty: float = 0.0) -> FloatArray:
        out = np.full(nseg_all, empty)
        out[where] = values
        return out

    low, high = _band(g.energy_j, g.sensor_j, g.below_j, g.above_j)
    gap_count = np.zeros(nseg_all, np.int64)
    gap_count[where] = g.gap_count
    gaps = g.gaps
    gaps = GapReport(
        segment=where[gaps.segment].astype(np.int64),
        index=gaps.index,
        start_s=gaps.start_s,
        end_s=gaps.end_s,
        fill_j=gaps.fill_j,
        bridge_j=gaps.bridge_j,
    )
    return PowerEnergyBatch(
        offsets=off,
        energy_j=full(g.energy_j),
        energy_low_j=full(low),
        energy_high_j=full(high),
        sensor_uncertainty_j=full(g.sensor_j),
        bound_below_j=full(g.below_j),
        bound_above_j=full(g.above_j),
        duration_s=full(g.duration_s),
        n_samples=sizes,
        method=opts.method,
        gap_policy=opts.gap_policy,
        coverage_fraction=opts.coverage_fraction,
        nominal_interval_s=full(g.seg_nominal_s, math.nan),
        gap_threshold_s=full(g.seg_threshold_s, math.inf),
        gap_count=gap_count,
        gap_s=full(g.gap_s),
        gap_fill_j=full(g.gap_fill_j),
        gap_energy_bridge_j=full(g.gap_bridge_j),
        ceiling_power_w=full(g.seg_ceiling_w, math.nan),
        gaps=gaps,
        averaging_window_s=opts.averaging_window_s,
    )


def integrate_power(
    t_s: npt.ArrayLike,
    power_w: npt.ArrayLike,
    *,
    method: PowerMethod = "power_avg",
    gap_policy: GapPolicy = "exclude",
    gap_factor: float = 3.0,
    nominal_interval_s: float | None = None,
    max_power_w: float | None = None,
    min_power_w: float = 0.0,
    sensor_rel_error: float = SENSOR_REL_ERROR,
    sensor_abs_error_w: float = SENSOR_ABS_ERROR_W,
    coverage_fraction: float = 1.0,
    averaging_window_s: float = 0.0,
) -> PowerEnergy:
    """Integrate one power trace to energy (trapezoid rule), detecting and handling gaps.

    Args:
        t_s: Sample times, s, strictly increasing.
        power_w: Power readings, W, finite and >= 0; same length as ``t_s`` (at least 1).
        method, gap_policy, gap_factor, nominal_interval_s, max_power_w, min_power_w,
        sensor_rel_error, sensor_abs_error_w, coverage_fraction, averaging_window_s: As in
            `integrate_power_segments`.

    Returns:
        Energy in J with its band, gaps and the parameters used (see `PowerEnergy`).

    Raises:
        InvalidSamples: Empty or mismatched arrays, NaN/inf, negative power or time not
            strictly increasing; the message names the problem and the first bad index.
        InvalidArgument: A parameter out of range.

    Example:
        >>> round(integrate_power([0.0, 5.0, 10.0], [300.0, 300.0, 300.0]).energy_j, 9)
        3000.0
    """
    t = _as_1d(t_s, "t_s")
    p = _as_1d(power_w, "power_w")
    _check_lengths(t, p, "t_s", "power_w")
    if t.size == 0:
        raise InvalidSamples("no samples: a power trace needs at least one sample")
    batch = integrate_power_segments(
        t,
        p,
        np.array([0, t.size], dtype=np.int64),
        method=method,
        gap_policy=gap_policy,
        gap_factor=gap_factor,
        nominal_interval_s=nominal_interval_s,
        max_power_w=max_power_w,
        min_power_w=min_power_w,
        sensor_rel_error=sensor_rel_error,
        sensor_abs_error_w=sensor_abs_error_w,
        coverage_fraction=coverage_fraction,
        averaging_window_s=averaging_window_s,
    )
    return batch.trace(0)


def integrate_power_rows(
    t_s: npt.ArrayLike,
    power_w: npt.ArrayLike,
    *,
    method: PowerMethod = "power_avg",
    gap_policy: GapPolicy = "exclude",
    gap_factor: float = 3.0,
    nominal_interval_s: float | None = None,
    max_power_w: float | None = None,
    min_power_w: float = 0.0,
    sensor_rel_error: float = SENSOR_REL_ERROR,
    sensor_abs_error_w: float = SENSOR_ABS_ERROR_W,
    coverage_fraction: float = 1.0,
    averaging_window_s: float = 0.0,
) -> PowerEnergyBatch:
    """Integrate equal-length traces given as a 2-D array (devices × samples).

    Args:
        t_s: Sample times, s: shape (n,) shared by all rows, or (rows, n).
        power_w: Power, W, shape (rows, n).
        method, gap_policy, gap_factor, nominal_interval_s, max_power_w, min_power_w,
        sensor_rel_error, sensor_abs_error_w, coverage_fraction, averaging_window_s: As in
            `integrate_power_segments`.

    Returns:
        One entry per row (see `PowerEnergyBatch`).
    """
    t, p, offsets = segments_from_rows(t_s, power_w)
    return integrate_power_segments(
        t,
        p,
        offsets,
        method=method,
        gap_policy=gap_policy,
        gap_factor=gap_factor,
        nominal_interval_s=nominal_interval_s,
        max_power_w=max_power_w,
        min_power_w=min_power_w,
        sensor_rel_error=sensor_rel_error,
        sensor_abs_error_w=sensor_abs_error_w,
        coverage_fraction=coverage_fraction,
        averaging_window_s=averaging_window_s,
    )


# --------------------------------------------------------------------------- counters


@dataclass(frozen=True, slots=True)
class _CounterIntervals:
    delta_j: FloatArray  # per slot (length n): counted energy of interval i (0 for non-intervals)
    unknown_j: FloatArray  # per slot: most energy missing before a reset (inf when unbounded)
    is_reset: BoolArray
    is_wrap: BoolArray


def _counter_intervals(
    t: FloatArray,
    c: FloatArray,
    seg_off: IntArray,
    *,
    wrap_j: float | None,
    max_power_w: float | None,
) -> _CounterIntervals:
    """Counter differences per interval slot, with wraps and resets resolved (vectorised)."""
    n = t.size
    message = _first_invalid(
        t, c, seg_off, n, t_name="t_s", v_name="counter_j", v_unit="J", v_max=wrap_j
    )
    if message is not None:
        raise InvalidSamples(message)
    delta = np.zeros(n)
    unknown = np.zeros(n)
    is_reset = np.zeros(n, dtype=np.bool_)
    is_wrap = np.zeros(n, dtype=np.bool_)
    if n < 2:
        return _CounterIntervals(delta, unknown, is_reset, is_wrap)
    dt = np.diff(t)
    dc = np.diff(c)
    valid = np.ones(n - 1, dtype=np.bool_)
    valid[seg_off[1:-1] - 1] = False
    dec = valid & (dc < 0)
    d = np.where(valid, dc, 0.0)
    wrap = np.zeros(n - 1, dtype=np.bool_)
    if wrap_j is not None and dec.any():
        wrapped = dc + wrap_j
        if max_power_w is not None:
            limit = np.full(n - 1, max_power_w)
        else:
            # Without a power limit: a wrap may not imply more than twice the trace's own
            # highest ordinary rate (a heuristic, stated in the module docstring).
            with np.errstate(divide="ignore", invalid="ignore"):
                rate = np.where(valid & ~dec, dc / dt, 0.0)
            seg_peak = np.maximum.reduceat(np.append(rate, 0.0), seg_off[:-1])
            seg_limit = np.where(seg_peak > 0, _WRAP_RATE_FACTOR * seg_peak, np.inf)
            slot_seg = np.searchsorted(seg_off, np.arange(n - 1), side="right") - 1
            limit = seg_limit[slot_seg]
        with np.errstate(invalid="ignore"):
            wrap = dec & (wrapped <= limit * dt)
        d[wrap] = wrapped[wrap]
    reset = dec & ~wrap
    d[reset] = c[1:][reset]
    miss = np.zeros(n - 1)
    if reset.any():
        if max_power_w is None:
            miss[reset] = np.inf
        else:
            miss[reset] = np.maximum(max_power_w * dt[reset] - c[1:][reset], 0.0)
    delta[:-1] = d
    unknown[:-1] = miss
    is_reset[:-1] = reset
    is_wrap[:-1] = wrap
    return _CounterIntervals(delta, unknown, is_reset, is_wrap)


def _counter_params(
    wrap_j: float | None, max_power_w: float | None, counter_rel_error: float
) -> tuple[float | None, float | None, float]:
    if wrap_j is not None:
        wrap_j = _check_param("wrap_j", wrap_j, low=0.0, low_open=True)
    if max_power_w is not None:
        max_power_w = _check_param("max_power_w", max_power_w, low=0.0, low_open=True)
    rel = _check_param("counter_rel_error", counter_rel_error, low=0.0)
    return wrap_j, max_power_w, rel


def integrate_counter(
    t_s: npt.ArrayLike,
    counter_j: npt.ArrayLike,
    *,
    wrap_j: float | None = None,
    max_power_w: float | None = None,
    counter_rel_error: float = COUNTER_REL_ERROR,
) -> CounterEnergy:
    """Energy from a cumulative energy counter, resolving wrap-arounds and resets.

    Args:
        t_s: Reading times, s, strictly increasing.
        counter_j: Counter readings, J since some origin (NVML gives mJ: divide by 1000
            first), finite and >= 0 (and <= wrap_j when given).
        wrap_j: The counter's modulus, J (e.g. RAPL max_energy_range_uj × 1e-6); None for a
            counter that does not wrap (NVML's 64-bit mJ counter).
        max_power_w: Device power limit, W: tells wraps from resets and bounds the energy
            missing before a reset. Without it a reset's missing energy is unbounded (+inf).
        counter_rel_error: Relative error of the counter (default 0.02).

    Returns:
        Counted energy in J with its band, resets and wraps (see `CounterEnergy`).

    Raises:
        InvalidSamples: Empty or mismatched arrays, NaN/inf, negative readings, readings above
            wrap_j, or time not strictly increasing (message names the first bad index).
        InvalidArgument: A parameter out of range.
    """
    wrap_j, max_power_w, rel = _counter_params(wrap_j, max_power_w, counter_rel_error)
    t = _as_1d(t_s, "t_s")
    c = _as_1d(counter_j, "counter_j")
    _check_lengths(t, c, "t_s", "counter_j")
    if t.size == 0:
        raise InvalidSamples("no samples: a counter trace needs at least one reading")
    seg_off = np.array([0, t.size], dtype=np.int64)
    ci = _counter_intervals(t, c, seg_off, wrap_j=wrap_j, max_power_w=max_power_w)
    energy = float(ci.delta_j.sum())
    sensor = rel * energy
    above = float(ci.unknown_j.sum())
    reset_index = np.flatnonzero(ci.is_reset).astype(np.int64)
    return CounterEnergy(
        energy_j=energy,
        energy_low_j=max(energy - sensor, 0.0),
        energy_high_j=energy + sensor + above,
        sensor_uncertainty_j=sensor,
        bound_below_j=0.0,
        bound_above_j=above,
        duration_s=float(t[-1] - t[0]),
        n_samples=int(t.size),
        method="counter",
        reset_count=int(reset_index.size),
        wrap_count=int(np.count_nonzero(ci.is_wrap)),
        reset_index=reset_index,
        reset_unknown_j=ci.unknown_j[reset_index],
        wrap_index=np.flatnonzero(ci.is_wrap).astype(np.int64),
    )


# --------------------------------------------------------------------------- chunks


def _chunk_layout(
    t: FloatArray,
    seg_off: IntArray,
    *,
    chunk_s: float | None,
    origin_s: float,
    chunk_starts: npt.ArrayLike | None,
) -> tuple[_Layout, FloatArray | None]:
    n = t.size
    if (chunk_s is None) == (chunk_starts is None):
        raise InvalidArgument("give exactly one of chunk_s and chunk_starts")
    bins: FloatArray | None = None
    if chunk_s is not None:
        chunk_s = _check_param("chunk_s", chunk_s, low=0.0, low_open=True)
        origin_s = _check_param("origin_s", origin_s, low=-math.inf)
        with np.errstate(invalid="ignore"):
            bins = np.floor((t - origin_s) / chunk_s)
        change = np.flatnonzero(bins[1:] != bins[:-1]) + 1
    else:
        starts = np.asarray(chunk_starts)
        if starts.ndim != 1 or (starts.size and not np.issubdtype(starts.dtype, np.integer)):
            raise InvalidArgument("chunk_starts must be a 1-D array of sample indices")
        change = starts.astype(np.int64)
        if change.size and (
            np.any(np.diff(change) <= 0) or change[0] < 0 or change[-1] >= max(n, 1)
        ):
            raise InvalidArgument(
                f"chunk_starts must be strictly increasing sample indices in [0, {n})"
            )
    grp_off = np.union1d(seg_off, change).astype(np.int64)
    return _Layout(n=n, seg_off=seg_off, grp_off=grp_off), bins


def summarize_chunks(
    t_s: npt.ArrayLike,
    power_w: npt.ArrayLike,
    *,
    chunk_s: float | None = None,
    origin_s: float = 0.0,
    chunk_starts: npt.ArrayLike | None = None,
    offsets: npt.ArrayLike | None = None,
    counter_j: npt.ArrayLike | None = None,
    wrap_j: float | None = None,
    counter_rel_error: float = COUNTER_REL_ERROR,
    method: PowerMethod = "power_avg",
    gap_policy: GapPolicy = "exclude",
    gap_factor: float = 3.0,
    nominal_interval_s: float | None = None,
    max_power_w: float | None = None,
    min_power_w: float = 0.0,
    sensor_rel_error: float = SENSOR_REL_ERROR,
    sensor_abs_error_w: float = SENSOR_ABS_ERROR_W,
    coverage_fraction: float = 1.0,
    averaging_window_s: float = 0.0,
) -> ChunkSummaries:
    """Summarise one trace, or many in segmented form, into chunks that tile it.

    Chunks follow the left-sample rule (module docstring): interval i belongs to the chunk of
    sample i, so chunk energies add up to the trace's energy exactly (to float rounding).
    With ``counter_j`` the energy figures come from the counter (method ``counter``) and the
    power readings give min/max; otherwise from the power trace (method ``method``).

    Args:
        t_s: Sample times, s (concatenated traces when ``offsets`` is given).
        power_w: Power readings, W.
        chunk_s: Chunk length, s: sample i goes to bin floor((t_i − origin_s) / chunk_s); a
            chunk starts where the bin changes (bins without samples produce no chunk).
        origin_s: Origin of the bins, s.
        chunk_starts: Instead of chunk_s: indices of the first sample of each chunk (global
            indices into the concatenated arrays; trace starts are always chunk starts).
        offsets: Segment offsets when several traces are concatenated (default: one trace).
        counter_j: Counter readings at the same times, J (optional).
        wrap_j: Counter modulus, J (see `integrate_counter`).
        counter_rel_error: Relative counter error (default 0.02).
        method, gap_policy, gap_factor, nominal_interval_s, max_power_w, min_power_w,
        sensor_rel_error, sensor_abs_error_w, coverage_fraction, averaging_window_s: As in
            `integrate_power_segments` (for power-derived chunks; gaps are reported for
            counter-derived chunks too, but cost no energy there).

    Returns:
        Struct of arrays, one entry per chunk (see `ChunkSummaries`).

    Raises:
        InvalidSamples: Malformed samples (message names the first bad index).
        InvalidArgument: Bad chunking or parameters.
    """
    opts = _power_options(
        method=method,
        gap_policy=gap_policy,
        gap_factor=gap_factor,
        nominal_interval_s=nominal_interval_s,
        max_power_w=max_power_w,
        min_power_w=min_power_w,
        sensor_rel_error=sensor_rel_error,
        sensor_abs_error_w=sensor_abs_error_w,
        coverage_fraction=coverage_fraction,
        averaging_window_s=averaging_window_s,
    )
    t = _as_1d(t_s, "t_s")
    p = _as_1d(power_w, "power_w")
    _check_lengths(t, p, "t_s", "power_w")
    off = _offsets(offsets if offsets is not None else [0, t.size], t.size)
    seg_off = _nonempty(off)
    lay, bins = _chunk_layout(
        t, seg_off, chunk_s=chunk_s, origin_s=origin_s, chunk_starts=chunk_starts
    )
    g = _power_groups(t, p, lay, opts, want_stats=True)
    assert g.pmin is not None  # want_stats=True
    assert g.pmax is not None
    first = lay.grp_off[:-1]
    ng = first.size
    grp_seg = lay.grp_seg
    # Left-sample rule: a chunk's last interval reaches the next chunk's first sample, so
    # that sample's power bounds it too.
    nxt = lay.grp_off[1:]
    inside = nxt < lay.seg_off[1:][grp_seg]
    pmin = g.pmin.copy()
    pmax = g.pmax.copy()
    pmin[inside] = np.minimum(pmin[inside], p[nxt[inside]])
    pmax[inside] = np.maximum(pmax[inside], p[nxt[inside]])
    n_in = np.diff(lay.grp_off)
    reset_count = np.zeros(ng, np.int64)
    wrap_count = np.zeros(ng, np.int64)

    if counter_j is None:
        energy, sensor, below, above = g.energy_j, g.sensor_j, g.below_j, g.above_j
        counted = g.counted_s
        method_out: str = opts.method
    else:
        wrap_j, cmax, rel = _counter_params(wrap_j, max_power_w, counter_rel_error)
        c = _as_1d(counter_j, "counter_j")
        _check_lengths(t, c, "t_s", "counter_j")
        ci = _counter_intervals(t, c, seg_off, wrap_j=wrap_j, max_power_w=cmax)
        energy = np.add.reduceat(ci.delta_j, first) if ng else np.zeros(0)
        sensor = rel * energy
        below = np.zeros(ng)
        above = np.add.reduceat(ci.unknown_j, first) if ng else np.zeros(0)
        reset_count = np.add.reduceat(ci.is_reset.astype(np.int64), first) if ng else reset_count
        wrap_count = np.add.reduceat(ci.is_wrap.astype(np.int64), first) if ng else wrap_count
        counted = g.duration_s
        method_out = "counter"

    sample_mean = np.add.reduceat(p, first) / n_in if ng else np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counted > 0, energy / np.where(counted > 0, counted, 1.0), sample_mean)
    if counter_j is None and opts.averaging_window_s > 0.0:
        # The lag-corrected mean may pass the extremes of the smoothed readings (the true
        # power did); min/max widen to it so that min <= mean <= max still holds.
        np.minimum(pmin, mean, out=pmin)
        np.maximum(pmax, mean, out=pmax)
    if bins is not None:
        chunk_index = bins[first].astype(np.int64) if ng else np.zeros(0, np.int64)
    else:
        seg_first_grp = np.searchsorted(lay.grp_off, seg_off[:-1])
        chunk_index = (np.arange(ng) - seg_first_grp[grp_seg]).astype(np.int64)
    low, high = _band(energy, sensor, below, above)
    seg_number = np.flatnonzero(np.diff(off) > 0)  # non-empty trace k -> its caller's number
    return ChunkSummaries(
        segment=seg_number[grp_seg].astype(np.int64),
        chunk_index=chunk_index,
        first_index=first.astype(np.int64),
        t0_s=t[first],
        t1_s=t[lay.grp_last] if ng else np.zeros(0),
        n=n_in.astype(np.int64),
        energy_j=energy,
        energy_low_j=low,
        energy_high_j=high,
        sensor_uncertainty_j=sensor,
        bound_below_j=below,
        bound_above_j=above,
        min_power_w=pmin,
        mean_power_w=mean,
        max_power_w=pmax,
        gap_s=g.gap_s,
        gap_count=g.gap_count,
        reset_count=reset_count,
        wrap_count=wrap_count,
        method=np.full(ng, method_out),
    )


# --------------------------------------------------------------------------- windows


def _cumulative(values: FloatArray) -> FloatArray:
    out = np.zeros(values.size + 1)
    np.cumsum(values, out=out[1:])
    return out


def power_energy_curve(
    t_s: npt.ArrayLike,
    power_w: npt.ArrayLike,
    *,
    method: PowerMethod = "power_avg",
    gap_policy: GapPolicy = "exclude",
    gap_factor: float = 3.0,
    nominal_interval_s: float | None = None,
    max_power_w: float | None = None,
    min_power_w: float = 0.0,
    sensor_rel_error: float = SENSOR_REL_ERROR,
    sensor_abs_error_w: float = SENSOR_ABS_ERROR_W,
    coverage_fraction: float = 1.0,
    averaging_window_s: float = 0.0,
) -> EnergyCurve:
    """Cumulative energy of a power trace, for `window_energy`; same model as `integrate_power`.

    Args:
        t_s: Sample times, s, strictly increasing.
        power_w: Power readings, W.
        method, gap_policy, gap_factor, nominal_interval_s, max_power_w, min_power_w,
        sensor_rel_error, sensor_abs_error_w, coverage_fraction, averaging_window_s: As in
        `integrate_power`.

    Returns:
        The cumulative curve; its last value is the trace's energy in J.
    """
    opts = _power_options(
        method=method,
        gap_policy=gap_policy,
        gap_factor=gap_factor,
        nominal_interval_s=nominal_interval_s,
        max_power_w=max_power_w,
        min_power_w=min_power_w,
        sensor_rel_error=sensor_rel_error,
        sensor_abs_error_w=sensor_abs_error_w,
        coverage_fraction=coverage_fraction,
        averaging_window_s=averaging_window_s,
    )
    t = _as_1d(t_s, "t_s")
    p = _as_1d(power_w, "power_w")
    _check_lengths(t, p, "t_s", "power_w")
    if t.size == 0:
        raise InvalidSamples("no samples: a power trace needs at least one sample")
    seg_off = np.array([0, t.size], dtype=np.int64)
    message = _power_problem(t, p, seg_off, t.size)
    if message is not None:
        raise InvalidSamples(message)
    _, thr = _thresholds(t, seg_off, opts)
    dt = np.diff(t)
    gap = dt > thr[0]
    a = p[:-1].copy()
    b = p[1:].copy()
    if opts.gap_policy == "exclude":
        a[gap] = 0.0
        b[gap] = 0.0
    elif opts.gap_policy == "hold":
        b[gap] = a[gap]
    e = 0.5 * dt * (a + b)
    rel, abs_w = opts.sensor_rel_error, opts.sensor_abs_error_w
    if rel > 0:
        q = np.maximum(p, abs_w / rel)
        sensor = 0.5 * rel * dt * (q[:-1] + q[1:])
    else:
        sensor = abs_w * dt
    sensor[gap] = 0.0
    floor_w = opts.min_power_w
    if opts.max_power_w is not None:
        ceiling = opts.max_power_w
    elif gap.any() or opts.coverage_fraction < 1.0 or opts.averaging_window_s > 0.0:
        ceiling = float(p.max())
    else:
        ceiling = math.nan
    unseen = 1.0 - opts.coverage_fraction
    if unseen > 0:
        below = unseen * np.maximum(e - floor_w * dt, 0.0)
        above = unseen * np.maximum(ceiling * dt - e, 0.0)
    else:
        below = np.zeros_like(e)
        above = np.zeros_like(e)
    below[gap] = np.maximum(e[gap] - floor_w * dt[gap], 0.0)
    above[gap] = np.maximum(ceiling * dt[gap] - e[gap], 0.0)
    w = opts.averaging_window_s
    if w > 0.0:
        # Edges next to a gap are not lag-corrected: (ceiling − floor) × w/2 each (two).
        gap_edges = w * max(ceiling - floor_w, 0.0)
        below[gap] += gap_edges
        above[gap] += gap_edges
    none = np.zeros(0)
    return EnergyCurve(
        t_s=t,
        energy_j=_cumulative(e),
        rate_start_w=a,
        rate_end_w=b,
        sensor_j=_cumulative(sensor),
        bound_below_j=_cumulative(below),
        bound_above_j=_cumulative(above),
        unbounded_start_s=none,
        unbounded_end_s=none,
        method=opts.method,
        averaging_window_s=w,
        floor_power_w=floor_w,
        ceiling_power_w=ceiling,
    )


def counter_energy_curve(
    t_s: npt.ArrayLike,
    counter_j: npt.ArrayLike,
    *,
    wrap_j: float | None = None,
    max_power_w: float | None = None,
    counter_rel_error: float = COUNTER_REL_ERROR,
) -> EnergyCurve:
    """Cumulative energy from a counter, for `window_energy`; same model as `integrate_counter`.

    Between readings the energy is shared out at a constant rate (the counter says nothing
    finer).

    Args:
        t_s: Reading times, s, strictly increasing.
        counter_j: Counter readings, J.
        wrap_j, max_power_w, counter_rel_error: As in `integrate_counter`.

    Returns:
        The cumulative curve; its last value is the counted energy in J.
    """
    wrap_j, max_power_w, rel = _counter_params(wrap_j, max_power_w, counter_rel_error)
    t = _as_1d(t_s, "t_s")
    c = _as_1d(counter_j, "counter_j")
    _check_lengths(t, c, "t_s", "counter_j")
    if t.size == 0:
        raise InvalidSamples("no samples: a counter trace needs at least one reading")
    seg_off = np.array([0, t.size], dtype=np.int64)
    ci = _counter_intervals(t, c, seg_off, wrap_j=wrap_j, max_power_w=max_power_w)
    delta = ci.delta_j[:-1]
    unknown = ci.unknown_j[:-1]
    rate = delta / np.diff(t)
    unbounded = np.isinf(unknown)
    return EnergyCurve(
        t_s=t,
        energy_j=_cumulative(delta),
        rate_start_w=rate,
        rate_end_w=rate.copy(),
        sensor_j=_cumulative(rel * delta),
        bound_below_j=np.zeros(t.size),
        bound_above_j=_cumulative(np.where(unbounded, 0.0, unknown)),
        unbounded_start_s=t[:-1][unbounded],
        unbounded_end_s=t[1:][unbounded],
        method="counter",
    )


def _curve_at(curve: EnergyCurve, x: FloatArray) -> FloatArray:
    """Cumulative energy at times x: exact integral of the curve's piecewise-linear power."""
    t = curve.t_s
    if t.size < 2:
        return np.zeros_like(x)
    xc = np.clip(x, t[0], t[-1])
    i = np.clip(np.searchsorted(t, xc, side="right") - 1, 0, t.size - 2)
    tau = xc - t[i]
    dt = t[i + 1] - t[i]
    a = curve.rate_start_w[i]
    b = curve.rate_end_w[i]
    value = curve.energy_j[i] + tau * (a + (b - a) * tau / (2.0 * dt))
    return np.where(xc >= t[-1], curve.energy_j[-1], value)


def _rate_at(curve: EnergyCurve, x: FloatArray) -> FloatArray:
    """Modelled power at times x (clipped to the trace), W: the curve's piecewise-linear rate."""
    t = curve.t_s
    if t.size < 2:
        return np.zeros_like(x)
    xc = np.clip(x, t[0], t[-1])
    i = np.clip(np.searchsorted(t, xc, side="right") - 1, 0, t.size - 2)
    frac = (xc - t[i]) / (t[i + 1] - t[i])
    a = curve.rate_start_w[i]
    return a + (curve.rate_end_w[i] - a) * frac


def window_energy(curve: EnergyCurve, start_s: npt.ArrayLike, end_s: npt.ArrayLike) -> WindowEnergy:
    """Energy of windows [start_s, end_s), vectorised over windows.

    Every window's energy is E(end) − E(start) on the same cumulative curve, so adjacent
    windows add up to the whole exactly (to float rounding). Parts of a window outside the
    trace contribute nothing (``covered_s`` says how much of it the trace covers). For a curve
    of averaged readings (``averaging_window_s`` w > 0) each window adds the lag correction
    (w/2)(r(end) − r(start)), which telescopes, so adjacent windows still add up to the whole,
    and its band gains the averaging residual of both edges (module docstring).

    Args:
        curve: From `power_energy_curve` or `counter_energy_curve`.
        start_s: Window starts, s (scalar or array).
        end_s: Window ends, s, >= start_s (broadcast against start_s).

    Returns:
        One entry per window (see `WindowEnergy`).

    Raises:
        InvalidArgument: A window with end before start, or non-finite edges.
    """
    a, b = np.broadcast_arrays(
        np.atleast_1d(np.asarray(start_s, dtype=np.float64)),
        np.atleast_1d(np.asarray(end_s, dtype=np.float64)),
    )
    if a.ndim != 1:
        raise InvalidArgument(f"windows must be 1-D, got shape {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InvalidArgument("window edges must be finite times")
    if np.any(b < a):
        i = int(np.flatnonzero(b < a)[0])
        raise InvalidArgument(f"window {i} ends ({b[i]!r} s) before it starts ({a[i]!r} s)")
    t = curve.t_s
    energy = _curve_at(curve, b) - _curve_at(curve, a)
    sensor = np.interp(b, t, curve.sensor_j) - np.interp(a, t, curve.sensor_j)
    below = np.interp(b, t, curve.bound_below_j) - np.interp(a, t, curve.bound_below_j)
    above = np.interp(b, t, curve.bound_above_j) - np.interp(a, t, curve.bound_above_j)
    if curve.unbounded_start_s.size:
        hits = np.searchsorted(curve.unbounded_start_s, b, side="left") - np.searchsorted(
            curve.unbounded_end_s, a, side="right"
        )
        above = np.where(hits > 0, np.inf, above)
    covered = np.clip(b, t[0], t[-1]) - np.clip(a, t[0], t[-1])
    w = curve.averaging_window_s
    if w > 0.0:
        spans = covered > 0
        r_a, r_b = _rate_at(curve, a), _rate_at(curve, b)
        energy = np.where(spans, np.maximum(energy + 0.5 * w * (r_b - r_a), 0.0), energy)
        floor_w, ceil_w = curve.floor_power_w, curve.ceiling_power_w
        edges = _edge_residual(r_a, w, floor_w, ceil_w) + _edge_residual(r_b, w, floor_w, ceil_w)
        residual = np.where(spans, edges, 0.0)
        below = below + residual
        above = above + residual
    low, high = _band(energy, sensor, below, above)
    return WindowEnergy(
        start_s=a.copy(),
        end_s=b.copy(),
        covered_s=covered,
        energy_j=energy,
        energy_low_j=low,
        energy_high_j=high,
        sensor_uncertainty_j=sensor,
        bound_below_j=below,
        bound_above_j=above,
    )


# --------------------------------------------------------------------------- aggregation


def aggregate_energy(
    energy_j: npt.ArrayLike,
    sensor_uncertainty_j: npt.ArrayLike,
    bound_below_j: npt.ArrayLike,
    bound_above_j: npt.ArrayLike,
    *,
    device: npt.ArrayLike,
    group: npt.ArrayLike | None = None,
    combine: Combine = "independent",
) -> EnergyTotals:
    """Sum energies per group (run, host, phase ...) across devices, combining uncertainties.

    Rows of the same (group, device) add linearly, sensor error included: one device's sensor
    error is systematic over time. Across devices, sensor errors combine root-sum-square
    (``"independent"``, default) or linearly (``"linear"``, conservative). Bounds always add
    linearly (they are worst cases, and aliasing is correlated across the ranks of one job).

    Args:
        energy_j: Energy per row (e.g. per chunk), J.
        sensor_uncertainty_j: Sensor error per row, J.
        bound_below_j: One-sided bound below per row, J.
        bound_above_j: One-sided bound above per row, J (+inf allowed).
        device: Device key per row (e.g. GPU UUID, or "host:index").
        group: Group key per row (default: one group for all rows).
        combine: ``"independent"`` or ``"linear"`` for sensor errors across devices.

    Returns:
        Totals per distinct group key (see `EnergyTotals`).

    Raises:
        InvalidArgument: Mismatched lengths, negative or NaN values, unknown combine.
    """
    if combine not in COMBINES:
        raise InvalidArgument(f"combine must be one of {COMBINES}, got {combine!r}")
    cols = [
        np.atleast_1d(np.asarray(x, dtype=np.float64))
        for x in (energy_j, sensor_uncertainty_j, bound_below_j, bound_above_j)
    ]
    dev = np.atleast_1d(np.asarray(device))
    rows = dev.size
    grp = np.zeros(rows, dtype=np.int64) if group is None else np.atleast_1d(np.asarray(group))
    names = ("energy_j", "sensor_uncertainty_j", "bound_below_j", "bound_above_j")
    for name, col in zip(names, cols, strict=True):
        if col.shape != (rows,):
            raise InvalidArgument(f"{name} has shape {col.shape}, device has ({rows},)")
        if np.any(np.isnan(col)) or np.any(col < 0):
            raise InvalidArgument(f"{name} must be >= 0 and not NaN")
    if not np.all(np.isfinite(cols[0])):
        raise InvalidArgument("energy_j must be finite")
    if grp.shape != (rows,):
        raise InvalidArgument(f"group has shape {grp.shape}, device has ({rows},)")
    energy, sensor, below, above = cols
    keys, g_inv = np.unique(grp, return_inverse=True)
    _, d_inv = np.unique(dev, return_inverse=True)
    n_dev = int(d_inv.max()) + 1 if rows else 0
    pair = g_inv.astype(np.int64) * n_dev + d_inv
    pairs, p_inv = np.unique(pair, return_inverse=True)
    pair_grp = pairs // max(n_dev, 1)
    ng = keys.size
    npair = pairs.size

    def per_pair(values: FloatArray) -> FloatArray:
        return _sum_by(p_inv, values, npair)

    def per_group(values: FloatArray) -> FloatArray:
        return _sum_by(pair_grp, values, ng)

    pair_sensor = per_pair(sensor)
    if combine == "independent":
        total_sensor = np.sqrt(per_group(pair_sensor * pair_sensor))
    else:
        total_sensor = per_group(pair_sensor)
    total_energy = _sum_by(g_inv, energy, ng)
    total_below = _sum_by(g_inv, below, ng)
    total_above = _sum_by(g_inv, above, ng)
    low, high = _band(total_energy, total_sensor, total_below, total_above)
    return EnergyTotals(
        key=keys,
        energy_j=total_energy,
        energy_low_j=low,
        energy_high_j=high,
        sensor_uncertainty_j=total_sensor,
        bound_below_j=total_below,
        bound_above_j=total_above,
        n_devices=np.bincount(pair_grp, minlength=ng).astype(np.int64),
        n_rows=np.bincount(g_inv, minlength=ng).astype(np.int64),
        combine=combine,
    )
