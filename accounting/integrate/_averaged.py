"""Averaged readings: the lag-corrected rule's residual (package docstring, "Averaged readings")."""

from __future__ import annotations

import numpy as np

from ._validate import FloatArray


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
