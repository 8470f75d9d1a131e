"""Chunks that tile traces by the left-sample rule, summarised in one kernel pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._validate import FloatArray, IntArray, InvalidArgument, _as_1d, _check_lengths, _check_param
from .counter import _counter_intervals, _counter_params
from .model import _DEFAULT_MODEL, COUNTER_REL_ERROR, PowerModel, _band
from .power import _power_groups
from .segments import _Layout, _nonempty, _offsets, distinct_sorted


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
        sensor_uncertainty_j, bound_below_j, bound_above_j: Band terms, J (package docstring).
        min_power_w, max_power_w: Extremes of the power samples the chunk touches, W (for
            averaged readings, w > 0, widened to include mean_power_w).
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
    grp_off = distinct_sorted(np.sort(np.concatenate((seg_off, change)).astype(np.int64)))
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
    model: PowerModel = _DEFAULT_MODEL,
) -> ChunkSummaries:
    """Summarise one trace, or many in segmented form, into chunks that tile it.

    Chunks follow the left-sample rule (package docstring): interval i belongs to the chunk of
    sample i, so chunk energies add up to the trace's energy exactly (to float rounding);
    averaged readings (``model.averaging_window_s`` > 0) are the exception: each gap-free
    chunk is estimated by the block rule from its own start (package docstring, "Averaged
    readings").
    With ``counter_j`` the energy figures come from the counter (method ``counter``) and the
    power readings give min/max; otherwise from the power trace (method ``model.method``).

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
        model: How power readings become energy (`PowerModel`; default all defaults), for
            power-derived chunks. Counter-derived chunks take from it only ``max_power_w``
            (wraps and resets, as in `integrate_counter`) and the gap detection: their gaps
            are reported but cost no energy.

    Returns:
        Struct of arrays, one entry per chunk (see `ChunkSummaries`).

    Raises:
        InvalidSamples: Malformed samples (message names the first bad index).
        InvalidArgument: Bad chunking or counter parameters.
    """
    t = _as_1d(t_s, "t_s")
    p = _as_1d(power_w, "power_w")
    _check_lengths(t, p, "t_s", "power_w")
    off = _offsets(offsets if offsets is not None else [0, t.size], t.size)
    seg_off = _nonempty(off)
    lay, bins = _chunk_layout(
        t, seg_off, chunk_s=chunk_s, origin_s=origin_s, chunk_starts=chunk_starts
    )
    g = _power_groups(t, p, lay, model, want_stats=True)
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
        method_out: str = model.method
    else:
        wrap_j, cmax, rel = _counter_params(wrap_j, model.max_power_w, counter_rel_error)
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
    if counter_j is None and model.averaging_window_s > 0.0:
        # The corrected mean may pass the extremes of the smoothed readings (the true
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
