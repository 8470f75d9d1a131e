"""``thermoledger report``: a run's report from the local spool, with no server.

A run metered without a server (``thermoledger run`` or `meters.api.Meter` with no
``--server``) stays in the spool directory: its chunks in `meters.spool`, its declaration,
phases and declared work in the control outbox (`meters.control`). This module reads them back
and feeds the **same accounting core** the service's report uses
(`thermoledger.accounting.report.build_run_report`), with the same inputs the service derives
from its stored aggregates (`service.reports`, `db.totals`):

* per device, the sums of its chunk summaries: energy, sensor error (linear within a device:
  it is systematic), the one-sided bounds, gaps and resets; the span from the first chunk's
  start to the last one's end; the peak of the chunks' maximum power; the method (``mixed``
  when the chunks differ);
* per phase, each overlapping chunk's energy and band terms pro-rata by time (exact where a
  phase edge falls on a chunk edge, which the meter arranges by cutting its chunks at phase
  edges), combined across the devices a total counts by `accounting.integrate.aggregate_energy`;
* the declared work (FLOPs, dtype, tokens, model size) as the meter recorded it for upload.

What differs from the service's report is the accounting basis: nothing is ledgered and no
project, region, factor or tariff version exists here. The PUE is the one given (``--pue``,
else 1.0: IT energy only); a location-based CO2e figure exists only with ``--grid-intensity``
and a cost only with ``--tariff`` (the summary's `meters.settings.FootprintSettings`); otherwise
they are "not available", never a default. The JSON has the service's shape
(``GET /api/v1/runs/{id}/report``) except its ``accounting`` section, replaced by ``local``
(what the figures rest on). The HTML is one self-contained file: no script, no external asset,
every string from the run escaped.

Importing this module loads the accounting core's report module (numpy and the standard
library; pint only in constructors from quantities, which are not used here), so the
``thermoledger`` command imports it only when a report is asked for.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO, cast

import numpy as np
import numpy.typing as npt

from thermoledger.accounting.carbon import EmissionFactor, Pue
from thermoledger.accounting.cost import Tariff
from thermoledger.accounting.decomposition import lowest_sustained_power
from thermoledger.accounting.integrate import aggregate_energy, covered_by
from thermoledger.accounting.report import (
    DeclaredWork,
    DeviceUsage,
    PhaseUsage,
    ReportSettings,
    RunInfo,
    RunReport,
    build_run_report,
    json_safe,
    meter_quality,
    refused_declarations,
)

from .control import CONTROL_FILENAME, ControlStore, Message
from .runid import canonical_run_id
from .settings import FootprintSettings
from .spool import SPOOL_FILENAME, RunRecord, Spool, SpooledChunk
from .summary import format_energy, render_footprint
from .wire import SAMPLES_F64_BASE64, DevicePayload, decode_column

__all__ = [
    "EXIT_NO_RUN",
    "EXIT_UNKNOWN_RUN",
    "LOCAL_NOTE",
    "LocalReport",
    "LocalReportError",
    "SpoolEmpty",
    "UnknownLocalRun",
    "build_local_report",
    "find_run",
    "render_html",
    "render_text",
    "report_command",
]

EXIT_NO_RUN: Final = 1
"""Exit status: nothing to report (no spool, an empty one, a run without chunks)."""
EXIT_UNKNOWN_RUN: Final = 2
"""Exit status: the RUN argument names no run of the spool, or more than one."""
LOCAL_NOTE: Final = (
    "local report from the meter's spool: not ledgered (no project, no accounting basis); "
    "CO2e and cost only from --grid-intensity / --tariff, with --pue"
)
#: Readings drawn per device in the HTML chart (bins averaged): enough for a 720 px plot.
CHART_POINTS: Final = 360
_PHASE_NOTE: Final = (
    "phase energies are pro-rata by time within each chunk that straddles a boundary"
)


class LocalReportError(Exception):
    """No report can be made; ``exit_code`` is the command's status, the message says why."""

    exit_code: int = EXIT_NO_RUN


class SpoolEmpty(LocalReportError):
    """No spool in the directory, or no run in it (exit 1)."""


