"""The hardware catalog: dense peaks, memory, power and energy-roofline constants per accelerator.

The data live in ``data/catalog.toml`` (package data; its header documents every field). This
module parses and validates that file, derives the energy-roofline constants, and resolves the
name a driver reports (NVML, rocm-smi, JAX ``device_kind``) to one entry.

Units: the file stores TFLOP/s, TB/s, GB/GiB and W for readability; `CatalogEntry` exposes SI
floats (FLOP/s, byte/s, byte, W, J/FLOP, J/byte).

Energy-roofline constants (Choi et al. 2013, E = W·ε_flop + Q·ε_mem + π0·T) come, per constant, from
the first of:

1. an explicit ``[device.energy_roofline]`` value (provenance kind ``"given"``, with its note);
2. for π0: the entry's ``idle_power_w`` when a source gives one; otherwise the catalog default
   ``[defaults].pi0_w`` (0 W), provenance kind ``"assumed"``;
3. for ε: ``(tdp_w − π0) / peak`` and ``(tdp_w − π0) / bandwidth``, provenance kind ``"derived"``.
   These are upper bounds that charge all dynamic board power to one resource
   (physics_hardware.md §2.3); with π0 = 0 they are exactly TDP/peak and TDP/bandwidth.

Name resolution is deterministic: the name is lower-cased and split on every run of
non-alphanumeric characters; each entry lists token patterns (``"h200 !nvl"``: must contain
``h200``, must not contain ``nvl``). Exactly one matching entry resolves; two or more are
``"ambiguous"``; none is ``"unknown"`` (with same-family entries listed as candidates). Nothing is
ever guessed.

The built-in file is parsed once, lazily, on first use (`builtin_catalog` is cached); user
overrides are a parameter of `load_catalog`, never global state.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, cast

from .errors import AccountingError, UnknownDevice

__all__ = [
    "DTYPES",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "EnergyRooflineConstants",
    "NamePattern",
    "Provenance",
    "Resolution",
    "UnknownDevice",
    "UnresolvedDevice",
    "UnsupportedDtype",
    "builtin_catalog",
    "get",
    "load_catalog",
    "lookup",
    "normalize_dtype",
    "normalize_name",
    "resolve",
]

#: Datatypes the catalog knows, in the file's order. ``fp64_tensor`` is FP64 on tensor/matrix units;
#: ``fp32_matrix`` is FP32 on matrix cores or packed (AMD CDNA2's MFMA and packed FP32), where it
#: differs from the vector rate ``fp32``.
DTYPES: Final[tuple[str, ...]] = (
    "fp64",
    "fp64_tensor",
    "fp32",
    "fp32_matrix",
    "tf32",
    "bf16",
    "fp16",
    "fp8",
    "fp4",
)

_DTYPE_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "float64": "fp64",
        "double": "fp64",
        "float32": "fp32",
        "float": "fp32",
        "tensorfloat32": "tf32",
        "bfloat16": "bf16",
        "float16": "fp16",
        "half": "fp16",
        "float8": "fp8",
        "fp8_e4m3": "fp8",
        "fp8_e5m2": "fp8",
        "float8_e4m3fn": "fp8",
        "float8_e5m2": "fp8",
        "float4": "fp4",
        "nvfp4": "fp4",
    }
)

_TB: Final = 1e12
_GB: Final = 1e9
_GIB: Final = 2.0**30
_PJ: Final = 1e-12

_SOURCE_MAX_CHARS: Final = 120
_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_NON_ALNUM: Final = re.compile(r"[^0-9a-z]+")

TdpKind: TypeAlias = Literal["max_tdp", "tbp", "measured_max", "unpublished"]
NvmlPower: TypeAlias = Literal["average_1s", "instant", "not_nvml", "unknown"]
ResolutionStatus: TypeAlias = Literal["found", "ambiguous", "unknown"]

_TDP_KINDS: Final = frozenset({"max_tdp", "tbp", "measured_max", "unpublished"})
_NVML_POWER: Final = frozenset({"average_1s", "instant", "not_nvml", "unknown"})
#: Kinds a catalog figure's provenance may take; "override" is set by `load_catalog` when an
#: override replaces a figure without naming its provenance.
_FIGURE_PROVENANCE: Final = frozenset({"datasheet", "derived", "measured", "assumed", "override"})
_CONFIDENCE: Final = frozenset({"S", "S2", "M"})

# Which provenance key describes which figure (used to mark overridden figures).
_FIELD_PROVENANCE_KEY: Final[Mapping[str, str]] = MappingProxyType(
    {
        "memory_bandwidth_tb_s": "memory_bandwidth",
        "memory_gb": "memory",
        "memory_gib": "memory",
        "tdp_w": "tdp",
        "idle_power_w": "idle_power",
    }
)

_DEVICE_KEYS: Final = frozenset(
    {
        "id",
        "vendor",
        "name",
        "family",
        "match",
        "memory_gb",
        "memory_gib",
        "memory_type",
        "memory_bandwidth_tb_s",
        "tdp_w",
        "tdp_kind",
        "idle_power_w",
        "nvml_power",
        "nvml_energy_counter",
        "sparsity_factor",
        "logical_devices_per_package",
        "confidence",
        "sources",
        "notes",
        "peak_tflops",
        "provenance",
        "peak_provenance",
        "energy_roofline",
    }
)
_ENERGY_KEYS: Final = frozenset({"eps_flop_pj", "eps_mem_pj_per_byte", "pi0_w", "provenance"})
_DEFAULT_KEYS: Final = frozenset({"pi0_w", "pi0_note"})


class CatalogError(ValueError, AccountingError):
    """The catalog file or an override is malformed (missing field, bad value, unknown key)."""


class UnsupportedDtype(LookupError, AccountingError):
    """A datatype is unknown, or the device has no published peak for it (e.g. BF16 on a V100)."""


class UnresolvedDevice(UnknownDevice):
    """A device name resolved to no single catalog entry (unknown or ambiguous).

    Attributes:
        resolution: The full `Resolution`, with its status and candidate ids.
    """

    def __init__(self, resolution: Resolution) -> None:
        super().__init__(resolution.query)
        self.resolution = resolution
        if resolution.status == "ambiguous":
            message = (
                f"device {resolution.query!r} is ambiguous in the hardware catalog: it matches "
                f"{', '.join(resolution.candidates)}"
            )
        else:
            message = f"device {resolution.query!r} is not in the hardware catalog"
            if resolution.candidates:
                message += f" (same family: {', '.join(resolution.candidates)})"
        self.args = (message,)


def normalize_dtype(dtype: str) -> str:
    """Return the catalog's name for a datatype (``"bfloat16"`` → ``"bf16"``).

    Raises:
        UnsupportedDtype: The name is not a known datatype.
    """
    key = dtype.strip().casefold().replace("torch.", "").replace("-", "_")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise UnsupportedDtype(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    return key


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_NON_ALNUM.sub(" ", text.casefold()).split())


def normalize_name(name: str) -> str:
    """Lower-case a device name and collapse every run of non-alphanumerics into one space."""
    return " ".join(_tokens(name))


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a number comes from: a kind (``datasheet``, ``derived``, ``measured``, ``assumed``,
    ``given``, ``override``) and a short note."""

    kind: str
    note: str = ""

    def to_dict(self) -> dict[str, str]:
        """Plain JSON-safe form."""
        return {"kind": self.kind, "note": self.note}


