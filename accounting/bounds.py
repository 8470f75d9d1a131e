"""Three references a run's measured energy is compared with, side by side.

All inputs and outputs are floats in SI units: FLOP, J, s, K, byte (and FLOP/s, byte/s, W).

**Landauer floor.** Erasing one bit dissipates at least k_B·T·ln 2 (Landauer 1961; 2.871e-21 J at
300 K). A run's floor is ``bits_erased × k_B·T·ln 2`` with ``bits_erased = FLOPs × bits/FLOP``.
There is no accepted bits-per-FLOP figure, so the model is a labelled choice:

* ``"1bit"``: at least one irreversible bit per useful operation (the strict floor);
* ``"word"`` (default): the operand width of the dtype (fp64 64, fp32 32, bf16/fp16 16, fp8 8,
  fp4 4). A two-input op maps 2n → n bits, so discarding its inputs erases at least n bits.
  **TF32 counts 19 bits**: its operands travel in 32-bit registers, but the tensor core reads only
  1 sign + 8 exponent + 10 mantissa bits, so at most 19 bits of information per operand can be
  destroyed; taking the smaller width keeps the floor a floor;
* a positive number: a user's own bits/FLOP, labelled ``"custom"``.

T is the measured (e.g. GPU die) temperature when given, else 300 K; the result says which.

**Hardware roofline** (Williams, Waterman, Patterson 2009). MFU = achieved FLOP/s ÷ the dense peak
at the run's dtype summed over devices. Attainable FLOP/s = min(peak, bandwidth × intensity) when
an arithmetic intensity (FLOP/byte) is known. Peak FLOP/J at TDP = Σpeak ÷ ΣTDP: the best
efficiency the boards are rated for (100 % MFU at exactly TDP); the bound energy is
FLOPs ÷ that. A board drawing less than TDP at high MFU can beat it, so this is a rated reference,
not a physical law.

**Energy roofline** (Choi, Bedard, Fowler, Vuduc, IPDPS 2013). E = W·ε_flop + Q·ε_mem + π0·T with
T = max(W/peak, Q/bandwidth), the fastest the devices could finish. Constants come from the catalog
(`accounting.catalog`: TDP-derived upper bounds, π0 = idle power or an assumed default) or from
an override. A run's report passes the π0 it resolved per device (the measured lowest sustained
power first: `accounting.decomposition`) and re-derives the TDP-derived ε with it,
(TDP − π0)/peak, so π0 and dynamic power together stay within TDP; with Q = 0 the bound is then
the same whatever π0 (W·TDP/peak), and it is Q that moves it. With several devices the work is
assumed split in proportion to each device's peak (FLOPs) and bandwidth (bytes), i.e. perfectly
balanced. When the bytes moved Q are unknown, Q = 0 is used: the compute-only minimum, since
traffic can only add energy. Q may come from the devices' memory-activity counters (labelled: an
upper bound on the bytes, busy time at peak bandwidth). With TDP-derived ε both terms charge the
whole board power, so with Q > 0 this is an estimate rather than a strict floor.

Every result is a frozen dataclass holding the bound, the measured value, the orders of magnitude
between them (log10(measured / bound)) and an ``assumptions`` mapping; `compare_run` computes all
three for a run, and ``to_dict()`` gives JSON-safe plain types.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, TypeAlias, overload

import numpy as np
import numpy.typing as npt

from .catalog import CatalogEntry, UnsupportedDtype, normalize_dtype
from .errors import AccountingError

__all__ = [
    "DEFAULT_TEMPERATURE_K",
    "K_B_J_PER_K",
    "WORD_BITS",
    "BitsModel",
    "BoundError",
    "BoundUnavailable",
    "Devices",
    "EnergyRooflineBound",
    "HardwareRooflineBound",
    "LandauerBound",
    "RunBounds",
    "attainable_flop_per_s",
    "compare_run",
    "energy_roofline",
    "energy_roofline_j",
    "hardware_roofline",
    "landauer_bound",
    "landauer_floor_j",
    "landauer_j_per_bit",
    "resolve_bits_per_flop",
]

#: Boltzmann constant, exact since the 2019 SI redefinition (J/K).
K_B_J_PER_K: Final = 1.380649e-23
#: Temperature used when no measured one is given (K).
DEFAULT_TEMPERATURE_K: Final = 300.0
_LN2: Final = math.log(2.0)

#: Operand width per dtype for the ``"word"`` model (bits). TF32: 19 significant bits (see module
#: docstring).
WORD_BITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "fp64": 64,
        "fp64_tensor": 64,
        "fp32": 32,
        "fp32_matrix": 32,
        "tf32": 19,
        "bf16": 16,
        "fp16": 16,
        "fp8": 8,
        "fp4": 4,
    }
)

BitsModel: TypeAlias = Literal["1bit", "word"]
#: Devices of a run: one entry, a list (repeats count), or counts per entry (counts are
#: packages, e.g. 0.5 for one GCD of an MI250X).
Devices: TypeAlias = "CatalogEntry | Sequence[CatalogEntry] | Mapping[CatalogEntry, float]"
JSONValue: TypeAlias = (
    "str | int | float | bool | Mapping[str, JSONValue] | tuple[JSONValue, ...] | None"
)
PlainJSON: TypeAlias = "str | int | float | bool | dict[str, PlainJSON] | list[PlainJSON] | None"
Assumptions: TypeAlias = Mapping[str, JSONValue]


class BoundError(ValueError, AccountingError):
    """An input to a bound is invalid (non-finite, not positive, inconsistent)."""


class BoundUnavailable(ValueError, AccountingError):
    """A bound cannot be computed for these devices (no peak at the dtype, no TDP, no constants)."""


# --------------------------------------------------------------------------------------------
# Vectorised kernels
# --------------------------------------------------------------------------------------------


def landauer_j_per_bit(temperature_k: float = DEFAULT_TEMPERATURE_K) -> float:
    """Landauer's minimum heat per erased bit, k_B·T·ln 2.

    Args:
        temperature_k: Temperature of the heat bath (K), > 0.

    Returns:
        Energy per bit (J); 2.871e-21 J at 300 K.
    """
    temperature_k = _positive(temperature_k, "temperature_k")
    return K_B_J_PER_K * temperature_k * _LN2


@overload
def landauer_floor_j(
    flops: float, *, bits_per_flop: float, temperature_k: float = DEFAULT_TEMPERATURE_K
) -> float: ...
@overload
def landauer_floor_j(
    flops: npt.NDArray[Any], *, bits_per_flop: float, temperature_k: float = DEFAULT_TEMPERATURE_K
) -> npt.NDArray[np.float64]: ...
def landauer_floor_j(
    flops: float | npt.NDArray[Any],
    *,
    bits_per_flop: float,
    temperature_k: float = DEFAULT_TEMPERATURE_K,
) -> float | npt.NDArray[np.float64]:
    """Landauer floor of ``flops`` operations, elementwise over an array.

    Args:
        flops: FLOP count(s), >= 0.
        bits_per_flop: Bits erased per FLOP (see `resolve_bits_per_flop`).
        temperature_k: Temperature (K).

    Returns:
        Minimum energy (J), a float for a float input, else an array of the input's shape.
    """
    bits_per_flop = _positive(bits_per_flop, "bits_per_flop")
    per_flop_j = bits_per_flop * landauer_j_per_bit(temperature_k)
    values = np.asarray(flops, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise BoundError("flops must be finite and >= 0")
    if values.ndim == 0:
        return float(values) * per_flop_j
    return values * per_flop_j


def attainable_flop_per_s(
    peak_flop_per_s: float,
    bandwidth_bytes_per_s: float,
    intensity_flop_per_byte: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """Time-roofline ceiling min(peak, bandwidth × intensity), elementwise over intensities.

    Args:
        peak_flop_per_s: Peak compute (FLOP/s).
        bandwidth_bytes_per_s: Peak memory bandwidth (byte/s).
        intensity_flop_per_byte: Arithmetic intensity(ies) (FLOP/byte), > 0.

    Returns:
        Attainable throughput (FLOP/s), same shape as the intensities.
    """
    intensity = np.asarray(intensity_flop_per_byte, dtype=np.float64)
    if not np.all(intensity > 0):
        raise BoundError("intensity_flop_per_byte must be > 0")
    return np.minimum(peak_flop_per_s, bandwidth_bytes_per_s * intensity)


def energy_roofline_j(
    flops: npt.ArrayLike,
    bytes_moved: npt.ArrayLike,
    *,
    eps_flop_j: float,
    eps_mem_j_per_byte: float,
    pi0_w: float,
    peak_flop_per_s: float,
    bandwidth_bytes_per_s: float,
) -> npt.NDArray[np.float64]:
    """Choi et al. energy E = W·ε_flop + Q·ε_mem + π0·max(W/peak, Q/bandwidth), elementwise.

    Args:
        flops: Work W (FLOP).
        bytes_moved: DRAM/HBM traffic Q (byte).
        eps_flop_j: Energy per FLOP (J/FLOP).
        eps_mem_j_per_byte: Energy per byte moved (J/byte).
        pi0_w: Constant power (W).
        peak_flop_per_s: Peak compute (FLOP/s).
        bandwidth_bytes_per_s: Peak bandwidth (byte/s).

    Returns:
        Energy (J), broadcast over ``flops`` and ``bytes_moved``.
    """
    work = np.asarray(flops, dtype=np.float64)
    traffic = np.asarray(bytes_moved, dtype=np.float64)
    time_s = np.maximum(work / peak_flop_per_s, traffic / bandwidth_bytes_per_s)
    return work * eps_flop_j + traffic * eps_mem_j_per_byte + pi0_w * time_s


def resolve_bits_per_flop(model: BitsModel | float, dtype: str) -> tuple[str, float]:
    """Resolve a bits-erased-per-FLOP model.

    Args:
        model: ``"1bit"``, ``"word"`` or a positive number of bits.
        dtype: The run's dtype (used by ``"word"``).

    Returns:
        (label, bits per FLOP): label ``"1bit"``, ``"word"`` or ``"custom"``.
    """
    if isinstance(model, str):
        if model == "1bit":
            return "1bit", 1.0
        if model == "word":
            return "word", float(WORD_BITS[normalize_dtype(dtype)])
        raise BoundError(f"bits model must be '1bit', 'word' or a number, got {model!r}")
    if isinstance(model, bool):
        raise BoundError("bits model must be '1bit', 'word' or a number, got a bool")
    return "custom", _positive(model, "bits_per_flop")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _freeze(value: JSONValue) -> JSONValue:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, tuple | list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, float | np.floating):
        return float(value)
    return value


def _plain(value: Any) -> PlainJSON:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    raise TypeError(f"cannot serialise {type(value).__name__}")


class _Result:
    """Shared ``to_dict`` for the frozen result dataclasses."""

    __slots__ = ()
    bound_name: ClassVar[str]

    def to_dict(self) -> dict[str, PlainJSON]:
        """All fields as JSON-safe plain types (dict, list, str, int, float, bool, None)."""
        out: dict[str, PlainJSON] = {"bound": self.bound_name}
        for field in fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            out[field.name] = _plain(getattr(self, field.name))
        return out


@dataclass(frozen=True, slots=True)
class LandauerBound(_Result):
    """Landauer floor of a run.

    Attributes:
        bound_j: Minimum energy for the run's FLOPs (J).
        bound_j_per_flop: Floor per FLOP (J/FLOP).
        bound_flop_per_j: Its inverse, the maximum FLOP/J.
        bits_per_flop: Bits erased per FLOP used.
        temperature_k: Temperature used (K).
        measured_j: Measured energy (J), if given.
        orders_of_magnitude: log10(measured_j / bound_j), if measured.
        assumptions: Model label, bits/FLOP, T and its source, dtype, k_B.
    """

    bound_name: ClassVar[str] = "landauer"
    bound_j: float
    bound_j_per_flop: float
    bound_flop_per_j: float
    bits_per_flop: float
    temperature_k: float
    measured_j: float | None
    orders_of_magnitude: float | None
    assumptions: Assumptions


@dataclass(frozen=True, slots=True)
class HardwareRooflineBound(_Result):
    """Time roofline and rated efficiency of the run's devices.

    Attributes:
        peak_flop_per_s: Dense peak at the dtype, summed over devices (FLOP/s).
        achieved_flop_per_s: FLOPs ÷ duration (FLOP/s).
        mfu: achieved ÷ peak.
        attainable_flop_per_s: min(peak, bandwidth × intensity), or the peak without intensity.
        intensity_flop_per_byte: Arithmetic intensity used, if known (FLOP/byte).
        ridge_point_flop_per_byte: peak ÷ bandwidth (FLOP/byte).
        fraction_of_attainable: achieved ÷ attainable.
        peak_flop_per_j: Σpeak ÷ ΣTDP, or None when a TDP is missing (FLOP/J).
        bound_j_per_flop: 1 / peak_flop_per_j (J/FLOP).
        bound_j: FLOPs at peak FLOP/J (J).
        measured_j: Measured energy (J), if given.
        measured_flop_per_j: FLOPs ÷ measured energy (FLOP/J).
        efficiency_ratio: measured FLOP/J ÷ peak FLOP/J.
        orders_of_magnitude: log10(measured_j / bound_j).
        assumptions: Devices, dtype, peaks and their provenance, TDP kinds, intensity source.
    """

    bound_name: ClassVar[str] = "hardware_roofline"
    peak_flop_per_s: float
    achieved_flop_per_s: float
    mfu: float
    attainable_flop_per_s: float
    intensity_flop_per_byte: float | None
    ridge_point_flop_per_byte: float
    fraction_of_attainable: float
    peak_flop_per_j: float | None
    bound_j_per_flop: float | None
    bound_j: float | None
    measured_j: float | None
    measured_flop_per_j: float | None
    efficiency_ratio: float | None
    orders_of_magnitude: float | None
    assumptions: Assumptions


@dataclass(frozen=True, slots=True)
class EnergyRooflineBound(_Result):
    """Choi et al. energy-roofline minimum for the run.

    Attributes:
        bound_j: W·ε_flop + Q·ε_mem + π0·T (J).
        bound_j_per_flop: bound_j ÷ W (J/FLOP).
        bound_flop_per_j: W ÷ bound_j (FLOP/J).
        flop_energy_j: W·ε_flop (J).
        memory_energy_j: Q·ε_mem (J).
        static_energy_j: π0·T (J).
        time_s: T = max(W/peak, Q/bandwidth) (s).
        bytes_moved: Q used (byte); 0 when unknown.
        eps_flop_j: Effective ε_flop (J/FLOP).
        eps_mem_j_per_byte: Effective ε_mem (J/byte).
        pi0_w: Total π0 (W).
        measured_j: Measured energy (J), if given.
        orders_of_magnitude: log10(measured_j / bound_j).
        assumptions: Devices, dtype, peaks, ε/π0 and provenance, Q assumption, work split.
    """

    bound_name: ClassVar[str] = "energy_roofline"
    bound_j: float
    bound_j_per_flop: float
    bound_flop_per_j: float
    flop_energy_j: float
    memory_energy_j: float
    static_energy_j: float
    time_s: float
    bytes_moved: float
    eps_flop_j: float
    eps_mem_j_per_byte: float
    pi0_w: float
    measured_j: float | None
    orders_of_magnitude: float | None
    assumptions: Assumptions


@dataclass(frozen=True, slots=True)
class RunBounds:
    """The three references for one run, side by side.

    Attributes:
        energy_j: Measured energy (J).
        flops: Work (FLOP).
        dtype: Canonical dtype.
        duration_s: Wall time of the measured window (s).
        devices: Device counts by catalog id.
        bytes_moved: Memory traffic (byte), if known.
        temperature_k: Measured temperature (K), if given.
        landauer: Landauer floor.
        hardware_roofline: Hardware roofline, or None (reason in ``unavailable``).
        energy_roofline: Energy roofline, or None (reason in ``unavailable``).
        unavailable: Bound name → why it could not be computed.
    """

    energy_j: float
    flops: float
    dtype: str
    duration_s: float
    devices: Mapping[str, float]
    bytes_moved: float | None
    temperature_k: float | None
    landauer: LandauerBound
    hardware_roofline: HardwareRooflineBound | None
    energy_roofline: EnergyRooflineBound | None
    unavailable: Mapping[str, str]

    @property
    def measured_flop_per_j(self) -> float:
        """FLOPs ÷ measured energy (FLOP/J)."""
        return self.flops / self.energy_j

    def to_dict(self) -> dict[str, PlainJSON]:
        """JSON-safe plain form: inputs, each bound (or None) and the unavailable reasons."""
        return {
            "inputs": {
                "energy_j": self.energy_j,
                "flops": self.flops,
                "dtype": self.dtype,
                "duration_s": self.duration_s,
                "devices": _plain(self.devices),
                "bytes_moved": self.bytes_moved,
                "temperature_k": self.temperature_k,
            },
            "measured_flop_per_j": self.measured_flop_per_j,
            "landauer": self.landauer.to_dict(),
            "hardware_roofline": (
                None if self.hardware_roofline is None else self.hardware_roofline.to_dict()
            ),
            "energy_roofline": (
                None if self.energy_roofline is None else self.energy_roofline.to_dict()
            ),
            "unavailable": dict(self.unavailable),
        }

    def summary(self) -> str:
        """A few human-readable lines: each bound's energy and how far the run sits above it."""
        lines = [
            f"measured: {self.energy_j:.4g} J for {self.flops:.4g} FLOP ({self.dtype}), "
            f"{self.measured_flop_per_j:.4g} FLOP/J"
        ]
        results: dict[str, LandauerBound | HardwareRooflineBound | EnergyRooflineBound | None] = {
            "landauer": self.landauer,
            "hardware_roofline": self.hardware_roofline,
            "energy_roofline": self.energy_roofline,
        }
        for name, result in results.items():
            if result is None or result.bound_j is None or result.orders_of_magnitude is None:
                why = self.unavailable.get(name) or self.unavailable.get(f"{name}.flop_per_j")
                lines.append(f"{name}: unavailable ({why})")
            else:
                lines.append(
                    f"{name}: {result.bound_j:.4g} J; measured is "
                    f"{result.orders_of_magnitude:+.2f} orders of magnitude above it"
                )
        if self.hardware_roofline is not None:
            lines.append(f"MFU: {self.hardware_roofline.mfu:.1%} of the dense {self.dtype} peak")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------------------------


