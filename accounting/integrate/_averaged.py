"""Averaged readings: the block rule for groups without gaps, and the lag-corrected rule's residual.

Package docstring, "Averaged readings", states both rules and their bounds; this module is their
arithmetic, vectorised across groups (no loop over samples or groups).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from ._validate import FloatArray, IntArray

_WHOLE_WINDOWS_TOL: Final = 1e-9
"""A group up to 1e-9·w short of m whole windows (float rounding of its edges) counts m: its
last anchor then lies a hair past its last sample, and the band accounts for the overshoot."""


def _edge_residual(
    reading_w: FloatArray, window_s: float, floor_w: float, ceiling_w: float | FloatArray
) -> FloatArray:
    """Worst lag-corrected error at a window edge whose averaged reading is r, J.

    (w/2)·(r − floor)(ceiling − r)/(ceiling − floor): the most ∫P·h can reach over the
    edge's averaging window when P stays in [floor, ceiling] with mean r (package docstring).
    """
    span = np.maximum(np.asarray(ceiling_w, dtype=np.float64) - floor_w, 0.0)
    up = np.clip(reading_w - floor_w, 0.0, span)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 0.5 * window_s * up * (span - up) / span
    return np.where(span > 0, out, 0.0)


def _ranges(starts: IntArray, counts: IntArray) -> tuple[IntArray, IntArray]:
    """``(owner, index)``: for each k, ``counts[k]`` consecutive integers from ``starts[k]``."""
    owner = np.repeat(np.arange(counts.size), counts)
    base = np.cumsum(counts) - counts
    return owner, np.arange(owner.size) - base[owner] + starts[owner]


def _anchor_readings(
    t: FloatArray,
    p: FloatArray,
    key: FloatArray,
    first: IntArray,
    last: IntArray,
    offset_s: FloatArray,
) -> tuple[FloatArray, IntArray, FloatArray]:
    """The readings at times ``t[first] + offset_s``, interpolated between the samples around them.

    One query per entry; ``first``/``last`` are the sample range (last > first) the query must
    be looked up in and ``offset_s`` its time relative to ``t[first]`` (clipped to that range).
    ``key`` is the search key of `_block_rule` (sorted, each group's samples on its own stretch).

    Returns:
        ``(reading_w, j, reach_s)``: the interpolated reading, the index of the sample at or
        before the query time (j < last), and ``reach_s``, the interpolation's worst error in
        units of the reading's largest slope: 2uv/(u + v) for a query u after sample j and v
        before sample j + 1 (a boxcar reading can rise at full slope to the query and fall back
        at full slope to the next sample, and no further), plus how far a query clipped to
        the last sample lay beyond it.
    """
    span_s = t[last] - t[first]
    x_s = np.minimum(offset_s, span_s)
    query = key[first] + x_s
    j = np.clip(np.searchsorted(key, query, side="right") - 1, first, last - 1)
    # Distances in times relative to the group's first sample (exact for same-sign times
    # within a factor 2 of each other, such as unix seconds), not in the key.
    u = np.clip(x_s - (t[j] - t[first]), 0.0, None)
    v = np.clip((t[j + 1] - t[first]) - x_s, 0.0, None)
    d = u + v
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(d > 0, u / d, 0.0)
        reach = np.where(d > 0, 2.0 * u * v / d, 0.0)
    reading = p[j] + (p[j + 1] - p[j]) * np.clip(frac, 0.0, 1.0)
    return reading, j, reach + np.maximum(offset_s - span_s, 0.0)


def _block_rule(
    t: FloatArray,
    p: FloatArray,
    grp_off: IntArray,
    grp_last: IntArray,
    which: IntArray,
    window_s: float,
    floor_w: float,
    swing_w: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Energy of gap-free groups of averaged readings by the block rule, and its bounds, J.

    Group g spans [a, b] = [t[grp_off[g]], t[grp_last[g]]], L = b − a > 0, with no gap. Its m =
    floor(L/w) whole windows anchored at a are Σ w·r(a + k·w), k = 1..m (w·r(t) is exactly the
    energy of [t − w, t]); the remainder [c, b], c = a + m·w, of length ρ < w is lag-corrected,
    ∫_c^b r dt + (w/2)(r(b) − r(c)), and clipped to the range the readings at c and b allow.
    The bounds (package docstring, "Averaged readings"): per interpolated anchor (ceiling −
    floor)·2uv/(u + v), the anchor c counted twice (it also opens the remainder); plus, for
    the remainder, the lag-corrected residual at c and b with what linear interpolation of r
    may miss over [c, b], or the distance from the estimate to the end of the allowed range
    on that side, whichever is smaller.

    Args:
        t, p: Sample times, s, and averaged readings, W (all traces, concatenated).
        grp_off: Group offsets (as `_Layout.grp_off`); grp_last: each group's last sample.
        which: The groups to evaluate (gap-free, L > 0).
        window_s: w, s (> 0).
        floor_w: Power floor, W.
        swing_w: ceiling − floor per group in ``which``, W (>= 0).

    Returns:
        ``(energy_j, below_j, above_j)`` per group in ``which``: the estimate and how far the
        truth may lie below and above it.
    """
    w = window_s
    nb = which.size
    if nb == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    first_all = grp_off[:-1]
    ng = first_all.size
    # Search key: each group's times from its first sample, group g shifted to start at g·K
    # (K longer than any group), so that one searchsorted finds every anchor's samples across
    # groups and traces. The key is t + (g·K − a) in one rounding, at the scale of K·ng, not
    # of unix seconds (the shift's own rounding is the same for the whole group, the anchors'
    # queries included, so it cancels). A group's last sample (the next group's first) is
    # reached as j + 1.
    a_all = t[first_all]
    spans_all = t[grp_last] - a_all
    big_k = float(spans_all.max()) + w + 1.0
    key = t + np.repeat(np.arange(ng) * big_k - a_all, np.diff(grp_off))

    first = first_all[which]
    last = grp_last[which]
    span_s = spans_all[which]
    m = np.floor(span_s / w + _WHOLE_WINDOWS_TOL).astype(np.int64)
    rho_s = span_s - m * w  # may be a hair below 0 (tolerance)

    # Whole windows: anchors a + k·w, k = 1..m, of every group at once. The last one is c, the
    # remainder's start; a group shorter than w has no anchor and starts its remainder at a.
    owner, k = _ranges(np.ones(nb, np.int64), m)
    r_k, j_k, reach_k = _anchor_readings(
        t, p, key, first[owner], last[owner], w * k.astype(np.float64)
    )
    blocks = w * np.bincount(owner, weights=r_k, minlength=nb)
    anchors = np.bincount(owner, weights=reach_k, minlength=nb)
    pick = np.where(m > 0, np.cumsum(m) - 1, owner.size)  # owner.size: the group's start
    r_c = np.append(r_k, 0.0)[pick]
    j_c = np.append(j_k, 0)[pick]
    reach_c = np.append(reach_k, 0.0)[pick]
    at_a = m == 0
    r_c[at_a] = p[first[at_a]]
    j_c[at_a] = first[at_a]

    # The remainder [c, b]: lag-corrected, ∫ r from c (interpolated) to b, plus (w/2)(r(b) − r(c)).
    c_rel = np.minimum(w * m.astype(np.float64), span_s)
    part_s = np.maximum((t[j_c + 1] - t[first]) - c_rel, 0.0)  # [c, t[j_c + 1]]
    d_c = t[j_c + 1] - t[j_c]
    inside = part_s * 0.5 * (r_c + p[j_c + 1])
    lin_s2 = np.minimum(0.25 * d_c * d_c, 0.5 * d_c * part_s)
    rid, i = _ranges(j_c + 1, last - 1 - j_c)  # the whole intervals after it, up to b
    dt = t[i + 1] - t[i]
    inside += np.bincount(rid, weights=0.5 * dt * (p[i] + p[i + 1]), minlength=nb)
    lin_s2 += np.bincount(rid, weights=0.25 * dt * dt, minlength=nb)
    r_b = p[last]
    lagged = inside + 0.5 * w * (r_b - r_c)

    # Bounds, J. r is Lipschitz with (ceiling − floor)/w: an interpolated anchor is off by at
    # most that × reach, its window's energy by (ceiling − floor) × reach; linear
    # interpolation of r over an interval d misses its integral by at most that slope × d²/4
    # (× d·part/2 for a part of it).
    ceiling = floor_w + swing_w
    residuals = (
        swing_w / w * lin_s2
        + _edge_residual(r_c, w, floor_w, ceiling)
        + _edge_residual(r_b, w, floor_w, ceiling)
    )
    # What the readings at c and b allow for X = E[c, b]: with Y = E[b − w, c] (length w − ρ)
    # and Z = E[c − w, b − w] (length ρ), w·r(b) = Y + X and w·r(c) = Z + Y, each part
    # between floor and ceiling times its length. The remainder is clipped into that range
    # (the truth lies in it, so clipping never moves away from it), which also bounds it.
    rho = np.maximum(rho_s, 0.0)
    rest = w - rho
    slack = swing_w * reach_c  # r(c) was interpolated
    step = w * (r_b - r_c)
    by_b_low, by_b_high = w * r_b - ceiling * rest, w * r_b - floor_w * rest
    by_c_low, by_c_high = step + floor_w * rho - slack, step + ceiling * rho + slack
    low = np.maximum(np.maximum(floor_w * rho, by_b_low), by_c_low)
    high = np.minimum(np.minimum(ceiling * rho, by_b_high), by_c_high)
    high = np.maximum(high, low)  # only rounding could cross them
    remainder = np.clip(lagged, low, high)
    below = np.minimum(residuals, remainder - low)
    above = np.minimum(residuals, high - remainder)
    # A group a hair short of m windows (tolerance): its last block overshoots b by −ρ.
    short = rho_s < 0.0
    remainder[short] = rho_s[short] * r_b[short]
    below[short] = above[short] = -rho_s[short] * swing_w[short]

    energy = np.maximum(blocks + remainder, 0.0)
    # The last anchor counts twice: it also opens the remainder (its lag term and the part of
    # an interval after it).
    interpolation = swing_w * (anchors + reach_c)
    return energy, interpolation + below, interpolation + above
