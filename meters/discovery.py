"""Which devices a node offers: the backends `open_backend` opens for each ``--backend`` choice.

``auto`` opens **every real domain it finds**, devices in this order: NVIDIA GPUs (NVML, when
``pynvml`` imports and lists GPUs), AMD GPUs (amdsmi, when it imports and lists GPUs), then the
CPU packages and DRAM (RAPL through powercap; where RAPL is absent or unreadable, CPU socket
counters through hwmon), read as one `meters.backends.node.NodeBackend`. It never meters
simulated devices (those come only from ``simulated``). Where nothing can be read it meters an
estimate when a CPU TDP is given, and otherwise raises `NothingMeasurable`: the caller runs the
job unmetered. `Sources` says where to look; tests point it at the shipped fakes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .backends.base import Clock, DeviceInfo, DeviceStatus, PowerBackend
from .errors import MeterError, NothingMeasurable
from .settings import BackendChoice, PowerReading

if TYPE_CHECKING:
    from .backends.amdsmi import AmdSmiModule
    from .backends.nvml_api import NvmlModule

__all__ = ["Sources", "open_backend"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sources:
    """Where `open_backend` looks for devices: the vendor library and the kernel's files.

    The defaults are the real ones; tests point them at the shipped fakes
    (`meters.testing.fake_pynvml`, `meters.testing.fake_powercap`, `meters.testing.fake_hwmon`)
    instead of patching anything.

    Attributes:
        nvml: The NVML module (None: ``import pynvml``).
        amdsmi: The AMD SMI module (None: ``import amdsmi``).
        powercap: The powercap class directory (RAPL).
        hwmon: The hwmon class directory.
        proc_stat: The file the CPU estimate reads utilisation from.
        read_text: How sysfs files are read (None: plainly); the fakes pass one that refuses
            "root-only" files even to root.
        clock: The clock every backend stamps readings with (None: the system clocks).
        env: Environment for ``CUDA_VISIBLE_DEVICES`` (None: ``os.environ``).
    """

    nvml: NvmlModule | None = None
    amdsmi: AmdSmiModule | None = None
    powercap: Path = Path("/sys/class/powercap")
    hwmon: Path = Path("/sys/class/hwmon")
    proc_stat: Path = Path("/proc/stat")
    read_text: Callable[[Path], str] | None = None
    clock: Clock | None = None
    env: Mapping[str, str] | None = None

    @classmethod
    def under(cls, sysfs_root: str | os.PathLike[str]) -> Sources:
        """The real sources, with sysfs mounted at ``sysfs_root`` (``/sys``, ``/host/sys``)."""
        root = Path(sysfs_root)
        return cls(powercap=root / "class" / "powercap", hwmon=root / "class" / "hwmon")


@dataclass(frozen=True, slots=True)
class _Found:
    """One domain `auto` found: its backend, a label for people, and whether it reads."""

    backend: PowerBackend
    label: str
    readable: bool


def _count(devices: Sequence[DeviceInfo], one: str, many: str) -> str:
    return f"{len(devices)} {one if len(devices) == 1 else many}"


def _readable(backend: PowerBackend) -> bool:
    """Whether one read finds any device answering (not denied, unsupported or lost)."""
    readings = backend.read()
    refused = (DeviceStatus.DENIED, DeviceStatus.NOT_SUPPORTED, DeviceStatus.LOST)
    return any(readings.status_of(i) not in refused for i in range(len(readings)))


def _why_unreadable(devices: Sequence[DeviceInfo]) -> str:
    """The first unreadable device's note (file and fix), and how many more share the fate."""
    notes = [d.note for d in devices if d.note]
    if not notes:
        return "no device can be read"
    more = f" (and {len(notes) - 1} more like it)" if len(notes) > 1 else ""
    return notes[0] + more


def _cpu_label(kind: str, devices: Sequence[DeviceInfo], readable: bool) -> str:
    packages = [d for d in devices if d.scope == "package"]
    dram = [d for d in devices if d.scope == "dram"]
    parts = [_count(packages, "package", "packages")]
    if dram:
        parts.append(f"{len(dram)} DRAM")
    label = f"{kind}: {', '.join(parts)}"
    return label if readable else f"{label} (unreadable: permission denied)"


