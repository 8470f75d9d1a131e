"""A fake of the ``pynvml`` module, with NVML's units, return codes and scripted faults.

`FakeNvml` is an object that quacks like the subset of ``pynvml`` that
`meters.backends.nvml.NvmlBackend` calls (`meters.backends.nvml_api.NvmlModule`, whose NVML
constants it takes as its own); pass it as ``NvmlBackend(nvml=FakeNvml(...))``. It
never registers itself in ``sys.modules``, so it cannot shadow the real module. Like NVML it
speaks milliwatts and millijoules (integers), returns field values as ctypes
``c_nvmlFieldValue_t`` arrays shaped like the real binding's, and raises ``NVMLError`` instances
carrying NVML's return codes (``err.value``), mapped to per-code subclasses as pynvml does.

Each `FakeGpu` draws power from a `meters.backends.simulated.Profile` driven by the injected
clock (t = 0 when the fake driver "loads", i.e. when `FakeNvml` is built). Scriptable:

- architecture-dependent behaviour: no energy counter and no power fields before Volta; MIG mode
  only on Ampere and newer; ``nvmlDeviceGetPowerUsage`` a 1 s average or instantaneous, and the
  field ``NVML_FI_DEV_POWER_AVERAGE`` only where it averages (nvml.h: "supported on Ampere
  (except GA100) or newer architectures"), as the presets say per board;
- ``pci_device_id``: the 16-bit PCI device id ``nvmlDeviceGetPciInfo`` reports (in a
  ``nvmlPciInfo_t`` laid out as the real binding's), so that a GA100 is known by its id whatever
  its name (`a800` with another name, say);
- ``reloads_at_s``: driver reloads, after which the counter restarts from 0;
- ``lost_at_s``: the GPU falls off the bus (every call raises GPU_IS_LOST from then on);
- ``faults``: any call failing with any code during a time window, or (``field_id``) one field
  of ``nvmlDeviceGetFieldValues`` answering that code in its own ``nvmlReturn``; ``count``
  limits a fault to its first so many calls (a transient TIMEOUT that clears when asked again).
  The handle lookups take faults too (``nvmlDeviceGetHandleByIndex`` / ``ByUUID`` refused with
  NO_PERMISSION: a GPU outside the process's device cgroup, as under Slurm or in a container);
- ``energy_field``: the field value ``NVML_FI_DEV_ENERGY`` (the counter, as an unsigned long long;
  default: wherever the counter answers), optionally off from the counter by
  ``energy_field_offset_mj`` to mimic a driver whose field disagrees;
- ``call_latency_s``: every call on the GPU takes that long (a `ManualClock` is advanced, a real
  clock is slept on);
- ``slow_calls``: calls started during a time window take that much longer (`SlowCall`: a GPU
  that turns sluggish mid-run, or hangs for a while, as one falling off the bus can);
- ``counter_update_s``: the counter only moves every so often, as on real GPUs (20-100 ms);
- ``field_overrides``: a field answering a fixed value of another value type (a signed or
  floating-point member: negative, NaN), as a driver bug or a future driver might;
- ``minor_number`` and ``pci_bus``: the device's minor number (``/dev/nvidia<minor>``, what
  Slurm's ``SLURM_STEP_GPUS`` lists) and its PCI bus (``nvmlPciInfo_t.busId``), by default both
  from the NVML index; set them to make NVML's order differ from the PCI bus order or the
  minor numbers, as NVML allows ("no guarantees of consistency between reboots");
- ``c2c_mode``: a C2C superchip (GH200, GB200): ``nvmlDeviceGetC2cModeInfoV`` answers
  ``isC2cEnabled`` = 1 and the power fields answer only at ``NVML_POWER_SCOPE_MODULE`` (scope
  1, the whole module: CPU, GPU and memory), the GPU-scope ones NOT_SUPPORTED; the counter and
  ``nvmlDeviceGetPowerUsage`` are the module's, i.e. the profile is the module's draw (`gh200`).
  ``c2c_query`` False: the driver lacks ``nvmlDeviceGetC2cModeInfoV`` (FUNCTION_NOT_FOUND).
- ``memory_busy`` and ``gpu_busy``: what ``nvmlDeviceGetUtilizationRates`` reports, as NVML
  defines it: the percent of the last ``utilization_period_s`` (NVML: 1/6 s to 1 s by product)
  during which memory was read or written (a kernel ran), whole percent. Each is a
  `meters.backends.simulated.Profile` of the busy indicator in [0, 1] (``steady(0.4)``: busy
  40 % of the time; a `Bursty` between 0 and 1: busy in bursts), averaged exactly over the
  period through its primitive; ``utilization`` False, or MIG mode on ("on MIG-enabled GPUs,
  querying device utilization rates is not currently supported"), answers NOT_SUPPORTED.
"""

from __future__ import annotations

import ctypes
import math
import struct
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..backends import nvml_api as codes
from ..backends.base import Clock, SystemClock
from ..backends.simulated import Profile, steady
from . import ManualClock

T = TypeVar("T")


class c_nvmlValue_t(ctypes.Union):  # noqa: N801  (pynvml's name)
    """NVML's value union, field for field as in ``pynvml.c_nvmlValue_t``."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("dVal", ctypes.c_double),
        ("uiVal", ctypes.c_uint),
        ("ulVal", ctypes.c_ulong),
        ("ullVal", ctypes.c_ulonglong),
        ("sllVal", ctypes.c_longlong),
        ("siVal", ctypes.c_int),
        ("usVal", ctypes.c_ushort),
    ]


class c_nvmlFieldValue_t(ctypes.Structure):  # noqa: N801  (pynvml's name)
    """One field value, field for field as in ``pynvml.c_nvmlFieldValue_t``."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("fieldId", ctypes.c_uint32),
        ("scopeId", ctypes.c_uint32),
        ("timestamp", ctypes.c_int64),
        ("latencyUsec", ctypes.c_int64),
        ("valueType", ctypes.c_uint),
        ("nvmlReturn", ctypes.c_uint),
        ("value", c_nvmlValue_t),
    ]


