"""AMD GPUs through AMD SMI (the ``amdsmi`` Python package of ROCm).

What is read, per GPU and tick (one call each, both returning dicts):

- **Energy**: ``amdsmi_get_energy_count(handle)`` gives the firmware's energy accumulator (a
  count), its ``counter_resolution`` in µJ per count and a ``timestamp`` in ns (amdsmi.h).
  ``energy_j = count × counter_resolution × 1e-6``, passed on raw. The count key is
  ``energy_accumulator`` from amdsmi 6.3 on; 6.2 called it ``power`` (6.3 gives both), so the
  backend takes whichever the installed binding returns. The count is the 64-bit
  ``energy_accumulator`` of the kernel's gpu_metrics table (on MI200 the kernel joins the two
  32-bit halves of a 64-bit firmware counter, aldebaran_ppt.c); no wrap is documented, and at
  15.3 µJ per count a 64-bit count would take millennia to wrap: `DeviceInfo.counter_wrap_j` is
  None and a decrease means a reset (driver reload). The ROCm library reports the resolution
  as a constant 15.3 µJ (``kEnergyCounterResolution`` in rocm_smi.cc) where the MI300 firmware
  documents 2^-16 J = 15.259 µJ per count (smu_v13_0_6_ppt.c): counter energy may read up to
  0.27 % high; the figure used is the library's, and the device note says so. A count equal to
  ``UINT32_MAX`` or ``UINT64_MAX`` is the kernel's "invalid" marker (it writes ``UINT_MAX`` on
  Radeon firmware whose counter is unusable), never a reading.
- **Power**: ``amdsmi_get_power_info(handle)``, in whole watts. ``average_socket_power`` (MI200,
  Radeon) is the firmware's socket power averaged over a window AMD does not document: it is
  `Method.POWER_AVG` with ``power_window_s`` None. Where it is "N/A" (MI300 reports
  ``current_socket_power`` only, amdsmi.h: "Mi 300+ Series cards"), ``current_socket_power`` is
  `Method.POWER_INSTANT`, and failing both, amdsmi 7's ``socket_power`` is taken as
  `Method.POWER_INSTANT` too (its averaging is not documented either; the note says so).
- **Memory activity** (about once a second, not every tick: `meters.sampler`):
  ``amdsmi_get_gpu_activity(handle)["umc_activity"]``, the memory controller's activity in
  percent (``amdsmi_engine_usage_t``), as a fraction (`AmdSmiBackend.memory_busy_frac`). "N/A"
  (the binding's spelling of 0xFFFF) or a sentinel is NaN; NOT_SUPPORTED stops the asking. On a
  dual-die package the reporting die gives the mean of both dies' activity, each die driving
  half the package's memory.
- **Identity**: ``amdsmi_get_gpu_asic_info`` (``market_name``), ``amdsmi_get_gpu_device_uuid``
  as the uid (``amdsmi_get_gpu_device_bdf`` where the UUID is missing or shared by two
  processors), ``amdsmi_get_power_cap_info`` (``power_cap`` in µW) as the power limit.

**"N/A" is absent, never 0.** The binding turns an unsupported power field (0xFFFF from the
library) into the string ``"N/A"``; newer libraries mark unsupported members ``UINT32_MAX``
(amdsmi.h), which a binding may pass on as a number. Either is an absent figure here: NaN with
`Method.NONE`. A field chosen at open that answers "N/A" later costs that figure for that tick
(`DeviceStatus.ERROR`). A GPU with neither power nor counter is `DeviceStatus.NOT_SUPPORTED`.

**Dual-die packages (MI250X, MI250).** Each die (GCD) is its own processor, and is metered as a
device, but the package's power and energy are reported by one die only: the kernel fills
``average_socket_power`` and ``energy_accumulator`` on the primary die and writes 0 on the other
("Valid power data is available only from primary die", aldebaran_ppt.c; the power cap reads 0
there too). The dies' figures must add up to the package once: a package figure on both dies
would count it twice, and the second die's zeros metered as readings would claim it drew
nothing. The rule: a die of a dual-die part (market name matching ``MI250``) whose
power is 0 or absent *and* whose counter is 0 or absent is a **secondary die**: its figures are
absent (`Method.NONE`, no counter, so `DeviceStatus.NOT_SUPPORTED` every tick and it never
reaches the wire) and its `DeviceInfo.note` names its sibling, the adjacent die in enumeration
order (the previous one first: die 0 of a package comes first in PCI order) that does report;
the sibling's note says its figures cover both dies. The package is thus counted once, on the
die that reports it. Selecting only a secondary die meters nothing for that package, and says
so. A MI300X in a compute-partition mode is not treated this way (not verified on hardware).

Each read fills a `meters.backends.base.FlatBuffer`, one GPU at a time through
`AmdSmiBackend.read_device` (`meters.backends.base.DeviceReader`): the sampler reads GPU by GPU,
each GPU's state touched only by the thread reading it (the ROCm library serialises its own
device access). ``read``, ``read_flat``, ``close`` and the context manager are
`meters.backends.vendor.VendorBackend`'s, shared with the NVML backend.

Failures: ``AmdSmiLibraryException`` return codes are translated once, by
`translate_amdsmi_error`. A GPU that stops answering (``AMDSMI_STATUS_NOT_FOUND``, or
``AMDSMI_STATUS_UNKNOWN_ERROR``, which is what an errno the library does not map becomes, ENODEV
from a removed device among them) is marked `DeviceStatus.LOST` from then on and is not called
again; the other GPUs carry on. A transient failure makes that figure NaN with
`DeviceStatus.ERROR` for that tick only.

``amdsmi_init`` is not reference counted in the ROCm sources read (amd_smi.cc, ROCm 6.2): one
backend's `close` shuts the library down for the whole process. Open one `AmdSmiBackend` per
process.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from ..errors import (
    DeviceLost,
    DeviceUnavailable,
    MeterError,
    NotSupported,
    PermissionDenied,
    ReadError,
)
from .base import (
    Clock,
    DeviceInfo,
    DeviceStatus,
    FlatBuffer,
    Method,
    UncertaintyHint,
)
from .vendor import TRANSIENT, ErrorTable, VendorBackend, status_of

# AMD SMI return codes (``amdsmi_status_t``, as ``amdsmi.amdsmi_wrapper`` spells them). Read from
# the wheels of amdsmi 6.0.0, 6.1.2, 6.2.0, 6.2.4, 6.3.0, 6.3.3, 6.4.0, 6.4.3, 7.0.0 and 7.0.2:
# releases only ever added codes, never renumbered one, except AMDSMI_STATUS_MORE_DATA (57 in 6.4,
# 39 in 7.0), left out here on purpose. A test checks them against the installed package, and
# `meters.testing.fake_amdsmi` reuses them.
AMDSMI_STATUS_SUCCESS = 0
AMDSMI_STATUS_INVAL = 1
AMDSMI_STATUS_NOT_SUPPORTED = 2
AMDSMI_STATUS_NOT_YET_IMPLEMENTED = 3
AMDSMI_STATUS_FAIL_LOAD_MODULE = 4
AMDSMI_STATUS_FAIL_LOAD_SYMBOL = 5
AMDSMI_STATUS_DRM_ERROR = 6
AMDSMI_STATUS_API_FAILED = 7
AMDSMI_STATUS_TIMEOUT = 8
AMDSMI_STATUS_RETRY = 9
AMDSMI_STATUS_NO_PERM = 10
AMDSMI_STATUS_INTERRUPT = 11
AMDSMI_STATUS_IO = 12
AMDSMI_STATUS_ADDRESS_FAULT = 13
AMDSMI_STATUS_FILE_ERROR = 14
AMDSMI_STATUS_OUT_OF_RESOURCES = 15
AMDSMI_STATUS_INTERNAL_EXCEPTION = 16
AMDSMI_STATUS_INPUT_OUT_OF_BOUNDS = 17
AMDSMI_STATUS_INIT_ERROR = 18
AMDSMI_STATUS_REFCOUNT_OVERFLOW = 19
AMDSMI_STATUS_DIRECTORY_NOT_FOUND = 20  # since 6.4
AMDSMI_STATUS_BUSY = 30
AMDSMI_STATUS_NOT_FOUND = 31
AMDSMI_STATUS_NOT_INIT = 32
AMDSMI_STATUS_NO_SLOT = 33
AMDSMI_STATUS_DRIVER_NOT_LOADED = 34
AMDSMI_STATUS_NO_DATA = 40
AMDSMI_STATUS_INSUFFICIENT_SIZE = 41
AMDSMI_STATUS_UNEXPECTED_SIZE = 42
AMDSMI_STATUS_UNEXPECTED_DATA = 43
AMDSMI_STATUS_NON_AMD_CPU = 44
AMDSMI_STATUS_NO_ENERGY_DRV = 45
AMDSMI_STATUS_NO_MSR_DRV = 46
AMDSMI_STATUS_NO_HSMP_DRV = 47
AMDSMI_STATUS_NO_HSMP_SUP = 48
AMDSMI_STATUS_NO_HSMP_MSG_SUP = 49
AMDSMI_STATUS_HSMP_TIMEOUT = 50
AMDSMI_STATUS_NO_DRV = 51
AMDSMI_STATUS_FILE_NOT_FOUND = 52
AMDSMI_STATUS_ARG_PTR_NULL = 53
AMDSMI_STATUS_AMDGPU_RESTART_ERR = 54
AMDSMI_STATUS_SETTING_UNAVAILABLE = 55
AMDSMI_STATUS_CORRUPTED_EEPROM = 56  # since 6.4
AMDSMI_STATUS_MAP_ERROR = 0xFFFFFFFE
AMDSMI_STATUS_UNKNOWN_ERROR = 0xFFFFFFFF

# ``amdsmi_init`` flags (``AmdSmiInitFlags``, 7.0.2; ALL_PROCESSORS was 0 in 6.0). The backend
# passes the module's own enum member, as ``amdsmi_init`` refuses anything else.
AMDSMI_INIT_ALL_PROCESSORS = 0xFFFFFFFF
AMDSMI_INIT_AMD_CPUS = 1
AMDSMI_INIT_AMD_GPUS = 2
AMDSMI_INIT_AMD_APUS = 3
AMDSMI_INIT_NON_AMD_CPUS = 4
AMDSMI_INIT_NON_AMD_GPUS = 8

# The one table from AMD SMI return codes to the meter's error tree (descriptions as the binding's
# ``AmdSmiLibraryException.err_info`` gives them). Codes not listed are ReadError.
_ERRORS: dict[int, tuple[str, type[MeterError]]] = {
    AMDSMI_STATUS_INVAL: ("Invalid parameters", ReadError),
    AMDSMI_STATUS_NOT_SUPPORTED: ("Feature not supported", NotSupported),
    AMDSMI_STATUS_NOT_YET_IMPLEMENTED: ("Feature not yet implemented", NotSupported),
    AMDSMI_STATUS_FAIL_LOAD_MODULE: ("Fail to load lib", DeviceUnavailable),
    AMDSMI_STATUS_FAIL_LOAD_SYMBOL: ("Fail to load symbol", DeviceUnavailable),
    AMDSMI_STATUS_DRM_ERROR: ("Error when called libdrm", ReadError),
    AMDSMI_STATUS_API_FAILED: ("API call failed", ReadError),
    AMDSMI_STATUS_TIMEOUT: ("Timeout in API call", ReadError),
    AMDSMI_STATUS_RETRY: ("Retry operation", ReadError),
    AMDSMI_STATUS_NO_PERM: ("Permission Denied", PermissionDenied),
    AMDSMI_STATUS_INTERRUPT: ("Interrupt occurred during execution", ReadError),
    AMDSMI_STATUS_IO: ("I/O Error", ReadError),
    AMDSMI_STATUS_ADDRESS_FAULT: ("Bad address", ReadError),
    AMDSMI_STATUS_FILE_ERROR: ("Error opening file", ReadError),
    AMDSMI_STATUS_OUT_OF_RESOURCES: ("Not enough memory", ReadError),
    AMDSMI_STATUS_INTERNAL_EXCEPTION: ("Internal error", ReadError),
    AMDSMI_STATUS_INPUT_OUT_OF_BOUNDS: ("Out of bounds", ReadError),
    AMDSMI_STATUS_INIT_ERROR: ("Initialization error", DeviceUnavailable),
    AMDSMI_STATUS_REFCOUNT_OVERFLOW: ("Internal reference counter exceeded", ReadError),
    AMDSMI_STATUS_DIRECTORY_NOT_FOUND: ("Error when a directory is not found", ReadError),
    AMDSMI_STATUS_BUSY: ("Device busy", ReadError),
    AMDSMI_STATUS_NOT_FOUND: ("Device Not found", DeviceLost),
    AMDSMI_STATUS_NOT_INIT: ("Device not initialized", DeviceUnavailable),
    AMDSMI_STATUS_NO_SLOT: ("No more free slot", ReadError),
    AMDSMI_STATUS_DRIVER_NOT_LOADED: ("Driver not loaded", DeviceUnavailable),
    AMDSMI_STATUS_NO_DATA: ("No data was found for given input", ReadError),
    AMDSMI_STATUS_INSUFFICIENT_SIZE: ("Insufficient size for operation", ReadError),
    AMDSMI_STATUS_UNEXPECTED_SIZE: ("unexpected size of data was read", ReadError),
    AMDSMI_STATUS_UNEXPECTED_DATA: ("The data read or provided was unexpected", ReadError),
    AMDSMI_STATUS_NON_AMD_CPU: ("System has non-AMD CPU", NotSupported),
    AMDSMI_STATUS_NO_ENERGY_DRV: ("Energy driver not found", NotSupported),
    AMDSMI_STATUS_NO_MSR_DRV: ("MSR driver not found", NotSupported),
    AMDSMI_STATUS_NO_HSMP_DRV: ("HSMP driver not found", NotSupported),
    AMDSMI_STATUS_NO_HSMP_SUP: ("HSMP not supported", NotSupported),
    AMDSMI_STATUS_NO_HSMP_MSG_SUP: ("HSMP message/feature not supported", NotSupported),
    AMDSMI_STATUS_HSMP_TIMEOUT: ("HSMP message timeout", ReadError),
    AMDSMI_STATUS_NO_DRV: ("No Energy and HSMP driver present", NotSupported),
    AMDSMI_STATUS_FILE_NOT_FOUND: ("File or directory not found", NotSupported),
    AMDSMI_STATUS_ARG_PTR_NULL: ("Parsed argument is invalid", ReadError),
    AMDSMI_STATUS_AMDGPU_RESTART_ERR: ("AMDGPU restart failed", ReadError),
    AMDSMI_STATUS_SETTING_UNAVAILABLE: ("Setting is not available", NotSupported),
    AMDSMI_STATUS_CORRUPTED_EEPROM: ("Corrupted EEPROM", ReadError),
    AMDSMI_STATUS_MAP_ERROR: ("The internal library error did not map to a status code", ReadError),
    AMDSMI_STATUS_UNKNOWN_ERROR: ("An unknown error occurred", DeviceLost),
}

_HINTS = {
    AMDSMI_STATUS_DRIVER_NOT_LOADED: "the amdgpu kernel driver is not loaded",
    AMDSMI_STATUS_NOT_FOUND: "the GPU is gone from the system; treated as lost",
    AMDSMI_STATUS_UNKNOWN_ERROR: (
        "an errno the library does not map, such as ENODEV from a removed GPU; treated as lost"
    ),
}
_PERMISSION_FIX = (
    "the process must be able to open /dev/kfd and /dev/dri/renderD<N>: add its user to the "
    "'render' and 'video' groups, or in a container pass those devices through"
)
_TABLE = ErrorTable(_ERRORS, _HINTS, _PERMISSION_FIX, unknown="AMD SMI status {code}")

# Markers of an unsupported value: 0xFFFF is what the binding turns into "N/A" (a binding that
# does not translate passes it on), UINT32_MAX / UINT64_MAX what newer libraries write into an
# unsupported struct member. No GPU draws 65 kW, so for power all three mean "absent".
_POWER_SENTINELS = frozenset({0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})
# For the counter only the wide ones: 0xFFFF counts (1 J) is a count a GPU passes through.
_COUNTER_SENTINELS = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})

# Power fields in preference order: (key in amdsmi_get_power_info, method, note).
_POWER_FIELDS: tuple[tuple[str, Method, str], ...] = (
    ("average_socket_power", Method.POWER_AVG, ""),
    ("current_socket_power", Method.POWER_INSTANT, ""),
    (
        "socket_power",
        Method.POWER_INSTANT,
        "power from amdsmi's socket_power, whose averaging AMD does not document",
    ),
)
# The count key of amdsmi_get_energy_count: "energy_accumulator" since 6.3, "power" before.
_ENERGY_KEYS = ("energy_accumulator", "power")

# Dual-die parts whose second die reports nothing of its own (aldebaran: MI250X, MI250).
_DUAL_DIE_NAME = re.compile(r"MI250")

_NOTE = (
    "AMD SMI socket power in whole watts and the firmware energy accumulator; AMD documents no "
    "accuracy for either"
)
# The library's constant resolution against the firmware's documented unit (see module docs).
_LIBRARY_RESOLUTION_UJ = 15.3
_RESOLUTION_NOTE = (
    "the library reports 15.3 µJ per count where MI300 firmware documents 2^-16 J "
    "(15.259 µJ): counter energy may read up to 0.27 % high"
)

AmdSmiHandle = Any
T = TypeVar("T")


class AmdSmiModule(Protocol):
    """The part of ``amdsmi`` this backend calls (``meters.testing.fake_amdsmi`` implements it)."""

    @property
    def AmdSmiLibraryException(self) -> type[Exception]:  # noqa: N802  (amdsmi's name)
        """The class of every library error; instances carry the return code in ``err_code``."""
        ...

    @property
    def AmdSmiInitFlags(self) -> Any:  # noqa: N802  (amdsmi's name)
        """The IntEnum of ``amdsmi_init`` flags (``amdsmi_init`` refuses a plain int)."""
        ...

    def amdsmi_init(self, flag: Any = ...) -> None: ...
    def amdsmi_shut_down(self) -> None: ...
    def amdsmi_get_processor_handles(self) -> list[AmdSmiHandle]: ...
    def amdsmi_get_gpu_device_uuid(self, processor_handle: AmdSmiHandle) -> str: ...
    def amdsmi_get_gpu_device_bdf(self, processor_handle: AmdSmiHandle) -> str: ...
    def amdsmi_get_gpu_asic_info(self, processor_handle: AmdSmiHandle) -> dict[str, Any]: ...
    def amdsmi_get_power_cap_info(self, processor_handle: AmdSmiHandle) -> dict[str, Any]: ...
    def amdsmi_get_power_info(self, processor_handle: AmdSmiHandle) -> dict[str, Any]: ...
    def amdsmi_get_energy_count(self, processor_handle: AmdSmiHandle) -> dict[str, Any]: ...
    def amdsmi_get_gpu_activity(self, processor_handle: AmdSmiHandle) -> dict[str, Any]: ...


def translate_amdsmi_error(code: int, *, call: str, device: str | None = None) -> MeterError:
    """The `MeterError` for an AMD SMI return code: the one place AMD SMI errors are interpreted.

    Args:
        code: The ``amdsmi_status_t`` value (``AmdSmiLibraryException.err_code``).
        call: The AMD SMI function that failed, for the message.
        device: Which GPU (uid or enumeration index), for the message.

    Returns:
        `DeviceLost` for a GPU that is gone (not found, unknown error), `NotSupported`,
        `PermissionDenied`, `DeviceUnavailable` for a missing driver or an uninitialised library,
        and `ReadError` for everything transient or unlisted.
    """
    return _TABLE.translate(code, call=call, device=device)


@dataclass(slots=True)
class _Gpu:
    info: DeviceInfo
    handle: AmdSmiHandle
    power_key: str | None  # the amdsmi_get_power_info key read each tick
    energy_key: str | None  # the amdsmi_get_energy_count key of the count
    lost: str = ""  # non-empty once the GPU stopped answering: the reason
    absent: str = ""  # why a GPU that answers has no figures (NOT_SUPPORTED every tick)
    activity: bool = True  # False once amdsmi_get_gpu_activity answered NOT_SUPPORTED
    # whose umc_activity is averaged: its own (empty) or, for a dual-die package, both dies'
    activity_handles: tuple[AmdSmiHandle, ...] = ()


@dataclass(slots=True)
class _Probe:
    """What one enumerated processor answered while opening (figures as found, for pairing)."""

    index: int
    handle: AmdSmiHandle = None
    uuid: str | None = None
    bdf: str | None = None
    name: str = ""
    power_cap_w: float | None = None
    power_key: str | None = None
    power_method: Method = Method.NONE
    power_note: str = ""
    power_w: float | None = None  # the chosen field at open (0 counts as a value here)
    energy_key: str | None = None
    count: int | None = None
    resolution_uj: float | None = None
    error: str = ""  # why it did not answer while opening (then it is metered as lost)

    @property
    def dual_die(self) -> bool:
        return bool(_DUAL_DIE_NAME.search(self.name))

    @property
    def quiet(self) -> bool:
        """Reports no figure of its own: power 0 or absent and counter 0 or absent."""
        return not self.power_w and not self.count


class AmdSmiBackend(VendorBackend[_Gpu]):
    """A `PowerBackend` over AMD GPUs.

    Args:
        amdsmi: The AMD SMI module; default ``import amdsmi`` (ROCm's Python binding, which needs
            ``libamd_smi.so``). Tests pass ``meters.testing.fake_amdsmi.FakeAmdSmi(...)``.
        gpus: Which GPUs: positions in ``amdsmi_get_processor_handles()`` order, UUIDs or BDFs
            (``0000:05:00.0``). None: every GPU. An entry that names no GPU raises.
        clock: Time source for the readings' timestamps (default: the system clocks).

    Raises:
        DeviceUnavailable: ``amdsmi`` is not installed or cannot load its library, no driver, or
            an entry of ``gpus`` names no GPU.
        MeterError: ``amdsmi_init`` failed otherwise (translated, e.g. `PermissionDenied`).
    """

    def __init__(
        self,
        *,
        amdsmi: AmdSmiModule | None = None,
        gpus: Sequence[int | str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._smi = amdsmi if amdsmi is not None else _import_amdsmi()
        super().__init__(clock)
        try:
            self._call(self._smi.amdsmi_init, self._smi.AmdSmiInitFlags.INIT_AMD_GPUS)
        except DeviceLost as e:  # "not found" before any GPU was known: nothing to meter
            raise DeviceUnavailable(str(e)) from e
        self._open = True
        try:
            probes = [self._probe(position, h) for position, h in enumerate(self._handles())]
            everyone = _describe(probes)
            self._gpus = tuple(everyone[i] for i in _select(probes, gpus))
        except BaseException:
            self.close()
            raise

    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        """Read GPU ``i`` (array order) into slot ``i`` of ``buffer``, timed at the calls' middle.

        `meters.backends.base.DeviceReader`: safe on several threads at once for different GPUs;
        one GPU must not be read on two threads at once. Power (W) and the raw counter (J) each
        come from one call; a failed call costs its figure for this tick only, a lost GPU all of
        them from now on.
        """
        gpu = self._gpus[i]
        t0_s = self._monotonic_s()
        if gpu.lost:
            buffer.fail(i, DeviceStatus.LOST, gpu.lost)
        elif gpu.absent:
            buffer.fail(i, DeviceStatus.NOT_SUPPORTED, gpu.absent)
        else:
            self._read_figures(buffer, i, gpu)
        buffer.t_mono_s[i] = 0.5 * (t0_s + self._monotonic_s())  # wall time from the tick's

    def memory_busy_frac(self, i: int) -> float:
        """GPU ``i``'s memory-controller activity as a fraction (`base.ActivityReader`):
        ``amdsmi_get_gpu_activity(handle)["umc_activity"]`` / 100, the mean of both dies' on a
        dual-die package.

        NaN where the answer is "N/A" or a sentinel, the call failed, the GPU is lost or has no
        figures, or the backend is closed; NOT_SUPPORTED makes it NaN from then on. Never raises
        for the GPU's failure.
        """
        gpu = self._gpus[i]
        if gpu.lost or gpu.absent or not gpu.activity or not self._open:
            return math.nan
        fractions = []
        for handle in gpu.activity_handles or (gpu.handle,):
            try:
                answer = self._call(self._smi.amdsmi_get_gpu_activity, handle, device=gpu.info.uid)
            except NotSupported:
                gpu.activity = False
                return math.nan
            except MeterError:
                return math.nan
            value = _number(
                answer.get("umc_activity") if isinstance(answer, Mapping) else None,
                _POWER_SENTINELS,
            )
            if value is None or value > 100:
                return math.nan
            fractions.append(value / 100.0)
        return math.fsum(fractions) / len(fractions)

    # -- internals ----------------------------------------------------------------------------

    def _read_figures(self, buffer: FlatBuffer, i: int, gpu: _Gpu) -> None:
        uid = gpu.info.uid
        try:
            if gpu.power_key is not None:
                try:
                    info = self._call(self._smi.amdsmi_get_power_info, gpu.handle, device=uid)
                    buffer.set_power(i, _power_w(info, gpu.power_key, uid), gpu.info.power_method)
                except TRANSIENT as e:
                    buffer.fail(i, status_of(e), str(e))
            if gpu.energy_key is not None:
                try:
                    count = self._call(self._smi.amdsmi_get_energy_count, gpu.handle, device=uid)
                    buffer.set_energy(i, _energy_j(count, gpu.energy_key, uid))
                except TRANSIENT as e:
                    buffer.fail(i, status_of(e), str(e))
        except DeviceLost as e:
            gpu.lost = str(e)
            buffer.fail(i, DeviceStatus.LOST, gpu.lost)

    def _shut_down(self) -> None:
        self._call(self._smi.amdsmi_shut_down)

    def _call(self, fn: Callable[..., T], *args: Any, device: str | None = None) -> T:
        try:
            return fn(*args)
        except self._smi.AmdSmiLibraryException as e:
            code = getattr(e, "err_code", None)
            name = getattr(fn, "__name__", "AMD SMI call")
            code = AMDSMI_STATUS_UNKNOWN_ERROR if code is None else abs(int(code))
            raise translate_amdsmi_error(code, call=name, device=device) from e

    def _handles(self) -> list[AmdSmiHandle]:
        try:
            return list(self._call(self._smi.amdsmi_get_processor_handles))
        except DeviceLost as e:  # as for amdsmi_init: no GPU was known yet
            raise DeviceUnavailable(str(e)) from e

    def _probe(self, index: int, handle: AmdSmiHandle) -> _Probe:
        """Ask one processor who it is and what it reports (one call of each kind)."""
        probe = _Probe(index, handle)
        where = f"GPU {index}"
        smi = self._smi
        try:
            probe.uuid = _text(self._optional(smi.amdsmi_get_gpu_device_uuid, handle, device=where))
            probe.bdf = _text(self._optional(smi.amdsmi_get_gpu_device_bdf, handle, device=where))
            where = probe.uuid or probe.bdf or where
            asic = self._optional(smi.amdsmi_get_gpu_asic_info, handle, device=where) or {}
            probe.name = _text(asic.get("market_name")) or ""
            cap = self._optional(smi.amdsmi_get_power_cap_info, handle, device=where) or {}
            cap_uw = _number(cap.get("power_cap"), _POWER_SENTINELS)
            probe.power_cap_w = cap_uw / 1e6 if cap_uw else None  # 0: none (a secondary die)
            power = self._optional(smi.amdsmi_get_power_info, handle, device=where) or {}
            for key, method, note in _POWER_FIELDS:
                value = _number(power.get(key), _POWER_SENTINELS)
                if value is not None:
                    probe.power_key, probe.power_method, probe.power_note = key, method, note
                    probe.power_w = value
                    break
            energy = self._optional(smi.amdsmi_get_energy_count, handle, device=where) or {}
            resolution_uj = _number(energy.get("counter_resolution"), frozenset())
            for key in _ENERGY_KEYS:
                count = _number(energy.get(key), _COUNTER_SENTINELS)
                if count is not None and resolution_uj:
                    probe.energy_key, probe.count = key, int(count)
                    probe.resolution_uj = resolution_uj
                    break
        except DeviceLost as e:
            probe.error = str(e)
        return probe

    def __repr__(self) -> str:
        return f"AmdSmiBackend({len(self._gpus)} GPUs)"


def _describe(probes: Sequence[_Probe]) -> list[_Gpu]:
    """A `_Gpu` per enumerated processor, dual-die packages counted once (module docs)."""
    uuids = [p.uuid for p in probes if p.uuid]
    shared = {u for u in uuids if uuids.count(u) > 1}
    uids = [
        (p.uuid if p.uuid and p.uuid not in shared else p.bdf) or f"AMDSMI-INDEX-{p.index}"
        for p in probes
    ]
    siblings = _pair_dies(probes)
    gpus = []
    for probe, uid in zip(probes, uids, strict=True):
        if probe.error:
            gpus.append(_unreachable(probe, uid))
            continue
        gpu = _gpu(probe, uid)
        if probe.index in siblings:  # the secondary die of a dual-die package
            sibling = siblings[probe.index]
            about = (
                f"its sibling die {uids[sibling]}"
                if sibling is not None
                else "its sibling die, which could not be identified (no adjacent die of the "
                "package reports figures)"
            )
            why = (
                f"second die of a dual-die {probe.name}: the package's power and energy are "
                f"reported by {about}, and counted there once"
            )
            gpu = _Gpu(
                replace(
                    gpu.info,
                    has_energy_counter=False,
                    power_method=Method.NONE,
                    uncertainty=UncertaintyHint(note=_NOTE),
                    note=why,
                ),
                probe.handle,
                power_key=None,
                energy_key=None,
                absent=why,
            )
        elif probe.index in siblings.values():
            (secondary,) = (k for k, v in siblings.items() if v == probe.index)
            note = f"dual-die package: the figures cover both dies (this one and {uids[secondary]})"
            gpu.info = replace(gpu.info, note="; ".join(n for n in (note, gpu.info.note) if n))
            gpu.activity_handles = (probe.handle, probes[secondary].handle)
        gpus.append(gpu)
    return gpus


def _pair_dies(probes: Sequence[_Probe]) -> dict[int, int | None]:
    """Secondary die index -> the index of the die reporting its package (None: none found)."""
    paired: dict[int, int | None] = {}
    taken: set[int] = set()
    for k, probe in enumerate(probes):
        if probe.error or not probe.dual_die or not probe.quiet:
            continue
        sibling = None
        for j in (k - 1, k + 1):  # die 0 of a package is enumerated first (PCI order)
            if 0 <= j < len(probes) and j not in taken:
                other = probes[j]
                if other.dual_die and not other.error and not other.quiet:
                    sibling = j
                    taken.add(j)
                    break
        paired[probe.index] = None if sibling is None else probes[sibling].index
    return paired


def _gpu(probe: _Probe, uid: str) -> _Gpu:
    notes = [] if probe.name else ["AMD SMI gave no market name"]
    if probe.power_key is None:
        notes.append("no power reading on this GPU")
    notes.append(probe.power_note)
    has_counter = probe.energy_key is not None
    if not has_counter:
        notes.append("no energy counter: energy must come from power")
    resolution_uj = probe.resolution_uj
    hint_note = _NOTE
    if resolution_uj is not None and math.isclose(
        resolution_uj, _LIBRARY_RESOLUTION_UJ, rel_tol=1e-6
    ):
        hint_note = f"{_NOTE}; {_RESOLUTION_NOTE}"
    info = DeviceInfo(
        backend="amdsmi",
        index=probe.index,
        uid=uid,
        name=probe.name,
        power_limit_w=probe.power_cap_w,
        has_energy_counter=has_counter,
        power_method=probe.power_method,
        counter_wrap_j=None,  # 64-bit accumulator: a decrease is a reset
        scope="gpu",
        uncertainty=UncertaintyHint(
            power_window_s=None,  # AMD documents no averaging window
            counter_resolution_j=None if resolution_uj is None else resolution_uj * 1e-6,
            counter_update_s=None,
            note=hint_note,
        ),
        note="; ".join(note for note in notes if note),
    )
    nothing = probe.power_key is None and not has_counter
    absent = "this GPU offers neither power nor energy through AMD SMI" if nothing else ""
    return _Gpu(info, probe.handle, probe.power_key, probe.energy_key, absent=absent)


def _unreachable(probe: _Probe, uid: str) -> _Gpu:
    """A processor AMD SMI lists but that did not answer while opening: metered as lost."""
    info = DeviceInfo(
        backend="amdsmi",
        index=probe.index,
        uid=uid,
        name=probe.name,
        power_limit_w=None,
        has_energy_counter=False,
        power_method=Method.NONE,
        note=f"did not answer while opening: {probe.error}",
    )
    return _Gpu(info, probe.handle, None, None, lost=probe.error)


def _select(probes: Sequence[_Probe], gpus: Sequence[int | str] | None) -> list[int]:
    """Positions of the selected processors, in the order named (each once)."""
    if gpus is None:
        return list(range(len(probes)))
    chosen: list[int] = []
    for entry in gpus:
        text = str(entry).strip()
        if isinstance(entry, int) or text.isdigit():
            position = int(text)
            if not 0 <= position < len(probes):
                raise DeviceUnavailable(
                    f"gpus entry {entry!r}: no GPU with index {position} ({len(probes)} present)"
                )
        else:
            wanted = text.lower()
            matches = [
                p.index for p in probes if wanted in ((p.uuid or "").lower(), (p.bdf or "").lower())
            ]
            if not matches:
                raise DeviceUnavailable(f"gpus entry {entry!r}: no GPU has this UUID or BDF")
            position = matches[0]
        if position not in chosen:
            chosen.append(position)
    return chosen


def _number(value: object, sentinels: frozenset[int]) -> float | None:
    """A figure from an AMD SMI dict, or None where it is absent ("N/A", a sentinel, junk)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if value in sentinels or value < 0 else float(value)
    if isinstance(value, float) and math.isfinite(value) and value >= 0.0:
        return value
    return None  # "N/A" above all


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return None if not value or value == "N/A" else value


