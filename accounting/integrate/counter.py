"""Cumulative energy counters to joules: wraps told from resets, resets bounded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ..errors import InvalidSamples
from ._validate import BoolArray, FloatArray, IntArray, _check_param, _first_invalid, _one_trace
from .model import COUNTER_REL_ERROR, Method

_WRAP_RATE_FACTOR: Final = 2.0
# An increase above max_power_w x (dt + this) + _JUMP_SLACK_J is no energy (a counter that read
# too little for a tick and recovered): the second allows for a counter that updates late
# (NVML: every 20-100 ms) and for power above the limit for a moment.
_JUMP_ALLOWANCE_S: Final = 1.0
_JUMP_SLACK_J: Final = 1.0


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
        reset_count: Number of resets: decreases that are not wraps, and increases above what
            the device can draw (package docstring, "Counters").
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
            # highest ordinary rate (a heuristic, stated in the package docstring).
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
    if max_power_w is not None:
        # An increase no device draws in the time: the reading before it was too low (a counter
        # that read 0 for a tick and recovered). Taken like a reset: 0 counted, the rest unknown.
        jump = valid & (dc > max_power_w * (dt + _JUMP_ALLOWANCE_S) + _JUMP_SLACK_J)
        if jump.any():
            d[jump] = 0.0
            miss[jump] = max_power_w * dt[jump]
            reset = reset | jump
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


def _one_counter(
    t_s: npt.ArrayLike,
    counter_j: npt.ArrayLike,
    wrap_j: float | None,
    max_power_w: float | None,
    counter_rel_error: float,
) -> tuple[FloatArray, _CounterIntervals, float]:
    """One counter trace, checked and resolved: its times, its intervals, its relative error."""
    wrap_j, max_power_w, rel = _counter_params(wrap_j, max_power_w, counter_rel_error)
    t, c = _one_trace(
        t_s, counter_j, "counter_j", empty="a counter trace needs at least one reading"
    )
    seg_off = np.array([0, t.size], dtype=np.int64)
    return t, _counter_intervals(t, c, seg_off, wrap_j=wrap_j, max_power_w=max_power_w), rel


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
        max_power_w: Device power limit, W: tells wraps from resets, bounds the energy
            missing before a reset, and marks an increase above what the device can draw as a
            reset (a counter that read 0 for a tick and recovered; package docstring). Without
            it a reset's missing energy is unbounded (+inf) and no increase is judged.
        counter_rel_error: Relative error of the counter (default 0.02).

    Returns:
        Counted energy in J with its band, resets and wraps (see `CounterEnergy`).

    Raises:
        InvalidSamples: Empty or mismatched arrays, NaN/inf, negative readings, readings above
            wrap_j, or time not strictly increasing (message names the first bad index).
        InvalidArgument: A parameter out of range.
    """
    t, ci, rel = _one_counter(t_s, counter_j, wrap_j, max_power_w, counter_rel_error)
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
