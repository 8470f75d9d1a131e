"""Device backends behind one small Protocol: NVML, AMD SMI, RAPL, simulated and replay.

Every backend offers ``devices()`` (a fixed list of `DeviceInfo`), ``read()`` (one `Readings` for
all devices: numpy arrays in W, J and s, NaN plus a status and a method wherever a figure is
absent) and ``close()``. Importing this package is light: numpy and the standard library only;
``pynvml`` is imported when an `NvmlBackend` is built without an injected module, ``amdsmi`` when
an `AmdSmiBackend` is.
"""

from .amdsmi import AmdSmiBackend, translate_amdsmi_error
from .base import (
    BackendKind,
    Clock,
    DeviceInfo,
    DeviceStatus,
    Method,
    PowerBackend,
    Readings,
    Scope,
    SystemClock,
    UncertaintyHint,
)
from .nvml import NvmlBackend, Selection, translate_nvml_error
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
    "AmdSmiBackend",
    "BackendKind",
    "Bursty",
    "Clock",
    "DeviceInfo",
    "DeviceStatus",
    "Method",
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
