"""A run's measurement quality: one grade, what limits it, and what would improve it.

The grade says how far the run's figures can be trusted, from what the meter saw:

==  ============================================================================================
A   every device by its energy counter, both edges of the window read synchronously, the
    readings cover the run (>= 99 % of the ticks), no device lost or slow: exact up to the
    counter's resolution and its sensor's gain.
B   a counter without its edges, a counter on a grid whose update period was not seen, the
    driver's averaged power (no counter), or a small hole (coverage >= 90 %, a device slow
    for a while): within a few tenths of a percent on the accuracy benchmark's loads, with a
    band that says how much.
C   instantaneous power readings (they alias: tens of percent on pulsed loads), a device lost,
    or readings covering < 90 % of the run: the band is wide and the figure a floor or an
    estimate in places.
D   not a measurement: an estimate from CPU utilisation, simulated devices, or nothing read.
==  ============================================================================================

The worst device sets the grade. Each limit comes with what would lift it (a GPU with a
counter, the driver's averaged power, a readable RAPL file, a device that stopped answering).
The meter prints the grade with its summary and sends it with the run (``host_info``), where
the report shows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DeviceFacts", "Grade", "RunQuality", "grade_run"]

Grade = Literal["A", "B", "C", "D"]
_ORDER: dict[Grade, int] = {"A": 0, "B": 1, "C": 2, "D": 3}
FULL_COVERAGE = 0.99
FAIR_COVERAGE = 0.9


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the meter knows about one device's figures.

    Attributes:
        key: The device key.
        method: How its energy was obtained (``counter``, ``power_avg``, ``power_instant``,
            ``estimate``, ``mixed`` or ``none``).
        simulated: Its figures are synthetic.
        counter_update_s: The counter's update period seen at the opening edge, s (0: it moves
            continuously; None: not seen or no counter).
        power_window_s: The averaging window of its power readings, s (None: point readings
            or none).
        coverage: Samples taken over the ticks the run had, in [0, 1] (None: unknown).
        edges: Its first and last samples are the window's synchronous edge readings.
        status: Its last status (``ok``, ``lost``, ``slow``, ``denied`` …).
        slow_readings: Readings missed because its driver calls were slow.
    """

    key: str
    method: str
    simulated: bool = False
    counter_update_s: float | None = None
    power_window_s: float | None = None
    coverage: float | None = None
    edges: bool = False
    status: str = "ok"
    slow_readings: int = 0


@dataclass(frozen=True, slots=True)
class RunQuality:
    """The grade of a run's measurement, and why.

    Attributes:
        grade: ``A`` (best) to ``D`` (not a measurement); see the module docstring.
        limits: What keeps the grade down, one line each (empty for ``A``).
        improve: What would lift it, one line each.
        devices: The facts graded, per device.
    """

    grade: Grade
    limits: tuple[str, ...]
    improve: tuple[str, ...]
    devices: tuple[DeviceFacts, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the form sent with the run and printed in the JSON summary)."""
        return {
            "grade": self.grade,
            "limits": list(self.limits),
            "improve": list(self.improve),
            "devices": [
                {
                    "key": d.key,
                    "method": d.method,
                    "counter_update_s": d.counter_update_s,
                    "power_window_s": d.power_window_s,
                    "coverage": None if d.coverage is None else round(d.coverage, 4),
                    "edges": d.edges,
                    "status": d.status,
                }
                for d in self.devices
            ],
        }


def _coverage_text(value: float) -> str:
    return f"{100.0 * value:.1f} %"


def grade_run(devices: Sequence[DeviceFacts]) -> RunQuality:
    """Grade a run from its devices' facts: the worst device sets the grade.

    Args:
        devices: One entry per metered device (an empty list is grade D: nothing was read).
    """
    if not devices:
        return RunQuality(
            grade="D",
            limits=("no device was read: nothing was measured",),
            improve=("meter a node with a readable power domain (GPU, RAPL or hwmon)",),
            devices=(),
        )
    worst: Grade = "A"
    limits: list[str] = []
    improve: list[str] = []

    def lower(to: Grade, limit: str, fix: str | None) -> None:
        nonlocal worst
        if _ORDER[to] > _ORDER[worst]:
            worst = to
        if limit not in limits:
            limits.append(limit)
        if fix is not None and fix not in improve:
            improve.append(fix)

    for d in devices:
        if d.simulated:
            lower("D", f"{d.key}: simulated, not a measurement", None)
            continue
        if d.method == "estimate":
            lower(
                "D",
                f"{d.key}: an estimate (CPU utilisation × TDP), not a measurement",
                "meter a readable domain: RAPL (make energy_uj readable) or hwmon",
            )
            continue
        if d.method == "none":
            lower("D", f"{d.key}: no figure was read", None)
            continue
        if d.method == "power_instant" or d.method == "mixed":
            lower(
                "C",
                f"{d.key}: instantaneous power readings (they alias against the tick)",
                "read the driver's averaged power (--power-reading average) where the GPU "
                "offers it, or use a GPU with an energy counter (NVIDIA Volta or newer)",
            )
        elif d.method == "power_avg":
            lower(
                "B",
                f"{d.key}: the driver's {d.power_window_s or 1:g} s averaged power (no counter)",
                "a GPU with an energy counter (NVIDIA Volta or newer) makes every edge exact",
            )
        elif d.method == "counter":
            if not d.edges:
                lower(
                    "B",
                    f"{d.key}: counter, but the window's edges were not read synchronously",
                    None,
                )
            elif d.counter_update_s is None:
                lower("B", f"{d.key}: counter whose update period was not seen", None)
        if d.status == "lost":
            lower(
                "C",
                f"{d.key}: stopped answering during the run (its last part is a gap)",
                f"check why {d.key} fell off the bus (dmesg: Xid errors)",
            )
        elif d.status == "denied":
            lower("D", f"{d.key}: its readings were refused (permissions)", "see its note")
        if d.slow_readings:
            lower(
                "B",
                f"{d.key}: {d.slow_readings} readings missed while its driver calls were slow",
                None,
            )
        if d.coverage is not None and math.isfinite(d.coverage):
            if d.coverage < FAIR_COVERAGE:
                lower(
                    "C",
                    f"{d.key}: readings cover {_coverage_text(d.coverage)} of the run",
                    "look for gaps in the log (lost or refused readings)",
                )
            elif d.coverage < FULL_COVERAGE:
                lower("B", f"{d.key}: readings cover {_coverage_text(d.coverage)} of the run", None)
    return RunQuality(worst, tuple(limits), tuple(improve), tuple(devices))