class UnknownLocalRun(LookupError, LocalReportError):
    """The RUN argument matches no run of the spool, or several (exit 2, naming them)."""

    exit_code = EXIT_UNKNOWN_RUN


@dataclass(frozen=True, slots=True)
class LocalReport:
    """A run's local report.

    Attributes:
        report: The accounting core's report object (`accounting.report.RunReport`).
        mapping: The JSON-safe report (the service's shape, ``local`` for ``accounting``).
        series: Per device key, (seconds since the run's first reading, power W), thinned to
            at most `CHART_POINTS` points, for the chart.
        spool_dir: Where the run was read.
        footprint: The PUE, grid intensity and tariff the figures used.
    """

    report: RunReport
    mapping: dict[str, Any]
    series: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]
    spool_dir: str
    footprint: FootprintSettings


# -- finding the run ---------------------------------------------------------------------------


def _run_line(run: RunRecord) -> str:
    started = datetime.fromtimestamp(run.created_at_s, UTC).strftime("%Y-%m-%d %H:%M:%S")
    name = str(run.metadata.get("name", ""))
    return f"  {run.run_id}  {run.status:<8} {started} UTC  {name}"


def find_run(runs: Sequence[RunRecord], selector: str | None) -> RunRecord:
    """The run ``selector`` names: the newest when None; else a run id (as given or in the
    canonical form the meter stores), a unique prefix of one, or a name (the newest run of
    that name).

    Args:
        runs: The spool's runs, oldest first (`Spool.runs`).
        selector: The RUN argument.

    Raises:
        SpoolEmpty: No runs.
        UnknownLocalRun: Nothing matches, or a prefix matches several runs; the message lists
            the candidates.
    """
    if not runs:
        raise SpoolEmpty("the spool holds no run")
    if selector is None:
        return max(runs, key=lambda r: r.created_at_s)
    wanted = selector.strip()
    for candidate in (wanted, canonical_run_id(wanted) if wanted else wanted):
        exact = [r for r in runs if r.run_id == candidate]
        if exact:
            return exact[0]
    prefixed = [r for r in runs if wanted and r.run_id.startswith(wanted.lower())]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        listed = "\n".join(_run_line(r) for r in prefixed)
        raise UnknownLocalRun(
            f"{selector!r} is the start of {len(prefixed)} runs; give more of the id:\n{listed}"
        )
    named = [r for r in runs if str(r.metadata.get("name", "")) == wanted]
    if named:
        return max(named, key=lambda r: r.created_at_s)
    listed = "\n".join(_run_line(r) for r in runs)
    raise UnknownLocalRun(
        f"no run {selector!r} in the spool (not an id, a prefix of one, or a name); "
        f"the spool's runs:\n{listed}"
    )


# -- the accounting core's inputs --------------------------------------------------------------


def _column(chunks: Sequence[SpooledChunk], name: str) -> npt.NDArray[np.float64]:
    return np.array([float(c.payload[name]) for c in chunks], dtype=np.float64)  # type: ignore[literal-required]


