"""The backend interface: one Protocol, the device description and one tick of readings.

A backend (`NvmlBackend`, `RaplBackend`, `SimulatedBackend`, `ReplayBackend`) reads every device it
owns in one call and returns a `Readings`: numpy arrays whose position ``i`` is the device
``devices()[i]``. Values are SI floats (W, J, s). Nothing is ever a silent zero: a figure that is
absent is NaN, its method code is `Method.NONE`, and the device's `DeviceStatus` (plus a message)
says why. `Readings` checks this on construction, so a backend cannot break the rule by accident.

Energy counters are passed on **raw**, as the device reports them (converted to joules only): a
driver reload resets NVML's counter and RAPL's wraps at ``max_energy_range_uj``. The raw snapshot is
what an audit trail wants, and unwrapping needs the whole series anyway, so it belongs to whoever
holds the series. `DeviceInfo.counter_wrap_j` says how to read a decrease: with a wrap value, a
decrease between two readings is one wrap (add ``counter_wrap_j``); without one, a decrease is a
reset and the counter says nothing about that interval.

Timestamps are per device: a backend that reads devices one after another stamps each with the
midpoint of its own calls (monotonic), and derives the wall time from one wall/monotonic pair taken
at the start of the tick, so the two clocks never disagree within a tick.

A fast path for the sampler, optional: a backend that also offers ``read_flat()`` (`FlatReader`)
hands one tick over as plain Python lists (`FlatReadings`), filled through a `FlatBuffer`, the
list twin of `ReadingsBuffer` with the same methods and the same rules (checked as each figure is
set instead of on freezing). At 10 Hz over a handful of devices, the seven small numpy arrays of
a `Readings`, its checks and the sampler's conversion back to Python numbers cost more than the
readings themselves. ``read()`` stays the interface; a backend with both builds its `Readings`
from the same buffer (`FlatBuffer.freeze`), so the two paths cannot disagree.

Reading around a slow device, optional too: a backend that also offers ``read_device(buffer, i)``
(`DeviceReader`) fills one device's slot of a `FlatBuffer` at a time, from any thread. The
sampler then reads the devices one by one and skips, in a tick, a device whose previous read is
still running on another thread, so one device's slow driver calls never hold up the others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

BackendKind = Literal["nvml", "amdsmi", "rapl", "hwmon", "estimate", "simulated", "replay"]
Scope = Literal["gpu", "module", "package", "dram"]
DeviceKind = Literal["gpu", "cpu", "dram", "other"]
"""What a device is, as reports group it (the wire's ``DevicePayload.kind``)."""
_KIND_OF_SCOPE: dict[str, DeviceKind] = {
    "gpu": "gpu",
    "module": "gpu",
    "package": "cpu",
    "dram": "dram",
}


class DeviceStatus(IntEnum):
    """Outcome of one device in one tick (stored as int8 in `Readings.status`)."""

    OK = 0
    """Every figure the device offers was read."""
    LOST = 1
    """The device fell off the bus (or the trace ended); all figures NaN from now on."""
    NOT_SUPPORTED = 2
    """The device offers neither power nor energy; all figures NaN."""
    ERROR = 3
    """A figure the device offers failed this tick (transient); the failed figures are NaN."""
    DENIED = 4
    """The OS refused the read (permissions); the figures are NaN, the message says the fix."""

    @property
    def label(self) -> str:
        """Lower-case wire name, e.g. ``"not_supported"``."""
        return self.name.lower()


class Method(IntEnum):
    """How a figure was obtained (stored as int8 in `Readings.power_method` / `energy_method`)."""

    NONE = 0
    """No figure: the value is NaN."""
    COUNTER = 1
    """A cumulative hardware energy counter (NVML total energy, RAPL energy_uj)."""
    POWER_AVG = 2
    """Power averaged by the device over a window (NVML: 1 s on Ampere non-GA100 and newer)."""
    POWER_INSTANT = 3
    """Power as an (almost) instantaneous sample."""
    ESTIMATE = 4
    """A modelled figure, not a measurement."""

    @property
    def label(self) -> str:
        """Lower-case wire name, e.g. ``"power_avg"``."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class UncertaintyHint:
    """What a backend knows about the accuracy of its figures (hints for the accounting core).

    Attributes:
        power_rel: Relative uncertainty of a power reading (0.05 = ±5 %).
        power_abs_w: Absolute floor of the power uncertainty, in watts.
        power_window_s: Averaging window of a power reading in seconds, when known.
        counter_resolution_j: Resolution of the energy counter in joules, when known.
        counter_update_s: Longest interval between counter updates in seconds, when known.
        note: Free text: where the figures come from, caveats.
    """

    power_rel: float = 0.0
    power_abs_w: float = 0.0
    power_window_s: float | None = None
    counter_resolution_j: float | None = None
    counter_update_s: float | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Static description of one metered device.

    Attributes:
        backend: Which backend owns it.
        index: The vendor's index (NVML index, RAPL package number, position in a trace or a
            simulated fleet). The position in `Readings` arrays is the position in
            ``backend.devices()``, which is not necessarily this index.
        uid: Stable identifier: the GPU UUID, the RAPL zone (``"intel-rapl:0"``), ``"SIM-3"``.
        name: The name as the vendor reports it (``"NVIDIA H100 80GB HBM3"``, ``"package-0"``).
        power_limit_w: Power-management limit in watts, when the device reports one.
        has_energy_counter: Whether the device has a cumulative energy counter.
        power_method: How `Readings.power_w` is obtained (`Method.NONE`: never available).
        counter_wrap_j: The counter's modulus in joules, when it wraps (RAPL); None when a
            decrease can only mean a reset (NVML).
        scope: What the figures cover: the GPU board, a GPU+CPU module, a CPU package, DRAM.
        mig: The GPU runs MIG: its figures are for the whole GPU, shared by every instance.
        simulated: The figures are synthetic (simulated or replayed), never a measurement now.
        zone: RAPL zone directory name (``"intel-rapl:0:0"``), for RAPL devices.
        uncertainty: Accuracy hints for the accounting core.
        note: Caveats worth showing to a person (permission problem, MIG sharing, ...).
        covers: Other kinds of device on the same host whose energy this device's figures
            already include (``("cpu",)``: a GH200-class module whose counter includes its
            Grace CPU). Reports show such devices but never add them to a total a second time
            (`accounting.integrate.overlap`). Default: ``("cpu",)`` for ``scope="module"``,
            else none.
    """

    backend: BackendKind
    index: int
    uid: str
    name: str
    power_limit_w: float | None
    has_energy_counter: bool
    power_method: Method
    counter_wrap_j: float | None = None
    scope: Scope = "gpu"
    mig: bool = False
    simulated: bool = False
    zone: str | None = None
    uncertainty: UncertaintyHint = field(default_factory=UncertaintyHint)
    note: str = ""
    covers: tuple[DeviceKind, ...] = ()

    def __post_init__(self) -> None:
        if self.scope == "module" and not self.covers:
            object.__setattr__(self, "covers", ("cpu",))
        if self.kind in self.covers:
            raise ValueError(f"a device cannot cover its own kind ({self.kind}): {self.uid}")

    @property
    def kind(self) -> DeviceKind:
        """``gpu`` (board or module), ``cpu`` (package) or ``dram``, from the scope."""
        return _KIND_OF_SCOPE[self.scope]


FloatArray = NDArray[np.float64]
CodeArray = NDArray[np.int8]

_ALL_NAN_STATUSES = frozenset({int(DeviceStatus.LOST), int(DeviceStatus.NOT_SUPPORTED)})
# When several things go wrong with one device in one tick, the status reports the gravest.
_SEVERITY = {
    DeviceStatus.OK: 0,
    DeviceStatus.ERROR: 1,
    DeviceStatus.DENIED: 2,
    DeviceStatus.NOT_SUPPORTED: 3,
    DeviceStatus.LOST: 4,
}


@dataclass(frozen=True, slots=True, eq=False)
class Readings:
    """One tick: every device of a backend read once. Arrays have one entry per device.

    Attributes:
        t_wall_s: Wall-clock time of each device's read, unix seconds.
        t_mono_s: Monotonic time of each device's read, seconds (same clock as the backend's).
        power_w: Power in watts; NaN where absent.
        energy_j: Raw cumulative energy counter in joules; NaN where absent.
        status: `DeviceStatus` codes.
        power_method: `Method` code of each power figure (`Method.NONE` exactly where NaN).
        energy_method: `Method` code of each energy figure (`Method.NONE` exactly where NaN).
        messages: Why a device is not `DeviceStatus.OK` (empty string when it is).

    Raises:
        ValueError: On construction, when arrays differ in length, a value is negative or
            infinite, a NaN has a method or a number has none, or a lost / unsupported device
            carries a number.
    """

    t_wall_s: FloatArray
    t_mono_s: FloatArray
    power_w: FloatArray
    energy_j: FloatArray
    status: CodeArray
    power_method: CodeArray
    energy_method: CodeArray
    messages: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.messages)
        arrays = (
            self.t_wall_s,
            self.t_mono_s,
            self.power_w,
            self.energy_j,
            self.status,
            self.power_method,
            self.energy_method,
        )
        for array in arrays:
            if array.shape != (n,):
                raise ValueError(f"Readings arrays must all have shape ({n},), got {array.shape}")
            array.setflags(write=False)
        # Plain Python over the few devices of a tick: a dozen numpy calls on 8-element arrays
        # cost more than the loop (this runs on every sampler tick).
        none = int(Method.NONE)
        for name, values, methods in (
            ("power_w", self.power_w.tolist(), self.power_method.tolist()),
            ("energy_j", self.energy_j.tolist(), self.energy_method.tolist()),
        ):
            for value, method in zip(values, methods, strict=True):
                if value != value:  # NaN
                    if method != none:
                        raise ValueError(f"{name}: a method without a value")
                elif method == none:
                    raise ValueError(f"{name}: a value without a method")
                elif not 0.0 <= value < math.inf:
                    raise ValueError(f"{name} must be finite and non-negative or NaN: {value}")
        for status, power, energy in zip(
            self.status.tolist(), self.power_w.tolist(), self.energy_j.tolist(), strict=True
        ):
            if status in _ALL_NAN_STATUSES and (power == power or energy == energy):
                raise ValueError("a lost or unsupported device cannot carry a value")

    def __len__(self) -> int:
        return len(self.messages)

    def status_of(self, position: int) -> DeviceStatus:
        """The status of the device at ``position`` as an enum member."""
        return DeviceStatus(int(self.status[position]))

    def power_method_of(self, position: int) -> Method:
        """The method of the power figure at ``position`` as an enum member."""
        return Method(int(self.power_method[position]))

    def energy_method_of(self, position: int) -> Method:
        """The method of the energy figure at ``position`` as an enum member."""
        return Method(int(self.energy_method[position]))


