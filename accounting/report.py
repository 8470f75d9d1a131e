"""Per-run report assembly: energy per device, host and phase, efficiency, bounds, cost, carbon.

The report is built from **per-device aggregates** (sums over a device's chunk summaries: energy,
band terms, first/last time, peak power, gaps), never from raw samples, so the service can feed
it from SQL aggregates and the demo from `accounting.integrate.summarize_chunks`. Everything
the reader needs to judge a figure travels with it: the measurement method, the uncertainty band,
whether the devices were simulated, and the assumptions of every bound, factor and price.

Work (FLOPs) comes from what the job declared: FLOPs directly, or model size N with tokens D
(training: 6·N·D; inference: 2·N per token), labelled as such. Without FLOPs, FLOP/J, MFU and
the three bounds are reported as unavailable with the reason, not guessed.

The accelerators' measured energy is also split into constant (π0·T), compute (W·ε_flop),
memory (Q·ε_mem) and unexplained parts, each with its band and sources
(`accounting.decomposition`: π0 from the devices' quietest sustained chunk, Q from their
memory-activity counters); the energy roofline takes the same π0 and Q.

A node's domains
    Devices have a kind (``gpu``, ``cpu``, ``dram``, ``other``). The report gives subtotals per
    kind (run-wide and per host, each with its band) and a total per host (the node), and adds
    each joule once: a device that another on its host covers (``covers``: a GH200-class
    module's figure includes its CPU) keeps its line and its kind's subtotal on its node, marked
    not counted, and is left out of the node, run and run-wide kind totals
    (`accounting.integrate.covered_by`). RAPL's psys zone never reaches a report (the meter does
    not read it). The hardware catalog and the bounds concern the accelerators: they are worked
    out over the GPUs and the GPUs' energy (a GPU-only run: over everything, as before), and
    hardware device-hours count the GPUs where there are any.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .bounds import BoundError, RunBounds, compare_run
from .carbon import (
    J_PER_KWH,
    EmbodiedShare,
    EmissionFactor,
    FunctionalUnit,
    Pue,
    SciResult,
    Scope2Emissions,
    default_emission_factor,
    default_pue,
    scope2_emissions,
    software_carbon_intensity,
)
from .catalog import Catalog, CatalogEntry, UnsupportedDtype, builtin_catalog, resolve
from .cost import CloudPrice, CostBreakdown, OwnedHardware, Tariff, run_cost
from .decomposition import (
    DeviceActivity,
    EnergyDecomposition,
    decompose_energy,
    lowest_sustained_power,
    pi0_by_entry,
)
from .integrate import ChunkSummaries, aggregate_energy, covered_by, kind_order
from .planning import inference_flops_per_token, training_flops

__all__ = [
    "DeclaredWork",
    "DeviceUsage",
    "KindUsage",
    "NodeUsage",
    "PhaseUsage",
    "ReportSettings",
    "RunInfo",
    "RunReport",
    "build_run_report",
    "devices_from_chunks",
    "json_safe",
    "meter_quality",
    "refused_declarations",
]

RunKind = Literal["training", "inference", "eval", "other"]


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Who the run is.

    Attributes:
        run_id: The run's id (a client-generated UUID in the service).
        name: Human name.
        kind: ``training``, ``inference``, ``eval`` or ``other``.
        status: ``running``, ``finished``, ``failed`` or ``lost``.
    """

    run_id: str
    name: str
    kind: RunKind = "training"
    status: str = "finished"


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    """One device's measured energy over the run (sums of its chunk summaries).

    Attributes:
        key: Stable key of the device within the run (e.g. ``"node-1/GPU-8f2c…"``).
        host: Host the device is on.
        index: Device index on its host.
        name: Name as the vendor reports it.
        catalog_id: Hardware catalog id, or None to resolve ``name`` (unknown stays unknown).
        method: ``counter``, ``power_avg``, ``power_instant``, ``estimate`` or ``mixed``.
        energy_j: Energy estimate, J.
        sensor_uncertainty_j: Systematic sensor error of this device, J (symmetric).
        bound_below_j: One-sided worst-case bound below (gaps, coverage), J.
        bound_above_j: One-sided worst-case bound above (gaps, resets, coverage), J; may be inf.
        t0_s: First sample, unix s.
        t1_s: End of the last chunk, unix s.
        peak_power_w: Highest power reading, W.
        gap_s: Seconds inside sampling gaps.
        gap_count: Number of gaps.
        reset_count: Counter resets (driver reloads) seen.
        samples: Number of samples.
        simulated: Whether the device is simulated (its figures are not measurements).
        kind: ``gpu``, ``cpu``, ``dram`` or ``other``.
        covers: Other kinds on its host whose energy its figures include (a GH200-class
            module: ``("cpu",)``); devices of those kinds on the host are left out of totals.
        quiet_power_w: Lowest mean power of a sustained chunk, W, or None
            (`accounting.decomposition.lowest_sustained_power`).
        quiet_power_high_w: Top of that chunk's band over its length, W, or None.
        mem_busy_s: Memory-busy seconds over the chunks that carry a memory-activity counter.
        mem_observed_s: Seconds those chunks cover (0: no counter).
    """

    key: str
    host: str
    index: int
    name: str
    method: str
    energy_j: float
    sensor_uncertainty_j: float
    bound_below_j: float
    bound_above_j: float
    t0_s: float
    t1_s: float
    peak_power_w: float
    catalog_id: str | None = None
    gap_s: float = 0.0
    gap_count: int = 0
    reset_count: int = 0
    samples: int = 0
    simulated: bool = False
    kind: str = "gpu"
    covers: tuple[str, ...] = ()
    quiet_power_w: float | None = None
    quiet_power_high_w: float | None = None
    mem_busy_s: float = 0.0
    mem_observed_s: float = 0.0

    @property
    def duration_s(self) -> float:
        """Measured span, s."""
        return max(self.t1_s - self.t0_s, 0.0)

    @property
    def mean_power_w(self) -> float:
        """Energy over the measured span, W (0 for an empty span)."""
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class PhaseUsage:
    """A named window of the run with its energy (all devices) and declared work.

    Attributes:
        name: Phase name (``warmup``, ``epoch-3``, ``eval`` …).
        t0_s: Start, unix s.
        t1_s: End, unix s.
        energy_j: Energy of all devices inside the window, J.
        energy_low_j: Low end of its band, J.
        energy_high_j: High end of its band, J.
        flops: FLOPs declared for the phase, if any.
        tokens: Tokens declared for the phase, if any.
    """

    name: str
    t0_s: float
    t1_s: float
    energy_j: float
    energy_low_j: float
    energy_high_j: float
    flops: float | None = None
    tokens: float | None = None