def _device_usage(device: DevicePayload, chunks: Sequence[SpooledChunk]) -> DeviceUsage:
    """One device's sums over its chunks, as `db.totals` keeps them for the service (the
    quietest sustained chunk and the memory-busy time by the same kernel)."""
    methods = {str(c.payload["method"]) for c in chunks}
    busy = [c.payload.get("mem_busy_frac") for c in chunks]
    activity = lowest_sustained_power(
        device=np.zeros(len(chunks), dtype=np.int64),
        n_devices=1,
        t0_s=_column(chunks, "t0_s"),
        t1_s=_column(chunks, "t1_s"),
        energy_j=_column(chunks, "energy_j"),
        sensor_uncertainty_j=_column(chunks, "sensor_uncertainty_j"),
        bound_above_j=_column(chunks, "bound_above_j"),
        gap_count=_column(chunks, "gap_count"),
        reset_count=_column(chunks, "reset_count"),
        estimated=np.array([c.payload["method"] == "estimate" for c in chunks], dtype=np.bool_),
        mem_busy_frac=np.array([math.nan if b is None else b for b in busy], dtype=np.float64),
    )
    quiet = float(activity.quiet_power_w[0])
    return DeviceUsage(
        key=device["key"],
        host=device["host"],
        index=int(device["index"]),
        name=device["name"],
        method=methods.pop() if len(methods) == 1 else "mixed",
        energy_j=math.fsum(_column(chunks, "energy_j").tolist()),
        sensor_uncertainty_j=math.fsum(_column(chunks, "sensor_uncertainty_j").tolist()),
        bound_below_j=math.fsum(_column(chunks, "bound_below_j").tolist()),
        bound_above_j=float(np.sum(_column(chunks, "bound_above_j"))),  # inf stays inf
        t0_s=float(np.min(_column(chunks, "t0_s"))),
        t1_s=float(np.max(_column(chunks, "t1_s"))),
        peak_power_w=float(np.max(np.nan_to_num(_column(chunks, "max_power_w"), nan=0.0))),
        catalog_id=None,  # resolved by name in the core, as the service's catalog key is
        gap_s=math.fsum(_column(chunks, "gap_s").tolist()),
        gap_count=int(np.sum(_column(chunks, "gap_count"))),
        reset_count=int(np.sum(_column(chunks, "reset_count"))),
        samples=int(np.sum(_column(chunks, "n"))),
        simulated=bool(device.get("simulated", False)),
        kind=str(device.get("kind", "gpu")),
        covers=tuple(device.get("covers", ())),
        quiet_power_w=None if math.isnan(quiet) else quiet,
        quiet_power_high_w=None if math.isnan(quiet) else float(activity.quiet_power_high_w[0]),
        mem_busy_s=float(activity.mem_busy_s[0]),
        mem_observed_s=float(activity.mem_observed_s[0]),
    )


def _overlap_fraction(
    t0_s: npt.NDArray[np.float64], t1_s: npt.NDArray[np.float64], start_s: float, end_s: float
) -> npt.NDArray[np.float64]:
    """Share of each chunk ``[t0_s, t1_s]`` inside ``[start_s, end_s)`` by time (the service's
    rule, `db.totals`): a zero-length chunk counts whole where its instant lies inside."""
    lo = np.maximum(t0_s, start_s)
    hi = np.minimum(t1_s, end_s)
    length = t1_s - t0_s
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(length > 0, (hi - lo) / np.where(length > 0, length, 1.0), 1.0)
    inside = np.where(
        length > 0, (t0_s < end_s) & (t1_s > start_s), (t0_s >= start_s) & (t0_s < end_s)
    )
    return np.where(inside, share, 0.0)


def _flops(body: Mapping[str, Any]) -> float | None:
    flops = body.get("flops")
    if isinstance(flops, Mapping) and isinstance(flops.get("value"), int | float):
        return float(flops["value"])
    return None


def _tokens(body: Mapping[str, Any]) -> float | None:
    tokens = body.get("tokens")
    return float(tokens) if isinstance(tokens, int | float) and tokens else None


def _phases(
    messages: Sequence[Message],
    counted: Sequence[tuple[str, Sequence[SpooledChunk]]],
    run_end_s: float,
    settings: ReportSettings,
) -> list[PhaseUsage]:
    """The run's phases with their pro-rata energies and bands (`service.reports._phase_usage`)."""
    bodies = sorted(
        (m.body for m in messages if m.kind == "phase"),
        key=lambda b: (float(b.get("t0_s", 0.0)), str(b.get("name", ""))),
    )
    columns = [
        (
            key,
            _column(chunks, "t0_s"),
            _column(chunks, "t1_s"),
            [
                _column(chunks, name)
                for name in ("energy_j", "sensor_uncertainty_j", "bound_below_j", "bound_above_j")
            ],
        )
        for key, chunks in counted
    ]
    phases = []
    for body in bodies:
        t0_s = float(body["t0_s"])
        end = body.get("t1_s")
        t1_s = max(float(end) if isinstance(end, int | float) else run_end_s, t0_s)
        rows: list[list[float]] = [[], [], [], []]
        keys = []
        for key, c0, c1, terms in columns:
            share = _overlap_fraction(c0, c1, t0_s, math.inf if end is None else t1_s)
            if not np.any(share > 0):
                continue
            keys.append(key)
            for row, values in zip(rows, terms, strict=True):
                inside = values[share > 0] * share[share > 0]
                row.append(float(np.sum(inside)) if np.all(np.isfinite(inside)) else math.inf)
        energy_j = low_j = high_j = 0.0
        if keys:
            totals = aggregate_energy(*rows, device=keys, combine=settings.combine)
            energy_j = float(totals.energy_j[0])
            low_j = float(totals.energy_low_j[0])
            high_j = float(totals.energy_high_j[0])
        phases.append(
            PhaseUsage(
                name=str(body.get("name", "phase")),
                t0_s=t0_s,
                t1_s=t1_s,
                energy_j=energy_j,
                energy_low_j=low_j,
                energy_high_j=high_j,
                flops=_flops(body),
                tokens=_tokens(body),
            )
        )
    return phases


