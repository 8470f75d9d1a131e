"""Which power reading an NVIDIA GPU gives, and how it was chosen (for `meters.backends.nvml`).

Power is chosen per GPU at open, by ``power_reading`` (`meters.settings.PowerReading`):

* the driver's **average** (``auto``, the default, and ``average``): the field value
  ``NVML_FI_DEV_POWER_AVERAGE`` (185; nvml.h: "GPU power averaged over 1 sec interval,
  supported on Ampere (except GA100) or newer architectures"), else
  ``nvmlDeviceGetPowerUsage`` where that is the average ("On Ampere (except GA100) or newer
  GPUs, the API returns power averaged over 1 sec interval. On GA100 and older
  architectures, instantaneous power is returned", NVML API reference). Both are the mean of
  the last second: `Method.POWER_AVG` with `UncertaintyHint.power_window_s` = 1 s, which the
  accounting core integrates with its lag correction. An average sees all of the time; a
  point sample every 0.1 s aliases any load not in step with the tick;
* the **instantaneous** reading (``instant``, or where a GPU has no average: GA100, before
  Ampere): ``NVML_FI_DEV_POWER_INSTANT`` (186), else ``nvmlDeviceGetPowerUsage`` where that
  is instantaneous; `Method.POWER_INSTANT`, its window unknown (integrated as point samples).

A GPU that lacks the reading asked for gets the other kind, said in its `DeviceInfo.note`
(and, when ``average`` or ``instant`` was asked for explicitly, once in the log).
Whether ``nvmlDeviceGetPowerUsage`` averages depends on the chip: GA100 boards (A100, A800,
A30, ...) are Ampere but instantaneous. The chip is told by the PCI device id
(``nvmlDeviceGetPciInfo``), whose list here is taken from the PCI ID database; the board
name is the fallback (it misses renamed boards, e.g. an A800 reported under another name).
Both in milliwatts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from .base import Method
from .nvml_api import (
    NVML_DEVICE_ARCH_AMPERE,
    NVML_DEVICE_ARCH_UNKNOWN,
    NVML_FI_DEV_POWER_AVERAGE,
    NVML_FI_DEV_POWER_INSTANT,
    NVML_POWER_SCOPE_GPU,
)

__all__ = [
    "AVERAGE_USAGE_WINDOW_S",
    "FIELD_CHOICES",
    "FieldRequest",
    "PowerChoice",
    "at_least_ampere",
    "is_ga100",
    "pci_device_id",
    "usage_method",
]

FieldRequest = int | tuple[int, int]  # a field id, or (field id, NVML_POWER_SCOPE_*)

# GA100 boards return instantaneous power from nvmlDeviceGetPowerUsage although they are Ampere.
# The chip is told by the PCI device id: the upper 16 bits of nvmlPciInfo_t.pciDeviceId ("the
# combined 16-bit device id and 16-bit vendor id", nvml.h). These are every id the PCI ID
# database lists as GA100 for vendor 10de (pciutils/pciids, pci.ids version 2026.08.22; its
# other GA100 entry, 1af1, is the A100's NVSwitch, not a GPU): 20b0 A100 SXM4 40GB, 20b1 A100
# PCIe 40GB, 20b2 A100 SXM4 80GB, 20b3 A100-SXM-64GB, 20b5 A100 PCIe 80GB, 20b6 PG506-232, 20b7
# A30 PCIe, 20b8 A100X, 20b9 A30X, 20bb DRIVE A100 PROD, 20bd A800 SXM4 40GB, 20be/20bf GRID
# A100A/B, 20c0 initial devid, 2082/20c2 CMP 170HX, 20f0/20f2 A100-PG506-207/217, 20f1 A100 PCIe
# 40GB, 20f3 A800-SXM4-80GB, 20f5 A800 80GB PCIe, 20f6 A800 40GB PCIe, 20fd AX800, 20fe INT SKU;
# 2080, 2081, 20b4, 20ff unnamed.
_GA100_PCI_DEVICE_IDS: Final = frozenset(
    {0x2080, 0x2081, 0x2082, *range(0x20B0, 0x20BA), 0x20BB, 0x20BD, 0x20BE, 0x20BF, 0x20C0}
    | {0x20C2, 0x20F0, 0x20F1, 0x20F2, 0x20F3, 0x20F5, 0x20F6, 0x20FD, 0x20FE, 0x20FF}
)
_NVIDIA_PCI_VENDOR = 0x10DE
# Where NVML gives no PCI id, the board's name: A100, A100X, A30, A30X, A800, AX800.
_GA100_NAME = re.compile(r"\bA(?:100|30|800|X800)(?:X|\b)")

# The averaging window of each averaged reading, s, and where NVIDIA states it (both 1 s; nothing
# NVML answers tells it at run time, so it is taken from the documentation).
_AVERAGE_FIELD_WINDOW_S = 1.0  # nvml.h, NVML_FI_DEV_POWER_AVERAGE: "averaged over 1 sec interval"
AVERAGE_USAGE_WINDOW_S = 1.0  # NVML API reference, nvmlDeviceGetPowerUsage: the same words


@dataclass(frozen=True, slots=True)
class PowerChoice:
    """One GPU's power reading, as chosen at open.

    Attributes:
        field_id: The field value read (None: ``nvmlDeviceGetPowerUsage``, or nothing).
        method: `Method.POWER_AVG`, `Method.POWER_INSTANT`, or `Method.NONE` (no reading).
        window_s: Averaging window, s (None: not an average, or unknown).
        source: Which call gives it and where its window is documented (for the hint's note).
        note: A caveat for `DeviceInfo.note` ("" when none).
        other: The GPU lacks the kind of reading asked for; this is the other kind.
        scope: The ``NVML_POWER_SCOPE_*`` the field is asked at (module: a C2C superchip).
    """

    field_id: int | None
    method: Method
    window_s: float | None
    source: str
    note: str = ""
    other: bool = False
    scope: int = NVML_POWER_SCOPE_GPU

    @property
    def request(self) -> FieldRequest | None:
        """The field as ``nvmlDeviceGetFieldValues`` is asked for it (None: no field)."""
        if self.field_id is None or self.scope == NVML_POWER_SCOPE_GPU:
            return self.field_id
        return (self.field_id, self.scope)


FIELD_CHOICES: Final = {
    NVML_FI_DEV_POWER_AVERAGE: PowerChoice(
        NVML_FI_DEV_POWER_AVERAGE,
        Method.POWER_AVG,
        _AVERAGE_FIELD_WINDOW_S,
        "NVML_FI_DEV_POWER_AVERAGE, the mean of the last 1 s (nvml.h: 'GPU power averaged over "
        "1 sec interval')",
    ),
    NVML_FI_DEV_POWER_INSTANT: PowerChoice(
        NVML_FI_DEV_POWER_INSTANT, Method.POWER_INSTANT, None, "NVML_FI_DEV_POWER_INSTANT"
    ),
}


def at_least_ampere(arch: int) -> bool:
    return NVML_DEVICE_ARCH_AMPERE <= arch < NVML_DEVICE_ARCH_UNKNOWN


def pci_device_id(pci: Any) -> int | None:
    """The 16-bit PCI device id in a ``nvmlPciInfo_t``, or None (no answer, not NVIDIA's)."""
    combined = getattr(pci, "pciDeviceId", None)
    if not isinstance(combined, int) or combined & 0xFFFF != _NVIDIA_PCI_VENDOR:
        return None
    return (combined >> 16) & 0xFFFF


def is_ga100(name: str, pci_device_id: int | None) -> tuple[bool, str]:
    """Whether a GPU is a GA100 (A100, A800, A30, ...), and what says so.

    Args:
        name: The name NVML reports.
        pci_device_id: The 16-bit PCI device id (None: NVML gave none).

    Returns:
        ``(True, reason)`` when the PCI device id is a GA100 one (`_GA100_PCI_DEVICE_IDS`), or
        else the name reads like a GA100 board (A100, A100X, A30, A30X, A800, AX800): a renamed
        board goes unseen by the name alone, a new GA100 id by the table alone.
        ``(False, "")`` otherwise.
    """
    if pci_device_id is not None and pci_device_id in _GA100_PCI_DEVICE_IDS:
        return True, f"GA100 by its PCI device id 0x{pci_device_id:04X}"
    if _GA100_NAME.search(name):
        return True, "GA100 by its name"
    return False, ""


def usage_method(name: str, arch: int | None, pci_device_id: int | None) -> tuple[Method, str]:
    """What ``nvmlDeviceGetPowerUsage`` returns on this GPU, and a note when it is a guess."""
    if arch is None or arch == NVML_DEVICE_ARCH_UNKNOWN:
        return (
            Method.POWER_INSTANT,
            "architecture unknown: whether NVML averages the power reading is not known",
        )
    if not at_least_ampere(arch):
        return Method.POWER_INSTANT, ""
    ga100, why = is_ga100(name, pci_device_id)
    if ga100:
        return Method.POWER_INSTANT, f"{why}: nvmlDeviceGetPowerUsage is instantaneous there"
    return Method.POWER_AVG, ""