@dataclass(frozen=True, slots=True)
class DeclaredWork:
    """Work the job declared.

    Attributes:
        flops: FLOPs done, if counted by the job.
        dtype: Precision the FLOPs ran at (``bf16`` by default).
        tokens: Tokens processed (trained on, or served).
        model_params: Model size N (parameters), to estimate FLOPs when not given.
    """

    flops: float | None = None
    dtype: str = "bf16"
    tokens: float | None = None
    model_params: float | None = None


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """The accounting context: facility, grid, prices, embodied carbon, physics assumptions.

    Attributes:
        pue: Facility overhead.
        location_factor: Grid-average factor where the energy was drawn (region set explicitly).
        location_unavailable_reason: Why no grid-average factor applies (e.g. no region is
            configured). When given, ``location_factor`` is not used: the location-based
            figure and the SCI are reported as not available, with this reason, never filled
            in from a default.
        market_factor: Contractual-instrument factor, if the consumer holds one.
        market_coverage: Fraction of facility energy the instrument covers.
        residual_mix_factor: Residual-mix factor for the uncovered part, if known.
        tariff: Electricity price, if any.
        hardware: Hourly hardware price (amortised purchase or cloud rental), if any.
        embodied: Embodied-carbon shares for SCI (empty: SCI is flagged as understated).
        temperature_k: Measured device temperature for the Landauer floor (300 K if None).
        bits_model: Landauer bits-per-FLOP model (``word``, ``1bit`` or a number).
        combine: How device sensor errors combine (``independent`` or ``linear``).
        catalog: Hardware catalog (the built-in one if None).
    """

    pue: Pue = field(default_factory=lambda: default_pue("typical"))
    location_factor: EmissionFactor = field(
        default_factory=lambda: default_emission_factor("WORLD")
    )
    market_factor: EmissionFactor | None = None
    market_coverage: float = 1.0
    residual_mix_factor: EmissionFactor | None = None
    tariff: Tariff | None = None
    hardware: OwnedHardware | CloudPrice | None = None
    embodied: tuple[EmbodiedShare, ...] = ()
    temperature_k: float | None = None
    bits_model: Literal["word", "1bit"] | float = "word"
    combine: Literal["independent", "linear"] = "independent"
    catalog: Catalog | None = None
    location_unavailable_reason: str | None = None


@dataclass(frozen=True, slots=True)
class EnergyLine:
    """An energy figure with its band."""

    energy_j: float
    energy_low_j: float
    energy_high_j: float

    def to_dict(self) -> dict[str, float]:
        """JSON-safe form, with kWh alongside J (inf bands become None)."""
        return {
            "energy_j": self.energy_j,
            "energy_kwh": self.energy_j / J_PER_KWH,
            "energy_low_j": self.energy_low_j,
            "energy_high_j": _finite_or_none(self.energy_high_j),  # type: ignore[dict-item]
        }


@dataclass(frozen=True, slots=True)
class KindUsage:
    """The devices of one kind on one host: their energy, and whether the node total adds it.

    Attributes:
        kind: ``gpu``, ``cpu``, ``dram`` or ``other``.
        devices: How many devices of that kind the host has in the report.
        line: Their energy with its band.
        covered_by: The kinds of the devices on the host whose figures include these (empty:
            counted; otherwise shown, never added to a total).
    """

    kind: str
    devices: int
    line: EnergyLine
    covered_by: tuple[str, ...] = ()

    @property
    def counted(self) -> bool:
        """Whether the node total adds this kind."""
        return not self.covered_by


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """One host: its total (each joule once) and its per-kind subtotals, in kind order."""

    host: str
    total: EnergyLine
    kinds: tuple[KindUsage, ...]


