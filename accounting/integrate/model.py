"""The options of the power model, the names of methods and policies, and the band."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from ._validate import FloatArray, InvalidArgument, _check_param

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
"""Default relative error of an energy counter (a documented choice; see the package docstring)."""
UNSEEN_MARGIN: Final = 0.1
"""How far beyond the range of the observed readings the unseen power may lie, as a fraction of
that range (package docstring, "Unseen power")."""
RARE_LEVEL_READINGS: Final = 3.0
"""A level that n readings at random phases of the load all miss holds at most this many n-ths
of the time, with 95 % probability ((1 − 3/n)^n < e^-3 = 5 %; package docstring, "Unseen
power")."""


@dataclass(frozen=True, slots=True)
class PowerModel:
    """How a device's power readings become energy: the options of every power integration.

    `integrate_power`, `integrate_power_segments`, `integrate_power_rows`, `summarize_chunks`
    and `power_energy_curve` all take one. The fields are checked once, when the model is
    made, and stored as floats; the model is frozen and hashable, so work can be grouped by it
    (the meter seals the chunks of every device that shares one in a single kernel call). Vary
    a field with `dataclasses.replace`, which checks again.

    Attributes:
        method: What the readings are: ``"power_avg"`` (a moving average, the default),
            ``"power_instant"`` (instantaneous readings) or ``"estimate"`` (e.g. TDP × time).
            A label carried into the results; `coverage_fraction` and `averaging_window_s`
            say what it means for the band.
        gap_policy: What a gap counts: ``"exclude"`` (0 J, the default; the result reports
            what a linear bridge would add), ``"bridge"`` (the linear bridge) or ``"hold"``
            (the last reading held over the gap).
        gap_factor: An interval longer than gap_factor × the nominal interval is a gap; a
            ratio, >= 1 (default 3; ``math.inf`` turns gap detection off).
        nominal_interval_s: Nominal sampling interval, s, > 0; None (default) for the median
            interval of each trace.
        max_power_w: Device power limit, W, > min_power_w: the ceiling of the gap, coverage
            and averaging bounds, which makes them bounds. None (default): the trace's own
            peak, an assumption rather than a bound (reported as ``ceiling_power_w``).
        min_power_w: Floor of the same bounds, W, >= 0 (default 0: a strict floor).
        sensor_rel_error: Relative sensor accuracy, a fraction of the reading, >= 0 (default
            0.05: NVML's ±5 %).
        sensor_abs_error_w: Absolute sensor accuracy, W, >= 0 (default 5: nvidia-smi's ±5 W);
            per reading the larger of the two applies.
        coverage_fraction: Fraction of each interval the readings represent, in [0, 1]: 1
            (default) for averaged power, about 0.25 for A100/H100 instantaneous readings, 0
            for point samples. The unseen rest of each interval is bounded by
            ``unseen_margin``.
        unseen_margin: Where the unseen part of an interval may lie (package docstring,
            "Unseen power"): within the range of the readings of its chunk (of its trace, for
            a whole-trace integration) widened by this fraction of that range on each side
            and clipped to [min_power_w, max_power_w]; >= 0 (default 0.1). ``math.inf``: the
            worst case, anywhere in [min_power_w, ceiling], a bound only with max_power_w.
        rare_level_readings: k, the readings' count a level may hide in: with n readings in a
            chunk, a level none of them saw held at most k/n of its time, anywhere out to
            the floor or the ceiling (package docstring, "Unseen power"); >= 0 (default 3:
            missed with less than 5 % probability by readings at random phases of the load);
            0 leaves this term out.
        averaging_window_s: Window w of a trailing moving-average reading, s, >= 0 (NVML on
            Hopper: 1 s); 0 (default) for readings taken as the power at their own time. With
            w > 0 a gap-free chunk is estimated by the block rule (whole windows w·r(a + k·w)
            from its start, exact when its length is a multiple of w, and a lag-corrected
            remainder), a chunk with a gap and a curve's windows by the lag-corrected rule,
            and the band gains their residual (package docstring, "Averaged readings").

    Raises:
        InvalidArgument: A field out of range, or a name that is not one of the allowed ones;
            the message names the field.

    Example:
        >>> PowerModel(max_power_w=700, coverage_fraction=0.25).max_power_w
        700.0
    """

    method: PowerMethod = "power_avg"
    gap_policy: GapPolicy = "exclude"
    gap_factor: float = 3.0
    nominal_interval_s: float | None = None
    max_power_w: float | None = None
    min_power_w: float = 0.0
    sensor_rel_error: float = SENSOR_REL_ERROR
    sensor_abs_error_w: float = SENSOR_ABS_ERROR_W
    coverage_fraction: float = 1.0
    averaging_window_s: float = 0.0
    unseen_margin: float = UNSEEN_MARGIN
    rare_level_readings: float = RARE_LEVEL_READINGS

    def __post_init__(self) -> None:
        if self.method not in POWER_METHODS:
            raise InvalidArgument(f"method must be one of {POWER_METHODS}, got {self.method!r}")
        if self.gap_policy not in GAP_POLICIES:
            raise InvalidArgument(
                f"gap_policy must be one of {GAP_POLICIES}, got {self.gap_policy!r}"
            )
        checked: dict[str, float | None] = {
            "gap_factor": _check_param(
                "gap_factor", self.gap_factor, low=1.0, high=math.inf, allow_inf=True
            )
        }
        if self.nominal_interval_s is not None:
            checked["nominal_interval_s"] = _check_param(
                "nominal_interval_s", self.nominal_interval_s, low=0.0, low_open=True
            )
        floor_w = checked["min_power_w"] = _check_param("min_power_w", self.min_power_w, low=0.0)
        if self.max_power_w is not None:
            checked["max_power_w"] = _check_param(
                "max_power_w", self.max_power_w, low=floor_w, low_open=True
            )
        for name, high in (
            ("sensor_rel_error", math.inf),
            ("sensor_abs_error_w", math.inf),
            ("coverage_fraction", 1.0),
            ("averaging_window_s", math.inf),
        ):
            checked[name] = _check_param(name, getattr(self, name), low=0.0, high=high)
        checked["unseen_margin"] = _check_param(
            "unseen_margin", self.unseen_margin, low=0.0, high=math.inf, allow_inf=True
        )
        checked["rare_level_readings"] = _check_param(
            "rare_level_readings", self.rare_level_readings, low=0.0
        )
        for name, value in checked.items():  # frozen: stored once, as floats
            object.__setattr__(self, name, value)


_DEFAULT_MODEL: Final = PowerModel()
"""The model every power integration uses unless given one (all fields at their defaults)."""


def _band(
    energy: FloatArray, sensor: FloatArray, below: FloatArray, above: FloatArray
) -> tuple[FloatArray, FloatArray]:
    low = np.maximum(energy - sensor - below, 0.0)
    high = energy + sensor + above
    return low, high