@dataclass(frozen=True, slots=True)
class NamePattern:
    """One name pattern: all ``required`` tokens present, no ``excluded`` token present."""

    text: str
    required: frozenset[str]
    excluded: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> NamePattern:
        """Parse ``"h200 !nvl"``; tokens are normalised like device names."""
        required: set[str] = set()
        excluded: set[str] = set()
        for word in text.split():
            negated = word.startswith("!")
            tokens = _tokens(word[1:] if negated else word)
            (excluded if negated else required).update(tokens)
        if not required:
            raise CatalogError(f"name pattern {text!r} has no required token")
        if required & excluded:
            raise CatalogError(f"name pattern {text!r} both requires and excludes a token")
        return cls(text=text, required=frozenset(required), excluded=frozenset(excluded))

    def matches(self, tokens: frozenset[str]) -> bool:
        """True when the token set of a normalised name satisfies this pattern."""
        return self.required <= tokens and not (self.excluded & tokens)


@dataclass(frozen=True, slots=True)
class EnergyRooflineConstants:
    """Choi-model constants of one device, each with its provenance.

    Attributes:
        eps_flop_j: Energy per FLOP (J/FLOP) per dtype.
        eps_flop_provenance: Provenance per dtype.
        eps_mem_j_per_byte: Energy per byte of DRAM/HBM traffic (J/byte).
        eps_mem_provenance: Its provenance.
        pi0_w: Constant (static) power charged over the run time (W).
        pi0_provenance: Its provenance.
    """

    eps_flop_j: Mapping[str, float]
    eps_flop_provenance: Mapping[str, Provenance]
    eps_mem_j_per_byte: float
    eps_mem_provenance: Provenance
    pi0_w: float
    pi0_provenance: Provenance


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One accelerator SKU (per package: one GPU board/module or one TPU chip).

    Peaks are dense (no structured sparsity). Hash and equality follow the whole record; the hash
    uses the id, so entries can key a mapping of device counts.

    Attributes:
        id: Stable key, e.g. ``"nvidia-h100-sxm5-80gb"``.
        vendor: ``"nvidia"``, ``"amd"``, ``"google"``, ...
        name: Display name.
        family: Token shared by a model's variants (``"a100"``).
        patterns: Name patterns that resolve a reported device name to this entry.
        peak_flop_per_s: Dense peak per dtype (FLOP/s).
        peak_provenance: Provenance kind per dtype (``"datasheet"`` or ``"derived"``, ...).
        memory_bandwidth_bytes_per_s: Peak memory bandwidth (byte/s).
        memory_bytes: Memory size (byte).
        memory_type: ``"HBM3"``, ``"GDDR6"``, ...
        tdp_w: Board power limit (W); for TPUs without a published TDP the measured maximum
            (see ``tdp_kind``); None when nothing is published.
        tdp_kind: ``"max_tdp"``, ``"tbp"``, ``"measured_max"`` or ``"unpublished"``.
        idle_power_w: Idle board power (W) where a source gives it, else None.
        nvml_power: Semantics of ``nvmlDeviceGetPowerUsage``: ``"average_1s"``, ``"instant"``,
            ``"not_nvml"`` or ``"unknown"``.
        nvml_energy_counter: Whether NVML's total-energy counter exists (None: not NVML).
        sparsity_factor: Datasheet sparse/dense ratio of tensor formats; None without sparsity.
        logical_devices_per_package: Devices the driver lists per package (MI250X: 2).
        provenance: Provenance kind of ``memory_bandwidth``, ``memory``, ``tdp``, ``idle_power``.
        energy_roofline: Energy-roofline constants, or None when neither a TDP nor explicit
            constants exist.
        confidence: ``"S"``, ``"S2"`` or ``"M"`` (legend of physics_hardware.md).
        sources: Short source strings.
        notes: Caveats.
    """

    id: str
    vendor: str
    name: str
    family: str
    patterns: tuple[NamePattern, ...]
    peak_flop_per_s: Mapping[str, float]
    peak_provenance: Mapping[str, str]
    memory_bandwidth_bytes_per_s: float
    memory_bytes: float
    memory_type: str
    tdp_w: float | None
    tdp_kind: TdpKind
    idle_power_w: float | None
    nvml_power: NvmlPower
    nvml_energy_counter: bool | None
    sparsity_factor: float | None
    logical_devices_per_package: int
    provenance: Mapping[str, str]
    energy_roofline: EnergyRooflineConstants | None
    confidence: str
    sources: tuple[str, ...]
    notes: str

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """Datatypes with a published dense peak, in catalog order."""
        return tuple(dtype for dtype in DTYPES if dtype in self.peak_flop_per_s)

    def supports(self, dtype: str) -> bool:
        """True when the device has a dense peak for ``dtype`` (aliases accepted)."""
        try:
            return normalize_dtype(dtype) in self.peak_flop_per_s
        except UnsupportedDtype:
            return False

    def peak(self, dtype: str) -> float:
        """Dense peak throughput at ``dtype``.

        Returns:
            Peak in FLOP/s.

        Raises:
            UnsupportedDtype: Unknown dtype, or none published for this device.
        """
        key = normalize_dtype(dtype)
        try:
            return self.peak_flop_per_s[key]
        except KeyError:
            raise UnsupportedDtype(
                f"{self.id} has no published {key} peak; it has: {', '.join(self.dtypes)}"
            ) from None

    def ridge_point_flop_per_byte(self, dtype: str) -> float:
        """Machine balance peak/bandwidth at ``dtype`` (FLOP/byte); below it a kernel is
        memory-bound."""
        return self.peak(dtype) / self.memory_bandwidth_bytes_per_s

    def peak_flop_per_j(self, dtype: str) -> float | None:
        """Peak FLOP/J at TDP (dense peak ÷ ``tdp_w``): an upper bound on efficiency, reached only
        at 100 % utilisation drawing exactly TDP. None when no TDP is known."""
        peak = self.peak(dtype)
        return None if self.tdp_w is None else peak / self.tdp_w

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe form, in the catalog's SI units."""
        energy: dict[str, Any] | None = None
        if self.energy_roofline is not None:
            constants = self.energy_roofline
            energy = {
                "eps_flop_j": dict(constants.eps_flop_j),
                "eps_flop_provenance": {
                    dtype: p.to_dict() for dtype, p in constants.eps_flop_provenance.items()
                },
                "eps_mem_j_per_byte": constants.eps_mem_j_per_byte,
                "eps_mem_provenance": constants.eps_mem_provenance.to_dict(),
                "pi0_w": constants.pi0_w,
                "pi0_provenance": constants.pi0_provenance.to_dict(),
            }
        return {
            "id": self.id,
            "vendor": self.vendor,
            "name": self.name,
            "family": self.family,
            "match": [pattern.text for pattern in self.patterns],
            "peak_flop_per_s": dict(self.peak_flop_per_s),
            "peak_provenance": dict(self.peak_provenance),
            "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
            "memory_bytes": self.memory_bytes,
            "memory_type": self.memory_type,
            "tdp_w": self.tdp_w,
            "tdp_kind": self.tdp_kind,
            "idle_power_w": self.idle_power_w,
            "nvml_power": self.nvml_power,
            "nvml_energy_counter": self.nvml_energy_counter,
            "sparsity_factor": self.sparsity_factor,
            "logical_devices_per_package": self.logical_devices_per_package,
            "provenance": dict(self.provenance),
            "energy_roofline": energy,
            "confidence": self.confidence,
            "sources": list(self.sources),
            "notes": self.notes,
        }


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of resolving a reported device name.

    Attributes:
        query: The name as given.
        normalized: The normalised name that was matched.
        status: ``"found"``, ``"ambiguous"`` (several entries match) or ``"unknown"``.
        entry: The entry when found, else None.
        candidates: For ``"ambiguous"``, the matching ids; for ``"unknown"``, ids of entries of
            the same family (a hint, never a choice).
    """

    query: str
    normalized: str
    status: ResolutionStatus
    entry: CatalogEntry | None
    candidates: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        """True when exactly one entry matched."""
        return self.status == "found"


class Catalog:
    """An immutable set of `CatalogEntry` with name resolution.

    Build it with `load_catalog` (or `builtin_catalog`), not directly.
    """

    __slots__ = ("_by_id", "_entries", "default_pi0_w", "pi0_note")

    def __init__(self, entries: tuple[CatalogEntry, ...], *, default_pi0_w: float, pi0_note: str):
        self._entries = entries
        self._by_id: Mapping[str, CatalogEntry] = MappingProxyType({e.id: e for e in entries})
        self.default_pi0_w = default_pi0_w
        self.pi0_note = pi0_note

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._by_id

    def __repr__(self) -> str:
        return f"Catalog({len(self)} entries)"

    @property
    def ids(self) -> tuple[str, ...]:
        """Entry ids in file order."""
        return tuple(self._by_id)

    def entry(self, entry_id: str) -> CatalogEntry:
        """The entry with this exact id.

        Raises:
            UnknownDevice: No such id.
        """
        try:
            return self._by_id[entry_id]
        except KeyError:
            raise UnknownDevice(entry_id) from None

    def resolve(self, name: str) -> Resolution:
        """Resolve a reported device name (or an entry id) to at most one entry."""
        tokens = frozenset(_tokens(name))
        normalized = normalize_name(name)
        by_id = self._by_id.get(name.strip().casefold())
        if by_id is not None:
            return Resolution(name, normalized, "found", by_id)
        matched = tuple(e for e in self._entries if any(p.matches(tokens) for p in e.patterns))
        if len(matched) == 1:
            return Resolution(name, normalized, "found", matched[0])
        if matched:
            return Resolution(name, normalized, "ambiguous", None, tuple(e.id for e in matched))
        family = tuple(e.id for e in self._entries if e.family in tokens)
        return Resolution(name, normalized, "unknown", None, family)

    def lookup(self, name: str) -> CatalogEntry | None:
        """The entry a reported name resolves to, or None when unknown or ambiguous."""
        return self.resolve(name).entry

    def get(self, name: str) -> CatalogEntry:
        """Strict `lookup`.

        Raises:
            UnresolvedDevice: (a subclass of `UnknownDevice`) unknown or ambiguous name.
        """
        resolution = self.resolve(name)
        if resolution.entry is None:
            raise UnresolvedDevice(resolution)
        return resolution.entry


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

OverrideSource: TypeAlias = "Mapping[str, Any] | str | os.PathLike[str]"


@functools.cache
def _builtin_document() -> Mapping[str, Any]:
    data = resources.files("thermoledger.accounting") / "data" / "catalog.toml"
    return MappingProxyType(tomllib.loads(data.read_text(encoding="utf-8")))


@functools.cache
def builtin_catalog() -> Catalog:
    """The built-in catalog, parsed on first call and cached."""
    return _build(_builtin_document())


def load_catalog(overrides: OverrideSource | None = None) -> Catalog:
    """The built-in catalog, optionally with user overrides.

    Args:
        overrides: None (built-in only), a TOML file path, or a mapping shaped like the file:
            ``{"defaults": {...}, "device": [{"id": ..., ...}, ...]}``. A device whose id exists
            is merged into that entry (tables merge key by key, other values replace); an
            overridden figure whose provenance the override does not state is marked
            ``"override"``. A new id adds an entry, which must be complete.

    Returns:
        A validated `Catalog`.

    Raises:
        CatalogError: Malformed override or resulting entry.
    """
    if overrides is None:
        return builtin_catalog()
    if isinstance(overrides, Mapping):
        override_doc: Mapping[str, Any] = overrides
    else:
        try:
            with Path(overrides).open("rb") as handle:
                override_doc = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise CatalogError(f"cannot read catalog override {overrides!s}: {error}") from error
    return _build(_merge(_builtin_document(), override_doc))


def resolve(name: str, *, catalog: Catalog | None = None) -> Resolution:
    """Resolve a reported device name in ``catalog`` (default: the built-in one)."""
    return (catalog or builtin_catalog()).resolve(name)


def lookup(name: str, *, catalog: Catalog | None = None) -> CatalogEntry | None:
    """The entry a reported name resolves to, or None when unknown or ambiguous."""
    return (catalog or builtin_catalog()).lookup(name)


def get(name: str, *, catalog: Catalog | None = None) -> CatalogEntry:
    """Strict lookup by reported name or id.

    Raises:
        UnresolvedDevice: (an `UnknownDevice`) unknown or ambiguous name.
    """
    return (catalog or builtin_catalog()).get(name)


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(overrides) - {"schema_version", "defaults", "device"}
    if unknown:
        raise CatalogError(f"override: unknown top-level keys {sorted(unknown)}")
    if overrides.get("schema_version", 1) != 1:
        raise CatalogError("override: only schema_version 1 is understood")
    merged = copy.deepcopy(dict(base))
    defaults = overrides.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise CatalogError("override: [defaults] must be a table")
    merged["defaults"] = {**merged.get("defaults", {}), **defaults}
    devices = overrides.get("device", [])
    if not isinstance(devices, list):
        raise CatalogError("override: device must be an array of tables ([[device]])")
    positions = {raw["id"]: i for i, raw in enumerate(merged["device"])}
    for raw in devices:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
            raise CatalogError("override: every [[device]] needs a string id")
        if raw["id"] in positions:
            index = positions[raw["id"]]
            merged["device"][index] = _merge_device(merged["device"][index], raw)
        else:
            positions[raw["id"]] = len(merged["device"])
            merged["device"].append(copy.deepcopy(dict(raw)))
    return merged


def _merge_device(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("peak_tflops", "provenance", "peak_provenance", "energy_roofline"):
        if key in override and not isinstance(override[key], Mapping):
            raise CatalogError(f"override of {override['id']!r}: [{key}] must be a table")
    entry = copy.deepcopy(dict(base))
    provenance = dict(entry.get("provenance", {}))
    peak_provenance = dict(entry.get("peak_provenance", {}))
    stated = override.get("provenance", {})
    stated_peak = override.get("peak_provenance", {})
    for key, value in override.items():
        if key in ("memory_gb", "memory_gib"):
            entry.pop("memory_gb", None)
            entry.pop("memory_gib", None)
        if isinstance(value, Mapping) and isinstance(entry.get(key), Mapping):
            entry[key] = {**entry[key], **copy.deepcopy(dict(value))}
        else:
            entry[key] = copy.deepcopy(value)
        figure = _FIELD_PROVENANCE_KEY.get(key)
        if figure is not None and figure not in stated:
            provenance[figure] = "override"
    for dtype in override.get("peak_tflops", {}):
        if dtype not in stated_peak:
            peak_provenance[dtype] = "override"
    entry["provenance"] = {**provenance, **stated}
    entry["peak_provenance"] = {**peak_provenance, **stated_peak}
    return entry


class _Fields:
    """Typed reads from one raw table, naming the entry in every error."""

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def fail(self, message: str) -> CatalogError:
        return CatalogError(f"{self.where}: {message}")

    def text(self, key: str) -> str:
        value = self.raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key} must be a non-empty string")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self.raw.get(key) is None else self.text(key)

    def number(self, key: str, *, positive: bool = True) -> float:
        value = self.raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{key} must be a number")
        number = float(value)
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            raise self.fail(f"{key} must be finite and {'> 0' if positive else '>= 0'}")
        return number

    def optional_number(self, key: str, *, positive: bool = True) -> float | None:
        return None if self.raw.get(key) is None else self.number(key, positive=positive)

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.raw.get(key)
        if not isinstance(value, Mapping):
            raise self.fail(f"[{key}] must be a table")
        return value

    def optional_table(self, key: str) -> Mapping[str, Any]:
        return {} if self.raw.get(key) is None else self.table(key)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"{key} must be a list of non-empty strings")
        return tuple(value)


def _build(document: Mapping[str, Any]) -> Catalog:
    if document.get("schema_version") != 1:
        raise CatalogError("catalog: schema_version must be 1")
    defaults = _Fields(document.get("defaults", {}), "catalog [defaults]")
    extra = set(defaults.raw) - _DEFAULT_KEYS
    if extra:
        raise defaults.fail(f"unknown keys {sorted(extra)}")
    default_pi0_w = defaults.number("pi0_w", positive=False)
    pi0_note = defaults.text("pi0_note")
    raws = document.get("device")
    if not isinstance(raws, list) or not raws:
        raise CatalogError("catalog: no [[device]] entries")
    entries = tuple(_entry(raw, default_pi0_w, pi0_note) for raw in raws)
    ids = [entry.id for entry in entries]
    duplicates = sorted({entry_id for entry_id in ids if ids.count(entry_id) > 1})
    if duplicates:
        raise CatalogError(f"catalog: duplicate ids {duplicates}")
    patterns: dict[tuple[frozenset[str], frozenset[str]], str] = {}
    for entry in entries:
        for pattern in entry.patterns:
            key = (pattern.required, pattern.excluded)
            if key in patterns and patterns[key] != entry.id:
                raise CatalogError(
                    f"catalog: pattern {pattern.text!r} of {entry.id} repeats one of "
                    f"{patterns[key]}"
                )
            patterns[key] = entry.id
    return Catalog(entries, default_pi0_w=default_pi0_w, pi0_note=pi0_note)


def _provenance_kind(fields: _Fields, table: Mapping[str, Any], key: str) -> str:
    value = table.get(key)
    if value not in _FIGURE_PROVENANCE:
        raise fields.fail(
            f"provenance of {key} must be one of {sorted(_FIGURE_PROVENANCE)}, got {value!r}"
        )
    return str(value)


def _entry(raw: Any, default_pi0_w: float, pi0_note: str) -> CatalogEntry:
    if not isinstance(raw, Mapping):
        raise CatalogError("catalog: every [[device]] must be a table")
    where = f"catalog entry {raw.get('id')!r}"
    f = _Fields(raw, where)
    extra = set(raw) - _DEVICE_KEYS
    if extra:
        raise f.fail(f"unknown keys {sorted(extra)}")

    entry_id = f.text("id")
    if not _ID_RE.match(entry_id):
        raise f.fail("id must be lowercase letters, digits and '-'")
    family = f.text("family")
    if _tokens(family) != (family,):
        raise f.fail("family must be one lowercase alphanumeric token")

    peaks_raw = f.table("peak_tflops")
    if not peaks_raw:
        raise f.fail("peak_tflops needs at least one dtype")
    unknown_dtypes = set(peaks_raw) - set(DTYPES)
    if unknown_dtypes:
        raise f.fail(f"peak_tflops has unknown dtypes {sorted(unknown_dtypes)}")
    peak_fields = _Fields(peaks_raw, f"{where} peak_tflops")
    peak_flop_per_s: dict[str, float] = {}
    for dtype in DTYPES:
        if dtype in peaks_raw:
            peak_flop_per_s[dtype] = peak_fields.number(dtype) * _TB

    provenance_raw = f.table("provenance")
    needed = ["peak", "memory_bandwidth", "memory"]
    tdp_kind = f.text("tdp_kind")
    if tdp_kind not in _TDP_KINDS:
        raise f.fail(f"tdp_kind must be one of {sorted(_TDP_KINDS)}")
    tdp_w = f.optional_number("tdp_w")
    if tdp_kind == "unpublished" and tdp_w is not None:
        raise f.fail("tdp_kind 'unpublished' cannot have a tdp_w")
    if tdp_kind != "unpublished" and tdp_w is None:
        raise f.fail(f"tdp_kind {tdp_kind!r} needs tdp_w")
    if tdp_w is not None:
        needed.append("tdp")
    idle_power_w = f.optional_number("idle_power_w")
    if idle_power_w is not None:
        needed.append("idle_power")
        if tdp_w is not None and idle_power_w >= tdp_w:
            raise f.fail("idle_power_w must be below tdp_w")
    extra = set(provenance_raw) - {"peak", "memory_bandwidth", "memory", "tdp", "idle_power"}
    if extra:
        raise f.fail(f"provenance has unknown keys {sorted(extra)}")
    provenance = {key: _provenance_kind(f, provenance_raw, key) for key in needed}

    peak_overrides = f.optional_table("peak_provenance")
    stray = set(peak_overrides) - set(peak_flop_per_s)
    if stray:
        raise f.fail(f"peak_provenance names dtypes without a peak: {sorted(stray)}")
    peak_provenance = {
        dtype: _provenance_kind(f, peak_overrides, dtype)
        if dtype in peak_overrides
        else provenance["peak"]
        for dtype in peak_flop_per_s
    }

    has_gb, has_gib = "memory_gb" in raw, "memory_gib" in raw
    if has_gb == has_gib:
        raise f.fail("give exactly one of memory_gb, memory_gib")
    memory_bytes = f.number("memory_gb" if has_gb else "memory_gib") * (_GB if has_gb else _GIB)
    bandwidth = f.number("memory_bandwidth_tb_s") * _TB

    nvml_power = f.text("nvml_power")
    if nvml_power not in _NVML_POWER:
        raise f.fail(f"nvml_power must be one of {sorted(_NVML_POWER)}")
    counter = raw.get("nvml_energy_counter")
    if counter is not None and not isinstance(counter, bool):
        raise f.fail("nvml_energy_counter must be true or false")
    sparsity = f.optional_number("sparsity_factor")
    if sparsity is not None and sparsity < 1:
        raise f.fail("sparsity_factor must be >= 1")
    logical = raw.get("logical_devices_per_package", 1)
    if isinstance(logical, bool) or not isinstance(logical, int) or logical < 1:
        raise f.fail("logical_devices_per_package must be an integer >= 1")
    confidence = f.text("confidence")
    if confidence not in _CONFIDENCE:
        raise f.fail(f"confidence must be one of {sorted(_CONFIDENCE)}")
    sources = f.strings("sources")
    if not sources:
        raise f.fail("sources must name at least one source")
    long = [s for s in sources if len(s) > _SOURCE_MAX_CHARS]
    if long:
        raise f.fail(f"sources must be short (<= {_SOURCE_MAX_CHARS} chars): {long[0]!r}")

    patterns = tuple(NamePattern.parse(text) for text in f.strings("match"))

    energy = _energy_constants(
        _Fields(f.optional_table("energy_roofline"), f"{where} energy_roofline"),
        peak_flop_per_s=peak_flop_per_s,
        bandwidth_bytes_per_s=bandwidth,
        tdp_w=tdp_w,
        tdp_kind=tdp_kind,
        idle_power_w=idle_power_w,
        idle_provenance=provenance.get("idle_power", ""),
        default_pi0_w=default_pi0_w,
        pi0_note=pi0_note,
    )

    return CatalogEntry(
        id=entry_id,
        vendor=f.text("vendor"),
        name=f.text("name"),
        family=family,
        patterns=patterns,
        peak_flop_per_s=MappingProxyType(peak_flop_per_s),
        peak_provenance=MappingProxyType(peak_provenance),
        memory_bandwidth_bytes_per_s=bandwidth,
        memory_bytes=memory_bytes,
        memory_type=f.text("memory_type"),
        tdp_w=tdp_w,
        tdp_kind=cast(TdpKind, tdp_kind),  # checked against _TDP_KINDS above
        idle_power_w=idle_power_w,
        nvml_power=cast(NvmlPower, nvml_power),  # checked against _NVML_POWER above
        nvml_energy_counter=counter,
        sparsity_factor=sparsity,
        logical_devices_per_package=logical,
        provenance=MappingProxyType(provenance),
        energy_roofline=energy,
        confidence=confidence,
        sources=sources,
        notes=f.optional_text("notes") or "",
    )


def _energy_constants(
    f: _Fields,
    *,
    peak_flop_per_s: Mapping[str, float],
    bandwidth_bytes_per_s: float,
    tdp_w: float | None,
    tdp_kind: str,
    idle_power_w: float | None,
    idle_provenance: str,
    default_pi0_w: float,
    pi0_note: str,
) -> EnergyRooflineConstants | None:
    extra = set(f.raw) - _ENERGY_KEYS
    if extra:
        raise f.fail(f"unknown keys {sorted(extra)}")
    explicit = set(f.raw) - {"provenance"}
    given_note = f.text("provenance") if explicit else (f.optional_text("provenance") or "")

    explicit_pi0 = f.optional_number("pi0_w", positive=False)
    if explicit_pi0 is not None:
        pi0_w, pi0_provenance = explicit_pi0, Provenance("given", given_note)
    elif idle_power_w is not None:
        pi0_w = idle_power_w
        pi0_provenance = Provenance(idle_provenance, "idle_power_w of the catalog entry")
    else:
        pi0_w, pi0_provenance = default_pi0_w, Provenance("assumed", pi0_note)
    if tdp_w is not None and pi0_w >= tdp_w:
        raise f.fail(f"pi0 ({pi0_w} W) must be below tdp_w ({tdp_w} W)")

    power_basis = "TDP" if tdp_kind != "measured_max" else "measured max power (no TDP published)"
    derived_note = (
        f"({power_basis} - pi0) / {{}}: upper bound charging all dynamic board power to one "
        "resource (physics_hardware.md §2.3)"
    )
    dynamic_w = None if tdp_w is None else tdp_w - pi0_w

    eps_raw = f.optional_table("eps_flop_pj")
    stray = set(eps_raw) - set(peak_flop_per_s)
    if stray:
        raise f.fail(f"eps_flop_pj names dtypes without a peak: {sorted(stray)}")
    eps_fields = _Fields(eps_raw, f"{f.where} eps_flop_pj")
    eps_flop: dict[str, float] = {}
    eps_flop_provenance: dict[str, Provenance] = {}
    for dtype, peak in peak_flop_per_s.items():
        if dtype in eps_raw:
            eps_flop[dtype] = eps_fields.number(dtype) * _PJ
            eps_flop_provenance[dtype] = Provenance("given", given_note)
        elif dynamic_w is not None:
            eps_flop[dtype] = dynamic_w / peak
            eps_flop_provenance[dtype] = Provenance("derived", derived_note.format("peak"))

    eps_mem_pj = f.optional_number("eps_mem_pj_per_byte")
    if eps_mem_pj is not None:
        eps_mem, eps_mem_provenance = eps_mem_pj * _PJ, Provenance("given", given_note)
    elif dynamic_w is not None:
        eps_mem = dynamic_w / bandwidth_bytes_per_s
        eps_mem_provenance = Provenance("derived", derived_note.format("bandwidth"))
    else:
        return None
    if not eps_flop:
        return None
    return EnergyRooflineConstants(
        eps_flop_j=MappingProxyType(eps_flop),
        eps_flop_provenance=MappingProxyType(eps_flop_provenance),
        eps_mem_j_per_byte=eps_mem,
        eps_mem_provenance=eps_mem_provenance,
        pi0_w=pi0_w,
        pi0_provenance=pi0_provenance,
    )