@dataclass(frozen=True)
class RunReport:
    """The per-run report. `to_dict` for JSON, `render_text` for a terminal.

    With ``location_unavailable_reason`` set, ``carbon.location_co2e_g`` is NaN and
    ``carbon.location_factor`` a placeholder: the location-based figure is not available.
    """

    run: RunInfo
    t0_s: float
    t1_s: float
    simulated: bool
    total: EnergyLine
    devices: tuple[DeviceUsage, ...]
    device_catalog: Mapping[str, CatalogEntry | None]
    hosts: Mapping[str, EnergyLine]
    phases: tuple[PhaseUsage, ...]
    work: DeclaredWork
    flops: float | None
    flops_source: str | None
    bounds: RunBounds | None
    cost: CostBreakdown
    carbon: Scope2Emissions
    sci: SciResult | None
    notes: tuple[str, ...]
    location_unavailable_reason: str | None = None
    by_kind: Mapping[str, EnergyLine] = field(default_factory=dict)
    nodes: tuple[NodeUsage, ...] = ()
    covered: Mapping[str, str] = field(default_factory=dict)
    energy_decomposition: EnergyDecomposition | None = None

    @property
    def duration_s(self) -> float:
        """Wall time from the first sample to the end of the last chunk, s."""
        return max(self.t1_s - self.t0_s, 0.0)

    @property
    def flop_per_j(self) -> float | None:
        """Measured efficiency, FLOP/J (None without FLOPs)."""
        if self.flops is None or self.total.energy_j <= 0:
            return None
        return self.flops / self.total.energy_j

    @property
    def j_per_token(self) -> float | None:
        """Energy per token, J (None without tokens)."""
        if not self.work.tokens:
            return None
        return self.total.energy_j / self.work.tokens

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation against the dense peak at the declared dtype."""
        if self.bounds is None or self.bounds.hardware_roofline is None:
            return None
        return float(self.bounds.hardware_roofline.mfu)

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-safe plain types (units in every key)."""
        return {
            "run": {
                "id": self.run.run_id,
                "name": self.run.name,
                "kind": self.run.kind,
                "status": self.run.status,
                "simulated": self.simulated,
            },
            "t0_s": self.t0_s,
            "t1_s": self.t1_s,
            "duration_s": self.duration_s,
            "energy": {
                "total": self.total.to_dict(),
                # None, not 0 W, for a span of no length: there is no mean to give.
                "mean_power_w": (
                    self.total.energy_j / self.duration_s if self.duration_s > 0 else None
                ),
                "by_device": [self._device_dict(d) for d in self.devices],
                "by_host": {host: line.to_dict() for host, line in self.hosts.items()},
                "by_kind": {kind: line.to_dict() for kind, line in self.by_kind.items()},
                "by_node": [_node_dict(node) for node in self.nodes],
                "by_phase": [_phase_dict(p) for p in self.phases],
            },
            "work": {
                "flops": self.flops,
                "flops_source": self.flops_source,
                "dtype": self.work.dtype,
                "tokens": self.work.tokens,
                "model_params": self.work.model_params,
            },
            "efficiency": {
                "flop_per_j": self.flop_per_j,
                "j_per_token": self.j_per_token,
                "mfu": self.mfu,
            },
            "bounds": None if self.bounds is None else self.bounds.to_dict(),
            "energy_decomposition": (
                None if self.energy_decomposition is None else self.energy_decomposition.to_dict()
            ),
            "cost": self._cost_dict(),
            "carbon": self._carbon_dict(),
            "sci": None if self.sci is None else self.sci.to_dict(),
            "notes": list(self.notes),
        }

    def _cost_dict(self) -> dict[str, Any]:
        """The cost, with ``total_usd`` None when no part is priced: not a cost of 0 USD."""
        out = self.cost.to_dict()
        if self.cost.energy_usd is None and self.cost.hardware_usd is None:
            out["total_usd"] = None
        return out

    def _carbon_dict(self) -> dict[str, Any]:
        out = self.carbon.to_dict()
        if self.location_unavailable_reason is None:
            out["location_based"] = {"status": "available", **out["location_based"]}
        else:
            out["location_based"] = {
                "status": "not_available",
                "co2e_g": None,
                "factor": None,
                "reason": self.location_unavailable_reason,
            }
        return out

    def _device_dict(self, device: DeviceUsage) -> dict[str, Any]:
        entry = self.device_catalog.get(device.key)
        return {
            "key": device.key,
            "host": device.host,
            "kind": device.kind,
            "index": device.index,
            "name": device.name,
            "covers": list(device.covers),
            "counted": device.key not in self.covered,
            "covered_by": self.covered.get(device.key),
            "catalog_id": None if entry is None else entry.id,
            "method": device.method,
            "simulated": device.simulated,
            "energy_j": device.energy_j,
            "energy_kwh": device.energy_j / J_PER_KWH,
            "energy_low_j": max(
                device.energy_j - device.sensor_uncertainty_j - device.bound_below_j, 0.0
            ),
            "energy_high_j": _finite_or_none(
                device.energy_j + device.sensor_uncertainty_j + device.bound_above_j
            ),
            "mean_power_w": device.mean_power_w,
            "peak_power_w": device.peak_power_w,
            "duration_s": device.duration_s,
            "gap_s": device.gap_s,
            "gap_count": device.gap_count,
            "reset_count": device.reset_count,
            "samples": device.samples,
        }

    def render_text(self) -> str:
        """A plain-text report for a terminal (fixed-width tables)."""
        out: list[str] = []
        label = "  [SIMULATED DEVICES: not a measurement]" if self.simulated else ""
        out.append(f"Run {self.run.name} ({self.run.kind}, {self.run.status}){label}")
        out.append(f"  id {self.run.run_id}, {self.duration_s:,.1f} s measured")
        total = self.total
        out.append(
            f"  energy {_energy(total.energy_j)} = {total.energy_j / J_PER_KWH:,.4g} kWh"
            f"  (band {_energy(total.energy_low_j)} … {_energy(total.energy_high_j)})"
        )
        out.append("")
        head = (
            f"  {'device':<24} {'method':<13} {'energy J':>12} {'kWh':>9} "
            f"{'± J':>9} {'mean W':>7} {'peak W':>7} {'gap s':>6}"
        )
        out.append(head)
        out.append("  " + "-" * (len(head) - 2))
        for d in self.devices:
            out.append(
                f"  {d.key:<24.24} {d.method:<13} {d.energy_j:>12,.0f} "
                f"{d.energy_j / J_PER_KWH:>9.4f} {d.sensor_uncertainty_j:>9,.0f} "
                f"{d.mean_power_w:>7.1f} {d.peak_power_w:>7.1f} {d.gap_s:>6.1f}"
            )
        for key, by in self.covered.items():
            out.append(f"  {key} is inside {by}'s figure: shown, not added again")
        if len(self.by_kind) > 1 or self.covered:
            out.append("")
            for node in self.nodes:
                parts = ", ".join(
                    f"{k.kind.upper() if k.kind != 'other' else 'other'} "
                    f"{k.line.energy_j / J_PER_KWH:.4f}" + ("" if k.counted else " (not added)")
                    for k in node.kinds
                )
                out.append(
                    f"  node {node.host}: {node.total.energy_j / J_PER_KWH:.4f} kWh ({parts})"
                )
        elif len(self.hosts) > 1:
            out.append("")
            for host, line in self.hosts.items():
                out.append(f"  host {host}: {line.energy_j / J_PER_KWH:.4f} kWh")
        if self.phases:
            out.append("")
            out.append(f"  {'phase':<16} {'duration s':>10} {'energy J':>12} {'share':>6}")
            for p in self.phases:
                share = p.energy_j / total.energy_j if total.energy_j else 0.0
                out.append(
                    f"  {p.name:<16.16} {p.t1_s - p.t0_s:>10.1f} {p.energy_j:>12,.0f} {share:>6.1%}"
                )
        out.append("")
        out.append("Efficiency")
        if self.flops is None:
            out.append("  FLOPs not declared: FLOP/J, MFU and the bounds are unavailable")
        else:
            out.append(
                f"  {self.flops:.3e} FLOP ({self.work.dtype}; {self.flops_source}), "
                f"{self.flop_per_j:.3e} FLOP/J"
            )
        if self.j_per_token is not None:
            out.append(f"  {self.j_per_token:.4g} J/token over {self.work.tokens:.3e} tokens")
        if self.mfu is not None:
            out.append(f"  MFU {self.mfu:.1%}")
        if self.bounds is not None:
            out.append("Bounds (measured energy vs each reference)")
            out.extend("  " + line for line in self.bounds.summary().splitlines())
        if self.energy_decomposition is not None:
            out.append("Energy decomposition (Choi et al. 2013: constant + compute + memory)")
            out.extend("  " + line for line in _decomposition_lines(self.energy_decomposition))
        out.append("Cost")
        cost = self.cost
        energy_usd = "not priced" if cost.energy_usd is None else f"{cost.energy_usd:,.2f} USD"
        hw_usd = "not priced" if cost.hardware_usd is None else f"{cost.hardware_usd:,.2f} USD"
        priced = cost.energy_usd is not None or cost.hardware_usd is not None
        total_usd = f"{cost.total_usd:,.2f} USD" if priced else "not priced"
        out.append(
            f"  {total_usd} (energy {energy_usd}; hardware {hw_usd}, "
            f"{cost.device_hours:,.3g} device-h)"
        )
        out.append("Carbon (GHG Scope 2)")
        carbon = self.carbon
        factor = carbon.location_factor
        if self.location_unavailable_reason is not None:
            out.append(f"  location-based not available ({self.location_unavailable_reason})")
        else:
            out.append(
                f"  location-based {carbon.location_co2e_g:,.1f} gCO2e "
                f"({factor.region}, {factor.intensity_g_per_kwh:g} g/kWh, {factor.source}; "
                f"PUE {carbon.pue.value:g})"
            )
        if carbon.market_co2e_g is None:
            out.append(f"  market-based   not available ({carbon.market_unavailable_reason})")
        else:
            out.append(
                f"  market-based   {carbon.market_co2e_g:,.1f} gCO2e ({carbon.market_basis})"
            )
        if self.sci is not None:
            out.append(
                f"  SCI {self.sci.sci_g_per_unit:,.1f} gCO2e per {self.sci.functional_unit.name}"
            )
        if self.notes:
            out.append("Notes")
            out.extend(f"  - {note}" for note in self.notes)
        return "\n".join(out)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _decomposition_lines(decomposition: EnergyDecomposition) -> list[str]:
    """One line per part (value, band, share, or why not), then the π0 sources and notes."""
    lines = []
    measured = decomposition.measured_j
    parts = (
        ("constant", decomposition.constant),
        ("compute", decomposition.compute),
        ("memory", decomposition.memory),
        ("unexplained", decomposition.unexplained),
    )
    for name, part in parts:
        if part.energy_j is None:
            lines.append(f"{name:<12} not available ({part.reason})")
            continue
        share = f" {part.energy_j / measured:>7.1%}" if measured > 0 else ""
        low = "unbounded" if part.low_j is None else _energy(part.low_j)
        high = "unbounded" if part.high_j is None else _energy(part.high_j)
        lines.append(f"{name:<12} {_energy(part.energy_j):>12}{share}  (band {low} … {high})")
    sources = Counter(t.constant_power.provenance for t in decomposition.devices)
    lines.append(
        f"pi0 {decomposition.pi0_w:,.1f} W in all: "
        + ", ".join(f"{kind} x{count}" for kind, count in sorted(sources.items()))
    )
    lines.extend(decomposition.notes)
    return lines


