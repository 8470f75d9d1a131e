"""Device backends behind one small Protocol: NVML, AMD SMI, RAPL, hwmon, an estimate,
simulated, replay.

Every backend offers ``devices()`` (a fixed list of `DeviceInfo`), ``read()`` (one `Readings` for
all devices: numpy arrays in W, J and s, NaN plus a status and a method wherever a figure is
absent) and ``close()``. `NodeBackend` reads several as one (a node's GPUs, CPU packages and
DRAM in one run). Importing this package is light: numpy and the standard library only;
``pynvml`` is imported when an `NvmlBackend` is built without an injected module, ``amdsmi`` when
an `AmdSmiBackend` is.
"""

from .amdsmi import AmdSmiBackend, translate_amdsmi_error
from .base import (
    ActivityReader,
    BackendKind,
    Clock,
    DeviceInfo,
    DeviceKind,
    DeviceStatus,
    Method,
    PowerBackend,
    Readings,
    Scope,
    SystemClock,
    UncertaintyHint,
)
from .estimate import CpuEstimateBackend
from .hwmon import HwmonBackend
from .node import NodeBackend
from .nvml import NvmlBackend
from .nvml_api import translate_nvml_error
from .nvml_selection import Selection
from .rapl import RaplBackend
from .replay import ReplayBackend, read_trace, write_trace
from .simulated import (
    Bursty,
    Profile,
    Ramp,
    SimulatedBackend,
    SimulatedDevice,
    Steady,
    default_fleet,
    idle,
    steady,
)

__all__ = [
    "ActivityReader",
    "AmdSmiBackend",
    "BackendKind",
    "Bursty",
    "Clock",
    "CpuEstimateBackend",
    "DeviceInfo",
    "DeviceKind",
    "DeviceStatus",
    "HwmonBackend",
    "Method",
    "NodeBackend",
    "NvmlBackend",
    "PowerBackend",
    "Profile",
    "Ramp",
    "RaplBackend",
    "Readings",
    "ReplayBackend",
    "Scope",
    "Selection",
    "SimulatedBackend",
    "SimulatedDevice",
    "Steady",
    "SystemClock",
    "UncertaintyHint",
    "default_fleet",
    "idle",
    "read_trace",
    "steady",
    "translate_amdsmi_error",
    "translate_nvml_error",
    "write_trace",
]
