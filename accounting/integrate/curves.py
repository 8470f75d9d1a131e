"""Cumulative energy curves and exact windows cut from them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import InvalidSamples
from ._averaged import _edge_residual
from ._validate import FloatArray, IntArray, InvalidArgument, _one_trace, _power_problem
from .counter import _one_counter
from .model import (
    _DEFAULT_MODEL,
    COUNTER_REL_ERROR,
    Method,
    PowerModel,
    _band,
)
from .power import _thresholds, _unseen_range


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


def _cumulative(values: FloatArray) -> FloatArray:
    out = np.zeros(values.size + 1)
    np.cumsum(values, out=out[1:])
    return out


def power_energy_curve(
    t_s: npt.ArrayLike, power_w: npt.ArrayLike, *, model: PowerModel = _DEFAULT_MODEL
) -> EnergyCurve:
    """Cumulative energy of a power trace, for `window_energy`; same model as `integrate_power`.

    Args:
        t_s: Sample times, s, strictly increasing.
        power_w: Power readings, W.
        model: How the readings become energy (`PowerModel`); default all defaults.

    Returns:
        The cumulative curve; its last value is the trace's energy in J.
    """
    t, p = _one_trace(t_s, power_w, "power_w", empty="a power trace needs at least one sample")
    seg_off = np.array([0, t.size], dtype=np.int64)
    message = _power_problem(t, p, seg_off, t.size)
    if message is not None:
        raise InvalidSamples(message)
    _, thr = _thresholds(t, seg_off, model)
    dt = np.diff(t)
    gap = dt > thr[0]
    a = p[:-1].copy()
    b = p[1:].copy()
    if model.gap_policy == "exclude":
        a[gap] = 0.0
        b[gap] = 0.0
    elif model.gap_policy == "hold":
        b[gap] = a[gap]
    e = 0.5 * dt * (a + b)
    rel, abs_w = model.sensor_rel_error, model.sensor_abs_error_w
    if rel > 0:
        q = np.maximum(p, abs_w / rel)
        sensor = 0.5 * rel * dt * (q[:-1] + q[1:])
    else:
        sensor = abs_w * dt
    sensor[gap] = 0.0
    floor_w = model.min_power_w
    if model.max_power_w is not None:
        ceiling = model.max_power_w
    elif gap.any() or model.coverage_fraction < 1.0 or model.averaging_window_s > 0.0:
        ceiling = float(p.max())
    else:
        ceiling = math.nan
    unseen = 1.0 - model.coverage_fraction
    if unseen > 0 and math.isfinite(model.unseen_margin):
        # The trace is one group: its readings' range bounds the unseen power, as in
        # `integrate_power` (package docstring, "Unseen power").
        low_w, high_w = _unseen_range(p.min(keepdims=True), p.max(keepdims=True), model)
        below = unseen * np.maximum(e - low_w[0] * dt, 0.0)
        above = unseen * np.maximum(high_w[0] * dt - e, 0.0)
        # and a level rare enough to fall between every reading (3/n of the time)
        rare = unseen * min(model.rare_level_readings / p.size, 1.0) * dt
        below += rare * max(low_w[0] - floor_w, 0.0)
        if math.isfinite(ceiling):
            above += rare * max(ceiling - high_w[0], 0.0)
    elif unseen > 0:
        below = unseen * np.maximum(e - floor_w * dt, 0.0)
        above = unseen * np.maximum(ceiling * dt - e, 0.0)
    else:
        below = np.zeros_like(e)
        above = np.zeros_like(e)
    below[gap] = np.maximum(e[gap] - floor_w * dt[gap], 0.0)
    above[gap] = np.maximum(ceiling * dt[gap] - e[gap], 0.0)
    w = model.averaging_window_s
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
        method=model.method,
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
    t, ci, rel = _one_counter(t_s, counter_j, wrap_j, max_power_w, counter_rel_error)
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


def _locate(t: FloatArray, x: FloatArray) -> tuple[FloatArray, IntArray]:
    """Times x clipped to the trace, and the interval each lies in (t has two samples or more)."""
    xc = np.clip(x, t[0], t[-1])
    return xc, np.clip(np.searchsorted(t, xc, side="right") - 1, 0, t.size - 2)


def _curve_at(curve: EnergyCurve, x: FloatArray) -> FloatArray:
    """Cumulative energy at times x: exact integral of the curve's piecewise-linear power."""
    t = curve.t_s
    if t.size < 2:
        return np.zeros_like(x)
    xc, i = _locate(t, x)
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
    xc, i = _locate(t, x)
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
    and its band gains the averaging residual of both edges (package docstring). Windows keep
    this rule rather than the chunks' block rule (whole windows anchored at each window's own
    start), which would break that additivity: phases cut anywhere must add up to the run.

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