class ReadingsBuffer:
    """Mutable arrays a backend fills device by device during one tick, then freezes.

    Every slot starts absent (NaN, `Method.NONE`, `DeviceStatus.OK`, no message); a backend sets
    only what it actually read, so forgetting a figure can never yield a zero.
    """

    def __init__(self, n: int, *, t_wall_s: float, t_mono_s: float) -> None:
        self._t_wall0_s = t_wall_s
        self._t_mono0_s = t_mono_s
        self.t_wall_s = np.full(n, t_wall_s)
        self.t_mono_s = np.full(n, t_mono_s)
        self.power_w = np.full(n, np.nan)
        self.energy_j = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int8)
        self.power_method = np.zeros(n, dtype=np.int8)
        self.energy_method = np.zeros(n, dtype=np.int8)
        self.messages = [""] * n

    def stamp(self, i: int, t_mono_s: float, *, t_wall_s: float | None = None) -> None:
        """Time device ``i``'s read at monotonic ``t_mono_s``.

        The wall time, unless given, follows from the tick's wall/monotonic pair.
        """
        self.t_mono_s[i] = t_mono_s
        self.t_wall_s[i] = (
            self._t_wall0_s + (t_mono_s - self._t_mono0_s) if t_wall_s is None else t_wall_s
        )

    def set_power(self, i: int, power_w: float, method: Method) -> None:
        """Record a power figure in watts with its method."""
        self.power_w[i] = power_w
        self.power_method[i] = method

    def set_energy(self, i: int, energy_j: float, method: Method = Method.COUNTER) -> None:
        """Record a raw counter figure in joules with its method."""
        self.energy_j[i] = energy_j
        self.energy_method[i] = method

    def fail(self, i: int, status: DeviceStatus, message: str) -> None:
        """Mark device ``i`` as not OK; the gravest status of the tick wins, messages accumulate."""
        if status in (DeviceStatus.LOST, DeviceStatus.NOT_SUPPORTED):
            self.power_w[i] = np.nan
            self.energy_j[i] = np.nan
            self.power_method[i] = Method.NONE
            self.energy_method[i] = Method.NONE
        if _SEVERITY[status] > _SEVERITY[DeviceStatus(int(self.status[i]))]:
            self.status[i] = status
        self.messages[i] = f"{self.messages[i]}; {message}" if self.messages[i] else message

    def freeze(self) -> Readings:
        """The finished, read-only `Readings`."""
        return Readings(
            t_wall_s=self.t_wall_s,
            t_mono_s=self.t_mono_s,
            power_w=self.power_w,
            energy_j=self.energy_j,
            status=self.status,
            power_method=self.power_method,
            energy_method=self.energy_method,
            messages=tuple(self.messages),
        )


