"""Input checks: arrays, parameters, and the first bad sample named in the message."""

from __future__ import annotations

import math
from typing import NoReturn, TypeAlias

import numpy as np
import numpy.typing as npt

from ..errors import AccountingError, InvalidSamples

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]


class InvalidArgument(ValueError, AccountingError):
    """A parameter is out of range (e.g. coverage_fraction > 1) or a window is malformed."""


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


def _one_trace(
    t_s: npt.ArrayLike, values: npt.ArrayLike, v_name: str, *, empty: str
) -> tuple[FloatArray, FloatArray]:
    """A single trace's times and values as 1-D float64 arrays of one length, at least one."""
    t = _as_1d(t_s, "t_s")
    v = _as_1d(values, v_name)
    _check_lengths(t, v, "t_s", v_name)
    if t.size == 0:
        raise InvalidSamples(f"no samples: {empty}")
    return t, v


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
