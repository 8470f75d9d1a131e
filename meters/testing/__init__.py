"""Fakes shipped with the package, so tests, demos and CI need no GPU and no root.

- `ManualClock`: a clock that moves only when told (``advance``), for backends and fakes.
- `meters.testing.fake_pynvml`: an object that quacks like the ``pynvml`` module, with NVML's
  units, error codes and scripted faults (counter reset, pre-Volta, GPU lost, slow calls).
- `meters.testing.fake_amdsmi`: an object that quacks like ROCm's ``amdsmi`` module, with its
  dicts, "N/A" fields, units and status codes (MI300X, MI210, the two dies of an MI250X).
- `meters.testing.fake_powercap`: builds a ``/sys/class/powercap``-like tree in a directory.
- `meters.testing.fake_hwmon`: builds a ``/sys/class/hwmon``-like tree (``amd_energy``).
- `meters.testing.fake_service`: the service's ingest API in memory, as an ``httpx`` handler,
  for code that uploads (idempotent by key and hash like the real one; scripted failures).
"""

from __future__ import annotations


class ManualClock:
    """A `meters.backends.base.Clock` that only moves when `advance` is called.

    Args:
        monotonic_s: Initial monotonic time in seconds.
        wall_s: Initial unix time in seconds; it moves in step with the monotonic time.
    """

    def __init__(self, monotonic_s: float = 1000.0, wall_s: float = 1_700_000_000.0) -> None:
        self._monotonic_s = monotonic_s
        self._wall_offset_s = wall_s - monotonic_s

    def monotonic_s(self) -> float:
        """Current monotonic time in seconds."""
        return self._monotonic_s

    def wall_s(self) -> float:
        """Current unix time in seconds."""
        return self._monotonic_s + self._wall_offset_s

    def advance(self, dt_s: float) -> None:
        """Move both clocks forward by ``dt_s`` seconds (negative steps are refused)."""
        if dt_s < 0:
            raise ValueError(f"a monotonic clock cannot go back (dt_s={dt_s})")
        self._monotonic_s += dt_s


__all__ = ["ManualClock"]