class FlatReadings(NamedTuple):
    """One tick as plain Python lists (position ``i`` is device ``i``): the sampler's fast path.

    The figures of a `Readings` that the sampler uses, with the same units and rules: NaN where
    a figure is absent, ``status`` as `DeviceStatus` codes, an empty message when OK. Wall times
    and method codes are left out (the sampler takes methods from `DeviceInfo`).
    """

    t_mono_s: list[float]
    power_w: list[float]
    energy_j: list[float]
    status: list[int]
    messages: list[str]


def flat_readings(readings: Readings) -> FlatReadings:
    """The `FlatReadings` of a `Readings` (for backends that offer only ``read()``)."""
    return FlatReadings(
        t_mono_s=readings.t_mono_s.tolist(),
        power_w=readings.power_w.tolist(),
        energy_j=readings.energy_j.tolist(),
        status=readings.status.tolist(),
        messages=list(readings.messages),
    )


class FlatBuffer:
    """`ReadingsBuffer` on Python lists: the same methods and rules, no numpy per figure.

    Every slot starts absent (NaN, `Method.NONE`, `DeviceStatus.OK`, no message). The rules that
    `Readings` checks on construction are checked here as each figure is set (a value is finite
    and non-negative and has a method), and `fail` clears a lost or unsupported device, so
    `flat` hands over lists that obey them without a pass over the tick; `freeze` builds the
    checked `Readings` of the same tick.

    Raises:
        ValueError: From `set_power` / `set_energy`, for a value that is NaN, negative or
            infinite, or that comes without a method.
    """

    __slots__ = (
        "_t_mono0_s",
        "_t_wall0_s",
        "_t_wall_s",
        "energy_j",
        "energy_method",
        "messages",
        "power_method",
        "power_w",
        "status",
        "t_mono_s",
    )

    def __init__(self, n: int, *, t_wall_s: float, t_mono_s: float) -> None:
        self._t_wall0_s = t_wall_s
        self._t_mono0_s = t_mono_s
        self._t_wall_s: dict[int, float] = {}  # wall times given to `stamp`
        self.t_mono_s = [t_mono_s] * n
        """Monotonic time of each read, s: `stamp` sets it, or a backend directly (the wall time
        then follows from the tick's wall/monotonic pair)."""
        self.power_w = [math.nan] * n
        self.energy_j = [math.nan] * n
        self.status = [0] * n
        self.power_method = [0] * n
        self.energy_method = [0] * n
        self.messages = [""] * n

    def stamp(self, i: int, t_mono_s: float, *, t_wall_s: float | None = None) -> None:
        """Time device ``i``'s read at monotonic ``t_mono_s`` (as `ReadingsBuffer.stamp`)."""
        self.t_mono_s[i] = t_mono_s
        if t_wall_s is not None:
            self._t_wall_s[i] = t_wall_s
        else:
            self._t_wall_s.pop(i, None)

    def set_power(self, i: int, power_w: float, method: Method) -> None:
        """Record a power figure in watts with its method."""
        if not 0.0 <= power_w < math.inf:
            raise ValueError(f"power_w must be finite and non-negative: {power_w}")
        if method == Method.NONE:
            raise ValueError("power_w: a value without a method")
        self.power_w[i] = power_w
        self.power_method[i] = method

    def set_energy(self, i: int, energy_j: float, method: Method = Method.COUNTER) -> None:
        """Record a raw counter figure in joules with its method."""
        if not 0.0 <= energy_j < math.inf:
            raise ValueError(f"energy_j must be finite and non-negative: {energy_j}")
        if method == Method.NONE:
            raise ValueError("energy_j: a value without a method")
        self.energy_j[i] = energy_j
        self.energy_method[i] = method

    def fail(self, i: int, status: DeviceStatus, message: str) -> None:
        """Mark device ``i`` as not OK (as `ReadingsBuffer.fail`: the gravest status wins)."""
        if status == DeviceStatus.LOST or status == DeviceStatus.NOT_SUPPORTED:
            self.power_w[i] = math.nan
            self.energy_j[i] = math.nan
            self.power_method[i] = Method.NONE
            self.energy_method[i] = Method.NONE
        if _SEVERITY[status] > _SEVERITY[DeviceStatus(self.status[i])]:
            self.status[i] = status
        previous = self.messages[i]
        self.messages[i] = f"{previous}; {message}" if previous else message

    def clear(self, i: int) -> None:
        """Make slot ``i`` absent again, as a new buffer's (the time: the tick's)."""
        self.t_mono_s[i] = self._t_mono0_s
        self._t_wall_s.pop(i, None)
        self.power_w[i] = math.nan
        self.energy_j[i] = math.nan
        self.status[i] = 0
        self.power_method[i] = 0
        self.energy_method[i] = 0
        self.messages[i] = ""

    def copy_slot(self, i: int, source: FlatBuffer, j: int) -> None:
        """Set slot ``i`` to slot ``j`` of ``source``: figures, methods, status, message, time.

        A wall time given to ``source``'s `stamp` travels along; otherwise slot ``i``'s wall
        time follows from this buffer's tick pair, as for a slot set here directly.
        """
        self.t_mono_s[i] = source.t_mono_s[j]
        wall_s = source._t_wall_s.get(j)
        if wall_s is None:
            self._t_wall_s.pop(i, None)
        else:
            self._t_wall_s[i] = wall_s
        self.power_w[i] = source.power_w[j]
        self.energy_j[i] = source.energy_j[j]
        self.status[i] = source.status[j]
        self.power_method[i] = source.power_method[j]
        self.energy_method[i] = source.energy_method[j]
        self.messages[i] = source.messages[j]

    def flat(self) -> FlatReadings:
        """The tick as lists (the buffer must not be used afterwards)."""
        return FlatReadings(self.t_mono_s, self.power_w, self.energy_j, self.status, self.messages)

    def freeze(self) -> Readings:
        """The finished, read-only `Readings` of the same tick."""
        wall0_s, mono0_s, given = self._t_wall0_s, self._t_mono0_s, self._t_wall_s
        t_wall_s = [
            given[i] if i in given else wall0_s + (t - mono0_s) for i, t in enumerate(self.t_mono_s)
        ]
        return Readings(
            t_wall_s=np.array(t_wall_s, dtype=np.float64),
            t_mono_s=np.array(self.t_mono_s, dtype=np.float64),
            power_w=np.array(self.power_w, dtype=np.float64),
            energy_j=np.array(self.energy_j, dtype=np.float64),
            status=np.array(self.status, dtype=np.int8),
            power_method=np.array(self.power_method, dtype=np.int8),
            energy_method=np.array(self.energy_method, dtype=np.int8),
            messages=tuple(self.messages),
        )