def landauer_bound(
    *,
    flops: float,
    dtype: str,
    energy_j: float | None = None,
    bits_model: BitsModel | float = "word",
    temperature_k: float | None = None,
) -> LandauerBound:
    """Landauer floor of a run's FLOPs, compared with its measured energy.

    Args:
        flops: Work (FLOP), > 0.
        dtype: The run's dtype (``"bf16"``, ``"bfloat16"``, ...).
        energy_j: Measured energy (J), > 0, or None.
        bits_model: ``"1bit"``, ``"word"`` (default) or a number of bits per FLOP.
        temperature_k: Measured temperature (K); None uses 300 K. NVML reports °C: add 273.15.

    Returns:
        A `LandauerBound`.
    """
    flops = _positive(flops, "flops")
    canonical = normalize_dtype(dtype)
    measured_j = _optional_positive(energy_j, "energy_j")
    label, bits = resolve_bits_per_flop(bits_model, canonical)
    temperature, temperature_source = _temperature(temperature_k)
    per_flop_j = bits * landauer_j_per_bit(temperature)
    bound_j = flops * per_flop_j
    assumptions: dict[str, JSONValue] = {
        "model": label,
        "bits_per_flop": bits,
        "bits_basis": _bits_basis(label, canonical),
        "temperature_k": temperature,
        "temperature_source": temperature_source,
        "dtype": canonical,
        "k_b_j_per_k": K_B_J_PER_K,
        "formula": "flops * bits_per_flop * k_B * T * ln 2",
    }
    return LandauerBound(
        bound_j=bound_j,
        bound_j_per_flop=per_flop_j,
        bound_flop_per_j=1.0 / per_flop_j,
        bits_per_flop=bits,
        temperature_k=temperature,
        measured_j=measured_j,
        orders_of_magnitude=_orders(measured_j, bound_j),
        assumptions=_frozen(assumptions),
    )