def _settings(footprint: FootprintSettings) -> ReportSettings:
    """The core's settings from the command's footprint: nothing assumed beyond what was given."""
    pue = Pue(
        value=footprint.pue,
        name="IT only" if footprint.pue == 1.0 else "configured",
        kind="definition" if footprint.pue == 1.0 else "assumption",
        source="IT energy only (no --pue)" if footprint.pue == 1.0 else "--pue / THERMOLEDGER_PUE",
    )
    intensity = footprint.grid_intensity_g_per_kwh
    tariff = footprint.tariff_usd_per_kwh
    return ReportSettings(
        pue=pue,
        location_factor=(
            EmissionFactor(
                region="as configured",
                intensity_g_per_kwh=intensity,
                kind="location",
                source="--grid-intensity / THERMOLEDGER_GRID_INTENSITY_G_PER_KWH",
            )
            if intensity is not None
            else ReportSettings().location_factor  # not used: the reason below applies
        ),
        location_unavailable_reason=(
            None
            if intensity is not None
            else "no grid intensity given (--grid-intensity / "
            "THERMOLEDGER_GRID_INTENSITY_G_PER_KWH); a local report assumes none"
        ),
        tariff=(
            None
            if tariff is None
            else Tariff(usd_per_kwh=tariff, source="--tariff / THERMOLEDGER_TARIFF_USD_PER_KWH")
        ),
    )


def _samples(chunks: Sequence[SpooledChunk]) -> tuple[list[float], list[float]]:
    """The device's readings (t_s, power_w) from its chunks' samples, in either encoding; the
    chunk means at chunk midpoints where a chunk carries none."""
    times: list[float] = []
    powers: list[float] = []
    for chunk in chunks:
        payload = chunk.payload
        samples = payload.get("samples")
        if samples is None:
            times.append((payload["t0_s"] + payload["t1_s"]) / 2)
            powers.append(payload["mean_power_w"])
            continue
        t, p = samples["t_s"], samples["power_w"]
        if samples.get("encoding") == SAMPLES_F64_BASE64 or isinstance(t, str):
            times.extend(decode_column(str(t)))
            powers.extend(decode_column(str(p)))
        else:
            times.extend(t)
            powers.extend(cast("list[float]", p))
    return times, powers