@runtime_checkable
class PowerBackend(Protocol):
    """What every device backend offers: a fixed device list and one vectorised read."""

    def devices(self) -> Sequence[DeviceInfo]:
        """The devices this backend reads, in `Readings` array order (fixed for its life)."""
        ...

    def read(self) -> Readings:
        """Read every device once."""
        ...

    def close(self) -> None:
        """Release the vendor library or files; idempotent."""
        ...


@runtime_checkable
class FlatReader(Protocol):
    """A backend that also hands a tick over as lists: the sampler then calls `read_flat`.

    ``read_flat()`` must give the same figures as ``read()`` would at that moment (the same
    calls, the same statuses); it exists only to spare the per-tick numpy round trip. The lists
    it returns are the caller's to keep (the sampler holds on to them): new ones every tick.
    A backend that is also a `DeviceReader` is read device by device instead.
    """

    def read_flat(self) -> FlatReadings:
        """Read every device once, as lists."""
        ...


@runtime_checkable
class DeviceReader(Protocol):
    """A backend that reads its devices one at a time, from any thread.

    ``read_device(buffer, i)`` fills slot ``i`` of a `FlatBuffer` sized for all the backend's
    devices as ``read_flat()`` fills it (the same calls, figures, statuses and messages; the
    slot's monotonic time is that device's own read). It may run on several threads at once for
    different devices; the caller never reads one device on two threads at once. A device's
    failure is a status in its slot, never an exception (an exception is a bug).
    """

    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        """Read device ``i`` into slot ``i`` of ``buffer``."""
        ...


