"""What an exporter reads of a running meter when it collects: the Prometheus collector
(`meters.metrics`) and the OpenTelemetry export (`meters.otel`) share this one step.

Nothing is updated per sample: a `MeterReader` asks the meter for one `meters.api.Meter.summary`
(the sealed-chunk totals plus each device's open chunk integrated on the spot) when its
exporter collects, and pairs each device's figures with how the device was described.

Power
    `DeviceReading.power_w` is the **mean power since this reader's previous reading**,
    ΔE / Δt over the samples taken in between (E the device's energy, t the time its samples
    cover), so it agrees with the energy counter and does not alias pulses the way one
    instantaneous reading would. The first reading gives the mean since the meter started; a
    reading with no new sample repeats the last value; figures that went backwards (the
    meter's figures restarted) start over from the mean since the start. Each exporter has its
    own reader, so a Prometheus scrape does not shorten the window of an OpenTelemetry export.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .backends.base import DeviceInfo
    from .chunker import DeviceSummary
    from .sampler import MeterSummary
    from .wire import DevicePayload

__all__ = ["DeviceReading", "MeterReader", "ReadableMeter"]


class ReadableMeter(Protocol):
    """What a `MeterReader` reads: `meters.api.Meter` implements it."""

    @property
    def run_id(self) -> str:
        """The run."""
        ...

    @property
    def devices(self) -> tuple[DevicePayload, ...]:
        """The devices as described to the service."""
        ...

    @property
    def device_infos(self) -> tuple[DeviceInfo, ...]:
        """The backend's description of each device, in `devices` order."""
        ...

    def summary(self) -> MeterSummary:
        """The figures so far."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """One device at one collection.

    Attributes:
        figures: The meter's figures for the device (energy in J, samples, chunks, misses).
        device: The device as described to the service (None: not described, which a running
            meter does not do).
        info: The backend's description (None: not known).
        power_w: Mean power since the reader's previous reading, W (NaN: not available yet).
    """

    figures: DeviceSummary
    device: DevicePayload | None
    info: DeviceInfo | None
    power_w: float

    @property
    def kind(self) -> str:
        """``gpu``, ``cpu`` or ``dram`` (``gpu`` for an undescribed device, as before)."""
        kind = str(self.device["kind"]) if self.device is not None else "gpu"
        return kind if kind in ("gpu", "cpu", "dram") else "gpu"


class MeterReader:
    """Reads one meter when its exporter collects (see the module docstring); thread-safe.

    Args:
        meter: The meter (started or not: a meter that samples nothing has no devices).
    """

    def __init__(self, meter: ReadableMeter) -> None:
        self.meter = meter
        self._lock = threading.Lock()
        # device key -> (energy_j, duration_s, power_w) at the previous reading
        self._last: dict[str, tuple[float, float, float]] = {}

    def read(self) -> tuple[MeterSummary, tuple[DeviceReading, ...]]:
        """The meter's summary and, per device it holds, the device's reading."""
        meter = self.meter
        summary = meter.summary()
        devices = meter.devices
        infos = meter.device_infos
        described = {
            d["key"]: (d, infos[i] if i < len(infos) else None) for i, d in enumerate(devices)
        }
        readings = []
        for figures in summary.devices:
            device, info = described.get(figures.key, (None, None))
            power_w = self._power_w(
                figures.key, figures.energy_j, figures.duration_s, figures.mean_power_w
            )
            readings.append(DeviceReading(figures, device, info, power_w))
        return summary, tuple(readings)

    def _power_w(self, key: str, energy_j: float, duration_s: float, mean_w: float) -> float:
        with self._lock:
            last = self._last.get(key)
            if last is None or energy_j < last[0] or duration_s < last[1]:
                power_w = mean_w  # first reading (or the figures restarted): mean since start
            elif duration_s == last[1]:
                power_w = last[2]  # no new sample since the last reading
            else:
                power_w = (energy_j - last[0]) / (duration_s - last[1])
            self._last[key] = (energy_j, duration_s, power_w)
        return power_w if math.isfinite(power_w) else math.nan
