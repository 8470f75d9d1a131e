"""The streaming power kernel: one pass over memory, block by block, sums per group."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from ._validate import FloatArray, IntArray, _raise_invalid
from .model import PowerModel
from .segments import _Layout

_BLOCK_SAMPLES: Final = 1 << 17  # 1 MiB per float64 array: a block stays in L3 while worked on
_SPARSE_FRACTION: Final = 0.125  # below this share of low readings, correct them one by one
_PROBE_STRIDE: Final = 64
# Stand-in for intervals that must pass the "time increases" check but count for nothing.
_TINY: Final = float(np.nextafter(0.0, 1.0))


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
    model: PowerModel,
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

    rel = model.sensor_rel_error
    abs_w = model.sensor_abs_error_w
    q_floor = abs_w / rel if rel > 0 else math.inf
    floor_w = model.min_power_w
    ceil_w = model.max_power_w if model.max_power_w is not None else math.inf
    # Partial coverage bounded by the limits (unseen_margin = inf) needs the per-interval terms
    # xf2/xc2 and a ceiling; bounded by the observed range, only the groups' min/max, which the
    # caller asks for (want_stats).
    worst = model.coverage_fraction < 1.0 and not math.isfinite(model.unseen_margin)
    want_floor = worst and floor_w > 0.0
    want_ceil = worst and model.max_power_w is not None
    needs_ceiling = worst or model.averaging_window_s > 0.0
    track = want_stats or want_ceil or (needs_ceiling and model.max_power_w is None)
    lazy_peak = model.max_power_w is None and not track
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
