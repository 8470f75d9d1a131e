"""Build a ``/sys/class/powercap``-like tree in a directory, for the RAPL backend's tests.

The tree looks like a real one: ``intel-rapl:N`` package directories holding their subzones
(``intel-rapl:N:M``: ``core``, ``dram``), top-level symlinks to the subzones (as sysfs has), an
optional ``psys`` zone, and the files ``name``, ``energy_uj``, ``max_energy_range_uj``,
``enabled``, ``constraint_0_name`` and ``constraint_0_power_limit_uw``. Zone numbers are written
in hexadecimal, as the kernel writes them (``intel-rapl:a``, ``intel-rapl:a:1``); a zone may sit
under the TPMI control type (``intel-rapl-tpmi:N``, Xeon 6), and its number need not be its
package's (``name`` says the package): several zones of one name and one counter value are the
mirrored zones of AMD kernels before the 2024 fix.

Counters wrap like RAPL's: modulo ``max_energy_range_uj + 1`` µJ (this fake's energy unit being
1 µJ). A zone's counter is what its file holds (tests move it with `FakePowercap.add_energy_j`),
or, once `FakePowercap.drive` is called, the exact energy of a power profile since then, read
through `FakePowercap.read_text` on a clock, moving every millisecond as RAPL's does.

`FakePowercap.read_text` refuses denied files with ``PermissionError`` (EACCES) even when the
tests run as root, where file modes alone would not stop a read; denied files are also chmod'ed
to 0400 so that the tree is right for a non-root reader too.
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..backends.base import Clock, SystemClock
from ..backends.simulated import Profile

# A common value on Intel server parts (2^32 energy units of 61.035 µJ).
DEFAULT_MAX_ENERGY_RANGE_UJ = 262_143_328_850


@dataclass(frozen=True, slots=True)
class _Drive:
    profile: Profile
    clock: Clock
    start_s: float  # the clock's monotonic time at `drive`: t = 0 of the profile
    start_uj: int
    modulus_uj: int
    update_s: float


class FakePowercap:
    """A fake powercap tree rooted at ``root`` (created if missing).

    Args:
        root: Directory to build the tree in (e.g. pytest's ``tmp_path / "powercap"``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        control = self.root / "intel-rapl"
        control.mkdir(exist_ok=True)
        (control / "enabled").write_text("1\n")
        self.denied: set[Path] = set()
        self._driven: dict[Path, _Drive] = {}

    def add_package(
        self,
        package: int,
        *,
        zone_number: int | None = None,
        control: str = "intel-rapl",
        name: str | None = None,
        energy_uj: int = 0,
        max_energy_range_uj: int = DEFAULT_MAX_ENERGY_RANGE_UJ,
        power_limit_uw: int | None = 125_000_000,
        dram: bool = True,
        dram_energy_uj: int = 0,
        core: bool = True,
    ) -> str:
        """Add package zone ``<control>:<zone number, hex>`` with ``core`` and ``dram`` subzones.

        Args:
            package: The package number its ``name`` gives (``package-<package>``).
            zone_number: The zone's number (default: the package number).
            control: ``intel-rapl`` (MSR) or ``intel-rapl-tpmi`` (Xeon 6).
            name: Its ``name`` file (default ``package-<package>``).

        Returns:
            The package zone's name (e.g. ``"intel-rapl:a"``).
        """
        zone = f"{control}:{package if zone_number is None else zone_number:x}"
        control_dir = self.root / control
        if not control_dir.exists():
            control_dir.mkdir()
            (control_dir / "enabled").write_text("1\n")
        path = self.root / zone
        name = f"package-{package}" if name is None else name
        self._zone_files(path, name, energy_uj, max_energy_range_uj)
        if power_limit_uw is not None:
            (path / "constraint_0_name").write_text("long_term\n")
            (path / "constraint_0_power_limit_uw").write_text(f"{power_limit_uw}\n")
        subzones = [("core", 0)] if core else []
        if dram:
            subzones.append(("dram", dram_energy_uj))
        for m, (sub_name, uj) in enumerate(subzones):
            sub = f"{zone}:{m:x}"
            self._zone_files(path / sub, sub_name, uj, max_energy_range_uj)
            link = self.root / sub
            if not link.exists():
                link.symlink_to(Path(zone) / sub, target_is_directory=True)
        return zone

    def add_psys(self, number: int, *, energy_uj: int = 0) -> str:
        """Add a platform (``psys``) zone, which the backend must not count."""
        zone = f"intel-rapl:{number:x}"
        self._zone_files(self.root / zone, "psys", energy_uj, DEFAULT_MAX_ENERGY_RANGE_UJ)
        return zone

    def zone_path(self, zone: str) -> Path:
        """Directory of a zone: ``"intel-rapl:a:1"``, ``"intel-rapl-tpmi:1"``."""
        parts = zone.split(":")
        if len(parts) == 3:
            return self.root / f"{parts[0]}:{parts[1]}" / zone
        return self.root / zone

    def energy_uj(self, zone: str) -> int:
        """The zone's counter in µJ."""
        return int((self.zone_path(zone) / "energy_uj").read_text())

    def set_energy_uj(self, zone: str, value_uj: int) -> None:
        """Set the zone's counter in µJ."""
        (self.zone_path(zone) / "energy_uj").write_text(f"{value_uj}\n")

    def add_energy_j(self, zone: str, energy_j: float) -> None:
        """Let the zone draw ``energy_j`` joules: the counter moves on, wrapping as RAPL does."""
        path = self.zone_path(zone)
        modulus_uj = int((path / "max_energy_range_uj").read_text()) + 1
        value_uj = (self.energy_uj(zone) + round(energy_j * 1e6)) % modulus_uj
        self.set_energy_uj(zone, value_uj)

    def drive(
        self,
        zone: str,
        profile: Profile,
        *,
        clock: Clock | None = None,
        update_s: float = 0.001,
    ) -> None:
        """From now on the zone's counter is the energy ``profile`` draws (t = 0 now).

        Read through `read_text`: the value of the file at this call plus the profile's exact
        energy since, floored to whole µJ, held between updates every ``update_s`` seconds (RAPL:
        about 1 ms) and wrapped as RAPL wraps.
        """
        path = self.zone_path(zone)
        clock = clock if clock is not None else SystemClock()
        self._driven[path / "energy_uj"] = _Drive(
            profile=profile,
            clock=clock,
            start_s=clock.monotonic_s(),
            start_uj=self.energy_uj(zone),
            modulus_uj=int((path / "max_energy_range_uj").read_text()) + 1,
            update_s=update_s,
        )

    def deny(self, zone: str, filename: str = "energy_uj") -> Path:
        """Make one file of a zone unreadable (root-only, as after CVE-2020-8694)."""
        path = self.zone_path(zone) / filename
        path.chmod(0o400)
        self.denied.add(path)
        return path

    def allow(self, zone: str, filename: str = "energy_uj") -> None:
        """Undo `deny`."""
        path = self.zone_path(zone) / filename
        path.chmod(0o444)
        self.denied.discard(path)

    def read_text(self, path: Path) -> str:
        """Read a file of the tree as an unprivileged reader would (denied files refuse)."""
        if path in self.denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        drive = self._driven.get(path)
        if drive is not None:
            t_s = drive.clock.monotonic_s() - drive.start_s
            if drive.update_s > 0:
                t_s = math.floor(t_s / drive.update_s) * drive.update_s
            drawn_uj = math.floor(1e6 * drive.profile.energy_between_j(0.0, max(t_s, 0.0)))
            return f"{(drive.start_uj + drawn_uj) % drive.modulus_uj}\n"
        return path.read_text(encoding="ascii")

    def _zone_files(self, path: Path, name: str, energy_uj: int, max_range_uj: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "name").write_text(f"{name}\n")
        (path / "enabled").write_text("1\n")
        (path / "energy_uj").write_text(f"{energy_uj}\n")
        (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