_FieldValue = c_nvmlFieldValue_t

_BUS_ID_LEGACY_SIZE = 16  # pynvml's NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE
_BUS_ID_SIZE = 32  # pynvml's NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE
NVIDIA_PCI_VENDOR_ID = 0x10DE


class c_nvmlC2cModeInfo_v1_t(ctypes.Structure):  # noqa: N801  (pynvml's name)
    """C2C mode, field for field as in ``pynvml.c_nvmlC2cModeInfo_v1_t``."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [("isC2cEnabled", ctypes.c_uint)]


class c_nvmlUtilization_t(ctypes.Structure):  # noqa: N801  (pynvml's name)
    """Utilization rates, field for field as in ``pynvml.c_nvmlUtilization_t``: whole percent of
    the driver's last sample period."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class nvmlPciInfo_t(ctypes.Structure):  # noqa: N801  (pynvml's name)
    """PCI attributes, field for field as in ``pynvml.nvmlPciInfo_t`` (what GetPciInfo returns).

    ``pciDeviceId`` is "the combined 16-bit device id and 16-bit vendor id" (nvml.h): device id
    in the upper 16 bits, 0x10DE below. ``busId`` is ``domain:bus:device.function`` as bytes.
    """

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("busIdLegacy", ctypes.c_char * _BUS_ID_LEGACY_SIZE),
        ("domain", ctypes.c_uint),
        ("bus", ctypes.c_uint),
        ("device", ctypes.c_uint),
        ("pciDeviceId", ctypes.c_uint),
        ("pciSubSystemId", ctypes.c_uint),
        ("busId", ctypes.c_char * _BUS_ID_SIZE),
    ]


# How the fake driver writes a c_nvmlFieldValue_t: fieldId, scopeId, timestamp, latencyUsec,
# valueType, nvmlReturn, then the union member of the value's type, in the struct's native
# layout, in one struct.pack_into per field (as the C library fills it, not attribute by
# attribute through ctypes).
_SLOT_SIZE = ctypes.sizeof(_FieldValue)
_HEADER = "@IIqqII"
_NO_VALUE = struct.Struct(_HEADER)
_WITH_VALUE = {
    name: struct.Struct(_HEADER + code)
    for name, code in (
        ("dVal", "d"),
        ("uiVal", "I"),
        ("ulVal", "L"),
        ("ullVal", "Q"),
        ("sllVal", "q"),
        ("siVal", "i"),
        ("usVal", "H"),
    )
}
assert _NO_VALUE.size == c_nvmlFieldValue_t.value.offset  # the layout the formats assume