def _open_nvml(
    gpus: Sequence[int | str] | None,
    power_reading: PowerReading,
    sources: Sources,
    absent: list[str],
    log: logging.Logger,
) -> _Found | None:
    from .backends.nvml import NvmlBackend

    try:
        backend = NvmlBackend(
            nvml=sources.nvml,
            gpus=gpus,
            env=sources.env,
            clock=sources.clock,
            power_reading=power_reading,
            logger=log,
        )
    except MeterError as e:
        absent.append(f"nvml: no NVIDIA GPU ({e})")
        if gpus:  # a selection was asked for: say it was not honoured
            log.warning("thermoledger: --gpus %s: %s", ",".join(map(str, gpus)), e)
        return None
    devices = backend.devices()
    if not devices:
        backend.close()
        unopened = backend.selection.unopened
        refused = f" (refused: {'; '.join(unopened)})" if unopened else ""
        absent.append(f"nvml: NVML lists no GPU for this process{refused}")
        return None
    return _Found(backend, f"nvml: {_count(devices, 'GPU', 'GPUs')}", readable=True)


def _open_amdsmi(sources: Sources, absent: list[str]) -> _Found | None:
    # the backend imports the vendor's binding only when it is built without one
    from .backends.amdsmi import AmdSmiBackend

    try:
        backend = AmdSmiBackend(amdsmi=sources.amdsmi, clock=sources.clock)
    except MeterError as e:  # no ROCm library, no binding, or no AMD GPU
        absent.append(f"amdsmi: no AMD GPU ({e})")
        return None
    devices = backend.devices()
    if not devices:
        backend.close()
        absent.append("amdsmi: no AMD GPU")
        return None
    return _Found(backend, f"amdsmi: {_count(devices, 'GPU', 'GPUs')}", readable=True)


def _open_cpu(sources: Sources, absent: list[str]) -> _Found | None:
    """CPU packages and DRAM: RAPL (powercap); where it is absent or unreadable, hwmon.

    Never both: they read the same package counters. A RAPL tree that cannot be read is kept
    (listed as denied, with the fix) only when hwmon has nothing readable either.
    """
    from .backends.hwmon import HwmonBackend
    from .backends.rapl import RaplBackend

    denied: _Found | None = None
    try:
        rapl = RaplBackend(sources.powercap, read_text=sources.read_text, clock=sources.clock)
    except MeterError as e:
        absent.append(f"rapl: {e}")
    else:
        readable = _readable(rapl)
        found = _Found(rapl, _cpu_label("rapl", rapl.devices(), readable), readable)
        if readable:
            return found
        denied = found
        absent.append(f"rapl: {_why_unreadable(rapl.devices())}")
    try:
        hwmon = HwmonBackend(sources.hwmon, read_text=sources.read_text, clock=sources.clock)
    except MeterError as e:
        absent.append(f"hwmon: {e}")
        return denied
    devices = hwmon.devices()
    drivers = sorted({d.uid.split(":")[0] for d in devices})
    readable = _readable(hwmon)
    label = f"hwmon: {_count(devices, 'socket', 'sockets')} ({', '.join(drivers)})"
    if readable:
        if denied is not None:
            denied.backend.close()
        return _Found(hwmon, label, readable=True)
    absent.append(f"hwmon: {_why_unreadable(devices)}")
    if denied is not None:
        hwmon.close()
        return denied
    return _Found(hwmon, f"{label} (unreadable: permission denied)", readable=False)


def _open_auto(
    gpus: Sequence[int | str] | None,
    cpu_tdp_w: float | None,
    power_reading: PowerReading,
    sources: Sources,
    log: logging.Logger,
) -> tuple[PowerBackend, str]:
    """Every real domain found, GPUs first (see `open_backend`)."""
    absent: list[str] = []
    found: list[_Found] = []
    openers: tuple[Callable[[], _Found | None], ...] = (
        lambda: _open_nvml(gpus, power_reading, sources, absent, log),
        lambda: _open_amdsmi(sources, absent),
        lambda: _open_cpu(sources, absent),
    )
    try:
        for opener in openers:
            opened = opener()
            if opened is not None:
                found.append(opened)
        if not any(f.readable for f in found):
            for f in found:
                f.backend.close()
            found = []
            if cpu_tdp_w is None:
                raise NothingMeasurable(absent)
            from .backends.estimate import CpuEstimateBackend

            try:
                estimate = CpuEstimateBackend(
                    cpu_tdp_w, proc_stat=sources.proc_stat, clock=sources.clock
                )
            except (OSError, ValueError) as e:
                raise NothingMeasurable([*absent, f"estimate: {e}"]) from e
            log.warning(
                "thermoledger: nothing measurable on this node (%s): metering an ESTIMATE "
                "instead (CPU utilisation × %g W TDP, ±50 %%), labelled as such, not a measurement",
                "; ".join(absent),
                cpu_tdp_w,
            )
            return estimate, f"estimate: CPU utilisation × {cpu_tdp_w:g} W TDP (not a measurement)"
    except BaseException:
        for f in found:
            with contextlib.suppress(Exception):
                f.backend.close()
        raise
    for reason in absent:
        log.info("thermoledger: auto: %s", reason)
    label = "; ".join(f.label for f in found)
    if len(found) == 1:
        return found[0].backend, label
    from .backends.node import NodeBackend

    return NodeBackend([f.backend for f in found], clock=sources.clock), label