@runtime_checkable
class SlotReader(Protocol):
    """A `DeviceReader` that can also fill another slot: a node reads it into its own buffer.

    ``read_device_at(buffer, slot, i)`` does what ``read_device`` does for device ``i``, into
    slot ``slot`` of ``buffer`` (which may hold more devices than this backend has).
    """

    def read_device_at(self, buffer: FlatBuffer, slot: int, i: int) -> None:
        """Read device ``i`` into slot ``slot`` of ``buffer``."""
        ...


@runtime_checkable
class ActivityReader(Protocol):
    """A backend that also reports how busy each device's memory was (optional).

    ``memory_busy_frac(i)`` is the fraction, in [0, 1], of the driver's last sample period during
    which device ``i``'s memory was being read or written: NVML's
    ``nvmlDeviceGetUtilizationRates(handle).memory`` ("percent of time over the past sample
    period during which global (device) memory was being read or written"; the period is 1/6 s
    to 1 s by product) divided by 100, AMD SMI's ``amdsmi_get_gpu_activity(handle)
    ["umc_activity"]`` (the memory controller's activity) likewise. NaN where the device has no
    such counter, the read failed, or the device is lost: never 0 standing for "unknown". It is
    read far less often than power (the sampler asks about once a second, `meters.sampler`),
    may run on any thread, and never raises for a device's failure.
    """

    def memory_busy_frac(self, i: int) -> float:
        """Device ``i``'s memory-busy fraction over the driver's last sample period, or NaN."""
        ...


class Clock(Protocol):
    """A source of time: monotonic seconds for intervals, unix seconds for the record."""

    def monotonic_s(self) -> float:
        """Monotonic time in seconds (arbitrary origin)."""
        ...

    def wall_s(self) -> float:
        """Wall-clock time in unix seconds."""
        ...


class SystemClock:
    """The process clocks: `time.monotonic` and `time.time`."""

    def monotonic_s(self) -> float:
        """Monotonic time in seconds."""
        return time.monotonic()

    def wall_s(self) -> float:
        """Unix time in seconds."""
        return time.time()