def _energy(value_j: float) -> str:
    """``value_j`` in J, kJ, MJ, GJ or TJ by its size, four significant figures (a small run's
    699 J is not "0.001 MJ")."""
    if not math.isfinite(value_j):
        return "unbounded"
    for unit, scale in (("TJ", 1e12), ("GJ", 1e9), ("MJ", 1e6), ("kJ", 1e3)):
        if abs(value_j) >= scale:
            return f"{value_j / scale:,.4g} {unit}"
    return f"{value_j:,.4g} J"


def _node_dict(node: NodeUsage) -> dict[str, Any]:
    return {
        "host": node.host,
        "total": node.total.to_dict(),
        "by_kind": {
            k.kind: {
                **k.line.to_dict(),
                "devices": k.devices,
                "counted": k.counted,
                "covered_by": list(k.covered_by),
            }
            for k in node.kinds
        },
    }


def _phase_dict(phase: PhaseUsage) -> dict[str, Any]:
    return {
        "name": phase.name,
        "t0_s": phase.t0_s,
        "t1_s": phase.t1_s,
        "duration_s": phase.t1_s - phase.t0_s,
        "energy_j": phase.energy_j,
        "energy_kwh": phase.energy_j / J_PER_KWH,
        "energy_low_j": phase.energy_low_j,
        "energy_high_j": _finite_or_none(phase.energy_high_j),
        "flops": phase.flops,
        "tokens": phase.tokens,
        "flop_per_j": (
            phase.flops / phase.energy_j if phase.flops and phase.energy_j > 0 else None
        ),
    }