def open_backend(
    choice: BackendChoice,
    *,
    gpus: Sequence[int | str] | None = None,
    cpu_tdp_w: float | None = None,
    logger: logging.Logger | None = None,
    sources: Sources | None = None,
    power_reading: PowerReading = "auto",
) -> tuple[PowerBackend, str]:
    """Open the devices to meter.

    ``auto`` opens **every real domain it finds**, devices in this order: NVIDIA GPUs (NVML,
    when ``pynvml`` imports and lists GPUs), AMD GPUs (amdsmi, when it imports and lists GPUs), then
    the CPU packages and DRAM (RAPL through powercap; where RAPL is absent or unreadable, CPU
    socket counters through hwmon). Several domains are read as one `NodeBackend`. RAPL files
    readable by root only stay listed, as denied with the fix, next to the GPUs; they never
    stop the GPUs from being metered. Where nothing can be read, ``auto`` meters an estimate
    when ``cpu_tdp_w`` is given (`meters.backends.estimate`, labelled ``estimate``) and raises
    `NothingMeasurable` otherwise: the caller runs the job unmetered. It never meters
    simulated devices: those come only from ``simulated``.

    Args:
        choice: ``auto``, or one kind only: ``nvml``, ``amdsmi``, ``rapl``, ``hwmon`` or
            ``simulated``.
        gpus: NVML selection (indices or UUIDs); with ``simulated``, how many devices.
        cpu_tdp_w: The CPUs' TDP, W, for the estimate where nothing is measurable (``auto``).
        logger: Where ``auto`` says what it did not find (INFO) or what it estimates (WARNING).
        sources: Where to look (default: the real library and ``/sys``).
        power_reading: Which NVML power reading to take (`meters.settings.PowerReading`;
            default ``auto``: the driver's 1 s average where a GPU has one). Other backends
            state their own.

    Returns:
        The backend and a label for people: ``"nvml: 8 GPUs; rapl: 2 packages, 2 DRAM"`` for
        ``auto``, the choice's name otherwise.

    Raises:
        NothingMeasurable: ``auto`` found nothing readable and no ``cpu_tdp_w`` was given.
        meters.errors.MeterError: ``nvml``, ``rapl`` or ``hwmon`` was asked for and cannot be
            opened.
    """
    log = logger if logger is not None else _LOG
    sources = sources if sources is not None else Sources()
    if choice == "auto":
        return _open_auto(gpus, cpu_tdp_w, power_reading, sources, log)
    if choice == "rapl":
        from .backends.rapl import RaplBackend

        return RaplBackend(sources.powercap, read_text=sources.read_text, clock=sources.clock), (
            "rapl"
        )
    if choice == "hwmon":
        from .backends.hwmon import HwmonBackend

        return HwmonBackend(sources.hwmon, read_text=sources.read_text, clock=sources.clock), (
            "hwmon"
        )
    if choice == "nvml":
        from .backends.nvml import NvmlBackend

        nvml = NvmlBackend(
            nvml=sources.nvml,
            gpus=gpus,
            env=sources.env,
            clock=sources.clock,
            power_reading=power_reading,
            logger=log,
        )
        return nvml, "nvml"
    if choice == "amdsmi":
        from .backends.amdsmi import AmdSmiBackend

        return AmdSmiBackend(amdsmi=sources.amdsmi, gpus=gpus, clock=sources.clock), "amdsmi"
    return _simulated(gpus, sources.clock), "simulated"


def _simulated(gpus: Sequence[int | str] | None, clock: Clock | None = None) -> PowerBackend:
    from .backends.simulated import SimulatedBackend, default_fleet

    return SimulatedBackend(default_fleet(len(gpus) if gpus else 1), clock=clock)