def hardware_roofline(
    *,
    flops: float,
    duration_s: float,
    dtype: str,
    devices: Devices,
    energy_j: float | None = None,
    intensity_flop_per_byte: float | None = None,
) -> HardwareRooflineBound:
    """MFU, attainable throughput and rated FLOP/J of the run's devices.

    Args:
        flops: Work (FLOP), > 0.
        duration_s: Wall time over which the FLOPs ran (s), > 0.
        dtype: The dtype whose peak applies.
        devices: Catalog entries (see `Devices`).
        energy_j: Measured energy (J), or None.
        intensity_flop_per_byte: Arithmetic intensity (FLOP/byte), or None.

    Returns:
        A `HardwareRooflineBound`.

    Raises:
        BoundUnavailable: A device has no peak at ``dtype``.
    """
    flops = _positive(flops, "flops")
    duration_s = _positive(duration_s, "duration_s")
    measured_j = _optional_positive(energy_j, "energy_j")
    intensity = _optional_positive(intensity_flop_per_byte, "intensity_flop_per_byte")
    canonical = normalize_dtype(dtype)
    pool = _Pool.build(devices, canonical)

    achieved = flops / duration_s
    mfu = achieved / pool.peak_flop_per_s
    if intensity is None:
        attainable = pool.peak_flop_per_s
        intensity_note = "not given: attainable = peak"
    else:
        attainable = min(pool.peak_flop_per_s, pool.bandwidth_bytes_per_s * intensity)
        intensity_note = "given: attainable = min(peak, bandwidth * intensity)"

    assumptions: dict[str, JSONValue] = {
        "dtype": canonical,
        "devices": pool.counts_by_id(),
        "peak_flop_per_s": pool.peak_flop_per_s,
        "peak_flop_per_s_per_device": {e.id: e.peak(canonical) for e, _ in pool.counts},
        "peak_provenance": {e.id: e.peak_provenance[canonical] for e, _ in pool.counts},
        "peak_kind": "dense (no structured sparsity)",
        "bandwidth_bytes_per_s": pool.bandwidth_bytes_per_s,
        "intensity": intensity_note,
        "tdp_w": pool.tdp_w,
        "tdp_kind": {e.id: e.tdp_kind for e, _ in pool.counts},
        "flop_per_j_basis": "sum(peak) / sum(TDP): rated best, 100% MFU at exactly TDP",
    }
    if mfu > 1.0:
        assumptions["warning"] = (
            "achieved FLOP/s exceeds the dense peak: FLOPs over-counted, wrong dtype, or sparsity"
        )

    peak_flop_per_j = bound_j_per_flop = bound_j = efficiency = None
    if pool.tdp_w is None:
        missing = [e.id for e, _ in pool.counts if e.tdp_w is None]
        assumptions["tdp_unavailable"] = f"no published TDP for {', '.join(missing)}"
    else:
        peak_flop_per_j = pool.peak_flop_per_s / pool.tdp_w
        bound_j_per_flop = 1.0 / peak_flop_per_j
        bound_j = flops * bound_j_per_flop
    measured_flop_per_j = None if measured_j is None else flops / measured_j
    if measured_flop_per_j is not None and peak_flop_per_j is not None:
        efficiency = measured_flop_per_j / peak_flop_per_j

    return HardwareRooflineBound(
        peak_flop_per_s=pool.peak_flop_per_s,
        achieved_flop_per_s=achieved,
        mfu=mfu,
        attainable_flop_per_s=attainable,
        intensity_flop_per_byte=intensity,
        ridge_point_flop_per_byte=pool.peak_flop_per_s / pool.bandwidth_bytes_per_s,
        fraction_of_attainable=achieved / attainable,
        peak_flop_per_j=peak_flop_per_j,
        bound_j_per_flop=bound_j_per_flop,
        bound_j=bound_j,
        measured_j=measured_j,
        measured_flop_per_j=measured_flop_per_j,
        efficiency_ratio=efficiency,
        orders_of_magnitude=_orders(measured_j, bound_j),
        assumptions=_frozen(assumptions),
    )


