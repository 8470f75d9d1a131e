"""Replay a recorded power/energy trace through the `PowerBackend` interface.

Trace format (the only one: CSV, so that test data reads and diffs as text)::

    t_s,device,power_w,energy_j
    0.0,GPU-8932f937,301.5,1234.5
    0.0,GPU-1c2d0e4f,88.25,
    0.1,GPU-8932f937,305.0,1264.6

- ``t_s``: seconds on any origin (the first sample of the file is replayed at open time);
- ``device``: any identifier without commas; devices are numbered by first appearance;
- ``power_w`` in watts and ``energy_j`` (the raw counter) in joules; an empty field (or ``nan``)
  means "not recorded" and replays as NaN, never as zero.

Rows may interleave devices; each device's rows are ordered by time on load (stably).
`write_trace` writes this format with round-trip-exact floats.

Replay is clock-driven and faithful: a read at replay time τ (seconds since open, on the trace's
clock) returns, per device, the latest recorded sample at or before τ, **stamped with its recorded
time**, not the read time. Reading faster than the trace was recorded therefore repeats samples
(same timestamps: consumers drop duplicates), and a gap in the trace stays a gap. A device with no
sample yet is `DeviceStatus.ERROR`. After the last sample the final values repeat and `finished`
is True. Every device is labelled ``replay`` and ``simulated``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import TraceFormatError
from .base import (
    Clock,
    DeviceInfo,
    DeviceStatus,
    FloatArray,
    Method,
    Readings,
    ReadingsBuffer,
    Scope,
    SystemClock,
    UncertaintyHint,
)

TRACE_HEADER = ("t_s", "device", "power_w", "energy_j")


@dataclass(frozen=True, slots=True)
class DeviceTrace:
    """One device's samples, ordered by time (NaN = not recorded)."""

    device: str
    t_s: FloatArray
    power_w: FloatArray
    energy_j: FloatArray


