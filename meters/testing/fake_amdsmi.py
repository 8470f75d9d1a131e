"""A fake of the ``amdsmi`` module (ROCm's AMD SMI binding): its dicts, "N/A"s, units and errors.

`FakeAmdSmi` is an object that quacks like the subset of ``amdsmi`` that
`meters.backends.amdsmi.AmdSmiBackend` calls; pass it as ``AmdSmiBackend(amdsmi=FakeAmdSmi(...))``.
It never registers itself in ``sys.modules``, so it cannot shadow the real module. Like the real
binding (amdsmi 7.0.2's ``amdsmi_interface.py``, with the older shapes on request) it returns
dicts with the real keys, whole watts for power and µW for the power cap, an energy count with
its ``counter_resolution`` in µJ (a C float: 15.3 reads back as 15.300000190734863) and a
timestamp in ns, the string ``"N/A"`` for an unsupported power field, and raises
``AmdSmiLibraryException`` carrying the real ``amdsmi_status_t`` codes (``AmdSmiRetryException``
and ``AmdSmiTimeoutException`` for RETRY and TIMEOUT, as the binding's ``_check_res`` does).

Each `FakeAmdGpu` (one processor: a GPU, or one die of a dual-die package) draws power from a
`meters.backends.simulated.Profile` driven by the injected clock (t = 0 when `FakeAmdSmi` is
built). Its energy count is ``counter_start + ⌊E(0, t) / resolution⌋``, so the backend's
``count × resolution`` is the profile's exact energy to within one count. Scriptable:

- ``counter_resolution_uj`` and ``counter_update_s`` (the count moves only every so often);
- ``na_fields``: power-info keys that answer "N/A" (MI300X: ``average_socket_power``; MI200:
  ``current_socket_power``); ``has_counter``: the energy call answers NOT_SUPPORTED otherwise;
- ``secondary_die``: the second die of a MI250X, which reports 0 W, a count of 0 and a power
  cap of 0, as the kernel writes for it;
- ``lost_at_s`` (every call answers ``lost_code`` from then on) and ``faults`` (a call failing
  with a code during a time window);
- ``FakeAmdSmi(api_version=...)``: the dict shapes of older bindings (``"power"`` as the count's
  key before 6.3, both keys in 6.3, no ``socket_power`` before 7.0).

- ``umc_busy`` / ``gfx_busy``: what ``amdsmi_get_gpu_activity`` reports as ``umc_activity``
  (memory controller) and ``gfx_activity``, whole percent of the last ``activity_window_s``
  (a window AMD does not document; the fake's choice), each the exact mean of a busy profile in
  [0, 1] over that window; None answers "N/A" (the binding's spelling of 0xFFFF), and
  ``activity`` False answers NOT_SUPPORTED.

Presets: `mi300x`, `mi210` and `mi250x` (the two dies of one package).
"""

from __future__ import annotations

import ctypes
import math
import types
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..backends import amdsmi as codes
from ..backends.base import Clock, SystemClock
from ..backends.simulated import Profile, steady

T = TypeVar("T")

_STATUS_NAMES = {
    getattr(codes, name): name for name in dir(codes) if name.startswith("AMDSMI_STATUS_")
}

amdsmi_wrapper = types.SimpleNamespace(
    **{name: getattr(codes, name) for name in dir(codes) if name.startswith("AMDSMI_")}
)
"""Like ``amdsmi.amdsmi_wrapper``: the ``AMDSMI_STATUS_*`` and ``AMDSMI_INIT_*`` constants."""


class AmdSmiInitFlags(IntEnum):
    """``amdsmi.AmdSmiInitFlags`` (amdsmi 7.0.2)."""

    INIT_ALL_PROCESSORS = codes.AMDSMI_INIT_ALL_PROCESSORS
    INIT_AMD_CPUS = codes.AMDSMI_INIT_AMD_CPUS
    INIT_AMD_GPUS = codes.AMDSMI_INIT_AMD_GPUS
    INIT_AMD_APUS = codes.AMDSMI_INIT_AMD_APUS
    INIT_NON_AMD_CPUS = codes.AMDSMI_INIT_NON_AMD_CPUS
    INIT_NON_AMD_GPUS = codes.AMDSMI_INIT_NON_AMD_GPUS