def energy_roofline(
    *,
    flops: float,
    dtype: str,
    devices: Devices,
    bytes_moved: float | None = None,
    energy_j: float | None = None,
    pi0_w_by_id: Mapping[str, float] | None = None,
    pi0_basis: str | None = None,
    bytes_basis: str | None = None,
) -> EnergyRooflineBound:
    """Choi et al. minimum energy for the run's work on its devices.

    Args:
        flops: Work W (FLOP), > 0.
        dtype: The dtype whose peak and ε_flop apply.
        devices: Catalog entries (see `Devices`).
        bytes_moved: DRAM/HBM traffic Q (byte), > 0, or None (then Q = 0, stated in the result).
        energy_j: Measured energy (J), or None.
        pi0_w_by_id: π0 summed over each entry's devices (W), by catalog id, in place of the
            catalog's (e.g. measured: `accounting.decomposition`); TDP-derived ε of that entry
            are re-derived with it, (count·TDP − π0) / (count·peak), so π0 plus dynamic power
            stay within TDP. Entries not named keep the catalog's.
        pi0_basis: Where those π0 come from, for the assumptions.
        bytes_basis: Where ``bytes_moved`` comes from (default: "given").

    Returns:
        An `EnergyRooflineBound`.

    Raises:
        BoundUnavailable: A device lacks a peak at ``dtype`` or energy-roofline constants.
    """
    flops = _positive(flops, "flops")
    measured_j = _optional_positive(energy_j, "energy_j")
    canonical = normalize_dtype(dtype)
    pool = _Pool.build(devices, canonical)

    weighted_eps_flop = weighted_eps_mem = pi0_w = 0.0
    eps_provenance: dict[str, JSONValue] = {}
    eps_kinds: list[str] = []
    for entry, count in pool.counts:
        constants = entry.energy_roofline
        if constants is None:
            raise BoundUnavailable(
                f"{entry.id} has no energy-roofline constants (no TDP published; supply "
                "eps/pi0 through a catalog override)"
            )
        if canonical not in constants.eps_flop_j:
            raise BoundUnavailable(f"{entry.id} has no eps_flop for {canonical}")
        flop_kind = constants.eps_flop_provenance[canonical].kind
        mem_kind = constants.eps_mem_provenance.kind
        entry_flop_w = count * entry.peak(canonical) * constants.eps_flop_j[canonical]
        entry_mem_w = count * entry.memory_bandwidth_bytes_per_s * constants.eps_mem_j_per_byte
        entry_pi0_w = count * constants.pi0_w
        pi0_provenance: JSONValue = constants.pi0_provenance.to_dict()
        override = None if pi0_w_by_id is None else pi0_w_by_id.get(entry.id)
        if override is not None:
            entry_pi0_w = _nonnegative(override, f"pi0_w of {entry.id}")
            pi0_provenance = {"kind": "override", "note": pi0_basis or "given"}
            if entry.tdp_w is not None:
                dynamic_w = max(count * entry.tdp_w - entry_pi0_w, 0.0)
                entry_flop_w = dynamic_w if flop_kind == "derived" else entry_flop_w
                entry_mem_w = dynamic_w if mem_kind == "derived" else entry_mem_w
        weighted_eps_flop += entry_flop_w
        weighted_eps_mem += entry_mem_w
        pi0_w += entry_pi0_w
        eps_kinds.append(flop_kind)
        eps_provenance[entry.id] = {
            "eps_flop_j": entry_flop_w / (count * entry.peak(canonical)),
            "eps_flop_provenance": constants.eps_flop_provenance[canonical].to_dict(),
            "eps_mem_j_per_byte": entry_mem_w / (count * entry.memory_bandwidth_bytes_per_s),
            "eps_mem_provenance": constants.eps_mem_provenance.to_dict(),
            "pi0_w": entry_pi0_w / count,
            "pi0_provenance": pi0_provenance,
        }
    eps_flop = weighted_eps_flop / pool.peak_flop_per_s
    eps_mem = weighted_eps_mem / pool.bandwidth_bytes_per_s

    if bytes_moved is None:
        traffic = 0.0
        q_note = "unknown: Q = 0 bytes (compute-only minimum; memory traffic only adds energy)"
    else:
        traffic = _positive(bytes_moved, "bytes_moved")
        q_note = bytes_basis or "given"
    time_s = max(flops / pool.peak_flop_per_s, traffic / pool.bandwidth_bytes_per_s)
    flop_energy = flops * eps_flop
    memory_energy = traffic * eps_mem
    static_energy = pi0_w * time_s
    bound_j = flop_energy + memory_energy + static_energy

    assumptions: dict[str, JSONValue] = {
        "model": "choi2013: E = W*eps_flop + Q*eps_mem + pi0*T, T = max(W/peak, Q/bandwidth)",
        "dtype": canonical,
        "devices": pool.counts_by_id(),
        "peak_flop_per_s": pool.peak_flop_per_s,
        "bandwidth_bytes_per_s": pool.bandwidth_bytes_per_s,
        "bytes_moved": q_note,
        "constants": eps_provenance,
        "work_split": "in proportion to each device's peak (FLOPs) and bandwidth (bytes)",
        "time": "T = max(W/peak, Q/bandwidth): the fastest the devices could finish",
    }
    derived = any(kind == "derived" for kind in eps_kinds)
    if derived and traffic > 0:
        assumptions["caveat"] = (
            "TDP-derived eps charge the whole dynamic board power to FLOPs and again to bytes: "
            "with Q > 0 this is an estimate, not a strict floor"
        )
    return EnergyRooflineBound(
        bound_j=bound_j,
        bound_j_per_flop=bound_j / flops,
        bound_flop_per_j=flops / bound_j,
        flop_energy_j=flop_energy,
        memory_energy_j=memory_energy,
        static_energy_j=static_energy,
        time_s=time_s,
        bytes_moved=traffic,
        eps_flop_j=eps_flop,
        eps_mem_j_per_byte=eps_mem,
        pi0_w=pi0_w,
        measured_j=measured_j,
        orders_of_magnitude=_orders(measured_j, bound_j),
        assumptions=_frozen(assumptions),
    )


