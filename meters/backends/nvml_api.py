"""NVML as this meter sees it: the ABI constants, the calls it makes and its return codes.

- **Constants** from nvml.h: return codes (``NVML_SUCCESS``, ``NVML_ERROR_*``), the field ids read
  (``NVML_FI_DEV_POWER_AVERAGE``, ``NVML_FI_DEV_POWER_INSTANT``, ``NVML_FI_DEV_ENERGY``), the value
  types of a field value's union, the architecture ids and the MIG modes. They are NVML's ABI and
  never change between releases; a test checks them against the installed ``pynvml``, and
  `meters.testing.fake_pynvml` takes its own from here.
- **`NvmlModule`**: the part of ``pynvml`` that `meters.backends.nvml.NvmlBackend` calls, as a
  Protocol, so the fake driver is checked against the same shapes.
- **Errors**: `translate_nvml_error` is the one place NVML return codes are interpreted, for the
  errors a call raises and for the per-field ``nvmlReturn`` of a field-values answer alike
  (`field_number`). Codes that mean a GPU stopped answering (lost, reset required, unknown error)
  become `DeviceLost`; the table below says what every other code becomes.

Nothing here imports ``pynvml``: importing this module is free on a host without a GPU.
"""

# The Protocol below mirrors pynvml's camelCase function names:
# ruff: noqa: N802

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import (
    DeviceLost,
    DeviceUnavailable,
    MeterError,
    NotSupported,
    PermissionDenied,
    ReadError,
)
from .vendor import ErrorTable

# NVML ABI constants (nvml.h). They never change between releases; a test checks them against the
# installed pynvml, and `meters.testing.fake_pynvml` reuses them.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_FI_DEV_ENERGY = 191  # mJ since driver load, "same as nvmlDeviceGetTotalEnergyConsumption"

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6

NVML_DEVICE_ARCH_KEPLER = 2
NVML_DEVICE_ARCH_MAXWELL = 3
NVML_DEVICE_ARCH_PASCAL = 4
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_TURING = 6
NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_ADA = 8
NVML_DEVICE_ARCH_HOPPER = 9
NVML_DEVICE_ARCH_BLACKWELL = 10
NVML_DEVICE_ARCH_UNKNOWN = 0xFFFFFFFF

# nvmlPowerScopeType_t: the scope a power field is asked at (``(field id, scope)``). On a C2C
# superchip (GH200, GB200) the power fields answer at MODULE scope: CPU, GPU and memory.
NVML_POWER_SCOPE_GPU = 0
NVML_POWER_SCOPE_MODULE = 1
NVML_POWER_SCOPE_MEMORY = 2

NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

# The one table from NVML return codes to the meter's error tree. Codes not listed are ReadError.
_ERRORS: dict[int, tuple[str, type[MeterError]]] = {
    NVML_ERROR_UNINITIALIZED: ("Uninitialized", DeviceUnavailable),
    NVML_ERROR_INVALID_ARGUMENT: ("Invalid Argument", ReadError),
    NVML_ERROR_NOT_SUPPORTED: ("Not Supported", NotSupported),
    NVML_ERROR_NO_PERMISSION: ("Insufficient Permissions", PermissionDenied),
    NVML_ERROR_ALREADY_INITIALIZED: ("Already Initialized", ReadError),
    NVML_ERROR_NOT_FOUND: ("Not Found", DeviceUnavailable),
    NVML_ERROR_INSUFFICIENT_SIZE: ("Insufficient Size", ReadError),
    NVML_ERROR_INSUFFICIENT_POWER: ("Insufficient External Power", DeviceUnavailable),
    NVML_ERROR_DRIVER_NOT_LOADED: ("Driver Not Loaded", DeviceUnavailable),
    NVML_ERROR_TIMEOUT: ("Timeout", ReadError),
    NVML_ERROR_IRQ_ISSUE: ("Interrupt Request Issue", ReadError),
    NVML_ERROR_LIBRARY_NOT_FOUND: ("NVML Shared Library Not Found", DeviceUnavailable),
    NVML_ERROR_FUNCTION_NOT_FOUND: ("Function Not Found", NotSupported),
    NVML_ERROR_CORRUPTED_INFOROM: ("Corrupted infoROM", ReadError),
    NVML_ERROR_GPU_IS_LOST: ("GPU is lost", DeviceLost),
    NVML_ERROR_RESET_REQUIRED: ("GPU requires restart", DeviceLost),
    NVML_ERROR_OPERATING_SYSTEM: ("The operating system has blocked the request", PermissionDenied),
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: ("NVML/RM version mismatch", DeviceUnavailable),
    NVML_ERROR_IN_USE: ("In Use", ReadError),
    NVML_ERROR_MEMORY: ("Insufficient Memory", ReadError),
    NVML_ERROR_NO_DATA: ("No Data", ReadError),
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED: ("vGPU ECC Not Supported", NotSupported),
    NVML_ERROR_INSUFFICIENT_RESOURCES: ("Insufficient Resources", ReadError),
    NVML_ERROR_FREQ_NOT_SUPPORTED: ("Frequency Not Supported", NotSupported),
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: ("Argument Version Mismatch", NotSupported),
    NVML_ERROR_DEPRECATED: ("Deprecated", NotSupported),
    NVML_ERROR_NOT_READY: ("Not Ready", ReadError),
    NVML_ERROR_GPU_NOT_FOUND: ("GPU Not Found", DeviceUnavailable),
    NVML_ERROR_INVALID_STATE: ("Invalid State", ReadError),
    NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: ("Reset Type Not Supported", NotSupported),
    NVML_ERROR_UNKNOWN: ("Unknown Error", DeviceLost),
}