def read_trace(path: str | os.PathLike[str]) -> tuple[DeviceTrace, ...]:
    """Load a CSV trace.

    Args:
        path: The trace file.

    Returns:
        One `DeviceTrace` per device, in order of first appearance.

    Raises:
        TraceFormatError: Wrong header, wrong field count, empty device, a time that is not a
            finite number, or a power / energy that is negative, infinite or not a number.
    """
    rows: dict[str, list[tuple[float, float, float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != TRACE_HEADER:
            raise TraceFormatError(f"{path}: header must be {','.join(TRACE_HEADER)}, got {header}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(TRACE_HEADER):
                raise TraceFormatError(f"{path}:{line}: expected 4 fields, got {len(row)}")
            t_text, device, power_text, energy_text = (field.strip() for field in row)
            t_s = _number(t_text, path, line, "t_s", allow_empty=False)
            if not math.isfinite(t_s):
                raise TraceFormatError(f"{path}:{line}: t_s must be finite, got {t_text!r}")
            if not device:
                raise TraceFormatError(f"{path}:{line}: empty device")
            power_w = _number(power_text, path, line, "power_w")
            energy_j = _number(energy_text, path, line, "energy_j")
            rows.setdefault(device, []).append((t_s, power_w, energy_j))
    traces = []
    for device, samples in rows.items():
        array = np.array(samples, dtype=np.float64)
        order = np.argsort(array[:, 0], kind="stable")
        array = array[order]
        traces.append(DeviceTrace(device, array[:, 0], array[:, 1], array[:, 2]))
    return tuple(traces)


def _number(text: str, path: object, line: int, column: str, *, allow_empty: bool = True) -> float:
    if text == "" or text.lower() == "nan":
        if allow_empty:
            return math.nan
        raise TraceFormatError(f"{path}:{line}: {column} is empty")
    try:
        value = float(text)
    except ValueError:
        raise TraceFormatError(f"{path}:{line}: {column} is not a number: {text!r}") from None
    if column != "t_s" and (math.isinf(value) or value < 0):
        raise TraceFormatError(f"{path}:{line}: {column} must be >= 0 and finite, got {text!r}")
    return value


def write_trace(
    path: str | os.PathLike[str],
    *,
    t_s: ArrayLike,
    device: Sequence[str],
    power_w: ArrayLike,
    energy_j: ArrayLike,
) -> None:
    """Write a CSV trace, one row per sample, floats exact (shortest round-trip repr).

    Args:
        path: The file to (over)write.
        t_s: Sample times in seconds.
        device: Device identifier of each sample (no commas, not empty).
        power_w: Power in watts (NaN: not recorded, written as an empty field).
        energy_j: Raw counter in joules (NaN: not recorded).

    Raises:
        ValueError: The columns differ in length, or a device identifier is empty or has a comma.
    """
    times = np.asarray(t_s, dtype=np.float64)
    powers = np.asarray(power_w, dtype=np.float64)
    energies = np.asarray(energy_j, dtype=np.float64)
    if not len(times) == len(device) == len(powers) == len(energies):
        raise ValueError("t_s, device, power_w and energy_j must have the same length")
    for name in set(device):
        if not name or "," in name:
            raise ValueError(f"device identifiers must be non-empty and comma-free: {name!r}")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRACE_HEADER)
        for t, dev, p, e in zip(times, device, powers, energies, strict=True):
            writer.writerow((repr(float(t)), dev, _field(p), _field(e)))


def _field(value: np.float64) -> str:
    return "" if math.isnan(value) else repr(float(value))


class ReplayBackend:
    """A `PowerBackend` that replays a recorded trace against a clock.

    Args:
        trace: A CSV trace path, or traces from `read_trace`.
        clock: Time source (default: the system clocks). Replay time 0 is the trace's first
            sample, at the moment the backend is built.
        power_method: How the recorded power was measured (the CSV does not say); default
            `Method.POWER_INSTANT`.
        counter_wrap_j: The recorded counters' modulus in joules, when they wrap (RAPL traces).
        scope: What the recorded devices measured (default ``"gpu"``).
    """

    def __init__(
        self,
        trace: str | os.PathLike[str] | Sequence[DeviceTrace],
        *,
        clock: Clock | None = None,
        power_method: Method = Method.POWER_INSTANT,
        counter_wrap_j: float | None = None,
        scope: Scope = "gpu",
    ) -> None:
        if power_method == Method.NONE or power_method == Method.COUNTER:
            raise ValueError(f"power_method must be a power method, got {power_method.label}")
        self._traces = read_trace(trace) if isinstance(trace, str | os.PathLike) else tuple(trace)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.start_mono_s = self._clock.monotonic_s()
        self._start_wall_s = self._clock.wall_s()
        starts = [t.t_s[0] for t in self._traces if len(t.t_s)]
        self._origin_s = min(starts) if starts else 0.0
        self._end_s = max((t.t_s[-1] for t in self._traces if len(t.t_s)), default=0.0)
        self._infos = tuple(
            _info(i, t, power_method, counter_wrap_j, scope) for i, t in enumerate(self._traces)
        )

    def devices(self) -> tuple[DeviceInfo, ...]:
        """One device per trace device, in order of first appearance."""
        return self._infos

    @property
    def finished(self) -> bool:
        """Whether replay time has passed the trace's last sample."""
        return self._replay_time_s() > self._end_s

    def _replay_time_s(self) -> float:
        return self._origin_s + (self._clock.monotonic_s() - self.start_mono_s)

    def read(self) -> Readings:
        """The latest recorded sample of every device, stamped with its recorded time."""
        t_mono_s = self._clock.monotonic_s()
        buffer = ReadingsBuffer(len(self._traces), t_wall_s=self._clock.wall_s(), t_mono_s=t_mono_s)
        now_s = self._replay_time_s()
        for i, (trace, info) in enumerate(zip(self._traces, self._infos, strict=True)):
            k = int(np.searchsorted(trace.t_s, now_s, side="right")) - 1
            if k < 0:
                buffer.fail(i, DeviceStatus.ERROR, "no recorded sample yet")
                continue
            offset_s = float(trace.t_s[k]) - self._origin_s
            buffer.stamp(i, self.start_mono_s + offset_s, t_wall_s=self._start_wall_s + offset_s)
            power_w, energy_j = float(trace.power_w[k]), float(trace.energy_j[k])
            if not math.isnan(power_w):
                buffer.set_power(i, power_w, info.power_method)
            elif info.power_method != Method.NONE:
                buffer.fail(i, DeviceStatus.ERROR, "power not recorded at this sample")
            if not math.isnan(energy_j):
                buffer.set_energy(i, energy_j)
            elif info.has_energy_counter:
                buffer.fail(i, DeviceStatus.ERROR, "energy not recorded at this sample")
        return buffer.freeze()

    def close(self) -> None:
        """Nothing to release (the trace is loaded at open)."""

    def __enter__(self) -> ReplayBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _info(
    index: int,
    trace: DeviceTrace,
    power_method: Method,
    counter_wrap_j: float | None,
    scope: Scope,
) -> DeviceInfo:
    has_power = bool(np.any(~np.isnan(trace.power_w)))
    has_counter = bool(np.any(~np.isnan(trace.energy_j)))
    return DeviceInfo(
        backend="replay",
        index=index,
        uid=f"replay:{trace.device}",
        name=f"Replay of {trace.device}",
        power_limit_w=None,
        has_energy_counter=has_counter,
        power_method=power_method if has_power else Method.NONE,
        counter_wrap_j=counter_wrap_j if has_counter else None,
        scope=scope,
        simulated=True,
        uncertainty=UncertaintyHint(note="replayed: as accurate as the recording"),
        note="replayed trace: not a measurement of this run",
    )
