"""The options of the power model, the names of methods and policies, and the band."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from ._validate import (
    FloatArray,
    InvalidArgument,
    _check_param,
)

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


def _band(
    energy: FloatArray, sensor: FloatArray, below: FloatArray, above: FloatArray
) -> tuple[FloatArray, FloatArray]:
    low = np.maximum(energy - sensor - below, 0.0)
    high = energy + sensor + above
    return low, high