_HINTS = {
    NVML_ERROR_LIBRARY_NOT_FOUND: "no NVIDIA driver library (libnvidia-ml.so.1) on this host",
    NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded",
    NVML_ERROR_UNKNOWN: (
        "NVML gives this when a GPU stops answering; treated as lost. In a container it "
        "usually means the container lost its access to the GPU device files after a "
        "`systemctl daemon-reload` on the host (systemd resets the device cgroup): restart "
        "the container or pod"
    ),
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "the NVIDIA driver was upgraded without a reboot: the user-space library and the "
        "loaded kernel module differ; reboot the node, or reload the nvidia kernel modules"
    ),
}
_PERMISSION_FIX = (
    "NVML reads need no special rights, but the process must see the NVIDIA device files "
    "(/dev/nvidiactl and /dev/nvidia<N>); in a container, request the GPUs from the runtime"
)

# Codes that mean the GPU or driver lacks what was asked: the one answer that makes a capability
# absent at open. Every other code says nothing about the capability.
ABSENT_CODES = frozenset({NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND})
# Codes worth asking again after a moment (at open; a tick's read just misses that tick).
RETRIED_CODES = frozenset(
    {
        NVML_ERROR_TIMEOUT,
        NVML_ERROR_IRQ_ISSUE,
        NVML_ERROR_IN_USE,
        NVML_ERROR_NO_DATA,
        NVML_ERROR_INSUFFICIENT_RESOURCES,
        NVML_ERROR_NOT_READY,
    }
)

_TABLE = ErrorTable(_ERRORS, _HINTS, _PERMISSION_FIX, unknown="NVML error {code}")

# NVIDIA's name for NVML's value unions, by value type.
VALUE_MEMBERS = {
    NVML_VALUE_TYPE_DOUBLE: "dVal",
    NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}
# Value types that hold a finite, non-negative number whatever the bits (the read's fast path).
UNSIGNED_MEMBERS = {
    NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}

NvmlHandle = Any


class NvmlModule(Protocol):
    """The part of ``pynvml`` that `NvmlBackend` calls (``meters.testing.fake_pynvml`` has it)."""

    @property
    def NVMLError(self) -> type[Exception]:
        """The base class of every NVML error; instances carry the return code in ``value``."""
        ...

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> NvmlHandle: ...
    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> NvmlHandle: ...
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, mig_device: NvmlHandle) -> NvmlHandle:
        """The parent GPU of a MIG device handle."""
        ...

    def nvmlDeviceGetUUID(self, handle: NvmlHandle) -> str: ...
    def nvmlDeviceGetName(self, handle: NvmlHandle) -> str: ...
    def nvmlDeviceGetArchitecture(self, handle: NvmlHandle) -> int: ...
    def nvmlDeviceGetPciInfo(self, handle: NvmlHandle) -> Any:
        """A ``nvmlPciInfo_t``: ``pciDeviceId`` is the device id << 16 | the vendor id."""
        ...

    def nvmlDeviceGetMinorNumber(self, handle: NvmlHandle) -> int:
        """The device's minor number: ``/dev/nvidia<minor>``, the GPU ids Slurm lists."""
        ...

    def nvmlDeviceGetMigMode(self, handle: NvmlHandle) -> list[int]: ...
    def nvmlDeviceGetPowerManagementLimit(self, handle: NvmlHandle) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: NvmlHandle) -> int: ...
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: NvmlHandle) -> int: ...
    def nvmlDeviceGetFieldValues(
        self, handle: NvmlHandle, field_ids: Sequence[int | tuple[int, int]]
    ) -> Any:
        """An array of ``c_nvmlFieldValue_t`` (per-field ``nvmlReturn``, ``valueType``, union).

        An entry ``(field id, scope)`` asks the field at that scope (``NVML_POWER_SCOPE_*``).
        """
        ...

    def nvmlDeviceGetUtilizationRates(self, handle: NvmlHandle) -> Any:
        """A ``c_nvmlUtilization_t``: ``gpu`` and ``memory``, whole percent of the driver's last
        sample period (1/6 s to 1 s by product); NOT_SUPPORTED on MIG-enabled GPUs."""
        ...


def translate_nvml_error(code: int, *, call: str, device: str | None = None) -> MeterError:
    """The `MeterError` for an NVML return code: the one place NVML errors are interpreted.

    Args:
        code: The NVML return code (``NVMLError.value``, or a field value's ``nvmlReturn``).
        call: The NVML function that failed, for the message.
        device: Which GPU (UUID or index), for the message.

    Returns:
        `DeviceLost` for a GPU that stopped answering (lost, reset required, unknown error),
        `NotSupported`, `PermissionDenied`, `DeviceUnavailable` for a missing driver or device,
        and `ReadError` for everything transient or unlisted.
    """
    return _TABLE.translate(code, call=call, device=device)


def field_number(value: Any, field_id: int, uid: str) -> float:
    """The number in one ``c_nvmlFieldValue_t``, in NVML's unit for that field.

    Raises:
        MeterError: The field's own ``nvmlReturn`` is an error (translated like a call's error),
            its value type is unknown, or its value is negative or not finite (a signed or
            floating-point member: `ReadError`, since power and energy are neither).
    """
    code = int(value.nvmlReturn)
    if code != NVML_SUCCESS:
        raise translate_nvml_error(code, call=f"nvmlDeviceGetFieldValues({field_id})", device=uid)
    member = VALUE_MEMBERS.get(int(value.valueType))
    if member is None:
        raise ReadError(f"field {field_id} for {uid}: unknown value type {value.valueType}")
    number = float(getattr(value.value, member))
    if not 0.0 <= number < math.inf:
        raise ReadError(f"field {field_id} for {uid}: value {number} is negative or not finite")
    return number