class AmdSmiException(Exception):
    """``amdsmi.AmdSmiException``: the base of the binding's errors."""


class AmdSmiLibraryException(AmdSmiException):
    """``amdsmi.AmdSmiLibraryException``: a non-zero ``amdsmi_status_t`` in ``err_code``."""

    def __init__(self, err_code: int) -> None:
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        name = _STATUS_NAMES.get(err_code, "AMDSMI_STATUS_UNKNOWN_ERROR")
        description, _ = codes._ERRORS.get(err_code, ("An unknown error occurred", None))
        self.err_info = f"{name} - {description}"

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_code(self) -> int:
        """The ``amdsmi_status_t`` value."""
        return self.err_code

    def get_error_info(self, detailed: bool = True) -> str:
        """``"<NAME> - <description>"``, or the name alone when not ``detailed``."""
        return self.err_info if detailed else self.err_info.split(" - ")[0]


class AmdSmiRetryException(AmdSmiLibraryException):
    """``amdsmi.AmdSmiRetryException``: raised for AMDSMI_STATUS_RETRY."""

    def __init__(self) -> None:
        super().__init__(codes.AMDSMI_STATUS_RETRY)


class AmdSmiTimeoutException(AmdSmiLibraryException):
    """``amdsmi.AmdSmiTimeoutException``: raised for AMDSMI_STATUS_TIMEOUT."""

    def __init__(self) -> None:
        super().__init__(codes.AMDSMI_STATUS_TIMEOUT)


class AmdSmiParameterException(AmdSmiException):
    """``amdsmi.AmdSmiParameterException``: an argument of the wrong type (a caller's bug)."""

    def __init__(self, received: object, expected: object) -> None:
        super().__init__(f"Invalid parameter: {type(received)!r}, expected {expected!r}")
        self.err_code = None


def _raise(code: int) -> None:
    """Raise what the binding's ``_check_res`` raises for ``code``."""
    if code == codes.AMDSMI_STATUS_RETRY:
        raise AmdSmiRetryException()
    if code == codes.AMDSMI_STATUS_TIMEOUT:
        raise AmdSmiTimeoutException()
    raise AmdSmiLibraryException(code)


def c_float(value: float) -> float:
    """``value`` as a C float reads back in Python (``ctypes.c_float(value).value``)."""
    return float(ctypes.c_float(value).value)


LIBRARY_RESOLUTION_UJ = c_float(15.3)
"""What ``counter_resolution`` reads on every GPU: ROCm's constant 15.3 µJ, as a C float."""


@dataclass(frozen=True, slots=True)
class Fault:
    """``call`` (None: every call on the GPU) answers ``code`` while start <= t < end."""

    code: int
    start_s: float = 0.0
    end_s: float = math.inf
    call: str | None = None


