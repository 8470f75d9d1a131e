"""A run's measured accelerator energy split as the energy roofline splits it, each part banded.

Choi, Bedard, Fowler, Vuduc (IPDPS 2013) model a run's energy as **E = π0·T + W·ε_flop + Q·ε_mem**:
a constant power π0 over the run time T, an energy per FLOP for the work W and an energy per byte
for the memory traffic Q. This module takes each term from what the meter measured where it can,
from the hardware catalog (`accounting.catalog`) otherwise, labels where each number came from,
and splits the measured energy E into **constant**, **compute**, **memory** and **unexplained**
(E minus the three), each with a band. A part that cannot be computed is None with its reason,
never 0. Units: W, J, s, byte, FLOP.

**Constant power π0** (per device), from the first of:

1. ``measured_lowest_sustained``: the lowest mean power of any chunk at least
   `SUSTAINED_WINDOW_S` (1.5 s) long with no sampling gap, no counter reset and a measured (not
   estimated) energy (`lowest_sustained_power`). 1.5 s is longer than the driver's 1 s power
   average and many of the counter's 20-100 ms updates, so a chunk's mean is a sustained
   figure, not one reading's spike or dip; chunks last ``chunk_s`` (10 s by default, 2 s in the
   demo), so every chunk but a short last one qualifies. The shorter the window, the quieter
   the quietest one, the tighter this upper bound. A device's constant power never exceeds
   what it draws in its quietest window, so this reading is an **upper bound** on π0 (it also
   holds whatever dynamic power the device drew then): the band's top is that chunk's energy
   at the top of its band over its length, its bottom the catalog's idle power where the catalog
   has one (a board running at its working clocks draws at least what it draws at rest in its
   lowest performance state), else 0 W.
2. ``catalog_idle``: the catalog entry's ``idle_power_w``; band from it up to the device's mean
   power over the run (top of its band): a constant part cannot exceed the mean draw.
3. ``catalog_given``: an explicit π0 of a catalog override, as given.
4. ``assumed_default``: the catalog's default π0 (0 W, ``[defaults].pi0_w``); band from 0 W up to
   the device's mean power.

No meter records a separate idle reading today, so the "measured idle" step of the design has
nothing to read and is not offered.

**Memory traffic Q** (per device), from memory-activity counters. NVML's
``nvmlDeviceGetUtilizationRates(...).memory`` is the "percent of time over the past sample
period during which global (device) memory was being read or written", the sample period being
"between 1 second and 1/6 second, depending on the product" (NVML API reference,
``nvmlUtilization_t``); AMD SMI's ``amdsmi_get_gpu_activity(...)["umc_activity"]`` is the
memory controller's activity in percent (``amdsmi_engine_usage_t``). The meter reads one about
once a second and sends each chunk's time-weighted mean as ``mem_busy_frac`` (`meters.chunker`).
Memory cannot move bytes faster than its peak bandwidth β, and moves none while idle, so

    Q_upper = Σ_chunks mem_busy_frac × β × chunk duration

bounds the bytes moved from above. The counter says nothing about the rate while busy (one
access in a sample period counts as busy), so the band's bottom is 0 bytes. The **point
estimate** is Q_upper itself, i.e. it assumes peak bandwidth whenever memory was busy; where
some of the device's time has no counter reading, the point extends the observed busy fraction
over it and the top charges that time at β (busy throughout). A device without the counter (or
whose reads all failed) has no Q: the memory part is None.

**ε** come from the catalog. Where they are derived from the board's power limit (provenance
``derived``) they are re-derived with the π0 used here, ε_flop = (TDP − π0)/peak and
ε_mem = (TDP − π0)/β, so constant plus dynamic power never exceed TDP. Those are upper bounds
that charge all dynamic power to FLOPs (and, again, to bytes): compute and memory parts lie
between 0 and W·ε_flop (Q·ε_mem), the tops taken with π0 at the bottom of its band. Explicit
(``given``) ε are used as given. The work W is split over the devices in proportion to their
peaks at the dtype (perfect balance), as `accounting.bounds.energy_roofline` does.

**Unexplained** = E − constant − compute − memory, with the band E_low − Σ tops … E_high − Σ
bottoms. It may be negative: the ε upper bounds and a lowest-sustained π0 (itself an upper
bound) then over-explain the measurement, and the result says so. The bands are worst-case
intervals added linearly, not independent errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from .catalog import CatalogEntry, UnsupportedDtype, normalize_dtype

__all__ = [
    "SUSTAINED_WINDOW_S",
    "ChunkActivity",
    "Component",
    "ConstantPower",
    "DeviceActivity",
    "DeviceTerms",
    "EnergyDecomposition",
    "MemoryTraffic",
    "Pi0Provenance",
    "constant_power",
    "decompose_energy",
    "lowest_sustained_power",
    "memory_traffic",
    "pi0_by_entry",
]

#: A chunk must last at least this long for its mean power to count as sustained, s.
SUSTAINED_WINDOW_S: Final = 1.5

Pi0Provenance = Literal[
    "measured_lowest_sustained", "catalog_idle", "catalog_given", "assumed_default"
]
_FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# What the chunks say: the quietest sustained window and the memory-busy time, vectorised
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkActivity:
    """Per device (position ``d`` of every array): what `lowest_sustained_power` found.

    Attributes:
        quiet_power_w: Lowest mean power of a qualifying chunk, W (NaN: none qualifies).
        quiet_power_high_w: That chunk's energy at the top of its band over its length, W.
        mem_busy_s: Σ mem_busy_frac × duration over the chunks that carry the counter, s.
        mem_observed_s: Σ duration over those chunks, s.
    """

    quiet_power_w: _FloatArray
    quiet_power_high_w: _FloatArray
    mem_busy_s: _FloatArray
    mem_observed_s: _FloatArray


def lowest_sustained_power(
    *,
    device: npt.ArrayLike,
    n_devices: int,
    t0_s: npt.ArrayLike,
    t1_s: npt.ArrayLike,
    energy_j: npt.ArrayLike,
    sensor_uncertainty_j: npt.ArrayLike,
    bound_above_j: npt.ArrayLike,
    gap_count: npt.ArrayLike,
    reset_count: npt.ArrayLike,
    estimated: npt.ArrayLike,
    mem_busy_frac: npt.ArrayLike,
    window_s: float = SUSTAINED_WINDOW_S,
) -> ChunkActivity:
    """Per device, the quietest sustained chunk and the memory-busy time, over chunk summaries.

    A chunk qualifies for the quietest window when it lasts at least ``window_s``, has no gap,
    no counter reset, a finite band above and a measured energy (module docstring). Among
    equal lowest means the one with the lower top wins, so the answer does not depend on the
    chunks' order.

    Args:
        device: Device position of each chunk, in ``[0, n_devices)``.
        n_devices: Number of devices.
        t0_s, t1_s: Each chunk's span, s.
        energy_j, sensor_uncertainty_j, bound_above_j: Each chunk's energy and band terms, J
            (``bound_above_j`` may be inf, or at least 1e300 for the store's "unbounded").
        gap_count, reset_count: Each chunk's gaps and counter resets.
        estimated: Whether each chunk's energy is an estimate (method ``estimate``).
        mem_busy_frac: Each chunk's memory-busy fraction in [0, 1], NaN where it has none.
        window_s: Shortest qualifying chunk, s.

    Returns:
        A `ChunkActivity`, one entry per device.
    """
    dev = np.asarray(device, dtype=np.int64)
    t0 = np.asarray(t0_s, dtype=np.float64)
    length = np.asarray(t1_s, dtype=np.float64) - t0
    energy = np.asarray(energy_j, dtype=np.float64)
    high = energy + np.asarray(sensor_uncertainty_j, dtype=np.float64)
    high = high + np.asarray(bound_above_j, dtype=np.float64)
    busy = np.asarray(mem_busy_frac, dtype=np.float64)
    qualifies = (
        (length >= window_s)
        & (np.asarray(gap_count) == 0)
        & (np.asarray(reset_count) == 0)
        & ~np.asarray(estimated, dtype=np.bool_)
        & (high < 1e300)
    )
    quiet = np.full(n_devices, np.nan)
    quiet_high = np.full(n_devices, np.nan)
    if qualifies.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            power = np.where(qualifies, energy / np.where(qualifies, length, 1.0), np.inf)
            top = np.where(qualifies, high / np.where(qualifies, length, 1.0), np.inf)
        order = np.lexsort((top, power, dev))  # by device, then power, then top
        first = np.ones(order.size, dtype=np.bool_)
        first[1:] = dev[order][1:] != dev[order][:-1]
        chosen = order[first & np.isfinite(power[order])]
        quiet[dev[chosen]] = power[chosen]
        quiet_high[dev[chosen]] = top[chosen]
    has = np.isfinite(busy)
    observed = np.where(has, length, 0.0)
    busy_s = np.bincount(dev, weights=np.where(has, busy, 0.0) * observed, minlength=n_devices)
    observed_s = np.bincount(dev, weights=observed, minlength=n_devices)
    return ChunkActivity(
        quiet, quiet_high, busy_s.astype(np.float64), observed_s.astype(np.float64)
    )


# --------------------------------------------------------------------------------------------
# Inputs and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceActivity:
    """One accelerator of the run, as the decomposition needs it.

    Attributes:
        key: The device's key.
        entry: Its catalog entry, or None (unknown: its compute and memory parts are None).
        span_s: Its measured span T, s.
        energy_j: Its measured energy, J.
        energy_high_j: Top of its energy band, J (inf: unbounded).
        quiet_power_w: Lowest sustained power (`lowest_sustained_power`), W, or None.
        quiet_power_high_w: Top of that reading, W, or None.
        mem_busy_s: Memory-busy seconds over the chunks carrying the counter.
        mem_observed_s: Seconds those chunks cover (0: no counter).
    """

    key: str
    entry: CatalogEntry | None
    span_s: float
    energy_j: float
    energy_high_j: float
    quiet_power_w: float | None = None
    quiet_power_high_w: float | None = None
    mem_busy_s: float = 0.0
    mem_observed_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ConstantPower:
    """π0 of one device, its band and where it came from (module docstring).

    Attributes:
        pi0_w: The value used, W.
        low_w: Bottom of its band, W.
        high_w: Top of its band, W (inf: unbounded).
        provenance: ``measured_lowest_sustained``, ``catalog_idle``, ``catalog_given`` or
            ``assumed_default``.
        basis: What the value and band rest on, in words.
    """

    pi0_w: float
    low_w: float
    high_w: float
    provenance: Pi0Provenance
    basis: str


@dataclass(frozen=True, slots=True)
class MemoryTraffic:
    """Bytes moved by one device, from its memory-activity counter (module docstring).

    Attributes:
        bytes_moved: Point estimate (peak bandwidth while busy), byte.
        low_bytes: Bottom of the band (0: the counter gives no rate), byte.
        high_bytes: Top of the band (busy time, and unobserved time, at peak bandwidth), byte.
        busy_s: Memory-busy seconds the counter saw.
        observed_s: Seconds with a counter reading.
        coverage: observed_s over the device's span.
        bandwidth_bytes_per_s: Peak bandwidth used, byte/s.
    """

    bytes_moved: float
    low_bytes: float
    high_bytes: float
    busy_s: float
    observed_s: float
    coverage: float
    bandwidth_bytes_per_s: float


def constant_power(device: DeviceActivity, *, default_pi0_w: float = 0.0) -> ConstantPower:
    """π0 of one device with its band and provenance, in the module docstring's order.

    Args:
        device: The device (its quietest chunk, its mean power, its catalog entry).
        default_pi0_w: The catalog's default π0, W, when the entry has no constants.
    """
    entry = device.entry
    idle_w = None if entry is None else entry.idle_power_w
    mean_high_w = device.energy_high_j / device.span_s if device.span_s > 0 else math.inf
    if device.quiet_power_w is not None and math.isfinite(device.quiet_power_w):
        point = device.quiet_power_w
        top = device.quiet_power_high_w
        top = point if top is None or not top >= point else top
        bottom = idle_w if idle_w is not None and idle_w <= point else 0.0
        floor = (
            f"the catalog's idle power ({idle_w:g} W) below"
            if idle_w is not None and idle_w <= point
            else "0 W below (no idle figure in the catalog)"
        )
        return ConstantPower(
            point,
            bottom,
            top,
            "measured_lowest_sustained",
            f"lowest mean power of a chunk of at least {SUSTAINED_WINDOW_S:g} s without gaps or "
            "resets: an upper bound on the constant power (it includes the dynamic power of the "
            f"quietest window); band: that chunk's top above, {floor}",
        )
    constants = None if entry is None else entry.energy_roofline
    if idle_w is not None:
        return ConstantPower(
            idle_w,
            idle_w,
            max(idle_w, mean_high_w),
            "catalog_idle",
            "the catalog's idle power (no chunk qualified as sustained); band up to the "
            "device's mean power over the run",
        )
    if constants is not None and constants.pi0_provenance.kind == "given":
        return ConstantPower(
            constants.pi0_w,
            constants.pi0_w,
            constants.pi0_w,
            "catalog_given",
            f"pi0 given in the catalog ({constants.pi0_provenance.note})",
        )
    value = constants.pi0_w if constants is not None else default_pi0_w
    return ConstantPower(
        value,
        0.0,
        max(value, mean_high_w),
        "assumed_default",
        "no sustained chunk and no idle figure: the catalog's default pi0, assumed; band from "
        "0 W to the device's mean power over the run",
    )


def memory_traffic(device: DeviceActivity) -> MemoryTraffic | None:
    """Q of one device from its memory-busy time (module docstring); None without a counter or
    without a catalog bandwidth."""
    if device.entry is None or not device.mem_observed_s > 0 or not device.span_s > 0:
        return None
    bandwidth = device.entry.memory_bandwidth_bytes_per_s
    observed = min(device.mem_observed_s, device.span_s)
    busy = min(max(device.mem_busy_s, 0.0), observed)
    unobserved = device.span_s - observed
    point = bandwidth * busy * (device.span_s / observed)
    high = bandwidth * (busy + unobserved)
    return MemoryTraffic(
        bytes_moved=point,
        low_bytes=0.0,
        high_bytes=max(high, point),
        busy_s=busy,
        observed_s=observed,
        coverage=observed / device.span_s,
        bandwidth_bytes_per_s=bandwidth,
    )


@dataclass(frozen=True, slots=True)
class Component:
    """One part of the measured energy.

    Attributes:
        energy_j: Point value, J (None: not available; see ``reason``).
        low_j: Bottom of its band, J (None with the value).
        high_j: Top of its band, J (None with the value, or inf: unbounded).
        reason: Why it is not available (None when it is).
        basis: The formula and what it assumes.
    """

    energy_j: float | None
    low_j: float | None
    high_j: float | None
    reason: str | None
    basis: str

    def to_dict(self, measured_j: float) -> dict[str, Any]:
        """JSON-safe form, with the share of the measured energy (inf as None)."""
        share = None
        if self.energy_j is not None and measured_j > 0:
            share = self.energy_j / measured_j
        return {
            "energy_j": self.energy_j,
            "energy_low_j": self.low_j,
            "energy_high_j": _finite(self.high_j),
            "share": share,
            "status": "available" if self.energy_j is not None else "not_available",
            "reason": self.reason,
            "basis": self.basis,
        }


@dataclass(frozen=True, slots=True)
class DeviceTerms:
    """The terms of one device: π0, Q and the ε used.

    Attributes:
        key: The device's key.
        catalog_id: Its catalog entry's id, or None.
        span_s: T, s.
        constant_power: π0 with provenance and band.
        memory: Q, or None (``memory_reason``).
        memory_reason: Why there is no Q.
        eps_flop_j: ε_flop used (J/FLOP), or None.
        eps_mem_j_per_byte: ε_mem used (J/byte), or None.
        eps_provenance: ``derived`` (re-derived with π0), ``given`` or None.
    """

    key: str
    catalog_id: str | None
    span_s: float
    constant_power: ConstantPower
    memory: MemoryTraffic | None
    memory_reason: str | None
    eps_flop_j: float | None
    eps_mem_j_per_byte: float | None
    eps_provenance: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        pi0 = self.constant_power
        q = self.memory
        return {
            "key": self.key,
            "catalog_id": self.catalog_id,
            "span_s": self.span_s,
            "pi0_w": pi0.pi0_w,
            "pi0_low_w": pi0.low_w,
            "pi0_high_w": _finite(pi0.high_w),
            "pi0_provenance": pi0.provenance,
            "pi0_basis": pi0.basis,
            "bytes_moved": None if q is None else q.bytes_moved,
            "bytes_low": None if q is None else q.low_bytes,
            "bytes_high": None if q is None else q.high_bytes,
            "mem_busy_s": None if q is None else q.busy_s,
            "mem_observed_s": None if q is None else q.observed_s,
            "mem_coverage": None if q is None else q.coverage,
            "bytes_provenance": None if q is None else "memory_activity_counter",
            "bytes_reason": self.memory_reason,
            "eps_flop_j": self.eps_flop_j,
            "eps_mem_j_per_byte": self.eps_mem_j_per_byte,
            "eps_provenance": self.eps_provenance,
        }


@dataclass(frozen=True, slots=True)
class EnergyDecomposition:
    """The measured energy as constant + compute + memory + unexplained, each banded.

    Attributes:
        measured_j: Measured energy of the accelerators, J.
        measured_low_j: Bottom of its band, J.
        measured_high_j: Top of its band, J (inf: unbounded).
        flops: Work W, FLOP (None: not declared).
        dtype: The dtype of the work and of ε_flop.
        constant: π0·T.
        compute: W·ε_flop.
        memory: Q·ε_mem.
        unexplained: measured − the three.
        devices: Each device's terms.
        notes: What a reader should know (over-explanation, missing inputs).
    """

    measured_j: float
    measured_low_j: float
    measured_high_j: float
    flops: float | None
    dtype: str
    constant: Component
    compute: Component
    memory: Component
    unexplained: Component
    devices: tuple[DeviceTerms, ...]
    notes: tuple[str, ...]

    @property
    def pi0_w(self) -> float:
        """Total π0 of the devices, W."""
        return math.fsum(d.constant_power.pi0_w for d in self.devices)

    @property
    def bytes_moved(self) -> float | None:
        """Total Q point estimate, byte (None unless every device has one)."""
        if not self.devices or any(d.memory is None for d in self.devices):
            return None
        return math.fsum(d.memory.bytes_moved for d in self.devices if d.memory is not None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain form (units in every key; inf as None)."""
        measured = self.measured_j
        return {
            "model": "choi2013: E = pi0*T + W*eps_flop + Q*eps_mem (+ unexplained)",
            "measured_j": measured,
            "measured_low_j": self.measured_low_j,
            "measured_high_j": _finite(self.measured_high_j),
            "flops": self.flops,
            "dtype": self.dtype,
            "components": {
                "constant": self.constant.to_dict(measured),
                "compute": self.compute.to_dict(measured),
                "memory": self.memory.to_dict(measured),
                "unexplained": self.unexplained.to_dict(measured),
            },
            "pi0_w": self.pi0_w,
            "bytes_moved": self.bytes_moved,
            "sustained_window_s": SUSTAINED_WINDOW_S,
            "devices": [d.to_dict() for d in self.devices],
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------
# The decomposition
# --------------------------------------------------------------------------------------------

_CONSTANT_BASIS = "sum over devices of pi0 * T (T: the device's measured span)"
_COMPUTE_BASIS = (
    "W * eps_flop, W split over devices in proportion to their peak; TDP-derived eps_flop = "
    "(TDP - pi0) / peak is an upper bound (all dynamic power charged to FLOPs): band 0 .. that"
)
_MEMORY_BASIS = (
    "Q * eps_mem, Q from memory-activity counters (peak bandwidth while busy, an upper bound on "
    "bytes moved); TDP-derived eps_mem = (TDP - pi0) / bandwidth is an upper bound: band 0 .. that"
)
_UNEXPLAINED_BASIS = "measured - constant - compute - memory; band: worst cases of each"


def decompose_energy(
    *,
    measured_j: float,
    measured_low_j: float,
    measured_high_j: float,
    devices: Sequence[DeviceActivity],
    flops: float | None,
    dtype: str,
    flops_reason: str | None = None,
    default_pi0_w: float = 0.0,
) -> EnergyDecomposition:
    """Split the accelerators' measured energy into constant, compute, memory and unexplained.

    Args:
        measured_j: The accelerators' measured energy, J.
        measured_low_j, measured_high_j: Its band, J (the top may be inf).
        devices: The accelerators (at least one).
        flops: Work W, FLOP, or None.
        dtype: Dtype of the work.
        flops_reason: Why W is missing, when it is (default: "no FLOPs declared").
        default_pi0_w: The catalog's default π0, W (devices without constants).

    Returns:
        An `EnergyDecomposition`.

    Raises:
        ValueError: No devices.
    """
    if not devices:
        raise ValueError("the energy decomposition needs at least one device")
    canonical = _canonical(dtype)
    notes: list[str] = []
    terms: list[DeviceTerms] = []
    pi0s: list[ConstantPower] = []
    missing_catalog = [d.key for d in devices if d.entry is None]
    for d in devices:
        pi0 = constant_power(d, default_pi0_w=default_pi0_w)
        pi0s.append(pi0)
        traffic = memory_traffic(d)
        reason = None
        if traffic is None:
            reason = (
                "not in the hardware catalog (no bandwidth)"
                if d.entry is None
                else "no memory-activity counter readings (the device has none, or its reads "
                "failed)"
            )
        eps_flop, eps_mem, eps_kind = _eps(d.entry, canonical, pi0.pi0_w)
        terms.append(
            DeviceTerms(
                key=d.key,
                catalog_id=None if d.entry is None else d.entry.id,
                span_s=d.span_s,
                constant_power=pi0,
                memory=traffic,
                memory_reason=reason,
                eps_flop_j=eps_flop,
                eps_mem_j_per_byte=eps_mem,
                eps_provenance=eps_kind,
            )
        )

    constant = Component(
        math.fsum(p.pi0_w * d.span_s for p, d in zip(pi0s, devices, strict=True)),
        math.fsum(p.low_w * d.span_s for p, d in zip(pi0s, devices, strict=True)),
        _sum_top(p.high_w * d.span_s for p, d in zip(pi0s, devices, strict=True)),
        None,
        _CONSTANT_BASIS,
    )
    compute = _compute(devices, terms, pi0s, flops, canonical, flops_reason, missing_catalog)
    memory = _memory(devices, terms, pi0s, missing_catalog)

    parts = (constant, compute, memory)
    if any(p.energy_j is None for p in parts):
        missing = [
            name
            for name, p in zip(("constant", "compute", "memory"), parts, strict=True)
            if p.energy_j is None
        ]
        unexplained = Component(
            None,
            None,
            None,
            f"needs every other part; not available: {', '.join(missing)}",
            _UNEXPLAINED_BASIS,
        )
    else:
        point = measured_j - math.fsum(p.energy_j or 0.0 for p in parts)
        low = measured_low_j - _sum_top(p.high_j or 0.0 for p in parts)
        high = measured_high_j - math.fsum(p.low_j or 0.0 for p in parts)
        unexplained = Component(point, low, high, None, _UNEXPLAINED_BASIS)
        if point < 0:
            notes.append(
                f"the three parts exceed the measured energy by {-point:,.4g} J: the eps are "
                "upper bounds (TDP-derived: all dynamic power charged to FLOPs and again to "
                "bytes) and a lowest-sustained pi0 is an upper bound too; they over-explain it"
            )
    kinds = {t.constant_power.provenance for t in terms}
    if "assumed_default" in kinds:
        notes.append(
            "some devices' pi0 is the catalog's assumed default (no sustained chunk, no idle "
            "figure): their constant part is an assumption, not a measurement"
        )
    return EnergyDecomposition(
        measured_j=measured_j,
        measured_low_j=measured_low_j,
        measured_high_j=measured_high_j,
        flops=flops,
        dtype=canonical,
        constant=constant,
        compute=compute,
        memory=memory,
        unexplained=unexplained,
        devices=tuple(terms),
        notes=tuple(notes),
    )


def _compute(
    devices: Sequence[DeviceActivity],
    terms: Sequence[DeviceTerms],
    pi0s: Sequence[ConstantPower],
    flops: float | None,
    dtype: str,
    flops_reason: str | None,
    missing_catalog: Sequence[str],
) -> Component:
    if flops is None:
        return _unavailable(flops_reason or "no FLOPs declared", _COMPUTE_BASIS)
    if missing_catalog:
        return _unavailable(
            f"not in the hardware catalog: {', '.join(missing_catalog)}", _COMPUTE_BASIS
        )
    peaks: list[float] = []
    for d in devices:
        assert d.entry is not None
        try:
            peaks.append(d.entry.peak(dtype))
        except UnsupportedDtype as e:
            return _unavailable(str(e), _COMPUTE_BASIS)
    lacking = [t.key for t in terms if t.eps_flop_j is None]
    if lacking:
        return _unavailable(
            f"no eps_flop for {dtype} (no TDP and no explicit constant): {', '.join(lacking)}",
            _COMPUTE_BASIS,
        )
    total_peak = math.fsum(peaks)
    point = high = 0.0
    for d, t, p, peak in zip(devices, terms, pi0s, peaks, strict=True):
        work = flops * peak / total_peak
        assert t.eps_flop_j is not None
        point += work * t.eps_flop_j
        top_eps, _, _ = _eps(d.entry, dtype, p.low_w)
        high += work * (top_eps if top_eps is not None else t.eps_flop_j)
    low = 0.0 if any(t.eps_provenance == "derived" for t in terms) else point
    return Component(point, low, max(high, point), None, _COMPUTE_BASIS)


def _memory(
    devices: Sequence[DeviceActivity],
    terms: Sequence[DeviceTerms],
    pi0s: Sequence[ConstantPower],
    missing_catalog: Sequence[str],
) -> Component:
    if missing_catalog:
        return _unavailable(
            f"not in the hardware catalog: {', '.join(missing_catalog)}", _MEMORY_BASIS
        )
    without = [t.key for t in terms if t.memory is None]
    if without:
        return _unavailable(
            "no memory-activity counter readings for "
            f"{', '.join(without)} (the device has no such counter, or its reads failed)",
            _MEMORY_BASIS,
        )
    lacking = [t.key for t in terms if t.eps_mem_j_per_byte is None]
    if lacking:
        return _unavailable(
            f"no eps_mem (no TDP and no explicit constant): {', '.join(lacking)}", _MEMORY_BASIS
        )
    point = high = 0.0
    for d, t, p in zip(devices, terms, pi0s, strict=True):
        q = t.memory
        assert q is not None
        assert t.eps_mem_j_per_byte is not None
        point += q.bytes_moved * t.eps_mem_j_per_byte
        _, top_eps, _ = _eps(d.entry, "", p.low_w)
        high += q.high_bytes * (top_eps if top_eps is not None else t.eps_mem_j_per_byte)
    return Component(point, 0.0, max(high, point), None, _MEMORY_BASIS)


def _eps(
    entry: CatalogEntry | None, dtype: str, pi0_w: float
) -> tuple[float | None, float | None, str | None]:
    """(ε_flop at ``dtype``, ε_mem, provenance kind), TDP-derived ones re-derived with ``pi0_w``.

    ``dtype`` "" skips ε_flop. The kind is ``derived`` when any of the two is derived.
    """
    if entry is None or entry.energy_roofline is None:
        return None, None, None
    constants = entry.energy_roofline
    dynamic_w = None if entry.tdp_w is None else max(entry.tdp_w - pi0_w, 0.0)
    kinds: set[str] = set()
    eps_flop = None
    if dtype and dtype in constants.eps_flop_j:
        if constants.eps_flop_provenance[dtype].kind == "derived" and dynamic_w is not None:
            eps_flop = dynamic_w / entry.peak(dtype)
            kinds.add("derived")
        else:
            eps_flop = constants.eps_flop_j[dtype]
            kinds.add(constants.eps_flop_provenance[dtype].kind)
    if constants.eps_mem_provenance.kind == "derived" and dynamic_w is not None:
        eps_mem = dynamic_w / entry.memory_bandwidth_bytes_per_s
        kinds.add("derived")
    else:
        eps_mem = constants.eps_mem_j_per_byte
        kinds.add(constants.eps_mem_provenance.kind)
    return eps_flop, eps_mem, "derived" if "derived" in kinds else (kinds.pop() if kinds else None)


def _canonical(dtype: str) -> str:
    try:
        return normalize_dtype(dtype)
    except UnsupportedDtype:
        return dtype


def _unavailable(reason: str, basis: str) -> Component:
    return Component(None, None, None, reason, basis)


def _sum_top(values: Any) -> float:
    """Sum of band tops: inf as soon as one is (math.fsum refuses inf)."""
    listed = list(values)
    if any(not math.isfinite(v) for v in listed):
        return math.inf
    return math.fsum(listed)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def pi0_by_entry(decomposition: EnergyDecomposition) -> Mapping[str, float]:
    """Σπ0 per catalog id (for `accounting.bounds.energy_roofline`'s override)."""
    out: dict[str, float] = {}
    for t in decomposition.devices:
        if t.catalog_id is not None:
            out[t.catalog_id] = out.get(t.catalog_id, 0.0) + t.constant_power.pi0_w
    return out