class NVMLError(Exception):
    """Like ``pynvml.NVMLError``: ``NVMLError(code)`` builds the subclass for that code."""

    _value_class: ClassVar[dict[int, type[NVMLError]]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._value_class.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        name, _ = codes._ERRORS.get(self.value, (f"NVML Error with code {self.value}", None))
        return name


def _make_error_classes() -> dict[str, type[NVMLError]]:
    made = {}
    for name in dir(codes):
        if not name.startswith("NVML_ERROR_"):
            continue
        value = getattr(codes, name)
        # NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost, as pynvml names them
        cls_name = "NVMLError_" + "".join(p.capitalize() for p in name[11:].split("_"))

        def new(cls: type[NVMLError], *args: object, _value: int = value) -> NVMLError:
            obj = Exception.__new__(cls)
            obj.value = _value
            return obj

        def init(self: NVMLError, *args: object, _value: int = value) -> None:
            Exception.__init__(self, _value)

        cls = type(cls_name, (NVMLError,), {"__new__": new, "__init__": init})
        NVMLError._value_class[value] = cls
        made[cls_name] = cls
    return made


_Error = NVMLError  # the name stays usable inside FakeNvml, whose NVMLError attribute shadows it
ERROR_CLASSES = _make_error_classes()
"""``NVMLError_<Name>`` subclasses by name (also attributes of every `FakeNvml`)."""


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted failure while start <= t < end.

    Without ``field_id``: ``call`` (None: every call) raises ``code``. With ``field_id``: the call
    succeeds but that field of ``nvmlDeviceGetFieldValues`` answers ``code`` in its ``nvmlReturn``.
    A fault on ``nvmlDeviceGetTotalEnergyConsumption`` also fails the ENERGY field (the same
    counter), answered in that field's ``nvmlReturn``. ``count`` (None: no limit): the fault
    fires on its first ``count`` matching calls (fields) only.
    """

    code: int
    start_s: float = 0.0
    end_s: float = math.inf
    call: str | None = None
    field_id: int | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True)
class SlowCall:
    """Calls started while start <= t < end take ``latency_s`` seconds longer.

    ``call`` (None: every call) names the one NVML function that is slow. The extra time is
    spent like ``call_latency_s``, half before the value is taken and half after; a window the
    call overlaps but did not start in does not slow it.
    """

    latency_s: float
    start_s: float = 0.0
    end_s: float = math.inf
    call: str | None = None

    def __post_init__(self) -> None:
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"latency_s must be a finite number >= 0, got {self.latency_s!r}")


@dataclass(frozen=True, slots=True)
class FakeGpu:
    """One fake GPU. Times are seconds since the fake driver loaded; power limit in mW.

    Attributes:
        name: Name as NVML reports it.
        architecture: ``NVML_DEVICE_ARCH_*`` code.
        profile: The power it draws.
        uuid: ``GPU-…`` UUID (default: derived from its index).
        power_limit_mw: Power-management limit in mW (None: NotSupported).
        has_counter: Total-energy counter (default: Volta or newer).
        field_power: Answers the POWER_INSTANT / POWER_AVERAGE field values (default: Volta+).
        energy_field: Answers the ENERGY field value (default: where the counter answers).
        energy_field_offset_mj: The ENERGY field shows the counter plus this (0: the same counter,
            as nvml.h documents; anything else mimics a driver whose field disagrees).
        power_usage: Answers ``nvmlDeviceGetPowerUsage``.
        usage_average: ``nvmlDeviceGetPowerUsage`` returns the 1 s mean (default: Ampere+; the
            GA100 presets say False).
        average_field: Answers ``NVML_FI_DEV_POWER_AVERAGE`` (default: where the power fields
            answer and ``nvmlDeviceGetPowerUsage`` is the average, as nvml.h documents it).
        pci_device_id: The 16-bit PCI device id (default: 0x2330, an H100 SXM5 80GB; None:
            ``nvmlDeviceGetPciInfo`` answers NotSupported).
        counter_start_mj: Counter value at driver load (a server up for weeks shows a large one).
        average_window_s: The window of the averaged power readings (``NVML_FI_DEV_POWER_AVERAGE``
            and an averaging ``nvmlDeviceGetPowerUsage``), s: NVML documents 1 s.
        counter_update_s: The counter moves only at multiples of this period (0: continuously).
        counter_update_phase_s: ... shifted by this much (the GPUs of a node update at
            instants of their own).
        reloads_at_s: Driver reloads: the counter restarts from 0 at each.
        lost_at_s: Falls off the bus at this time.
        faults: Scripted failures.
        call_latency_s: How long every call on this GPU takes.
        slow_calls: Windows in which (some) calls take longer.
        mig_devices: UUIDs (``MIG-…``) of its MIG instances; non-empty means MIG mode is on.
        field_overrides: ``(field id, NVML_VALUE_TYPE_*, value)``: that field answers this value,
            in the union member of that type, whatever it would read otherwise.
        minor_number: ``nvmlDeviceGetMinorNumber`` (None: the NVML index).
        pci_bus: The PCI bus number in ``nvmlDeviceGetPciInfo`` (default: the NVML index + 1).
        c2c_mode: A C2C superchip: C2C mode on, power fields at module scope only.
        c2c_query: The driver has ``nvmlDeviceGetC2cModeInfoV`` (False: FUNCTION_NOT_FOUND).
            Before Hopper it answers NotSupported.
        memory_busy: Whether memory is being read or written at each instant, in [0, 1]
            (a profile; module docstring).
        gpu_busy: Whether a kernel runs at each instant, in [0, 1] (a profile).
        utilization: ``nvmlDeviceGetUtilizationRates`` answers (False: NOT_SUPPORTED; MIG mode
            on answers NOT_SUPPORTED as well).
        utilization_period_s: The sample period those percentages cover, s.
    """

    name: str = "NVIDIA H100 80GB HBM3"
    architecture: int = codes.NVML_DEVICE_ARCH_HOPPER
    profile: Profile = field(default_factory=lambda: steady(300.0))
    uuid: str | None = None
    power_limit_mw: int | None = 700_000
    has_counter: bool | None = None
    field_power: bool | None = None
    energy_field: bool | None = None
    energy_field_offset_mj: int = 0
    power_usage: bool = True
    usage_average: bool | None = None
    average_field: bool | None = None
    pci_device_id: int | None = 0x2330  # H100_SXM5_80GB_PCI_ID
    counter_start_mj: int = 0
    average_window_s: float = 1.0
    counter_update_s: float = 0.0
    counter_update_phase_s: float = 0.0
    reloads_at_s: tuple[float, ...] = ()
    lost_at_s: float | None = None
    faults: tuple[Fault, ...] = ()
    call_latency_s: float = 0.0
    slow_calls: tuple[SlowCall, ...] = ()
    mig_devices: tuple[str, ...] = ()
    field_overrides: tuple[tuple[int, int, float], ...] = ()
    minor_number: int | None = None
    pci_bus: int | None = None
    c2c_mode: bool = False
    c2c_query: bool = True
    memory_busy: Profile = field(default_factory=lambda: steady(0.0))
    gpu_busy: Profile = field(default_factory=lambda: steady(0.0))
    utilization: bool = True
    utilization_period_s: float = 1.0

    def counter_supported(self) -> bool:
        """Whether the total-energy counter answers."""
        volta_plus = self.architecture >= codes.NVML_DEVICE_ARCH_VOLTA
        return volta_plus if self.has_counter is None else self.has_counter

    def fields_supported(self) -> bool:
        """Whether the power field values answer."""
        volta_plus = self.architecture >= codes.NVML_DEVICE_ARCH_VOLTA
        return volta_plus if self.field_power is None else self.field_power

    def energy_field_supported(self) -> bool:
        """Whether the ENERGY field value answers."""
        return self.counter_supported() if self.energy_field is None else self.energy_field

    def usage_is_average(self) -> bool:
        """Whether ``nvmlDeviceGetPowerUsage`` returns the 1 s mean."""
        ampere_plus = self.architecture >= codes.NVML_DEVICE_ARCH_AMPERE
        return ampere_plus if self.usage_average is None else self.usage_average

    def average_field_supported(self) -> bool:
        """Whether the POWER_AVERAGE field value answers."""
        if self.average_field is not None:
            return self.average_field
        return self.fields_supported() and self.usage_is_average()

    def latency_s(self, call: str, t_s: float) -> float:
        """How long ``call`` started at ``t_s`` takes, s (``call_latency_s`` plus slow windows)."""
        extra_s = sum(
            slow.latency_s
            for slow in self.slow_calls
            if slow.call in (None, call) and slow.start_s <= t_s < slow.end_s
        )
        return self.call_latency_s + extra_s


_POWER_FIELDS = (codes.NVML_FI_DEV_POWER_AVERAGE, codes.NVML_FI_DEV_POWER_INSTANT)

# PCI device ids of the presets, from the PCI ID database (pciutils/pciids, pci.ids 2026.08.22).
H100_SXM5_80GB_PCI_ID = 0x2330  # GH100 [H100 SXM5 80GB]
A100_SXM4_80GB_PCI_ID = 0x20B2  # GA100 [A100 SXM4 80GB]
A800_SXM4_80GB_PCI_ID = 0x20F3  # GA100 [A800-SXM4-80GB]
A30_PCIE_PCI_ID = 0x20B7  # GA100GL [A30 PCIe]
A10_PCI_ID = 0x2236  # GA102GL [A10]
V100_SXM2_32GB_PCI_ID = 0x1DB5  # GV100GL [Tesla V100 SXM2 32GB]
P100_PCIE_16GB_PCI_ID = 0x15F8  # GP100GL [Tesla P100 PCIe 16GB]
GH200_PCI_ID = 0x2342  # GH100 [GH200 120GB / 480GB]


def h100(**overrides: Any) -> FakeGpu:
    """An H100 SXM: Hopper, 700 W, counter, power fields, 1 s averaged power usage."""
    return FakeGpu(**overrides)


def gh200(**overrides: Any) -> FakeGpu:
    """A GH200 Grace Hopper superchip: Hopper, C2C mode on, module-scope power, 900 W module.

    Its counter and power cover the whole module (Grace CPU, Hopper GPU and their memory); the
    GPU-scope power fields are refused (NOT_SUPPORTED) and the module-scope ones answer
    (``(NVML_FI_DEV_POWER_AVERAGE, NVML_POWER_SCOPE_MODULE)``). The profile is the module's.
    """
    spec: dict[str, Any] = {
        "name": "NVIDIA GH200 480GB",
        "power_limit_mw": 900_000,
        "pci_device_id": GH200_PCI_ID,
        "c2c_mode": True,
    }
    return FakeGpu(**(spec | overrides))


def a100(**overrides: Any) -> FakeGpu:
    """An A100 SXM (GA100): Ampere, 400 W, counter, instantaneous power usage, MIG capable.

    Like every GA100 it has no ``NVML_FI_DEV_POWER_AVERAGE`` (nvml.h: "supported on Ampere
    (except GA100) or newer").
    """
    spec: dict[str, Any] = {
        "name": "NVIDIA A100-SXM4-80GB",
        "architecture": codes.NVML_DEVICE_ARCH_AMPERE,
        "power_limit_mw": 400_000,
        "usage_average": False,
        "pci_device_id": A100_SXM4_80GB_PCI_ID,
    }
    return FakeGpu(**(spec | overrides))


def a800(**overrides: Any) -> FakeGpu:
    """An A800 SXM (GA100, the A100 for export markets): as `a100`, with its own PCI id.

    Its name does not say A100: only the PCI device id (or a name rule that knows the A800)
    tells that its power usage is instantaneous. Pass ``name=`` to rename it further.
    """
    spec: dict[str, Any] = {
        "name": "NVIDIA A800-SXM4-80GB",
        "pci_device_id": A800_SXM4_80GB_PCI_ID,
    }
    return a100(**(spec | overrides))


def a30(**overrides: Any) -> FakeGpu:
    """An A30 PCIe (GA100): Ampere, 165 W, counter, instantaneous power usage."""
    spec: dict[str, Any] = {
        "name": "NVIDIA A30",
        "power_limit_mw": 165_000,
        "pci_device_id": A30_PCIE_PCI_ID,
    }
    return a100(**(spec | overrides))


def a10(**overrides: Any) -> FakeGpu:
    """An A10 (GA102): Ampere but not GA100, 150 W, counter, 1 s averaged power usage."""
    spec: dict[str, Any] = {
        "name": "NVIDIA A10",
        "architecture": codes.NVML_DEVICE_ARCH_AMPERE,
        "power_limit_mw": 150_000,
        "pci_device_id": A10_PCI_ID,
    }
    return FakeGpu(**(spec | overrides))


def v100(**overrides: Any) -> FakeGpu:
    """A V100 SXM2: Volta, 300 W, counter, instantaneous power usage."""
    spec: dict[str, Any] = {
        "name": "Tesla V100-SXM2-32GB",
        "architecture": codes.NVML_DEVICE_ARCH_VOLTA,
        "power_limit_mw": 300_000,
        "pci_device_id": V100_SXM2_32GB_PCI_ID,
    }
    return FakeGpu(**(spec | overrides))


def p100(**overrides: Any) -> FakeGpu:
    """A P100: Pascal, no energy counter, no power fields, instantaneous power usage."""
    spec: dict[str, Any] = {
        "name": "Tesla P100-PCIE-16GB",
        "architecture": codes.NVML_DEVICE_ARCH_PASCAL,
        "power_limit_mw": 250_000,
        "pci_device_id": P100_PCIE_16GB_PCI_ID,
    }
    return FakeGpu(**(spec | overrides))


def default_uuid(index: int) -> str:
    """The UUID a `FakeGpu` without one gets at ``index`` (deterministic)."""
    return "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"thermoledger/fake-gpu/{index}"))


@dataclass(frozen=True, slots=True)
class FakeHandle:
    """What ``nvmlDeviceGetHandleBy*`` returns: a GPU position, or a MIG device of it."""

    position: int
    mig_uuid: str | None = None


class FakeNvml:
    """A stand-in for the ``pynvml`` module over scripted `FakeGpu` devices.

    Args:
        gpus: The GPUs, in NVML index order.
        clock: Time source; the fake driver "loads" (t = 0) when this object is built.
        init_error: An NVML code that ``nvmlInit`` raises (e.g. DRIVER_NOT_LOADED).

    Attributes:
        calls: How many times each (function name, GPU position) was called.
        cut_by_shutdown: How many calls were still running when ``nvmlShutdown`` released the
            library (in the real one: a call into freed state).
    """

    c_nvmlFieldValue_t = _FieldValue  # noqa: N815  (pynvml's name)

    NVMLError: ClassVar[type[_Error]] = NVMLError

    def __init__(
        self,
        gpus: Sequence[FakeGpu],
        *,
        clock: Clock | None = None,
        init_error: int | None = None,
    ) -> None:
        self.gpus = tuple(gpus)
        self.uuids = tuple(g.uuid or default_uuid(i) for i, g in enumerate(self.gpus))
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.loaded_mono_s = self.clock.monotonic_s()
        self.init_error = init_error
        self.refcount = 0
        self.calls: Counter[tuple[str, int]] = Counter()
        self.cut_by_shutdown = 0
        self._fired: Counter[tuple[int, int]] = Counter()  # (GPU position, fault number)
        # Per GPU, the field values it answers (a FakeGpu is frozen): looked up, not worked out
        # on every call, as the driver knows what its GPU supports.
        self._answers = tuple(_answers(gpu) for gpu in self.gpus)
        # field answers at NVML_POWER_SCOPE_MODULE (scope 1): a C2C superchip's power fields
        self._module_answers = tuple(
            {f: a for f, a in _FIELDS.items() if f in _POWER_FIELDS and a[0](gpu)}
            if gpu.c2c_mode
            else {}
            for gpu in self.gpus
        )
        # Per (GPU position, field ids asked for), what each slot of the answer holds: worked
        # out at the first such call (a GPU without scripted faults answers the same fields the
        # same way every time; only the values and the timestamp move).
        self._plans: dict[tuple[int, tuple[Any, ...]], _Plan] = {}

    def __getattr__(self, name: str) -> Any:
        # The module's remaining NVML_* constants and NVMLError_* classes, as pynvml exposes them.
        if name.startswith("NVML_") and hasattr(codes, name):
            return getattr(codes, name)
        if name in ERROR_CLASSES:
            return ERROR_CLASSES[name]
        raise AttributeError(name)

    def __dir__(self) -> list[str]:
        constants = [n for n in dir(codes) if n.startswith("NVML_")]
        return sorted(set(super().__dir__()) | set(constants) | set(ERROR_CLASSES))

    # -- time and faults ----------------------------------------------------------------------

    def now_s(self) -> float:
        """Seconds since the fake driver loaded."""
        return self.clock.monotonic_s() - self.loaded_mono_s

    def _wait(self, dt_s: float) -> None:
        if dt_s <= 0:
            return
        if isinstance(self.clock, ManualClock):
            self.clock.advance(dt_s)
        else:
            time.sleep(dt_s)

    def _require_init(self) -> None:
        if self.refcount <= 0:
            raise NVMLError(codes.NVML_ERROR_UNINITIALIZED)

    def _on_gpu(self, call: str, handle: FakeHandle, compute: Callable[[FakeGpu, float], T]) -> T:
        """Run one device call with its latency, loss and faults; the value is taken mid-call."""
        if self.refcount <= 0:
            raise NVMLError(codes.NVML_ERROR_UNINITIALIZED)
        position = handle.position
        gpu = self.gpus[position]
        self.calls[(call, position)] += 1
        scripted = gpu.call_latency_s or gpu.slow_calls
        half_latency_s = 0.5 * gpu.latency_s(call, self.now_s()) if scripted else 0.0
        if half_latency_s > 0:
            self._wait(half_latency_s)
        try:
            t_s = self.clock.monotonic_s() - self.loaded_mono_s
            if gpu.lost_at_s is not None and t_s >= gpu.lost_at_s:
                raise NVMLError(codes.NVML_ERROR_GPU_IS_LOST)
            for k, fault in enumerate(gpu.faults):
                if (
                    fault.field_id is None
                    and fault.call in (None, call)
                    and fault.start_s <= t_s < fault.end_s
                    and self._fires(position, k, fault)
                ):
                    raise NVMLError(fault.code)
            return compute(gpu, t_s)
        finally:
            if half_latency_s > 0:
                self._wait(half_latency_s)
                if self.refcount <= 0:
                    self.cut_by_shutdown += 1

    def _fires(self, position: int, k: int, fault: Fault) -> bool:
        """Whether fault ``k`` of GPU ``position`` fires now (counted against its ``count``)."""
        if fault.count is None:
            return True
        key = (position, k)
        if self._fired[key] >= fault.count:
            return False
        self._fired[key] += 1
        return True

    # -- library ------------------------------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802
        """Load the fake library (reference counted, like NVML)."""
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        """Release one ``nvmlInit``."""
        self._require_init()
        self.refcount -= 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        """Number of GPUs."""
        self._require_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:  # noqa: N802
        """Handle of the GPU at NVML index ``index``."""
        self._require_init()
        if not 0 <= index < len(self.gpus):
            raise NVMLError(codes.NVML_ERROR_INVALID_ARGUMENT)
        handle = FakeHandle(index)
        return self._on_gpu("nvmlDeviceGetHandleByIndex", handle, lambda g, t: handle)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeHandle:  # noqa: N802
        """Handle of a GPU or MIG device by its exact UUID."""
        self._require_init()
        handle = next(
            (
                FakeHandle(position, mig_uuid=None if uuid == self.uuids[position] else uuid)
                for position, gpu in enumerate(self.gpus)
                if uuid == self.uuids[position] or uuid in gpu.mig_devices
            ),
            None,
        )
        if handle is None:
            raise NVMLError(codes.NVML_ERROR_NOT_FOUND)
        return self._on_gpu("nvmlDeviceGetHandleByUUID", handle, lambda g, t: handle)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(  # noqa: N802
        self, mig_device: FakeHandle
    ) -> FakeHandle:
        """The parent GPU of a MIG device handle."""
        self._require_init()
        if mig_device.mig_uuid is None:
            raise NVMLError(codes.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(mig_device.position)

    # -- device queries -----------------------------------------------------------------------

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:  # noqa: N802
        """The GPU's (or MIG device's) UUID."""
        uuid = handle.mig_uuid or self.uuids[handle.position]
        return self._on_gpu("nvmlDeviceGetUUID", handle, lambda g, t: uuid)

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:  # noqa: N802
        """The GPU's name."""
        return self._on_gpu("nvmlDeviceGetName", handle, lambda g, t: g.name)

    def nvmlDeviceGetArchitecture(self, handle: FakeHandle) -> int:  # noqa: N802
        """``NVML_DEVICE_ARCH_*`` code."""
        return self._on_gpu("nvmlDeviceGetArchitecture", handle, lambda g, t: g.architecture)

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> nvmlPciInfo_t:  # noqa: N802
        """PCI attributes; ``pciDeviceId`` = device id << 16 | 0x10DE, bus = NVML index + 1."""

        def info(gpu: FakeGpu, t_s: float) -> nvmlPciInfo_t:
            if gpu.pci_device_id is None:
                raise NVMLError(codes.NVML_ERROR_NOT_SUPPORTED)
            bus = handle.position + 1 if gpu.pci_bus is None else gpu.pci_bus
            bus_id = f"00000000:{bus:02X}:00.0".encode()
            return nvmlPciInfo_t(
                busIdLegacy=f"0000:{bus:02X}:00.0".encode(),
                domain=0,
                bus=bus,
                device=0,
                pciDeviceId=(gpu.pci_device_id << 16) | NVIDIA_PCI_VENDOR_ID,
                pciSubSystemId=0,
                busId=bus_id,
            )

        return self._on_gpu("nvmlDeviceGetPciInfo", handle, info)

    def nvmlDeviceGetMinorNumber(self, handle: FakeHandle) -> int:  # noqa: N802
        """The device's minor number (``/dev/nvidia<minor>``): default the NVML index."""

        def minor(gpu: FakeGpu, t_s: float) -> int:
            return handle.position if gpu.minor_number is None else gpu.minor_number

        return self._on_gpu("nvmlDeviceGetMinorNumber", handle, minor)

    def nvmlDeviceGetC2cModeInfoV(self, handle: FakeHandle) -> c_nvmlC2cModeInfo_v1_t:  # noqa: N802
        """C2C mode (``isC2cEnabled``); NotSupported before Hopper, FUNCTION_NOT_FOUND without."""

        def mode(gpu: FakeGpu, t_s: float) -> c_nvmlC2cModeInfo_v1_t:
            if not gpu.c2c_query:
                raise NVMLError(codes.NVML_ERROR_FUNCTION_NOT_FOUND)
            if gpu.architecture < codes.NVML_DEVICE_ARCH_HOPPER:
                raise NVMLError(codes.NVML_ERROR_NOT_SUPPORTED)
            return c_nvmlC2cModeInfo_v1_t(isC2cEnabled=int(gpu.c2c_mode))

        return self._on_gpu("nvmlDeviceGetC2cModeInfoV", handle, mode)

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:  # noqa: N802
        """[current, pending] MIG mode; NotSupported before Ampere."""

        def mode(gpu: FakeGpu, t_s: float) -> list[int]:
            if gpu.architecture < codes.NVML_DEVICE_ARCH_AMPERE:
                raise NVMLError(codes.NVML_ERROR_NOT_SUPPORTED)
            on = codes.NVML_DEVICE_MIG_ENABLE if gpu.mig_devices else codes.NVML_DEVICE_MIG_DISABLE
            return [on, on]

        return self._on_gpu("nvmlDeviceGetMigMode", handle, mode)

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeHandle) -> int:  # noqa: N802
        """Power limit in mW."""

        def limit(gpu: FakeGpu, t_s: float) -> int:
            if gpu.power_limit_mw is None:
                raise NVMLError(codes.NVML_ERROR_NOT_SUPPORTED)
            return gpu.power_limit_mw

        return self._on_gpu("nvmlDeviceGetPowerManagementLimit", handle, limit)

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:  # noqa: N802
        """Power in mW: the 1 s mean on Ampere (non-GA100) and newer, else instantaneous."""

        def usage(gpu: FakeGpu, t_s: float) -> int:
            if not gpu.power_usage:
                raise NVMLError(codes.NVML_ERROR_NOT_SUPPORTED)
            return _average_mw(gpu, t_s) if gpu.usage_is_average() else _instant_mw(gpu, t_s)

        return self._on_gpu("nvmlDeviceGetPowerUsage", handle, usage)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:  # noqa: N802
        """Energy in mJ since the (last) driver load; NotSupported before Volta."""

        def energy(gpu: FakeGpu, t_s: float) -> int:
            if not gpu.counter_supported():
                raise NVMLError(codes.NVML_ERROR_NOT_SUPPORTED)
            return counter_mj(gpu, t_s)

        return self._on_gpu("nvmlDeviceGetTotalEnergyConsumption", handle, energy)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> c_nvmlUtilization_t:  # noqa: N802
        """Percent of the last sample period a kernel ran (``gpu``) and memory was read or
        written (``memory``); NOT_SUPPORTED without the feature or with MIG mode on."""

        def rates(gpu: FakeGpu, t_s: float) -> c_nvmlUtilization_t:
            if not gpu.utilization or gpu.mig_devices:
                raise NVMLError(codes.NVML_ERROR_NOT_SUPPORTED)
            period_s = gpu.utilization_period_s
            return c_nvmlUtilization_t(
                gpu=_percent(gpu.gpu_busy.average_power_at_w(t_s, period_s)),
                memory=_percent(gpu.memory_busy.average_power_at_w(t_s, period_s)),
            )

        return self._on_gpu("nvmlDeviceGetUtilizationRates", handle, rates)

    def nvmlDeviceGetFieldValues(  # noqa: N802
        self, handle: FakeHandle, field_ids: Sequence[int | tuple[int, int]]
    ) -> ctypes.Array[_FieldValue]:
        """Field values as a ``c_nvmlFieldValue_t`` array; per-field ``nvmlReturn``."""

        position = handle.position
        if not self.gpus[position].faults:
            key = (position, tuple(field_ids))
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plans[key] = self._plan(position, key[1])
            array_type, slots = plan
            wall_s = self.clock.wall_s

            def planned(gpu: FakeGpu, t_s: float) -> ctypes.Array[_FieldValue]:
                array = array_type()
                wall_us = int(wall_s() * 1e6)
                for packer, offset, field_id, scope_id, value_type, code, read in slots:
                    if read is None:
                        packer.pack_into(
                            array, offset, field_id, scope_id, wall_us, 0, value_type, code
                        )
                    else:
                        packer.pack_into(
                            array,
                            offset,
                            field_id,
                            scope_id,
                            wall_us,
                            0,
                            value_type,
                            code,
                            read(gpu, t_s),
                        )
                return array

            return self._on_gpu("nvmlDeviceGetFieldValues", handle, planned)

        def values(gpu: FakeGpu, t_s: float) -> ctypes.Array[_FieldValue]:
            array = (_FieldValue * len(field_ids))()
            wall_us = int(self.clock.wall_s() * 1e6)
            for slot, requested in enumerate(field_ids):
                field_id, scope_id = requested if isinstance(requested, tuple) else (requested, 0)
                code = (
                    _field_fault(gpu, field_id, t_s, partial(self._fires, handle.position))
                    if gpu.faults
                    else None
                )
                answer = self._answer(position, field_id, scope_id)
                if code is None and answer is None:
                    code = codes.NVML_ERROR_NOT_SUPPORTED
                head = (field_id, scope_id, wall_us, 0)
                if code is not None or answer is None:
                    unsigned = codes.NVML_VALUE_TYPE_UNSIGNED_INT
                    _NO_VALUE.pack_into(array, slot * _SLOT_SIZE, *head, unsigned, code)
                    continue
                _, value_type, member, read = answer
                _WITH_VALUE[member].pack_into(
                    array, slot * _SLOT_SIZE, *head, value_type, codes.NVML_SUCCESS, read(gpu, t_s)
                )
            return array

        return self._on_gpu("nvmlDeviceGetFieldValues", handle, values)

    def _answer(self, position: int, field_id: int, scope_id: int) -> _Answer | None:
        """How GPU ``position`` answers a field at a scope (None: it does not)."""
        if scope_id == 0:
            return self._answers[position].get(field_id)
        if scope_id == codes.NVML_POWER_SCOPE_MODULE:
            return self._module_answers[position].get(field_id)
        return None

    def _plan(self, position: int, field_ids: tuple[Any, ...]) -> _Plan:
        """What `nvmlDeviceGetFieldValues` packs per slot for a GPU without scripted faults:
        the same as its general path works out per call, once."""
        slots: list[_Slot] = []
        for slot, requested in enumerate(field_ids):
            field_id, scope_id = requested if isinstance(requested, tuple) else (requested, 0)
            answer = self._answer(position, field_id, scope_id)
            offset = slot * _SLOT_SIZE
            if answer is None:
                unsigned = codes.NVML_VALUE_TYPE_UNSIGNED_INT
                no_value = (_NO_VALUE, offset, field_id, scope_id, unsigned)
                slots.append((*no_value, codes.NVML_ERROR_NOT_SUPPORTED, None))
            else:
                _, value_type, member, read = answer
                with_value = (_WITH_VALUE[member], offset, field_id, scope_id, value_type)
                slots.append((*with_value, codes.NVML_SUCCESS, read))
        return _FieldValue * len(field_ids), tuple(slots)

    def nvmlExceptionClass(self, code: int) -> type[_Error]:  # noqa: N802
        """The ``NVMLError`` subclass for ``code``, as ``pynvml.nvmlExceptionClass``."""
        if code not in NVMLError._value_class:
            raise ValueError(f"nvmlErrorCode {code} is not valid")
        return NVMLError._value_class[code]


