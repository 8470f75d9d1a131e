"""CPU package and DRAM energy through Linux powercap (Intel RAPL, also used for AMD packages).

Layout read (``root`` defaults to ``/sys/class/powercap``)::

    intel-rapl:N/name                      "package-N" (a top-level "psys" zone is skipped)
    intel-rapl:N/energy_uj                 cumulative energy, µJ, wraps
    intel-rapl:N/max_energy_range_uj       the value at which it wraps
    intel-rapl:N/constraint_0_power_limit_uw   long-term power limit, µW (optional)
    intel-rapl:N/intel-rapl:N:M/name       "dram" is metered; "core"/"uncore" are parts of the
                                           package and would count twice, so they are skipped

Counters are passed on raw (`Readings.energy_j` = energy_uj × 1e-6) with the modulus in
`DeviceInfo.counter_wrap_j` = max_energy_range_uj × 1e-6: a decrease between two readings is one
wrap, to be unwrapped by whoever holds the series (see `meters.backends.base`). The hardware counter
really wraps one RAPL energy unit (≈15-61 µJ) above max_energy_range_uj, so each unwrap may be off
by that much. Readings must come at least once per wrap period (minutes at hundreds of watts).
RAPL has no power reading: `Readings.power_w` is NaN with `Method.NONE`.

Since CVE-2020-8694 (PLATYPUS) most distributions make ``energy_uj`` readable by root only. A zone
that cannot be read is still listed, with `DeviceStatus.DENIED`, NaN figures and a message naming
the file and the fix (or, with ``strict=True``, the backend raises `PermissionDenied`). It is never
replaced by a TDP-based estimate.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeviceUnavailable, PermissionDenied
from .base import (
    Clock,
    DeviceInfo,
    Method,
    Scope,
    SystemClock,
    UncertaintyHint,
)
from .sysfs import CounterFileBackend, CounterFiles, read_text_ascii, refused

DEFAULT_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"^intel-rapl:(\d+)$")
_SUBZONE = re.compile(r"^intel-rapl:(\d+):(\d+)$")
_RAPL_UPDATE_S = 0.001  # RAPL counters update about every millisecond


def permission_fix(path: Path) -> str:
    """How to let an unprivileged meter read the RAPL counter file ``path``."""
    zone = path.parent
    if _SUBZONE.match(zone.name):
        pattern = zone.parent.parent / "intel-rapl:*" / "intel-rapl:*:*" / "energy_uj"
    else:
        pattern = zone.parent / "intel-rapl:*" / "energy_uj"
    return (
        "since CVE-2020-8694 many distributions make RAPL energy_uj readable by root only. "
        f"Run the meter as root, or grant read access: sudo chmod a+r {pattern} "
        "(reset at boot; persist it with a udev rule or systemd-tmpfiles). This re-opens the "
        "power side channel the CVE closed: do it only on hosts that run trusted code"
    )


@dataclass(frozen=True, slots=True)
class _Zone:
    path: Path
    info: DeviceInfo

    @property
    def counter(self) -> Path:
        return self.path / "energy_uj"


class RaplBackend(CounterFileBackend):
    """A `PowerBackend` over RAPL package and DRAM zones.

    Args:
        root: The powercap directory (default ``/sys/class/powercap``).
        read_text: How to read a whole file (default: ``pread`` on descriptors kept open for
            the counters, `sysfs.CounterFiles`); the fake powercap tree passes
            one that can refuse reads even to root.
        clock: Time source for timestamps (default: the system clocks).
        include_dram: Also meter ``dram`` subzones.
        strict: Raise `PermissionDenied` at open when a zone's counter cannot be read, instead of
            listing it as denied.

    Raises:
        DeviceUnavailable: No package zone under ``root``.
        PermissionDenied: With ``strict=True``, a zone's ``energy_uj`` is unreadable.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        *,
        read_text: Callable[[Path], str] | None = None,
        clock: Clock | None = None,
        include_dram: bool = True,
        strict: bool = False,
    ) -> None:
        self.root = Path(root)
        self._read_text = read_text if read_text is not None else read_text_ascii
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._zones = tuple(
            self._describe(path, package, scope, strict)
            for path, package, scope in self._discover(include_dram)
        )
        self._files = CounterFiles(
            [zone.counter for zone in self._zones],
            clock=self._clock,
            denied=_denied,
            read_text=read_text,
        )
        if not self._zones:
            raise DeviceUnavailable(
                f"no RAPL package zone under {self.root} (not a RAPL-capable CPU, the "
                "intel_rapl driver is not loaded, or the directory is not mounted in this "
                "container)"
            )

    def devices(self) -> tuple[DeviceInfo, ...]:
        """Package zones, each followed by its DRAM zone, in package order."""
        return tuple(zone.info for zone in self._zones)

    # -- discovery ----------------------------------------------------------------------------

    def _discover(self, include_dram: bool) -> list[tuple[Path, int, Scope]]:
        if not self.root.is_dir():
            return []
        found: list[tuple[Path, int, Scope]] = []
        packages = sorted(
            (int(m.group(1)), entry)
            for entry in self.root.iterdir()
            if (m := _PACKAGE_ZONE.match(entry.name))
        )
        for package, path in packages:
            if self._optional(path / "name") == "psys":
                continue  # the whole platform: it contains the packages, counting it would double
            found.append((path, package, "package"))
            if not include_dram:
                continue
            subzones = sorted(
                (int(m.group(2)), entry)
                for entry in path.iterdir()
                if (m := _SUBZONE.match(entry.name)) and int(m.group(1)) == package
            )
            found.extend(
                (sub, package, "dram")
                for _, sub in subzones
                if self._optional(sub / "name") == "dram"
            )
        return found

    def _describe(self, path: Path, package: int, scope: Scope, strict: bool) -> _Zone:
        name = self._optional(path / "name") or path.name
        notes = []
        wrap_uj = _as_int(self._optional(path / "max_energy_range_uj"))
        if wrap_uj is None:
            notes.append(f"{path / 'max_energy_range_uj'} unreadable: wraps cannot be undone")
        limit_uw = _as_int(self._optional(path / "constraint_0_power_limit_uw"))
        try:
            self._read_text(path / "energy_uj")
        except PermissionError as e:
            denied = _denied(path / "energy_uj", e)
            if strict:
                raise denied from e
            notes.append(str(denied))
        except OSError as e:
            notes.append(f"cannot read {path / 'energy_uj'}: {e}")
        info = DeviceInfo(
            backend="rapl",
            index=package,
            uid=path.name,
            name=name,
            power_limit_w=None if limit_uw is None else limit_uw * 1e-6,
            has_energy_counter=True,
            power_method=Method.NONE,
            counter_wrap_j=None if wrap_uj is None else wrap_uj * 1e-6,
            scope=scope,
            zone=path.name,
            uncertainty=UncertaintyHint(
                counter_resolution_j=1e-6,
                counter_update_s=_RAPL_UPDATE_S,
                note="RAPL energy counter (modelled on older CPUs, measured on newer ones)",
            ),
            note="; ".join(notes),
        )
        return _Zone(path, info)


def _as_int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _denied(path: Path, error: PermissionError) -> PermissionDenied:
    return refused(path, error, permission_fix(path))