def devices_from_chunks(
    summaries: ChunkSummaries,
    *,
    keys: Sequence[str],
    hosts: Sequence[str],
    indexes: Sequence[int],
    names: Sequence[str],
    catalog_ids: Sequence[str | None] | None = None,
    simulated: Sequence[bool] | None = None,
    kinds: Sequence[str] | None = None,
    covers: Sequence[Sequence[str]] | None = None,
) -> tuple[DeviceUsage, ...]:
    """Sum chunk summaries into one `DeviceUsage` per trace (segment).

    Args:
        summaries: Output of `accounting.integrate.summarize_chunks` over one trace per device.
        keys, hosts, indexes, names: Per trace (segment order), the device's identity.
        catalog_ids: Per trace, a catalog id or None (resolve by name).
        simulated: Per trace, whether the device is simulated.
        kinds: Per trace, the device's kind (default: ``gpu``).
        covers: Per trace, the kinds on its host its figures include (default: none).

    Returns:
        One `DeviceUsage` per trace that has at least one chunk.
    """
    n_dev = len(keys)
    seg = summaries.segment

    def by_seg(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.bincount(seg, weights=values, minlength=n_dev)

    energy = by_seg(summaries.energy_j)
    sensor = by_seg(summaries.sensor_uncertainty_j)  # systematic within a device: linear
    below = by_seg(summaries.bound_below_j)
    above = by_seg(summaries.bound_above_j)
    gap_s = by_seg(summaries.gap_s)
    gap_count = np.bincount(seg, weights=summaries.gap_count, minlength=n_dev)
    resets = np.bincount(seg, weights=summaries.reset_count, minlength=n_dev)
    samples = np.bincount(seg, weights=summaries.n, minlength=n_dev)
    t0 = np.full(n_dev, np.inf)
    np.minimum.at(t0, seg, summaries.t0_s)
    t1 = np.full(n_dev, -np.inf)
    np.maximum.at(t1, seg, summaries.t1_s)
    peak = np.zeros(n_dev)
    np.maximum.at(peak, seg, np.nan_to_num(summaries.max_power_w, nan=0.0))
    activity = lowest_sustained_power(
        device=seg,
        n_devices=n_dev,
        t0_s=summaries.t0_s,
        t1_s=summaries.t1_s,
        energy_j=summaries.energy_j,
        sensor_uncertainty_j=summaries.sensor_uncertainty_j,
        bound_above_j=summaries.bound_above_j,
        gap_count=summaries.gap_count,
        reset_count=summaries.reset_count,
        estimated=summaries.method == "estimate",
        mem_busy_frac=np.full(seg.size, np.nan),  # the kernel's summaries carry no counter
    )
    devices = []
    for k in range(n_dev):
        methods = Counter(str(m) for m in summaries.method[seg == k])
        if not methods:
            continue
        method = next(iter(methods)) if len(methods) == 1 else "mixed"
        devices.append(
            DeviceUsage(
                key=keys[k],
                host=hosts[k],
                index=int(indexes[k]),
                name=names[k],
                catalog_id=None if catalog_ids is None else catalog_ids[k],
                method=method,
                energy_j=float(energy[k]),
                sensor_uncertainty_j=float(sensor[k]),
                bound_below_j=float(below[k]),
                bound_above_j=float(above[k]),
                t0_s=float(t0[k]),
                t1_s=float(t1[k]),
                peak_power_w=float(peak[k]),
                gap_s=float(gap_s[k]),
                gap_count=int(gap_count[k]),
                reset_count=int(resets[k]),
                samples=int(samples[k]),
                simulated=False if simulated is None else bool(simulated[k]),
                kind="gpu" if kinds is None else kinds[k],
                covers=() if covers is None else tuple(covers[k]),
                quiet_power_w=_number_or_none(activity.quiet_power_w[k]),
                quiet_power_high_w=_number_or_none(activity.quiet_power_high_w[k]),
            )
        )
    return tuple(devices)


def _number_or_none(value: float) -> float | None:
    """A kernel's per-device figure: NaN (none) as None."""
    number = float(value)
    return None if math.isnan(number) else number


#: A device whose readings end this many of its own sampling intervals (and at least
#: `STOPPED_EARLY_MIN_S`) before the run's last reading stopped answering: the meter seals every
#: device's chunks at the same instants, so healthy devices end within about one interval.
STOPPED_EARLY_INTERVALS = 10
STOPPED_EARLY_MIN_S = 1.0


def _stopped_early(devices: Sequence[DeviceUsage], run_t1_s: float) -> list[str]:
    """Notes for devices whose readings end well before the run's (lost, or stopped answering):
    their energy covers only part of the run, which the total alone would not show."""
    notes = []
    for d in devices:
        span_s = d.t1_s - d.t0_s
        interval_s = span_s / d.samples if d.samples and span_s > 0 else 0.0
        early_s = run_t1_s - d.t1_s
        if early_s > max(STOPPED_EARLY_INTERVALS * interval_s, STOPPED_EARLY_MIN_S):
            notes.append(
                f"{d.key}: no readings in the last {early_s:.1f} s of the run (the device was "
                f"lost or stopped answering); its energy covers {span_s:.1f} s only"
            )
    return notes


def build_run_report(
    *,
    run: RunInfo,
    devices: Sequence[DeviceUsage],
    phases: Sequence[PhaseUsage] = (),
    work: DeclaredWork | None = None,
    settings: ReportSettings | None = None,
) -> RunReport:
    """Assemble the per-run report.

    Args:
        run: The run's identity.
        devices: Per-device energy aggregates (at least one).
        phases: Named windows with their energies.
        work: Declared work (FLOPs or model size + tokens).
        settings: Accounting context (defaults: typical PUE 1.56, world-average grid factor,
            no prices, no embodied carbon, 300 K). With its ``location_unavailable_reason``
            set, no location-based figure and no SCI are computed.

    Returns:
        The `RunReport`.

    Raises:
        ValueError: No devices.
    """
    if not devices:
        raise ValueError("a run report needs at least one device with measurements")
    settings = settings or ReportSettings()
    work = work or DeclaredWork()
    catalog = settings.catalog or builtin_catalog()
    notes: list[str] = []

    by = covered_by(
        [d.host for d in devices], [d.kind for d in devices], [d.covers for d in devices]
    )
    counted = [d for d, b in zip(devices, by, strict=True) if b is None]
    covered = {d.key: devices[b].key for d, b in zip(devices, by, strict=True) if b is not None}
    total = _lines(counted, lambda d: "", settings.combine)[""]
    hosts = _lines(counted, lambda d: d.host, settings.combine)
    by_kind = dict(
        sorted(_lines(counted, lambda d: d.kind, settings.combine).items(), key=_by_kind_order)
    )
    nodes = _nodes(devices, by, hosts, settings.combine)
    for key, covering in covered.items():
        notes.append(
            f"{key}: its energy is inside {covering}'s figure (that device covers its kind on "
            "the host): shown, not added to any total"
        )
    t0_s = min(d.t0_s for d in devices)
    t1_s = max(d.t1_s for d in devices)
    duration_s = max(t1_s - t0_s, 0.0)
    simulated = any(d.simulated for d in devices)
    if simulated:
        notes.append("simulated devices: every figure here is synthetic, not a measurement")

    # The catalog and the bounds concern the accelerators: the GPUs, where the run has any.
    accelerators = [d for d in counted if d.kind == "gpu"] or counted
    device_catalog: dict[str, CatalogEntry | None] = {d.key: None for d in devices}
    for d in accelerators:
        if d.catalog_id is not None:
            device_catalog[d.key] = catalog.get(d.catalog_id)
            continue
        resolution = resolve(d.name, catalog=catalog)
        device_catalog[d.key] = resolution.entry
        if resolution.entry is None:
            notes.append(f"{d.key}: {d.name!r} is {resolution.status} in the hardware catalog")
    notes.extend(_stopped_early(devices, t1_s))
    for d in devices:
        if d.gap_count:
            notes.append(f"{d.key}: {d.gap_count} sampling gap(s), {d.gap_s:.1f} s in all")
        if d.reset_count:
            notes.append(f"{d.key}: {d.reset_count} counter reset(s); the band bounds the loss")
        if not math.isfinite(d.bound_above_j):
            notes.append(f"{d.key}: energy is unbounded above (reset without a power limit)")

    flops, flops_source = _work_flops(run.kind, work)
    bounds: RunBounds | None = None
    entries = [e for d in accelerators if (e := device_catalog[d.key]) is not None]
    bound_line = total
    if len(accelerators) < len(counted):
        bound_line = _lines(accelerators, lambda d: "", settings.combine)[""]
    bound_energy_j = bound_line.energy_j
    decomposition = _decomposition(
        accelerators, device_catalog, bound_line, flops, work.dtype, catalog.default_pi0_w
    )
    if flops is None:
        notes.append("no FLOPs declared (add_flops or model size + tokens): no bounds or MFU")
    elif len(entries) < len(accelerators):
        notes.append("bounds skipped: some devices are not in the hardware catalog")
    elif bound_energy_j <= 0 or duration_s <= 0:
        notes.append("bounds skipped: no energy or no duration measured")
    else:
        if bound_energy_j != total.energy_j:
            notes.append(
                f"the bounds compare the GPUs' energy ({bound_energy_j:,.0f} J of "
                f"{total.energy_j:,.0f} J): the rest of the node is outside the hardware "
                "roofline"
            )
        try:
            bounds = compare_run(
                energy_j=bound_energy_j,
                flops=flops,
                dtype=work.dtype,
                duration_s=duration_s,
                devices=entries,
                temperature_k=settings.temperature_k,
                bits_model=settings.bits_model,
                **_roofline_terms(decomposition),
            )
        except (BoundError, UnsupportedDtype) as e:
            notes.append(f"bounds unavailable: {e}")
        else:
            roofline = bounds.energy_roofline
            if roofline is not None and roofline.bound_j > bound_energy_j:
                notes.append(
                    "the run used less than the energy roofline: its TDP-derived eps are upper "
                    "bounds (all dynamic power charged to FLOPs and, with the memory traffic "
                    "from the counters, again to bytes), so it is a rated reference, not a floor"
                )

    device_hours = sum(d.duration_s for d in accelerators) / 3600.0
    cost = run_cost(
        energy_j=total.energy_j,
        tariff=settings.tariff,
        pue=settings.pue,
        hardware=settings.hardware,
        device_hours=device_hours if settings.hardware is not None else None,
    )
    # The hours used, priced or not: never 0 standing for "no hardware price".
    cost = dataclasses.replace(cost, device_hours=device_hours)
    unavailable = settings.location_unavailable_reason
    carbon = scope2_emissions(
        total.energy_j,
        pue=settings.pue,
        location_factor=(
            settings.location_factor if unavailable is None else _no_location_factor(unavailable)
        ),
        market_factor=settings.market_factor,
        market_coverage=settings.market_coverage,
        residual_mix_factor=settings.residual_mix_factor,
    )
    sci: SciResult | None = None
    if unavailable is not None:
        # Scope2Emissions always holds a location-based figure: NaN marks it as absent.
        carbon = dataclasses.replace(carbon, location_co2e_g=math.nan)
        notes.append(f"no SCI: it needs a grid intensity and none applies ({unavailable})")
    elif settings.location_factor.kind in ("location", "average", "marginal"):
        sci = software_carbon_intensity(
            energy_j=total.energy_j,
            pue=settings.pue,
            intensity=settings.location_factor,
            embodied=settings.embodied,
            functional_unit=FunctionalUnit(f"{run.kind} run", 1),
            boundary=f"{len(counted)} device(s) of run {run.name}",
        )
    notes.extend(cost.notes)
    notes.extend(carbon.notes)
    if sci is not None:
        notes.extend(n for n in sci.notes if n not in notes)

    return RunReport(
        run=run,
        t0_s=t0_s,
        t1_s=t1_s,
        simulated=simulated,
        total=total,
        devices=tuple(devices),
        device_catalog=device_catalog,
        hosts=hosts,
        phases=tuple(phases),
        work=work,
        flops=flops,
        flops_source=flops_source,
        bounds=bounds,
        cost=cost,
        carbon=carbon,
        sci=sci,
        notes=tuple(dict.fromkeys(notes)),
        location_unavailable_reason=unavailable,
        by_kind=by_kind,
        nodes=nodes,
        covered=covered,
        energy_decomposition=decomposition,
    )


def _decomposition(
    accelerators: Sequence[DeviceUsage],
    device_catalog: Mapping[str, CatalogEntry | None],
    line: EnergyLine,
    flops: float | None,
    dtype: str,
    default_pi0_w: float,
) -> EnergyDecomposition | None:
    """The accelerators' measured energy split (`accounting.decomposition`); None when nothing
    was measured over any time."""
    if not accelerators or line.energy_j <= 0 or not any(d.duration_s > 0 for d in accelerators):
        return None
    return decompose_energy(
        measured_j=line.energy_j,
        measured_low_j=line.energy_low_j,
        measured_high_j=line.energy_high_j,
        devices=[
            DeviceActivity(
                key=d.key,
                entry=device_catalog.get(d.key),
                span_s=d.duration_s,
                energy_j=d.energy_j,
                energy_high_j=d.energy_j + d.sensor_uncertainty_j + d.bound_above_j,
                quiet_power_w=d.quiet_power_w,
                quiet_power_high_w=d.quiet_power_high_w,
                mem_busy_s=d.mem_busy_s,
                mem_observed_s=d.mem_observed_s,
            )
            for d in accelerators
        ],
        flops=flops,
        dtype=dtype,
        flops_reason="no FLOPs declared (add_flops or model size + tokens)",
        default_pi0_w=default_pi0_w,
    )


def _roofline_terms(decomposition: EnergyDecomposition | None) -> dict[str, Any]:
    """What the energy roofline takes from the decomposition: π0 per catalog entry (with where
    it came from) and the counters' bytes moved, when every device has them."""
    if decomposition is None:
        return {}
    sources = Counter(t.constant_power.provenance for t in decomposition.devices)
    return {
        "pi0_w_by_id": pi0_by_entry(decomposition),
        "pi0_basis": "resolved per device: "
        + ", ".join(f"{kind} x{count}" for kind, count in sorted(sources.items())),
        "counter_bytes_moved": decomposition.bytes_moved,
        "counter_bytes_basis": (
            "memory-activity counters: busy time at peak bandwidth (an upper bound on the "
            "bytes moved; see energy_decomposition)"
        ),
    }


def _by_kind_order(item: tuple[str, EnergyLine]) -> int:
    return kind_order(item[0])


def _lines(
    devices: Sequence[DeviceUsage],
    key: Callable[[DeviceUsage], str],
    combine: Literal["independent", "linear"],
) -> dict[str, EnergyLine]:
    """Energy with its band per group of ``devices`` (grouped by ``key``), in key order."""
    if not devices:
        return {}
    totals = aggregate_energy(
        [d.energy_j for d in devices],
        [d.sensor_uncertainty_j for d in devices],
        [d.bound_below_j for d in devices],
        [d.bound_above_j for d in devices],
        device=[d.key for d in devices],
        group=[key(d) for d in devices],
        combine=combine,
    )
    return {
        str(group): EnergyLine(
            float(totals.energy_j[i]), float(totals.energy_low_j[i]), float(totals.energy_high_j[i])
        )
        for i, group in enumerate(totals.key)
    }


def _nodes(
    devices: Sequence[DeviceUsage],
    by: Sequence[int | None],
    hosts: Mapping[str, EnergyLine],
    combine: Literal["independent", "linear"],
) -> tuple[NodeUsage, ...]:
    """Per host, its total (counted devices) and every kind's subtotal, marked when covered."""
    nodes = []
    for host in sorted({d.host for d in devices}):
        on_host = [(d, b) for d, b in zip(devices, by, strict=True) if d.host == host]
        kinds = sorted({d.kind for d, _ in on_host}, key=kind_order)
        lines = _lines([d for d, _ in on_host], lambda d: d.kind, combine)
        usages = []
        for kind in kinds:
            members = [(d, b) for d, b in on_host if d.kind == kind]
            covering = sorted(
                {devices[b].kind for _, b in members if b is not None}, key=kind_order
            )
            usages.append(KindUsage(kind, len(members), lines[kind], tuple(covering)))
        nodes.append(NodeUsage(host, hosts[host], tuple(usages)))
    return tuple(nodes)


def _no_location_factor(reason: str) -> EmissionFactor:
    """A placeholder for `scope2_emissions` when no location-based factor applies: its figure
    is replaced by NaN and never reported (see `RunReport`)."""
    return EmissionFactor(
        region="n/a", intensity_g_per_kwh=0.0, kind="location", source=f"not available: {reason}"
    )


def _work_flops(kind: str, work: DeclaredWork) -> tuple[float | None, str | None]:
    if work.flops is not None:
        return work.flops, "declared"
    if work.model_params is None or work.tokens is None:
        return None, None
    if kind == "training":
        return training_flops(work.model_params, work.tokens), "estimated: 6·N·D"
    per_token = inference_flops_per_token(work.model_params)
    return per_token * work.tokens, "estimated: 2·N per token"


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as None (JSON has no inf/NaN: an unbounded band
    end reads null), containers walked; what the service's and the meter's reports send."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- what meters report

#: Measurement grades, best first (`meters.quality`).
_GRADES = ("A", "B", "C", "D")
#: The key under which a meter lists the declarations it refused, in its entry of a run's host
#: info (`meters.api.REFUSED_DECLARATIONS`; spelled here, since the core imports no meter code).
_REFUSED = "refused_declarations"


def meter_quality(host_info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The measurement grade the run's meters sent in its host info: the worst, every limit
    and step once (None: no meter sent one, e.g. a run metered before grades existed, or one
    still going). The service's report and the meter's local report both give it this way."""
    grades = [
        info["quality"]
        for info in host_info.values()
        if isinstance(info, Mapping)
        and isinstance(info.get("quality"), Mapping)
        and info["quality"].get("grade") in _GRADES
    ]
    if not grades:
        return None
    limits: list[str] = []
    improve: list[str] = []
    for quality in grades:
        for target, name in ((limits, "limits"), (improve, "improve")):
            lines = quality.get(name)
            for line in lines if isinstance(lines, list) else ():
                if isinstance(line, str) and line not in target:
                    target.append(line)
    return {
        "grade": max((q["grade"] for q in grades), key=_GRADES.index),
        "limits": limits,
        "improve": improve,
        "meters": len(grades),
    }


def refused_declarations(host_info: Mapping[str, Any]) -> list[str]:
    """The declarations the run's meters refused, each once, in the meters' order (at most 64,
    each cut at 300 characters: the host info comes from clients)."""
    lines: list[str] = []
    for info in host_info.values():
        refused = info.get(_REFUSED) if isinstance(info, Mapping) else None
        for line in refused if isinstance(refused, list) else ():
            if isinstance(line, str) and line not in lines:
                lines.append(line[:300])
    return lines[:64]
