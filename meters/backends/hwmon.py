"""CPU socket energy through Linux hwmon, where there is no powercap RAPL tree to read.

Modest on purpose: only counters the kernel documents. The hwmon sysfs ABI
(``Documentation/hwmon/sysfs-interface``) defines ``energy[1-*]_input`` as a cumulative energy
in **microjoules** (RO) and ``energy[1-*]_label`` as the channel's name. The drivers read here
expose the CPU's RAPL energy MSRs that way (``Documentation/hwmon/amd_energy.rst``):

    /sys/class/hwmon/hwmonK/name                "amd_energy" (or "zenergy", its fork)
    /sys/class/hwmon/hwmonK/energyN_label       "EcoreX" (core X) or "EsocketX" (socket X)
    /sys/class/hwmon/hwmonK/energyN_input       cumulative energy, µJ

Only the **socket** channels are metered (scope ``package``, kind cpu): a core's counter is part
of its socket's, and adding both would count it twice. The driver accumulates the 32-bit MSRs
into 64-bit counters (or reads 64-bit MSRs), so a decrease means a reset (no wrap modulus).
Since CVE-2020-12912 the driver makes ``energyN_input`` readable by owner and group only: such
a channel is listed with `DeviceStatus.DENIED`, NaN figures and a message naming the file and
the fix, as for RAPL. There is no power reading: power comes from counter differences.

Not read, and why: ``coretemp`` offers temperatures only; ``zenpower`` offers ``power*_input``
estimates from the SVI2 voltage regulator telemetry, not energy counters, from a driver outside
the kernel tree; ``amd_energy`` itself left the mainline kernel in 5.13 and lives on as a DKMS
module (``amd/amd_energy``), as does ``zenergy``. Intel CPUs expose RAPL through powercap
(`meters.backends.rapl`), which `meters.discovery.open_backend` prefers whenever it is there.
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
    SystemClock,
    UncertaintyHint,
)
from .sysfs import CounterFileBackend, CounterFiles, read_text_ascii, refused

__all__ = ["CPU_ENERGY_DRIVERS", "DEFAULT_ROOT", "HwmonBackend", "permission_fix"]

DEFAULT_ROOT = Path("/sys/class/hwmon")
CPU_ENERGY_DRIVERS = ("amd_energy", "zenergy")
"""hwmon drivers whose ``EsocketX`` energy channels are CPU socket counters."""
_HWMON = re.compile(r"^hwmon(\d+)$")
_ENERGY_INPUT = re.compile(r"^energy(\d+)_input$")
_SOCKET_LABEL = re.compile(r"^Esocket(\d+)$")
_UPDATE_S = 0.001  # the RAPL MSRs behind them update about every millisecond
_RESOLUTION_J = 15.3e-6  # the default energy status unit, 1/2^16 J (amd_energy.rst)


def permission_fix(path: Path) -> str:
    """How to let an unprivileged meter read the hwmon energy file ``path``."""
    return (
        "since CVE-2020-12912 amd_energy makes energy*_input readable by owner and group "
        f"only. Run the meter as root or in the file's group, or grant read access: sudo chmod "
        f"a+r {path.parent / 'energy*_input'} (reset when the driver loads again). This re-opens "
        "the power side channel the CVE closed: do it only on hosts that run trusted code"
    )


@dataclass(frozen=True, slots=True)
class _Channel:
    counter: Path
    info: DeviceInfo


class HwmonBackend(CounterFileBackend):
    """A `PowerBackend` over the CPU socket energy counters of hwmon drivers.

    Args:
        root: The hwmon class directory (default ``/sys/class/hwmon``).
        read_text: How to read a whole file (default: ``pread`` on descriptors kept open for
            the counters, `sysfs.CounterFiles`); the fake hwmon tree passes
            one that can refuse reads even to root.
        clock: Time source for timestamps (default: the system clocks).

    Raises:
        DeviceUnavailable: No socket energy channel of a known driver under ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        *,
        read_text: Callable[[Path], str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.root = Path(root)
        self._read_text = read_text if read_text is not None else read_text_ascii
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._channels = tuple(self._discover())
        if not self._channels:
            raise DeviceUnavailable(
                f"no CPU socket energy counter under {self.root} (no "
                f"{' or '.join(CPU_ENERGY_DRIVERS)} hwmon driver loaded, or the directory is not "
                "mounted in this container)"
            )
        self._files = CounterFiles(
            [channel.counter for channel in self._channels],
            clock=self._clock,
            denied=_denied,
            read_text=read_text,
        )

    def devices(self) -> tuple[DeviceInfo, ...]:
        """The socket channels, in hwmon order then socket order."""
        return tuple(channel.info for channel in self._channels)

    # -- discovery ----------------------------------------------------------------------------

    def _discover(self) -> list[_Channel]:
        if not self.root.is_dir():
            return []
        chips = sorted(
            (int(m.group(1)), entry)
            for entry in self.root.iterdir()
            if (m := _HWMON.match(entry.name))
        )
        found: list[_Channel] = []
        for _, chip in chips:
            driver = self._optional(chip / "name")
            if driver not in CPU_ENERGY_DRIVERS:
                continue
            inputs = sorted(
                (int(m.group(1)), entry)
                for entry in chip.iterdir()
                if (m := _ENERGY_INPUT.match(entry.name))
            )
            for channel, path in inputs:
                label = self._optional(chip / f"energy{channel}_label") or ""
                socket = _SOCKET_LABEL.match(label)
                if socket is None:
                    continue  # a core: part of its socket's counter
                found.append(self._describe(path, driver, int(socket.group(1)), label))
        return found

    def _describe(self, path: Path, driver: str, socket: int, label: str) -> _Channel:
        note = ""
        try:
            self._read_text(path)
        except PermissionError as e:
            note = str(_denied(path, e))
        except OSError as e:
            note = f"cannot read {path}: {e}"
        info = DeviceInfo(
            backend="hwmon",
            index=socket,
            uid=f"{driver}:{label}",
            name=f"CPU socket {socket} ({driver})",
            power_limit_w=None,
            has_energy_counter=True,
            power_method=Method.NONE,
            counter_wrap_j=None,
            scope="package",
            uncertainty=UncertaintyHint(
                counter_resolution_j=_RESOLUTION_J,
                counter_update_s=_UPDATE_S,
                note=f"RAPL socket energy counter read through hwmon ({driver})",
            ),
            note=note,
        )
        return _Channel(path, info)


def _denied(path: Path, error: PermissionError) -> PermissionDenied:
    return refused(path, error, permission_fix(path))