def _percent(fraction: float) -> int:
    """A fraction of time as NVML's whole percent (clipped to 0..100, rounded)."""
    return min(100, max(0, round(100.0 * fraction)))


def _instant_mw(gpu: FakeGpu, t_s: float) -> int:
    return round(1000.0 * gpu.profile.power_at_w(t_s))


def _average_mw(gpu: FakeGpu, t_s: float) -> int:
    return round(1000.0 * gpu.profile.average_power_at_w(t_s, gpu.average_window_s))


def _energy_field_mj(gpu: FakeGpu, t_s: float) -> int:
    return max(0, counter_mj(gpu, t_s) + gpu.energy_field_offset_mj)


def _field_fault(
    gpu: FakeGpu, field_id: int, t_s: float, fires: Callable[[int, Fault], bool]
) -> int | None:
    # The ENERGY field is the counter read another way, so a fault scripted on the counter call
    # fails it too: a scripted counter outage stays an outage whichever path the backend takes.
    counter = field_id == codes.NVML_FI_DEV_ENERGY
    for k, fault in enumerate(gpu.faults):
        if not fault.start_s <= t_s < fault.end_s:
            continue
        if (
            fault.field_id == field_id
            or (counter and fault.field_id is None and fault.call == _COUNTER_CALL)
        ) and fires(k, fault):
            return fault.code
    return None