@dataclass(frozen=True, slots=True)
class FakeAmdGpu:
    """One fake processor (a GPU, or one die). Times are seconds since the fake library loaded.

    Attributes:
        market_name: ``amdsmi_get_gpu_asic_info``'s ``market_name``.
        profile: The power it draws (for a MI250X, the whole package's, on its primary die).
        uuid: Its UUID (default: derived from its position).
        bdf: Its PCI address (default: derived from its position).
        device_id: PCI device id, e.g. 0x74A1 (MI300X).
        target_graphics_version: ``gfx942`` and the like.
        num_compute_units: Compute units.
        oam_id: OAM module id, or None ("N/A").
        power_cap_uw: Power cap in µW (None: the cap call answers NOT_SUPPORTED).
        na_fields: Keys of ``amdsmi_get_power_info`` that answer "N/A".
        average_window_s: Window of ``average_socket_power``, s (the fake's choice: AMD
            documents none).
        has_counter: Whether ``amdsmi_get_energy_count`` answers (else NOT_SUPPORTED).
        counter_resolution_uj: The resolution it reports and counts in, µJ per count.
        counter_start: The count when the fake library loads (a node up for weeks: a large one).
        counter_update_s: The count moves only at multiples of this period (0: continuously).
        secondary_die: The second die of a dual-die package: 0 W, a count of 0, a cap of 0.
        lost_at_s: Every call answers ``lost_code`` from this time on.
        lost_code: What a lost GPU answers.
        faults: Scripted failures.
        umc_busy: Whether the memory controller is busy at each instant, in [0, 1] (a
            profile); None: ``umc_activity`` answers "N/A".
        gfx_busy: Whether the graphics engine is busy at each instant, in [0, 1].
        activity: ``amdsmi_get_gpu_activity`` answers (False: NOT_SUPPORTED).
        activity_window_s: The window the activity percentages cover, s.
    """

    market_name: str = "AMD Instinct MI300X"
    profile: Profile = field(default_factory=lambda: steady(300.0))
    uuid: str | None = None
    bdf: str | None = None
    device_id: int = 0x74A1
    target_graphics_version: str = "gfx942"
    num_compute_units: int = 304
    oam_id: int | None = None
    power_cap_uw: int | None = 750_000_000
    na_fields: frozenset[str] = frozenset({"average_socket_power"})
    average_window_s: float = 1.0
    has_counter: bool = True
    counter_resolution_uj: float = LIBRARY_RESOLUTION_UJ
    counter_start: int = 0
    counter_update_s: float = 0.0
    secondary_die: bool = False
    lost_at_s: float | None = None
    lost_code: int = codes.AMDSMI_STATUS_NOT_FOUND
    faults: tuple[Fault, ...] = ()
    umc_busy: Profile | None = field(default_factory=lambda: steady(0.0))
    gfx_busy: Profile | None = field(default_factory=lambda: steady(0.0))
    activity: bool = True
    activity_window_s: float = 1.0


def mi300x(**overrides: Any) -> FakeAmdGpu:
    """An MI300X (OAM, 750 W): ``current_socket_power`` only, average "N/A"."""
    return FakeAmdGpu(**overrides)


def mi210(**overrides: Any) -> FakeAmdGpu:
    """An MI210 (PCIe, 300 W, one die): ``average_socket_power`` only, current "N/A"."""
    spec: dict[str, Any] = {
        "market_name": "AMD Instinct MI210",
        "device_id": 0x740F,
        "target_graphics_version": "gfx90a",
        "num_compute_units": 104,
        "power_cap_uw": 300_000_000,
        "na_fields": frozenset({"current_socket_power"}),
    }
    return FakeAmdGpu(**(spec | overrides))


def mi250x(profile: Profile | None = None, **overrides: Any) -> tuple[FakeAmdGpu, FakeAmdGpu]:
    """The two dies of one MI250X (OAM, 560 W), primary first as AMD SMI lists them.

    The primary die reports the package's average power and energy (``profile``: what both dies
    draw together); the secondary reports 0 W, a count of 0 and a cap of 0. ``overrides`` apply
    to both dies.
    """
    spec: dict[str, Any] = {
        "market_name": "AMD Instinct MI250X/MI250",
        "device_id": 0x740C,
        "target_graphics_version": "gfx90a",
        "num_compute_units": 110,
        "power_cap_uw": 560_000_000,
        "na_fields": frozenset({"current_socket_power"}),
    }
    package = profile if profile is not None else steady(400.0)
    primary = FakeAmdGpu(**(spec | {"profile": package} | overrides))
    secondary = FakeAmdGpu(**(spec | {"profile": steady(0.0), "secondary_die": True} | overrides))
    return primary, secondary


