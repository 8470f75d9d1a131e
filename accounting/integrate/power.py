"""Power traces to joules: the results, gap thresholds, per-group energies and bands."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ..errors import InvalidSamples
from ._averaged import _block_rule, _edge_residual
from ._kernel import _power_kernel
from ._validate import FloatArray, IntArray, _as_1d, _check_lengths, _one_trace
from .model import (
    _DEFAULT_MODEL,
    GapPolicy,
    PowerMethod,
    PowerModel,
    _band,
)
from .segments import _Layout, _nonempty, _offsets, _sum_by, segments_from_rows

_MEDIAN_SAMPLE: Final = 1 << 16
_MEDIAN_RUNS: Final = 64


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
    t: FloatArray, seg_off: IntArray, model: PowerModel
) -> tuple[FloatArray, FloatArray]:
    nseg = seg_off.size - 1
    if model.nominal_interval_s is not None:
        nominal = np.full(nseg, model.nominal_interval_s)
        nominal[np.diff(seg_off) < 2] = np.nan
    else:
        nominal = _nominal_intervals(t, seg_off)
    with np.errstate(invalid="ignore"):
        thr = nominal * model.gap_factor
    thr[~(thr > 0)] = np.inf  # traces without intervals: nothing can be a gap
    return nominal, thr


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
    t: FloatArray, p: FloatArray, lay: _Layout, model: PowerModel, *, want_stats: bool
) -> _GroupEnergy:
    """Run the kernel and turn its sums into per-group energies, gaps and band terms."""
    nominal, thr = _thresholds(t, lay.seg_off, model)
    partial = model.coverage_fraction < 1.0
    observed = partial and math.isfinite(model.unseen_margin)  # the unseen bound needs min/max
    sums = _power_kernel(t, p, lay, thr, model, want_stats=want_stats or observed)
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
    fill = {"exclude": np.zeros_like(gdt), "bridge": bridge, "hold": gdt * p[gi]}[model.gap_policy]
    gap_s = _sum_by(g_grp, gdt, ng)
    gap_count = np.bincount(g_grp, minlength=ng).astype(np.int64)
    gap_fill = _sum_by(g_grp, fill, ng)
    gap_bridge = _sum_by(g_grp, bridge, ng)

    ceiling = np.full(nseg, np.nan)
    if model.max_power_w is not None:
        ceiling[:] = model.max_power_w
    elif sums.pmax is not None and ng:  # tracked whenever a gap or coverage needs it
        seg_first_grp = np.searchsorted(lay.grp_off, lay.seg_off[:-1])
        ceiling = np.maximum.reduceat(sums.pmax, seg_first_grp)
        ceiling[np.isinf(ceiling)] = np.nan  # traces whose peak nothing needed

    floor_w = model.min_power_w
    gap_lo = np.maximum(fill - floor_w * gdt, 0.0)
    gap_hi = np.maximum(ceiling[g_seg] * gdt - fill, 0.0)
    below = _sum_by(g_grp, gap_lo, ng)
    above = _sum_by(g_grp, gap_hi, ng)

    e_meas = 0.5 * sums.e2
    measured_s = duration - gap_s
    if observed:
        # Unseen power within the range of the readings each group's intervals touch, widened
        # by the margin (package docstring, "Unseen power"); every reading lies in that range,
        # so each interval's share is >= 0 and the group's sums can be used directly.
        assert sums.pmin is not None  # asked for above
        assert sums.pmax is not None
        touched = lay.grp_last  # the next group's first sample bounds the last interval too
        low_w, high_w = _unseen_range(
            np.minimum(sums.pmin, p[touched]), np.maximum(sums.pmax, p[touched]), model
        )
        unseen = 1.0 - model.coverage_fraction
        below += unseen * np.maximum(e_meas - low_w * measured_s, 0.0)
        above += unseen * np.maximum(high_w * measured_s - e_meas, 0.0)
        # A level rare enough to fall between every reading: up to 3/n of the time, anywhere
        # out to the floor or the ceiling (package docstring, "Unseen power").
        readings = (touched - first + 1).astype(np.float64)
        rare = unseen * np.minimum(model.rare_level_readings / readings, 1.0) * measured_s
        g_ceil = ceiling[grp_seg]
        below += rare * np.maximum(low_w - floor_w, 0.0)
        above += rare * np.where(np.isnan(g_ceil), 0.0, np.maximum(g_ceil - high_w, 0.0))
    elif partial:
        unseen = 1.0 - model.coverage_fraction
        g_ceil = ceiling[grp_seg]
        below += unseen * np.maximum(e_meas - floor_w * measured_s + 0.5 * sums.xf2, 0.0)
        above += unseen * np.maximum(g_ceil * measured_s - e_meas + 0.5 * sums.xc2, 0.0)

    energy = e_meas + gap_fill
    w = model.averaging_window_s
    if w > 0.0 and ng:
        last = lay.grp_last
        spans = duration > 0
        g_ceil = ceiling[grp_seg]
        swing = np.maximum(g_ceil - floor_w, 0.0)
        # A group with a gap: lag correction, ∫_a^b r dt + (w/2)(r(b) − r(a)), exact when P is
        # linear over [a − w, a] and [b − w, b]; its edges' residual, and an edge that meets
        # a gap is not corrected, so it may be off by the whole lag, (ceiling − floor) × w/2.
        shift = np.where(spans, 0.5 * w * (p[last] - p[first]), 0.0)
        energy = np.maximum(energy + shift, 0.0)
        edges = _edge_residual(p[first], w, floor_w, g_ceil) + _edge_residual(
            p[last], w, floor_w, g_ceil
        )
        residual = np.where(spans, edges, 0.0) + swing * gap_count * w
        res_below, res_above = residual, residual.copy()
        # Without a gap: whole windows from the group's start, w·r(a + k·w) each, and the
        # remainder lag-corrected (package docstring, "Averaged readings").
        whole = np.flatnonzero(spans & (gap_count == 0))
        energy[whole], res_below[whole], res_above[whole] = _block_rule(
            t, p, lay.grp_off, last, whole, w, floor_w, swing[whole]
        )
        below += res_below
        above += res_above

    counted = measured_s if model.gap_policy == "exclude" else duration
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


def _unseen_range(
    low_w: FloatArray, high_w: FloatArray, model: PowerModel
) -> tuple[FloatArray, FloatArray]:
    """Where the unseen power of a group whose readings span [low_w, high_w] may lie, W.

    The observed range widened by ``unseen_margin`` × its width on each side, clipped to
    [min_power_w, max_power_w] but never narrower than what was observed (package docstring,
    "Unseen power"). Only for a finite margin.
    """
    margin = model.unseen_margin * (high_w - low_w)
    floor = np.minimum(low_w, np.maximum(low_w - margin, model.min_power_w))
    top = high_w + margin
    if model.max_power_w is not None:
        top = np.minimum(top, model.max_power_w)
    return floor, np.maximum(high_w, top)


def integrate_power_segments(
    t_s: npt.ArrayLike,
    power_w: npt.ArrayLike,
    offsets: npt.ArrayLike,
    *,
    model: PowerModel = _DEFAULT_MODEL,
) -> PowerEnergyBatch:
    """Integrate many power traces given in segmented form (trapezoid rule, gaps handled).

    Each trace is validated and integrated on its own: its own nominal interval, gaps and
    peak; the interval between the last sample of one trace and the first of the next is not
    an interval. Empty traces give 0 J.

    Args:
        t_s: Concatenated sample times, s (strictly increasing within each trace).
        power_w: Concatenated power readings, W (finite, >= 0).
        offsets: Trace k is ``[offsets[k], offsets[k+1])``; length traces + 1, from 0 to n.
        model: How the readings become energy (`PowerModel`: gaps, bounds, sensor error,
            coverage, averaging window); default all defaults.

    Returns:
        One entry per trace (see `PowerEnergyBatch`).

    Raises:
        InvalidSamples: Mismatched lengths, NaN/inf, negative power or time not increasing;
            the message names the problem and the first bad index (and trace).
        InvalidArgument: Malformed offsets.
    """
    t = _as_1d(t_s, "t_s")
    p = _as_1d(power_w, "power_w")
    _check_lengths(t, p, "t_s", "power_w")
    off = _offsets(offsets, t.size)
    seg_off = _nonempty(off)
    lay = _Layout(n=t.size, seg_off=seg_off, grp_off=seg_off)
    g = _power_groups(t, p, lay, model, want_stats=False)
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
        method=model.method,
        gap_policy=model.gap_policy,
        coverage_fraction=model.coverage_fraction,
        nominal_interval_s=full(g.seg_nominal_s, math.nan),
        gap_threshold_s=full(g.seg_threshold_s, math.inf),
        gap_count=gap_count,
        gap_s=full(g.gap_s),
        gap_fill_j=full(g.gap_fill_j),
        gap_energy_bridge_j=full(g.gap_bridge_j),
        ceiling_power_w=full(g.seg_ceiling_w, math.nan),
        gaps=gaps,
        averaging_window_s=model.averaging_window_s,
    )


def integrate_power(
    t_s: npt.ArrayLike, power_w: npt.ArrayLike, *, model: PowerModel = _DEFAULT_MODEL
) -> PowerEnergy:
    """Integrate one power trace to energy (trapezoid rule), detecting and handling gaps.

    Args:
        t_s: Sample times, s, strictly increasing.
        power_w: Power readings, W, finite and >= 0; same length as ``t_s`` (at least 1).
        model: How the readings become energy (`PowerModel`); default all defaults.

    Returns:
        Energy in J with its band, gaps and the parameters used (see `PowerEnergy`).

    Raises:
        InvalidSamples: Empty or mismatched arrays, NaN/inf, negative power or time not
            strictly increasing; the message names the problem and the first bad index.

    Example:
        >>> round(integrate_power([0.0, 5.0, 10.0], [300.0, 300.0, 300.0]).energy_j, 9)
        3000.0
    """
    t, p = _one_trace(t_s, power_w, "power_w", empty="a power trace needs at least one sample")
    batch = integrate_power_segments(t, p, np.array([0, t.size], dtype=np.int64), model=model)
    return batch.trace(0)


def integrate_power_rows(
    t_s: npt.ArrayLike, power_w: npt.ArrayLike, *, model: PowerModel = _DEFAULT_MODEL
) -> PowerEnergyBatch:
    """Integrate equal-length traces given as a 2-D array (devices × samples).

    Args:
        t_s: Sample times, s: shape (n,) shared by all rows, or (rows, n).
        power_w: Power, W, shape (rows, n).
        model: How the readings become energy (`PowerModel`); default all defaults.

    Returns:
        One entry per row (see `PowerEnergyBatch`).
    """
    t, p, offsets = segments_from_rows(t_s, power_w)
    return integrate_power_segments(t, p, offsets, model=model)
