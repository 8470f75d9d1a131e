"""The segmented form (traces concatenated, with offsets) and the group layouts over it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import InvalidSamples
from ._validate import FloatArray, IntArray, InvalidArgument, _as_1d, _check_lengths


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
    return distinct_sorted(off)


def distinct_sorted(values: IntArray) -> IntArray:
    """The distinct values of a non-decreasing array: ``np.unique`` without its sort.

    Also without the import of ``numpy.ma`` that ``np.unique`` makes on its first call (tens
    of ms, in a meter's first seal).
    """
    if values.size == 0:
        return values
    keep = np.empty(values.size, dtype=bool)
    keep[0] = True
    np.greater(values[1:], values[:-1], out=keep[1:])
    return values[keep]


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


def _sum_by(index: IntArray, weights: FloatArray, size: int) -> FloatArray:
    """Sum of weights per index value 0..size-1 (float64 whatever the stubs of bincount say)."""
    return np.bincount(index, weights=weights, minlength=size).astype(np.float64)
