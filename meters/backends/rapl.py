"""CPU package and DRAM energy through Linux powercap (Intel RAPL, also used for AMD packages).

Layout read (``root`` defaults to ``/sys/class/powercap``)::

    intel-rapl:N/name                      "package-P" (a top-level "psys" zone is skipped)
    intel-rapl:N/energy_uj                 cumulative energy, µJ, wraps
    intel-rapl:N/max_energy_range_uj       the value at which it wraps
    intel-rapl:N/constraint_0_power_limit_uw   long-term power limit, µW (optional)
    intel-rapl:N/intel-rapl:N:M/name       "dram" is metered; "core"/"uncore" are parts of the
                                           package and would count twice, so they are skipped
    intel-rapl-tpmi:N/...                  the same, through TPMI (Xeon 6)

Zone numbers N and M are hexadecimal (the kernel names zones with ``%x``: ``intel-rapl:a`` is
the eleventh) and are ordered by value. A device's `DeviceInfo.index` is the package number P from
its name (``package-P`` or ``package-P-die-D``), not the zone number N.

A package is counted once however many zones show it:

- **Mirrored zones.** Kernels without the 2024 fix list one zone per chiplet (CCD) on AMD CPUs,
  every one named after the same package and reading the same package counter (8 copies on one
  EPYC). Zones whose ``name`` is the same and whose counters are equal at open (read twice if
  they differ once) are one package: the first is metered, its note says how many mirrors were
  left out. Zones of the same name with counters of their own are metered each.
- **Two interfaces.** A package named the same under ``intel-rapl`` (MSR) and
  ``intel-rapl-tpmi`` is metered through the first only, said in its note.

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
_CONTROLS = ("intel-rapl", "intel-rapl-tpmi")  # in order of preference
_PACKAGE_ZONE = re.compile(r"^(intel-rapl(?:-tpmi)?):([0-9a-f]+)$")
_SUBZONE = re.compile(r"^(intel-rapl(?:-tpmi)?):([0-9a-f]+):([0-9a-f]+)$")
_PACKAGE_NAME = re.compile(r"^package-(\d+)")
_RAPL_UPDATE_S = 0.001  # RAPL counters update about every millisecond


def permission_fix(path: Path) -> str:
    """How to let an unprivileged meter read the RAPL counter file ``path``."""
    zone = path.parent
    if m := _SUBZONE.match(zone.name):
        control = m.group(1)
        pattern = zone.parent.parent / f"{control}:*" / f"{control}:*:*" / "energy_uj"
    else:
        m = _PACKAGE_ZONE.match(zone.name)
        control = m.group(1) if m else "intel-rapl"
        pattern = zone.parent / f"{control}:*" / "energy_uj"
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
        notes: dict[Path, list[str]] = {}
        self._zones = tuple(
            self._describe(path, package, scope, strict, notes.get(path, []))
            for path, package, scope in self._discover(include_dram, notes)
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

    def _discover(
        self, include_dram: bool, notes: dict[Path, list[str]]
    ) -> list[tuple[Path, int, Scope]]:
        """The zones to meter, in order, each with its package number; notes for the kept ones."""
        if not self.root.is_dir():
            return []
        candidates = sorted(
            (_CONTROLS.index(m.group(1)), int(m.group(2), 16), entry)
            for entry in self.root.iterdir()
            if (m := _PACKAGE_ZONE.match(entry.name))
        )
        kept: dict[str, tuple[Path, int | None]] = {}  # by name: the zone metered, its counter
        found: list[tuple[Path, int, Scope]] = []
        for _, number, path in candidates:
            name = self._optional(path / "name") or path.name
            if name == "psys":
                continue  # the whole platform: it contains the packages, counting it would double
            counter_uj = self._counter_uj(path)
            first = kept.get(name)
            if first is not None and self._same_package(first, path, counter_uj, notes):
                continue
            kept.setdefault(name, (path, counter_uj))
            named = _PACKAGE_NAME.match(name)
            package = int(named.group(1)) if named else number
            found.append((path, package, "package"))
            if not include_dram:
                continue
            control, zone_number = path.name.rsplit(":", 1)
            subzones = sorted(
                (int(m.group(3), 16), entry)
                for entry in path.iterdir()
                if (m := _SUBZONE.match(entry.name))
                and m.group(1) == control
                and m.group(2) == zone_number
            )
            found.extend(
                (sub, package, "dram")
                for _, sub in subzones
                if self._optional(sub / "name") == "dram"
            )
        return found

    def _same_package(
        self,
        first: tuple[Path, int | None],
        path: Path,
        counter_uj: int | None,
        notes: dict[Path, list[str]],
    ) -> bool:
        """Whether zone ``path`` shows the package of zone ``first`` (of the same name) again.

        Through another interface: yes. Through the same one: when the two counters are equal at
        open (read again once if they differ, in case the counter moved between the reads), or
        cannot be read to tell (counted once rather than perhaps twice). Says so in the kept
        zone's note.
        """
        kept, kept_uj = first
        said = notes.setdefault(kept, [])
        if kept.name.rsplit(":", 1)[0] != path.name.rsplit(":", 1)[0]:
            said.append(f"the same package is also {path.name}: counted once, here")
            return True
        if kept_uj is not None and counter_uj is not None and kept_uj != counter_uj:
            kept_uj, counter_uj = self._counter_uj(kept), self._counter_uj(path)
            if kept_uj is not None and counter_uj is not None and kept_uj != counter_uj:
                return False  # a counter of its own (a die of a multi-die package, say)
        how = "mirrors this zone's counter" if kept_uj is not None else "has this zone's name"
        said.append(
            f"{path.name} {how} (one zone per chiplet, as AMD kernels before the 2024 fix "
            "list them): the package is counted once, here"
        )
        return True

    def _counter_uj(self, path: Path) -> int | None:
        return _as_int(self._optional(path / "energy_uj"))

    def _describe(
        self, path: Path, package: int, scope: Scope, strict: bool, said: list[str]
    ) -> _Zone:
        name = self._optional(path / "name") or path.name
        notes = list(said)
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