def compare_run(
    *,
    energy_j: float,
    flops: float,
    dtype: str,
    duration_s: float,
    devices: Devices,
    bytes_moved: float | None = None,
    intensity_flop_per_byte: float | None = None,
    temperature_k: float | None = None,
    bits_model: BitsModel | float = "word",
    pi0_w_by_id: Mapping[str, float] | None = None,
    pi0_basis: str | None = None,
    counter_bytes_moved: float | None = None,
    counter_bytes_basis: str | None = None,
) -> RunBounds:
    """All three bounds for one run, side by side.

    Args:
        energy_j: Measured energy of the run (J), > 0.
        flops: Work done (FLOP), > 0.
        dtype: The dtype the FLOPs ran at.
        duration_s: Wall time of the measured window (s), > 0.
        devices: Catalog entries the run used (see `Devices`).
        bytes_moved: DRAM/HBM traffic (byte), if known. Give this or the intensity, not both.
        intensity_flop_per_byte: Arithmetic intensity (FLOP/byte), if known; Q = W / I.
        temperature_k: Measured temperature (K), if known; 300 K otherwise.
        bits_model: Landauer bits-per-FLOP model (``"word"`` by default).
        pi0_w_by_id: π0 per catalog id for the energy roofline (see `energy_roofline`).
        pi0_basis: Where those π0 come from.
        counter_bytes_moved: Memory traffic from the devices' activity counters (byte), for the
            energy roofline only (the hardware roofline's intensity stays the given one); a
            given ``bytes_moved`` or intensity wins over it.
        counter_bytes_basis: What that figure assumes.

    Returns:
        `RunBounds`. A roofline that cannot be computed (no peak at the dtype, no TDP or
        constants) is None, with its reason in ``unavailable``; the Landauer floor always exists.
    """
    energy_j = _positive(energy_j, "energy_j")
    flops = _positive(flops, "flops")
    duration_s = _positive(duration_s, "duration_s")
    temperature_k = _optional_positive(temperature_k, "temperature_k")
    canonical = normalize_dtype(dtype)
    if bytes_moved is not None and intensity_flop_per_byte is not None:
        raise BoundError("give bytes_moved or intensity_flop_per_byte, not both")
    if intensity_flop_per_byte is not None:
        bytes_moved = flops / _positive(intensity_flop_per_byte, "intensity_flop_per_byte")
    intensity = None if bytes_moved is None else flops / _positive(bytes_moved, "bytes_moved")
    counts = _device_counts(devices)

    landauer = landauer_bound(
        flops=flops,
        dtype=canonical,
        energy_j=energy_j,
        bits_model=bits_model,
        temperature_k=temperature_k,
    )
    unavailable: dict[str, str] = {}
    hardware: HardwareRooflineBound | None = None
    try:
        hardware = hardware_roofline(
            flops=flops,
            duration_s=duration_s,
            dtype=canonical,
            devices=dict(counts),
            energy_j=energy_j,
            intensity_flop_per_byte=intensity,
        )
    except (BoundUnavailable, UnsupportedDtype) as error:
        unavailable["hardware_roofline"] = str(error)
    else:
        if hardware.bound_j is None:
            unavailable["hardware_roofline.flop_per_j"] = str(
                hardware.assumptions["tdp_unavailable"]
            )
    energy: EnergyRooflineBound | None = None
    roofline_bytes, bytes_basis = bytes_moved, None
    if roofline_bytes is None and counter_bytes_moved is not None and counter_bytes_moved > 0:
        roofline_bytes = counter_bytes_moved
        bytes_basis = counter_bytes_basis or "memory-activity counters"
    try:
        energy = energy_roofline(
            flops=flops,
            dtype=canonical,
            devices=dict(counts),
            bytes_moved=roofline_bytes,
            energy_j=energy_j,
            pi0_w_by_id=pi0_w_by_id,
            pi0_basis=pi0_basis,
            bytes_basis=bytes_basis,
        )
    except (BoundUnavailable, UnsupportedDtype) as error:
        unavailable["energy_roofline"] = str(error)

    return RunBounds(
        energy_j=energy_j,
        flops=flops,
        dtype=canonical,
        duration_s=duration_s,
        devices=MappingProxyType({e.id: n for e, n in counts}),
        bytes_moved=bytes_moved,
        temperature_k=temperature_k,
        landauer=landauer,
        hardware_roofline=hardware,
        energy_roofline=energy,
        unavailable=MappingProxyType(unavailable),
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _bits_basis(label: str, dtype: str) -> str:
    if label == "1bit":
        return "strict floor: at least one irreversible bit per useful operation"
    if label == "custom":
        return "user-supplied bits per FLOP"
    basis = f"operand width of {dtype}: a 2n -> n bit op erases at least n bits"
    if dtype == "tf32":
        basis += " (TF32: 19 significant bits, 1+8+10, read from a 32-bit register)"
    return basis


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise BoundError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise BoundError(f"{name} must be finite and > 0, got {value!r}")
    return number


def _nonnegative(value: float, name: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise BoundError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def _optional_positive(value: float | None, name: str) -> float | None:
    return None if value is None else _positive(value, name)


def _temperature(temperature_k: float | None) -> tuple[float, str]:
    if temperature_k is None:
        return DEFAULT_TEMPERATURE_K, "default (no measured temperature)"
    return _positive(temperature_k, "temperature_k"), "measured"


def _orders(measured_j: float | None, bound_j: float | None) -> float | None:
    if measured_j is None or bound_j is None:
        return None
    return math.log10(measured_j / bound_j)


def _frozen(assumptions: dict[str, JSONValue]) -> Assumptions:
    frozen = _freeze(assumptions)
    assert isinstance(frozen, Mapping)
    return frozen


def _device_counts(devices: Devices) -> tuple[tuple[CatalogEntry, float], ...]:
    if isinstance(devices, CatalogEntry):
        pairs: list[tuple[CatalogEntry, float]] = [(devices, 1.0)]
    elif isinstance(devices, Mapping):
        pairs = [
            (entry, _positive(count, f"count of {entry.id}")) for entry, count in devices.items()
        ]
    else:
        tally = Counter(devices)
        pairs = [(entry, float(count)) for entry, count in tally.items()]
    if not pairs:
        raise BoundError("devices is empty")
    for entry, _ in pairs:
        if not isinstance(entry, CatalogEntry):
            raise BoundError(f"devices must be CatalogEntry objects, got {type(entry).__name__}")
    return tuple(sorted(pairs, key=lambda pair: pair[0].id))


@dataclass(frozen=True, slots=True)
class _Pool:
    """Devices of a run aggregated at one dtype (sums over count × per-device figure)."""

    counts: tuple[tuple[CatalogEntry, float], ...]
    peak_flop_per_s: float
    bandwidth_bytes_per_s: float
    tdp_w: float | None

    @classmethod
    def build(cls, devices: Devices, dtype: str) -> _Pool:
        counts = _device_counts(devices)
        peak = 0.0
        for entry, count in counts:
            try:
                peak += count * entry.peak(dtype)
            except UnsupportedDtype as error:
                raise BoundUnavailable(str(error)) from error
        bandwidth = sum(count * entry.memory_bandwidth_bytes_per_s for entry, count in counts)
        tdps = [(entry.tdp_w, count) for entry, count in counts]
        tdp_w = None if any(t is None for t, _ in tdps) else sum(t * n for t, n in tdps if t)
        return cls(counts, peak, bandwidth, tdp_w)

    def counts_by_id(self) -> dict[str, JSONValue]:
        return {entry.id: count for entry, count in self.counts}