_COUNTER_CALL = "nvmlDeviceGetTotalEnergyConsumption"
_Answer = tuple[Callable[[FakeGpu], bool], int, str, Callable[[FakeGpu, float], float]]
# One slot of a field-values answer: (packer, byte offset, field id, scope id, value type,
# nvmlReturn, what reads the value or None for no value).
_Slot = tuple[struct.Struct, int, int, int, int, int, Callable[[FakeGpu, float], float] | None]
_Plan = tuple[type[ctypes.Array[_FieldValue]], tuple[_Slot, ...]]


# The field values the fake answers: field id -> (supported on this GPU?, NVML value type, the
# c_nvmlValue_t member it fills, its value at t_s). Power in mW as an unsigned int, energy in mJ
# as an unsigned long long, as the real driver returns them.
_FIELDS: dict[int, _Answer] = {
    codes.NVML_FI_DEV_POWER_INSTANT: (
        FakeGpu.fields_supported,
        codes.NVML_VALUE_TYPE_UNSIGNED_INT,
        "uiVal",
        _instant_mw,
    ),
    codes.NVML_FI_DEV_POWER_AVERAGE: (
        FakeGpu.average_field_supported,
        codes.NVML_VALUE_TYPE_UNSIGNED_INT,
        "uiVal",
        _average_mw,
    ),
    codes.NVML_FI_DEV_ENERGY: (
        FakeGpu.energy_field_supported,
        codes.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
        "ullVal",
        _energy_field_mj,
    ),
}