def _thinned(
    t_s: Sequence[float], power_w: Sequence[float], t0_s: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """At most `CHART_POINTS` points: bins of consecutive readings averaged (`np.add.reduceat`)."""
    t = np.asarray(t_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t, p = t[order] - t0_s, p[order]
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    if t.size <= CHART_POINTS:
        return t, p
    starts = np.linspace(0, t.size, CHART_POINTS, endpoint=False).astype(np.int64)
    counts = np.diff(np.append(starts, t.size))
    return np.add.reduceat(t, starts) / counts, np.add.reduceat(p, starts) / counts


def build_local_report(
    spool: Spool,
    control: ControlStore | None,
    run: RunRecord,
    footprint: FootprintSettings,
) -> LocalReport:
    """The run's report from the spool, by the accounting core.

    Args:
        spool: The open chunk spool.
        control: The open control outbox (None: the directory has none; no phases, no work).
        run: The run (`find_run`).
        footprint: PUE, grid intensity and tariff as given.

    Raises:
        SpoolEmpty: The run has no chunks here (none sealed yet, or purged once a server
            acknowledged them: its report is then the server's).
    """
    devices = {d["key"]: d for d in spool.devices(run.run_id)}
    by_device: dict[str, list[SpooledChunk]] = {}
    for chunk in spool.chunks(run.run_id):
        by_device.setdefault(chunk.key.device_key, []).append(chunk)
    usages = [
        _device_usage(devices[key], chunks)
        for key, chunks in sorted(by_device.items())
        if key in devices
    ]
    if not usages:
        raise SpoolEmpty(
            f"run {run.run_id} has no chunks in the spool {spool.path.parent}: none was sealed "
            "yet, or they were deleted once a server acknowledged them (its report is then on "
            "that server)"
        )
    # The service orders its devices by host, kind, index.
    usages.sort(key=lambda d: (d.host, d.kind, d.index))
    messages = control.messages(run.run_id) if control is not None else []
    declared = next((m.body for m in messages if m.kind == "run"), {})
    work_body = next((m.body for m in messages if m.kind == "work"), {})
    host_info = declared.get("host_info")
    host_info = host_info if isinstance(host_info, Mapping) else {}
    settings = _settings(footprint)
    by = covered_by([d.host for d in usages], [d.kind for d in usages], [d.covers for d in usages])
    counted = [(d.key, by_device[d.key]) for d, b in zip(usages, by, strict=True) if b is None]
    run_end_s = max(d.t1_s for d in usages)
    phases = _phases(messages, counted, run_end_s, settings)
    params = work_body.get("model_params")
    dtype = work_body.get("dtype")
    work = DeclaredWork(
        flops=_flops(work_body),
        dtype=dtype if isinstance(dtype, str) else "bf16",
        tokens=_tokens(work_body),
        model_params=float(params) if isinstance(params, int | float) else None,
    )
    name = declared.get("name", run.metadata.get("name", run.run_id))
    kind = declared.get("kind", run.metadata.get("kind", "training"))
    report = build_run_report(
        run=RunInfo(
            run_id=run.run_id,
            name=str(name),
            kind=kind if kind in ("training", "inference", "eval", "other") else "other",
            status=run.status,
        ),
        devices=usages,
        phases=phases,
        work=work,
        settings=settings,
    )
    out = report.to_dict()
    if phases:
        out["notes"].append(_PHASE_NOTE)
    _state_local(out, footprint, spool.path.parent)
    out["quality"] = meter_quality(host_info)
    out["refused_declarations"] = refused_declarations(host_info)
    if out["refused_declarations"]:
        out["notes"].append(
            "the meter refused some declared work (see refused_declarations): the figures "
            "it would have given are missing"
        )
    t0_s = report.t0_s
    series = {d.key: _thinned(*_samples(by_device[d.key]), t0_s=t0_s) for d in usages}
    return LocalReport(
        report=report,
        mapping=cast(dict[str, Any], json_safe(out)),
        series=series,
        spool_dir=str(spool.path.parent),
        footprint=footprint,
    )


def _state_local(out: dict[str, Any], footprint: FootprintSettings, spool_dir: Path) -> None:
    """The ``local`` section (in place of the service's ``accounting``) and the cost's status
    fields as the service states them: nothing priced is "not priced", never 0 USD."""
    out["local"] = {
        "ledgered": False,
        "spool_dir": str(spool_dir),
        "pue": footprint.pue,
        "grid_intensity_g_per_kwh": footprint.grid_intensity_g_per_kwh,
        "tariff_usd_per_kwh": footprint.tariff_usd_per_kwh,
        "note": LOCAL_NOTE,
    }
    cost = out["cost"]
    reason = (
        "no tariff given (--tariff / THERMOLEDGER_TARIFF_USD_PER_KWH)"
        if cost["energy_usd"] is None
        else None
    )
    cost["energy_status"] = "not_available" if reason is not None else "available"
    cost["energy_reason"] = reason
    priced = cost["energy_usd"] is not None or cost["hardware_usd"] is not None
    if not priced:
        cost["total_usd"] = None
    cost["total_status"] = "available" if priced else "not_available"
    cost["total_reason"] = None if priced else reason
    out["notes"].append(LOCAL_NOTE)


# -- rendering ---------------------------------------------------------------------------------


def render_text(local: LocalReport) -> str:
    """The terminal report: a local-report banner, the core's text report, grade and refusals."""
    mapping = local.mapping
    total = local.report.total
    lines = [
        f"thermoledger: LOCAL report of run {local.report.run.run_id} from the spool "
        f"{local.spool_dir}",
        "  not ledgered: no project or accounting basis; CO2e and cost only from "
        "--grid-intensity / --tariff (with --pue); `thermoledger push` sends the run to a "
        "service for its ledgered report",
        f"  total {format_energy(total.energy_j)} "
        f"(band {format_energy(total.energy_low_j)} … {format_energy(total.energy_high_j)})",
    ]
    lines.extend(
        render_footprint(total.energy_j, total.energy_low_j, total.energy_high_j, local.footprint)
    )
    lines.extend(["", local.report.render_text()])
    quality = mapping.get("quality")
    if isinstance(quality, Mapping):
        lines.append(f"Measurement quality: {quality['grade']}")
        lines.extend(f"  limited by: {line}" for line in quality["limits"])
        lines.extend(f"  to improve: {line}" for line in quality["improve"])
    for line in mapping.get("refused_declarations", ()):
        lines.append(f"REFUSED declaration: {line}")
    return "\n".join(lines) + "\n"


_PALETTE: Final = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
)  # fmt: skip
_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:1.8rem}
.banner{background:#fff4d6;border:1px solid #e0c060;padding:.5rem .8rem;border-radius:4px}
.sim{background:#fde2e1;border-color:#d98c8a}
.tiles{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.tile{border:1px solid #ccc;border-radius:6px;padding:.6rem .9rem;min-width:10rem}
.tile b{display:block;font-size:1.3rem}.tile span{color:#555;font-size:.85rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}
.dev th:nth-child(-n+3),.dev td:nth-child(-n+3){text-align:left}
.sw{display:inline-block;width:.8rem;height:.8rem;margin-right:.4rem;vertical-align:middle}
svg{width:100%;height:auto;border:1px solid #ddd}
ul{padding-left:1.2rem}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _energy(value_j: float | None) -> str:
    """J, Wh or kWh by size (the pages' rule), for the HTML."""
    if value_j is None or not math.isfinite(value_j):
        return "unbounded" if value_j is not None else "n/a"
    if abs(value_j) < 3.6e3:
        return f"{value_j:,.4g} J"
    if abs(value_j) < 3.6e6:
        return f"{value_j / 3.6e3:,.4g} Wh"
    return f"{value_j / 3.6e6:,.4g} kWh"


def _figure(value: float | None, spec: str, unit: str, missing: str = "not available") -> str:
    return missing if value is None else f"{format(value, spec)} {unit}"


def _chart(local: LocalReport) -> str:
    """An inline SVG of each device's power over time (no script; axes with headroom)."""
    width, height, left, right, top, bottom = 720, 260, 56, 12, 12, 36
    series = {k: v for k, v in local.series.items() if v[0].size}
    if not series:
        return "<p>No readings to draw.</p>"
    t_max = max(float(t[-1]) for t, _ in series.values()) or 1.0
    p_max = max(float(np.max(p)) for _, p in series.values())
    p_top = p_max * 1.15 if p_max > 0 else 1.0  # headroom: a constant line clears the border
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return left + t / t_max * plot_w

    def y(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return top + plot_h - p / p_top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="power over time, W">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa"/>',
    ]
    for i in range(5):
        value = p_top * i / 4
        yy = float(y(np.array([value]))[0])
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">'
            f"{value:,.0f}</text>"
        )
        tt = t_max * i / 4
        xx = float(x(np.array([tt]))[0])
        parts.append(
            f'<text x="{xx:.1f}" y="{height - bottom + 14}" font-size="10" '
            f'text-anchor="middle">{tt:,.1f}</text>'
        )
    parts.append(
        f'<text x="{left}" y="{height - 4}" font-size="10">time since the first reading, s; '
        "power, W</text>"
    )
    for i, (key, (t, p)) in enumerate(series.items()):
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x(t), y(p), strict=True))
        color = _PALETTE[i % len(_PALETTE)]
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.3" points="{points}">'
            f"<title>{_e(key)}</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(local: LocalReport) -> str:
    """One self-contained HTML page: headline figures, method and band, the devices, the
    phases, a power chart, the notes. No script and no external asset; every string from the
    run (its name, device names and keys, phase names, notes) is escaped."""
    m = local.mapping
    run = m["run"]
    energy = m["energy"]
    total = energy["total"]
    carbon = m["carbon"]["location_based"]
    cost = m["cost"]
    eff = m["efficiency"]
    quality = m.get("quality")
    methods = sorted({d["method"] for d in energy["by_device"]})
    title = f"thermoledger local report: {run['name']}"
    co2e = (
        _figure(carbon["co2e_g"], ",.4g", "gCO2e")
        if carbon.get("status") == "available"
        else "not available"
    )
    usd = _figure(cost["total_usd"], ",.4g", "USD", "not priced")
    tiles = [
        ("energy (IT)", _energy(total["energy_j"]),
         f"band {_energy(total['energy_low_j'])} … {_energy(total['energy_high_j'])}"),
        ("duration", f"{m['duration_s']:,.1f} s", f"{len(energy['by_device'])} device(s)"),
        ("mean power", _figure(energy["mean_power_w"], ",.1f", "W"), "all counted devices"),
        ("method", ", ".join(methods), f"grade {quality['grade']}" if quality else "no grade"),
        ("CO2e, location-based", co2e, f"PUE {m['local']['pue']:g}"),
        ("cost", usd, cost.get("total_reason") or ""),
        ("efficiency", _figure(eff["flop_per_j"], ".3e", "FLOP/J", "no FLOPs declared"),
         _figure(eff["j_per_token"], ".4g", "J/token", "no tokens declared")),
    ]  # fmt: skip
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(run['name'])}</h1>",
        f"<p>run <code>{_e(run['id'])}</code> · {_e(run['kind'])} · {_e(run['status'])}</p>",
        f'<p class="banner">Local report from the spool <code>{_e(local.spool_dir)}</code>: '
        "not ledgered (no project, no accounting basis); CO2e and cost only from "
        "<code>--grid-intensity</code> / <code>--tariff</code> with <code>--pue</code>. "
        "<code>thermoledger push</code> sends the run to a service for its ledgered report.</p>",
    ]
    if run["simulated"]:
        out.append(
            '<p class="banner sim">Simulated devices: every figure here is synthetic, '
            "not a measurement.</p>"
        )
    out.append('<div class="tiles">')
    for label, value, sub in tiles:
        out.append(f'<div class="tile">{_e(label)}<b>{_e(value)}</b><span>{_e(sub)}</span></div>')
    out.append("</div>")
    out.append("<h2>Power over time</h2>")
    out.append(_chart(local))
    out.append('<h2>Devices</h2><table class="dev"><thead><tr>')
    for head in ("device", "name", "method", "energy", "band", "mean W", "peak W", "gaps"):
        out.append(f"<th>{head}</th>")
    out.append("</tr></thead><tbody>")
    colors = {key: _PALETTE[i % len(_PALETTE)] for i, key in enumerate(local.series)}
    for d in energy["by_device"]:
        swatch = f'<span class="sw" style="background:{colors.get(d["key"], "#999")}"></span>'
        counted = "" if d["counted"] else f" (inside {_e(d['covered_by'])})"
        out.append(
            f"<tr><td>{swatch}{_e(d['key'])}{counted}</td><td>{_e(d['name'])}</td>"
            f"<td>{_e(d['method'])}</td><td>{_e(_energy(d['energy_j']))}</td>"
            f"<td>{_e(_energy(d['energy_low_j']))} … {_e(_energy(d['energy_high_j']))}</td>"
            f"<td>{d['mean_power_w']:,.1f}</td><td>{d['peak_power_w']:,.1f}</td>"
            f"<td>{d['gap_count']} ({d['gap_s']:.1f} s)</td></tr>"
        )
    out.append("</tbody></table>")
    if energy["by_phase"]:
        out.append("<h2>Phases</h2><table><thead><tr>")
        for head in ("phase", "duration s", "energy", "band", "share", "FLOP/J"):
            out.append(f"<th>{head}</th>")
        out.append("</tr></thead><tbody>")
        for p in energy["by_phase"]:
            share = p["energy_j"] / total["energy_j"] if total["energy_j"] else None
            out.append(
                f"<tr><td>{_e(p['name'])}</td><td>{p['duration_s']:,.1f}</td>"
                f"<td>{_e(_energy(p['energy_j']))}</td>"
                f"<td>{_e(_energy(p['energy_low_j']))} … {_e(_energy(p['energy_high_j']))}</td>"
                f"<td>{'n/a' if share is None else f'{share:.1%}'}</td>"
                f"<td>{_e(_figure(p['flop_per_j'], '.3e', '', 'n/a'))}</td></tr>"
            )
        out.append("</tbody></table>")
    if quality:
        out.append(f"<h2>Measurement quality: {_e(quality['grade'])}</h2><ul>")
        out.extend(f"<li>limited by: {_e(line)}</li>" for line in quality["limits"])
        out.extend(f"<li>to improve: {_e(line)}</li>" for line in quality["improve"])
        out.append("</ul>")
    if m["refused_declarations"]:
        out.append("<h2>Refused declarations</h2><ul>")
        out.extend(f"<li>{_e(line)}</li>" for line in m["refused_declarations"])
        out.append("</ul>")
    out.append("<h2>Notes</h2><ul>")
    out.extend(f"<li>{_e(note)}</li>" for note in m["notes"])
    out.append("</ul></body></html>")
    return "\n".join(out) + "\n"


# -- the command -------------------------------------------------------------------------------


def _write(path: str, text: str, out: TextIO) -> None:
    if path == "-":
        out.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")


def report_command(
    spool_dir: Path,
    selector: str | None,
    footprint: FootprintSettings,
    *,
    json_path: str | None,
    html_path: str | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """``thermoledger report [RUN]``: print the run's local report, and write its JSON and HTML.

    Args:
        spool_dir: The spool directory.
        selector: RUN: an id, a unique prefix of one, or a name (None: the newest run).
        footprint: PUE, grid intensity and tariff, as given.
        json_path: Where to write the JSON report (``-``: stdout; None: nowhere).
        html_path: Where to write the HTML report (``-``: stdout; None: nowhere).
        out: Standard output: the table, or the file written to ``-`` (the table then goes to
            ``err``, so the output stays one parseable document).
        err: Messages.

    Returns:
        0; 1 with nothing to report (no spool, no runs, no chunks) or a file that cannot be
        written; 2 for a RUN that names no run (the message lists the spool's runs).
    """
    if not (spool_dir / SPOOL_FILENAME).exists():
        err.write(
            f"thermoledger report: no spool in {spool_dir}: nothing metered here yet "
            "(`thermoledger run -- CMD` records a run; --spool-dir or THERMOLEDGER_SPOOL_DIR "
            "names another directory)\n"
        )
        return EXIT_NO_RUN
    control = (
        ControlStore.in_directory(spool_dir) if (spool_dir / CONTROL_FILENAME).exists() else None
    )
    try:
        with Spool.in_directory(spool_dir) as spool:
            runs = spool.runs()
            if not runs:
                raise SpoolEmpty(
                    f"the spool {spool_dir} holds no run (`thermoledger run -- CMD` records one)"
                )
            local = build_local_report(spool, control, find_run(runs, selector), footprint)
    except LocalReportError as e:
        err.write(f"thermoledger report: {e}\n")
        return e.exit_code
    finally:
        if control is not None:
            control.close()
    table = render_text(local)
    to_stdout = "-" in (json_path, html_path)
    try:
        if json_path is not None:
            _write(json_path, json.dumps(local.mapping, indent=2, allow_nan=False) + "\n", out)
        if html_path is not None:
            _write(html_path, render_html(local), out)
    except OSError as e:
        err.write(f"thermoledger report: cannot write the report: {e}\n")
        return EXIT_NO_RUN
    (err if to_stdout else out).write(table)
    return 0
