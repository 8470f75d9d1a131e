"""A labelled CPU estimate for a node where nothing can be measured: utilisation × a given TDP.

Only when asked for (``--cpu-tdp-w W``, ``Meter(cpu_tdp_w=W)``, ``THERMOLEDGER_CPU_TDP_W``) and
only where `meters.discovery.open_backend` finds no domain it can read. It is a model, not a
measurement, and says so everywhere: the power method is `Method.ESTIMATE` (``estimate`` on the
wire and in every report), the name starts with "CPU estimate", and the band is wide.

Model
    P(t) = u(t) × TDP, with u the node's CPU utilisation over the interval since the previous
    reading, from the first line of ``/proc/stat`` (jiffies since boot, all CPUs)::

        cpu  user nice system idle iowait irq softirq steal guest guest_nice

    busy = user + nice + system + irq + softirq + steal; total = busy + idle + iowait (``guest``
    and ``guest_nice`` are already inside ``user`` and ``nice``); u = Δbusy / Δtotal. One small
    file read per tick. Two readings within one jiffy (Δtotal = 0) repeat the last utilisation.
    The first reading measures from the moment the backend opened.

Band
    ±50 % of the estimate (`UncertaintyHint.power_rel` = 0.5, carried by the chunker into every
    chunk's sensor term). That width is a stated assumption, not a bound: a package's power is
    not linear in utilisation (idle power is far above zero, turbo and vector units push the
    top past TDP), and TDP is a thermal design figure, not a power reading. The figure is for
    the order of magnitude of an otherwise unmetered job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from .base import (
    Clock,
    DeviceInfo,
    DeviceStatus,
    FlatBuffer,
    Method,
    Readings,
    SystemClock,
    UncertaintyHint,
)

__all__ = ["BAND_REL", "PROC_STAT", "CpuEstimateBackend", "cpu_times"]

PROC_STAT = Path("/proc/stat")
BAND_REL = 0.5
"""Relative half-width of the estimate's band (±50 %)."""


def cpu_times(text: str) -> tuple[int, int]:
    """``(busy, total)`` jiffies from the text of ``/proc/stat`` (its aggregate ``cpu`` line).

    Raises:
        ValueError: No aggregate ``cpu`` line with at least four numbers.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]
            if len(values) < 4:
                break
            values += [0] * (8 - len(values))  # old kernels: no iowait, irq, softirq, steal
            user, nice, system, idle, iowait, irq, softirq, steal = values
            busy = user + nice + system + irq + softirq + steal
            return busy, busy + idle + iowait
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


class CpuEstimateBackend:
    """One `Method.ESTIMATE` device: the node's CPU utilisation × ``tdp_w``.

    Args:
        tdp_w: The CPUs' thermal design power, W (all sockets together), > 0.
        proc_stat: The file to read utilisation from (default ``/proc/stat``).
        read_text: How to read it (default ``Path.read_text``); tests pass their own.
        clock: Time source for timestamps (default: the system clocks).

    Raises:
        ValueError: ``tdp_w`` is not a positive finite number.
        OSError: ``proc_stat`` cannot be read at open.
    """

    def __init__(
        self,
        tdp_w: float,
        *,
        proc_stat: Path = PROC_STAT,
        read_text: Callable[[Path], str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not 0.0 < tdp_w < float("inf"):
            raise ValueError(f"tdp_w must be a positive number of watts, got {tdp_w!r}")
        self.tdp_w = float(tdp_w)
        self._path = proc_stat
        self._read_text = read_text if read_text is not None else _read_text
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        busy, total = cpu_times(self._read_text(self._path))
        self._last = (busy, total)
        self._utilisation = busy / total if total > 0 else 0.0  # since boot, until a first delta
        self._info = DeviceInfo(
            backend="estimate",
            index=0,
            uid="cpu-estimate",
            name=f"CPU estimate (utilisation × {self.tdp_w:g} W TDP)",
            power_limit_w=self.tdp_w,
            has_energy_counter=False,
            power_method=Method.ESTIMATE,
            scope="package",
            uncertainty=UncertaintyHint(
                power_rel=BAND_REL,
                note=(
                    f"estimate, not a measurement: /proc/stat utilisation × {self.tdp_w:g} W "
                    f"TDP, band ±{BAND_REL:.0%} (an assumption, not a bound)"
                ),
            ),
            note="estimate: CPU utilisation × TDP, not a measurement",
        )

    def devices(self) -> tuple[DeviceInfo, ...]:
        """The one estimated device."""
        return (self._info,)

    def read(self) -> Readings:
        """The estimate now."""
        buffer = FlatBuffer(1, t_wall_s=self._clock.wall_s(), t_mono_s=self._clock.monotonic_s())
        self.read_device(buffer, 0)
        return buffer.freeze()

    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        """Utilisation since the last reading × TDP into slot ``i`` (`base.DeviceReader`)."""
        clock = self._clock
        t0_s = clock.monotonic_s()
        try:
            busy, total = cpu_times(self._read_text(self._path))
        except (OSError, ValueError) as e:
            buffer.fail(i, DeviceStatus.ERROR, f"cannot read {self._path}: {e}")
        else:
            with self._lock:
                last_busy, last_total = self._last
                if total > last_total and busy >= last_busy:
                    self._utilisation = min(1.0, (busy - last_busy) / (total - last_total))
                self._last = (busy, total)
                utilisation = self._utilisation
            buffer.set_power(i, utilisation * self.tdp_w, Method.ESTIMATE)
        buffer.stamp(i, 0.5 * (t0_s + clock.monotonic_s()))

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> CpuEstimateBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_text(path: Path) -> str:
    return path.read_text(encoding="ascii")