def default_uuid(position: int) -> str:
    """The UUID a `FakeAmdGpu` without one gets at ``position`` (deterministic)."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"thermoledger/fake-amd-gpu/{position}"))


def default_bdf(position: int) -> str:
    """The BDF a `FakeAmdGpu` without one gets at ``position``."""
    return f"0000:{0x05 + 0x10 * position:02x}:00.0"


@dataclass(frozen=True, slots=True)
class FakeProcessorHandle:
    """What ``amdsmi_get_processor_handles`` returns (the real one is a ``c_void_p``)."""

    position: int


def _api(version: str) -> tuple[int, int]:
    major, minor, *_ = (int(part) for part in version.split("."))
    return major, minor


class FakeAmdSmi:
    """A stand-in for the ``amdsmi`` module over scripted `FakeAmdGpu` processors.

    Args:
        gpus: The processors, in ``amdsmi_get_processor_handles`` order.
        clock: Time source; the fake library "loads" (t = 0) when this object is built.
        init_error: An ``amdsmi_status_t`` that ``amdsmi_init`` answers (e.g. DRIVER_NOT_LOADED).
        api_version: Which binding's dict shapes to mimic: ``"7.0"`` (default), ``"6.4"``,
            ``"6.3"`` or ``"6.2"``.

    Attributes:
        calls: How many times each (function name, processor position) was called.
        initialized: Whether the library is initialised (not reference counted, as amd_smi.cc).
    """

    AmdSmiException: ClassVar[type[AmdSmiException]] = AmdSmiException
    AmdSmiLibraryException: ClassVar[type[AmdSmiLibraryException]] = AmdSmiLibraryException
    AmdSmiRetryException: ClassVar[type[AmdSmiRetryException]] = AmdSmiRetryException
    AmdSmiTimeoutException: ClassVar[type[AmdSmiTimeoutException]] = AmdSmiTimeoutException
    AmdSmiParameterException: ClassVar[type[AmdSmiParameterException]] = AmdSmiParameterException
    AmdSmiInitFlags: ClassVar[type[AmdSmiInitFlags]] = AmdSmiInitFlags
    amdsmi_wrapper: ClassVar[types.SimpleNamespace] = amdsmi_wrapper

    def __init__(
        self,
        gpus: Sequence[FakeAmdGpu],
        *,
        clock: Clock | None = None,
        init_error: int | None = None,
        api_version: str = "7.0",
    ) -> None:
        self.gpus = tuple(gpus)
        self.uuids = tuple(g.uuid or default_uuid(i) for i, g in enumerate(self.gpus))
        self.bdfs = tuple(g.bdf or default_bdf(i) for i, g in enumerate(self.gpus))
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.loaded_mono_s = self.clock.monotonic_s()
        self.init_error = init_error
        self.api = _api(api_version)
        self.initialized = False
        self.calls: Counter[tuple[str, int]] = Counter()

    # -- time and faults ----------------------------------------------------------------------

    def now_s(self) -> float:
        """Seconds since the fake library loaded."""
        return self.clock.monotonic_s() - self.loaded_mono_s

    def _on_gpu(
        self, call: str, handle: object, compute: Callable[[FakeAmdGpu, float, int], T]
    ) -> T:
        """Run one processor call with its loss and faults; ``compute(gpu, t_s, position)``."""
        if not isinstance(handle, FakeProcessorHandle):
            raise AmdSmiParameterException(handle, FakeProcessorHandle)
        if not self.initialized:
            _raise(codes.AMDSMI_STATUS_NOT_INIT)
        position = handle.position
        gpu = self.gpus[position]
        self.calls[(call, position)] += 1
        t_s = self.now_s()
        if gpu.lost_at_s is not None and t_s >= gpu.lost_at_s:
            _raise(gpu.lost_code)
        for fault in gpu.faults:
            if fault.call in (None, call) and fault.start_s <= t_s < fault.end_s:
                _raise(fault.code)
        return compute(gpu, t_s, position)

    # -- library ------------------------------------------------------------------------------

    def amdsmi_init(self, flag: Any = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
        """Load the fake library; like the binding, only an `AmdSmiInitFlags` member will do."""
        if not isinstance(flag, AmdSmiInitFlags):
            raise AmdSmiParameterException(flag, AmdSmiInitFlags)
        if self.init_error is not None:
            _raise(self.init_error)
        self.initialized = True

    def amdsmi_shut_down(self) -> None:
        """Unload it (once for every init: the library keeps no count)."""
        self.initialized = False

    def amdsmi_get_processor_handles(self) -> list[FakeProcessorHandle]:
        """One handle per processor (AMD GPUs only, as ``INIT_AMD_GPUS`` asks)."""
        if not self.initialized:
            _raise(codes.AMDSMI_STATUS_NOT_INIT)
        return [FakeProcessorHandle(i) for i in range(len(self.gpus))]

    # -- identity -----------------------------------------------------------------------------

    def amdsmi_get_gpu_device_uuid(self, processor_handle: object) -> str:
        """The UUID string."""
        return self._on_gpu(
            "amdsmi_get_gpu_device_uuid", processor_handle, lambda g, t, i: self.uuids[i]
        )

    def amdsmi_get_gpu_device_bdf(self, processor_handle: object) -> str:
        """The BDF, ``0000:05:00.0``."""
        return self._on_gpu(
            "amdsmi_get_gpu_device_bdf", processor_handle, lambda g, t, i: self.bdfs[i]
        )

    def amdsmi_get_gpu_asic_info(self, processor_handle: object) -> dict[str, Any]:
        """ASIC info with the binding's keys and formats (hex strings, "N/A")."""

        def asic(gpu: FakeAmdGpu, t_s: float, position: int) -> dict[str, Any]:
            serial = uuidlib.uuid5(uuidlib.NAMESPACE_URL, self.uuids[position]).int >> 64
            info: dict[str, Any] = {
                "market_name": gpu.market_name or "N/A",
                "vendor_id": "0x1002",
                "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
                "subvendor_id": "0x1002",
                "device_id": hex(gpu.device_id),
                "rev_id": "0x00",
                "asic_serial": f"0x{serial:016X}",
                "oam_id": "N/A" if gpu.oam_id is None else gpu.oam_id,
                "num_compute_units": gpu.num_compute_units,
                "target_graphics_version": gpu.target_graphics_version,
            }
            if self.api >= (7, 0):
                info["subsystem_id"] = hex(gpu.device_id)
            return info

        return self._on_gpu("amdsmi_get_gpu_asic_info", processor_handle, asic)

    def amdsmi_get_power_cap_info(self, processor_handle: object) -> dict[str, Any]:
        """Power caps in µW (``dpm_cap`` in MHz); a secondary die's read 0."""

        def cap(gpu: FakeAmdGpu, t_s: float, position: int) -> dict[str, Any]:
            if gpu.power_cap_uw is None:
                _raise(codes.AMDSMI_STATUS_NOT_SUPPORTED)
            cap_uw = 0 if gpu.secondary_die else gpu.power_cap_uw
            return {
                "power_cap": cap_uw,
                "default_power_cap": cap_uw,
                "dpm_cap": 0 if gpu.secondary_die else 2100,
                "min_power_cap": 0,
                "max_power_cap": cap_uw,
            }

        return self._on_gpu("amdsmi_get_power_cap_info", processor_handle, cap)

    # -- readings -----------------------------------------------------------------------------

    def amdsmi_get_power_info(self, processor_handle: object) -> dict[str, Any]:
        """Socket power in whole watts; "N/A" for the fields the GPU does not offer."""

        def power(gpu: FakeAmdGpu, t_s: float, position: int) -> dict[str, Any]:
            figures: dict[str, int | str] = {
                "current_socket_power": round(gpu.profile.power_at_w(t_s)),
                "average_socket_power": round(
                    gpu.profile.average_power_at_w(t_s, gpu.average_window_s)
                ),
            }
            if gpu.secondary_die:  # the kernel writes 0 for the average; current stays absent
                figures = {"current_socket_power": "N/A", "average_socket_power": 0}
            for key in gpu.na_fields & figures.keys():
                figures[key] = "N/A"
            info: dict[str, Any] = {}
            if self.api >= (7, 0):  # the socket's power, whatever the other two say
                socket_w = 0 if gpu.secondary_die else round(gpu.profile.power_at_w(t_s))
                info["socket_power"] = "N/A" if "socket_power" in gpu.na_fields else socket_w
            return (
                info
                | figures
                | {
                    "gfx_voltage": 750,
                    "soc_voltage": 800,
                    "mem_voltage": 1100,
                    "power_limit": round((gpu.power_cap_uw or 0) / 1e6),
                }
            )

        return self._on_gpu("amdsmi_get_power_info", processor_handle, power)

    def amdsmi_get_energy_count(self, processor_handle: object) -> dict[str, Any]:
        """The energy count, its resolution (µJ, a C float) and a timestamp (ns)."""

        def energy(gpu: FakeAmdGpu, t_s: float, position: int) -> dict[str, Any]:
            if not gpu.has_counter:
                _raise(codes.AMDSMI_STATUS_NOT_SUPPORTED)
            count = 0 if gpu.secondary_die else counter(gpu, t_s)
            timestamp_ns = round(self.clock.monotonic_s() * 1e9)
            resolution = c_float(gpu.counter_resolution_uj)
            if self.api < (6, 3):
                return {"power": count, "counter_resolution": resolution, "timestamp": timestamp_ns}
            shape: dict[str, Any] = {"power": count} if self.api < (6, 4) else {}
            return shape | {
                "energy_accumulator": count,
                "counter_resolution": resolution,
                "timestamp": timestamp_ns,
            }

        return self._on_gpu("amdsmi_get_energy_count", processor_handle, energy)

    def amdsmi_get_gpu_activity(self, processor_handle: object) -> dict[str, Any]:
        """Engine activity in whole percent (``gfx_activity``, ``umc_activity``,
        ``mm_activity``), "N/A" where a figure is unsupported; NOT_SUPPORTED without it."""

        def activity(gpu: FakeAmdGpu, t_s: float, position: int) -> dict[str, Any]:
            if not gpu.activity:
                _raise(codes.AMDSMI_STATUS_NOT_SUPPORTED)
            window_s = gpu.activity_window_s

            def percent(profile: Profile | None) -> int | str:
                if profile is None:
                    return "N/A"
                fraction = profile.average_power_at_w(t_s, window_s)
                return min(100, max(0, round(100.0 * fraction)))

            return {
                "gfx_activity": percent(gpu.gfx_busy),
                "umc_activity": percent(gpu.umc_busy),
                "mm_activity": "N/A",
            }

        return self._on_gpu("amdsmi_get_gpu_activity", processor_handle, activity)

    # -- helpers ------------------------------------------------------------------------------

    def exact_energy_j(self, position: int, t0_s: float, t1_s: float) -> float:
        """The energy processor ``position`` drew over [t0_s, t1_s] (seconds since load), J."""
        gpu = self.gpus[position]
        return 0.0 if gpu.secondary_die else gpu.profile.energy_between_j(t0_s, t1_s)


def counter(gpu: FakeAmdGpu, t_s: float) -> int:
    """The energy count a `FakeAmdGpu` shows at ``t_s``: whole counts of its resolution.

    Args:
        gpu: The processor.
        t_s: Seconds since the fake library loaded.

    Returns:
        ``counter_start`` plus the energy since load in counts of ``counter_resolution_uj``
        (floored), held between counter updates.
    """
    if gpu.counter_update_s > 0:
        t_s = math.floor(t_s / gpu.counter_update_s) * gpu.counter_update_s
    energy_uj = 1e6 * gpu.profile.energy_between_j(0.0, t_s)
    return gpu.counter_start + math.floor(energy_uj / c_float(gpu.counter_resolution_uj))


if TYPE_CHECKING:
    # mypy checks here that the fake offers everything the backend calls, with the same shapes.
    from ..backends.amdsmi import AmdSmiModule

    _conforms: AmdSmiModule = FakeAmdSmi([])