def _always(gpu: FakeGpu) -> bool:
    return True


def _fixed(value: float, member: str) -> Callable[[FakeGpu, float], float]:
    number = value if member == "dVal" else int(value)

    def read(gpu: FakeGpu, t_s: float) -> float:
        return number

    return read


def _answers(gpu: FakeGpu) -> dict[int, _Answer]:
    """The field values ``gpu`` answers, by field id, each with what reads it.

    Three readers are bound to the GPU, with the same float operations (the same values) and
    less of the fake's own work: the instantaneous power calls the profile directly, so does
    the averaged power (its primitive at both ends of the window) where the profile keeps the
    base class's average and energy, and where
    nothing moves the counter's origin (no reload, no update period) the ENERGY field takes
    the profile's primitive at load once instead of on every read.
    """
    answers = {
        field_id: answer
        for field_id, answer in _FIELDS.items()
        if answer[0](gpu) and not (gpu.c2c_mode and field_id in _POWER_FIELDS)
    }
    for field_id, value_type, fixed in gpu.field_overrides:
        member = codes.VALUE_MEMBERS[value_type]
        answers[field_id] = (_always, value_type, member, _fixed(fixed, member))
    if gpu.field_overrides:
        return answers
    profile = gpu.profile
    instant = answers.get(codes.NVML_FI_DEV_POWER_INSTANT)
    if instant is not None:
        power_at_w = profile.power_at_w

        def read_power(gpu: FakeGpu, t_s: float) -> int:
            return round(1000.0 * power_at_w(t_s))

        answers[codes.NVML_FI_DEV_POWER_INSTANT] = (*instant[:3], read_power)
    average = answers.get(codes.NVML_FI_DEV_POWER_AVERAGE)
    if (
        average is not None
        and type(profile).average_power_at_w is Profile.average_power_at_w
        and type(profile).energy_between_j is Profile.energy_between_j
    ):
        primitive_at_j = profile.primitive_at_j
        window_s = gpu.average_window_s

        def read_average(gpu: FakeGpu, t_s: float) -> int:
            # Profile.average_power_at_w through energy_between_j, inlined (the same floats)
            return round(
                1000.0 * ((primitive_at_j(t_s) - primitive_at_j(t_s - window_s)) / window_s)
            )

        answers[codes.NVML_FI_DEV_POWER_AVERAGE] = (*average[:3], read_average)
    energy = answers.get(codes.NVML_FI_DEV_ENERGY)
    if (
        energy is None
        or gpu.reloads_at_s
        or gpu.counter_update_s > 0
        or type(profile).energy_between_j is not Profile.energy_between_j
    ):
        return answers
    primitive_j = profile.primitive_at_j
    at_load_j = primitive_j(0.0)
    start_mj = gpu.counter_start_mj + gpu.energy_field_offset_mj

    def read(gpu: FakeGpu, t_s: float) -> int:
        return max(0, start_mj + math.floor(1000.0 * (primitive_j(t_s) - at_load_j)))

    answers[codes.NVML_FI_DEV_ENERGY] = (*energy[:3], read)
    return answers


def counter_mj(gpu: FakeGpu, t_s: float) -> int:
    """The counter a `FakeGpu` shows at ``t_s``: millijoules since its last driver (re)load.

    Args:
        gpu: The GPU.
        t_s: Seconds since the fake driver first loaded.

    Returns:
        ``counter_start_mj`` (until the first reload) plus the energy since the last load,
        floored to whole mJ and held between counter updates.
    """
    since_s, start_mj = 0.0, gpu.counter_start_mj
    for reload_s in gpu.reloads_at_s:
        if reload_s <= t_s:
            since_s, start_mj = max(since_s, reload_s), 0
    if gpu.counter_update_s > 0:
        period_s, phase_s = gpu.counter_update_s, gpu.counter_update_phase_s
        t_s = max(since_s, math.floor((t_s - phase_s) / period_s) * period_s + phase_s)
    return start_mj + math.floor(1000.0 * gpu.profile.energy_between_j(since_s, t_s))


if TYPE_CHECKING:
    # mypy checks here that the fake offers everything the backend calls, with the same shapes.
    from ..backends.nvml_api import NvmlModule

    _conforms: NvmlModule = FakeNvml([])