def _power_w(info: Mapping[str, Any], key: str, uid: str) -> float:
    """The chosen power field of an ``amdsmi_get_power_info`` answer, in watts.

    Raises:
        ReadError: The field is absent this time ("N/A" or a sentinel).
    """
    value = info.get(key)
    power_w = _number(value, _POWER_SENTINELS)
    if power_w is None:
        raise ReadError(f"amdsmi_get_power_info for {uid}: {key} is {value!r}")
    return power_w


def _energy_j(answer: Mapping[str, Any], key: str, uid: str) -> float:
    """The counter of an ``amdsmi_get_energy_count`` answer in joules: count × µJ × 1e-6.

    Raises:
        ReadError: The count is absent or the "invalid" marker, or the resolution is unusable.
    """
    count = answer.get(key)
    resolution = answer.get("counter_resolution")
    count_n = _number(count, _COUNTER_SENTINELS)
    resolution_uj = _number(resolution, frozenset())
    if count_n is None or not resolution_uj:
        raise ReadError(
            f"amdsmi_get_energy_count for {uid}: {key}={count!r}, counter_resolution={resolution!r}"
        )
    return count_n * resolution_uj * 1e-6


def _import_amdsmi() -> AmdSmiModule:
    printed = io.StringIO()
    try:
        # The binding prints to stdout, then fails, when libamd_smi.so cannot be loaded.
        with contextlib.redirect_stdout(printed):
            import amdsmi
    except ImportError as e:
        raise DeviceUnavailable(
            "the AMD SMI backend needs amdsmi: pip install 'thermoledger[amd]'"
        ) from e
    except (OSError, KeyError, AttributeError) as e:
        # KeyError: no libamd_smi.so was found; AttributeError: the library is older than the
        # binding (a symbol is missing).
        said = " ".join(printed.getvalue().split())
        raise DeviceUnavailable(
            "amdsmi is installed but cannot use ROCm's libamd_smi.so (install amd-smi-lib of "
            f"the same ROCm version, or set ROCM_PATH){': ' + said if said else ''}"
        ) from e
    module: AmdSmiModule = amdsmi
    return module
