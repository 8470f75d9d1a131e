"""The pages: runs list, run report, comparison, models (amortisation) and planning.

Every route is a thin GET: parse the query, read through `db` / `service.economics`, compute
charts (`service.pages.charts`), render a template. Figures come from the same functions as the
JSON API (`service.reports.usage_report`, `service.economics`), typed once
(`service.report_schemas`, `service.economics_schemas`) and read by attribute, so a page and its
JSON never disagree. All reads are scoped to the signed-in token's project (`service.pages.auth`).

Carbon and cost are on each run's accounting basis (`db.basis`): what the ledger froze at the
run's end, else the project's context resolved at its end (now, while it runs). The runs list
sums those per-run figures — each run on its own basis, exactly as its report — and says how
many runs have none (no region configured, no version valid then) instead of guessing.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import pydantic
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from thermoledger.accounting.carbon import default_emission_factors, default_pues
from thermoledger.accounting.catalog import builtin_catalog
from thermoledger.db.basis import RunBasis, run_bases
from thermoledger.db.envelope import envelope_of
from thermoledger.db.errors import InvalidInput
from thermoledger.db.ledger import LedgerRecord, project_entries
from thermoledger.db.models import RunKind, RunStatus
from thermoledger.db.records import RunRecord
from thermoledger.db.runs import ESTIMATE_LABEL
from thermoledger.db.selection import select_runs
from thermoledger.db.totals import run_usage

from ..deps import SessionDep
from ..economics import MODEL_TAG_KEY, PlanRequest, amortisation, plan, pricing
from ..economics_schemas import (
    AllocationRecord,
    AmortisationPublic,
    BreakEvenRecord,
    ParityRecord,
    PlanPublic,
)
from ..report_schemas import DeviceEnergy, RunReportPublic
from ..reports import run_report, usage_report
from ..routes.reports import csv_response
from ..schemas import TAG_KEY_PATTERN
from ..settings import Settings
from ..timebounds import TimeRange
from . import charts
from .auth import PageTenant
from .quality import metric_chart
from .render import energy_unit, render

__all__ = ["MAX_COMPARE", "MAX_LISTED", "router"]

router = APIRouter(include_in_schema=False)

#: Rows the runs table shows (the totals cover the whole selection).
MAX_LISTED = 200
#: Most runs compared side by side.
MAX_COMPARE = 8

_METHOD_WORDS = {
    "counter": "the GPU's cumulative energy counter (difference of two readings; exact up to "
    "the counter's resolution)",
    "power_avg": "averaged power readings (a 1 s moving average, lag-corrected), integrated "
    "with the trapezoid rule",
    "power_instant": "instantaneous power readings, integrated with the trapezoid rule; they "
    "cover only part of each interval, which the band accounts for",
    "estimate": "an estimate (no direct reading of this device)",
    "mixed": "a mix of methods (the device changed method during the run)",
}
_BOUND_ROWS = (
    ("hardware_roofline", "hardware roofline", "peak FLOP/J at TDP"),
    ("energy_roofline", "energy roofline", "Choi et al. 2013"),
    ("landauer", "Landauer floor", "k_B·T·ln 2 per bit erased"),
)


# --------------------------------------------------------------------------------------------
# Query parsing


def _day(
    text: str | None, field: str, time_range: TimeRange, *, end: bool = False
) -> datetime | None:
    """``YYYY-MM-DD`` (UTC day; ``end`` = the next midnight) or an ISO time with a zone.

    The day or time must lie in the stored time range (`service.timebounds`; 422 naming the
    field otherwise, as in the API). The next midnight of the range's last day may pass the
    range's end; it then stands for "no end", as nothing is stored after it.
    """
    if not text:
        return None
    try:
        if len(text) == 10:
            when = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        else:
            when = datetime.fromisoformat(text)
    except ValueError as e:
        raise InvalidInput.one(field, f"{text!r} is not a date (YYYY-MM-DD)") from e
    if when.tzinfo is None:
        raise InvalidInput.one(field, f"{text!r} has no time zone")
    if not time_range.contains(when):
        raise InvalidInput.one(field, time_range.refusal(repr(text)))
    if end and len(text) == 10:
        next_day = when + timedelta(days=1) if when.date() < date.max else None
        return None if next_day is None or next_day > time_range.latest else next_day
    return when


def _tags(texts: list[str], max_filters: int) -> list[tuple[str, str]]:
    texts = [t for t in texts if t.strip()]
    if len(texts) > max_filters:
        raise InvalidInput.one(
            "tag", f"{len(texts)} tag filters; at most {max_filters} in one query"
        )
    wanted = []
    for i, text in enumerate(texts):
        key, sep, value = text.strip().partition("=")
        if not sep or not TAG_KEY_PATTERN.match(key):
            raise InvalidInput.one(f"tag[{i}]", f"{text!r} is not key=value")
        wanted.append((key, value))
    return wanted


def _enum(kind: type[RunKind] | type[RunStatus], text: str | None, field: str) -> Any:
    if not text:
        return None
    try:
        return kind(text)
    except ValueError as e:
        choices = ", ".join(member.value for member in kind)
        raise InvalidInput.one(field, f"{text!r} is not one of {choices}") from e


# --------------------------------------------------------------------------------------------
# Runs list


@dataclass
class _Total:
    """A figure summed over the measured runs that have it, and the runs that do not."""

    value_sum: float = 0.0
    runs: int = 0
    missing: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def value(self) -> float | None:
        return self.value_sum if self.runs else None

    def add(self, value: float | None, reason: str | None) -> None:
        if value is None:
            self.missing += 1
            self.reasons[reason or "not available"] += 1
        else:
            self.value_sum += value
            self.runs += 1

    @property
    def reason(self) -> str | None:
        """The most common reason a run lacks the figure."""
        return self.reasons.most_common(1)[0][0] if self.reasons else None


def _basis_summary(bases: list[RunBasis]) -> str:
    """``DE grid, PUE 1.1 (hyperscale)`` when every run shares it, else says it is per run."""
    kinds = {(b.context.region, b.context.pue.value, b.context.pue.name) for b in bases}
    if len(kinds) != 1:
        return "each run on its own basis (regions or PUEs differ)"
    ((region, value, name),) = kinds
    where = f"{region} grid" if region else "no region configured"
    return f"{where}, PUE {value:g} ({name})"


@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    """The runs list is the front page."""
    return RedirectResponse("/runs", status_code=307)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(
    request: Request,
    tenant: PageTenant,
    session: SessionDep,
    kind: str | None = None,
    status: str | None = None,
    tag: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies query defaults
    started_after: str | None = None,
    started_before: str | None = None,
) -> HTMLResponse:
    """The project's runs, filtered, with kWh, CO2e and USD totals for the whole selection."""
    settings: Settings = request.app.state.settings
    time_range = TimeRange.of(settings)
    filters = {
        "kind": kind or "",
        "status": status or "",
        "tag": [t for t in tag if t.strip()],
        "started_after": started_after or "",
        "started_before": started_before or "",
    }
    selection = select_runs(
        session,
        project_id=tenant.id,
        kind=_enum(RunKind, kind, "kind"),
        status=_enum(RunStatus, status, "status"),
        tags=_tags(tag, settings.max_tag_filters),
        started_after=_day(started_after, "started_after", time_range),
        started_before=_day(started_before, "started_before", time_range, end=True),
    )
    total_j = selection.total_energy_j
    measured = [r for r in selection.runs if r.id in selection.energy]
    bases = run_bases(session, project_id=tenant.id, runs=measured)
    totals = {figure: _Total() for figure in ("co2e_location", "co2e_market", "energy_cost")}
    co2e: dict[UUID, float | None] = {}
    for run in measured:
        energy_j = selection.energy[run.id].energy_j
        context = bases[run.id].context
        co2e[run.id] = context.co2e_location_g(energy_j)
        for figure, value in (
            ("co2e_location", co2e[run.id]),
            ("co2e_market", context.co2e_market_g(energy_j)),
            ("energy_cost", context.energy_cost_usd(energy_j)),
        ):
            totals[figure].add(value, context.unavailable.get(figure))
    missing = _reasons_once(
        [(figure, total.reason if total.missing else None) for figure, total in totals.items()]
    )
    rows = []
    for run in selection.runs[:MAX_LISTED]:
        energy = selection.energy.get(run.id)
        label = estimate_label(run)
        rows.append(
            {
                "run": run,
                "estimate": None
                if label is None
                else {
                    "energy_j": _number(label.get("it_energy_j")),
                    "source": estimate_source(label),
                },
                "energy_j": None if energy is None else energy.energy_j,
                "co2e_g": co2e.get(run.id),
                "devices": 0 if energy is None else energy.devices,
                "duration_s": None if energy is None else energy.duration_s,
            }
        )
    return render(
        request,
        "runs.html.j2",
        nav="runs",
        project=tenant.slug,
        filters=filters,
        rows=rows,
        count=len(selection.runs),
        truncated=selection.truncated,
        listed=min(len(selection.runs), MAX_LISTED),
        measured=selection.measured_runs,
        total_j=total_j,
        totals=totals,
        missing=missing,
        basis=_basis_summary(list(bases.values())) if bases else None,
        frozen=sum(1 for b in bases.values() if b.frozen),
        estimated=sum(1 for r in selection.runs if estimate_label(r) is not None),
        kinds=[k.value for k in RunKind],
        statuses=[s.value for s in RunStatus],
    )


# --------------------------------------------------------------------------------------------
# Run report


def _energy_axis(*values_j: float | None) -> tuple[str, float]:
    """The unit (and its joules) of an energy chart: the one its largest value reads in."""
    known = [abs(v) for v in values_j if v is not None and math.isfinite(v)]
    return energy_unit(max(known, default=0.0))


def _mfu_reason(report: RunReportPublic) -> str:
    """Why the report has no MFU, and what to do about it.

    MFU needs FLOPs (declared, or 6·N·D / 2·N per token from a model size and tokens), a
    catalog peak at the run's precision for every accelerator, and a measured duration; the
    tile used to blame missing FLOPs for all of these. The words come from the report: its
    declared work, its devices' catalog ids, the bounds' own reasons and its notes.
    """
    work = report.work
    if work.flops is None:
        if work.tokens and not work.model_params:
            return "no FLOPs: tokens declared, but no model size (declare_model(params=…))"
        if work.model_params and not work.tokens:
            return "no FLOPs: a model size declared, but no tokens (add_tokens)"
        return "no FLOPs declared (add_flops, or a model size and tokens)"
    bounds = report.bounds
    if bounds is not None:
        why = bounds.unavailable.get("hardware_roofline")
        return f"FLOPs declared, but no catalog peak at {work.dtype}" + (f": {why}" if why else "")
    uncatalogued = sorted(
        {d.name for d in report.energy.by_device if d.counted and d.catalog_id is None}
    )
    for note in report.notes:
        head, _, why = note.partition(": ")
        if head not in ("bounds skipped", "bounds unavailable"):
            continue
        if "hardware catalog" in why and uncatalogued:
            names = ", ".join(repr(n) for n in uncatalogued)
            return f"FLOPs declared, but no catalog peak for {names} (not in the hardware catalog)"
        return f"FLOPs declared, but {why}"
    return "FLOPs declared, but the bounds could not be computed (see the notes)"


def _bounds_reason(report: RunReportPublic) -> str:
    """Why the bounds section is empty: the same cause as the MFU's when there are no bounds."""
    return _mfu_reason(report)


@dataclass(frozen=True, slots=True)
class _Missing:
    """A figure that is not available, with its reason; ``first`` when no earlier figure of
    the section gave the same reason (the page prints a reason once, then refers to it)."""

    reason: str
    first: bool


def _reasons_once(reasons: list[tuple[str, str | None]]) -> dict[str, _Missing]:
    """Figure → its missing reason, each distinct reason marked ``first`` once, in order."""
    seen: set[str] = set()
    out = {}
    for figure, reason in reasons:
        if reason is None:
            continue
        out[figure] = _Missing(reason, reason not in seen)
        seen.add(reason)
    return out


def _statement_once(lines: list[str], shown: set[str]) -> list[str]:
    """The basis statement's lines, with a reason the section already printed referred to
    instead of repeated (``tariff: not available (the reason above)``)."""
    out = []
    for line in lines:
        for reason in shown:
            line = line.replace(f": {reason}", " (the reason above)")
        out.append(line)
    return out


def _method_lines(devices: list[DeviceEnergy]) -> list[str]:
    counts = Counter(d.method for d in devices)
    return [
        f"{n} device{'s' if n != 1 else ''}: {_METHOD_WORDS.get(method, method)}"
        for method, n in counts.most_common()
    ]


def _uncertainty(report: RunReportPublic) -> dict[str, Any]:
    total = report.energy.total
    energy, low, high = total.energy_j, total.energy_low_j, total.energy_high_j
    devices = report.energy.by_device
    return {
        "energy_j": energy,
        "low_j": low,
        "high_j": high,
        "below_pct": (energy - low) / energy if energy else None,
        "above_pct": None if high is None or not energy else (high - energy) / energy,
        "gaps": sum(d.gap_count for d in devices),
        "gap_s": sum(d.gap_s for d in devices),
        "resets": sum(d.reset_count for d in devices),
    }


def _bounds_rows(report: RunReportPublic, flops: float) -> list[charts.StripRow]:
    bounds = report.bounds
    # The energy the bounds were worked out with: the GPUs' where the node had more metered.
    by_kind = report.energy.by_kind
    measured_j = by_kind.get("gpu", report.energy.total).energy_j
    rows = [
        charts.StripRow(
            "measured",
            (measured_j / flops,),
            "#1b1b1b",
            note=f"{measured_j / flops:.3g} J/FLOP = {flops / measured_j:.3g} FLOP/J",
            series="measured",
        )
    ]
    for i, (key, label, basis) in enumerate(_BOUND_ROWS):
        bound = None if bounds is None else getattr(bounds, key)
        if bound is None:
            continue
        orders = bound.orders_of_magnitude
        rows.append(
            charts.StripRow(
                f"{label} ({basis})",
                (bound.bound_j_per_flop,),
                charts.color(i),
                note=f"{bound.bound_j_per_flop:.3g} J/FLOP; measured is {orders:+.2f} orders above",
                series=key,
            )
        )
    return rows


def _assumption_lines(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A nested assumptions mapping as (key path, text) lines."""
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out.extend(
                _assumption_lines(item, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
            )
        return out
    if isinstance(value, list):
        return [(prefix, ", ".join(str(v) for v in value))]
    if isinstance(value, float):
        return [(prefix, f"{value:.4g}")]
    return [(prefix, "n/a" if value is None else str(value))]


def estimate_label(run: RunRecord) -> dict[str, Any] | None:
    """The run's ``host_info["estimate"]`` (`service.routes.estimates.label`), when it is an
    estimated run: its figures are in the ledger, not in chunks."""
    label = run.host_info.get(ESTIMATE_LABEL)
    return dict(label) if isinstance(label, dict) else None


def estimate_source(label: dict[str, Any]) -> str:
    """``Cloud bill, March (invoice 42, p. 2)``: where an estimate's inputs come from."""
    where = [str(label[k]) for k in ("document",) if label.get(k)]
    if label.get("page"):
        page = str(label["page"])
        # "p. 12", but a location that names itself ("Table 4", "line 7") stays as it is
        where.append(f"p. {page}" if page[:1].isdigit() else page)
    source = str(label.get("source") or "no source given")
    return f"{source} ({', '.join(where)})" if where else source


@dataclass(frozen=True, slots=True)
class _EstimateFigure:
    """A current ledger figure of an estimated run, with its band where one follows."""

    figure: str
    label: str
    unit: str
    value: float
    low: float | None
    high: float | None
    seq: int
    note: str


_ESTIMATE_FIGURES = {
    "it_energy": ("IT energy", "J"),
    "facility_energy": ("facility energy (IT × PUE)", "J"),
    "co2e_location": ("CO2e, location-based", "gCO2e"),
    "co2e_market": ("CO2e, market-based", "gCO2e"),
    "energy_cost": ("energy cost", "USD"),
}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _estimate_figures(entries: list[LedgerRecord]) -> list[_EstimateFigure]:
    """The current (not superseded) figures of an estimated run, in `_ESTIMATE_FIGURES` order.

    Bands: IT energy's from its ``measurement`` record, facility energy's and an estimate's own
    CO2e's from their entries; a figure derived from the facility energy by an exact factor
    (the project's grid factor, its tariff) scales the facility band, as it scales the value.
    """
    current = {e.figure: e for e in entries if e.superseded_by is None}
    out: list[_EstimateFigure] = []
    facility = current.get("facility_energy")
    ratio: tuple[float, float] | None = None
    if facility is not None and facility.value_si > 0:
        low = _number(facility.provenance.get("band_low_j"))
        high = _number(facility.provenance.get("band_high_j"))
        if low is not None and high is not None:
            ratio = (low / facility.value_si, high / facility.value_si)
    for figure, (label, unit) in _ESTIMATE_FIGURES.items():
        entry = current.get(figure)
        if entry is None:
            continue
        provenance = entry.provenance
        band = provenance.get("measurement", provenance)
        suffix = "_g" if unit == "gCO2e" else "_j"
        low = _number(band.get(f"band_low{suffix}")) if isinstance(band, dict) else None
        high = _number(band.get(f"band_high{suffix}")) if isinstance(band, dict) else None
        note = "declared (the estimate's inputs)" if figure == "it_energy" else "derived"
        if low is None and ratio is not None and figure != "it_energy":
            low, high = entry.value_si * ratio[0], entry.value_si * ratio[1]
            note = "derived; band: the facility energy's, scaled"
        out.append(_EstimateFigure(figure, label, unit, entry.value_si, low, high, entry.seq, note))
    return out


#: The energy decomposition's parts, in drawing order, with their colours and formulas.
_DECOMPOSITION_PARTS: tuple[tuple[str, str, str], ...] = (
    ("constant", "#9c755f", "π0·T"),
    ("compute", "#4e79a7", "W·ε_flop"),
    ("memory", "#59a14f", "Q·ε_mem"),
    ("unexplained", "#bab0ac", "the rest"),
)


def _decomposition_chart(report: RunReportPublic) -> charts.Chart | None:
    """The decomposition as one stacked bar against the measured energy (available parts
    with a positive value only; the table beside it has every part, its band and reason)."""
    decomposition = report.energy_decomposition
    if decomposition is None:
        return None
    unit, scale = _energy_axis(decomposition.measured_j)
    parts = decomposition.components
    segments = []
    for name, color, formula in _DECOMPOSITION_PARTS:
        part = getattr(parts, name)
        value = part.energy_j if part.energy_j is not None else 0.0
        note = formula if part.energy_j is not None else f"not available: {part.reason}"
        segments.append(charts.Segment(name, value, color, note))
    return charts.stacked_bar(
        "decomposition",
        "The measured energy as constant, compute, memory and unexplained parts",
        segments,
        total=decomposition.measured_j,
        total_label="measured",
        unit=unit,
        scale=scale,
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def report_page(
    run_id: UUID, request: Request, tenant: PageTenant, session: SessionDep
) -> HTMLResponse:
    """The run report: power over time, energy by device and phase, bounds, cost and carbon."""
    usage = run_usage(session, project_id=tenant.id, run_id=run_id)
    metrics = metric_chart(session, tenant=tenant, run_id=run_id)
    if not usage.devices:
        estimate = estimate_label(usage.run)
        if estimate is not None:
            return render(
                request,
                "report_estimate.html.j2",
                nav="runs",
                project=tenant.slug,
                run=usage.run,
                estimate=estimate,
                source=estimate_source(estimate),
                figures=_estimate_figures(
                    project_entries(session, project_id=tenant.id, run_id=run_id)
                ),
                metrics=metrics,
            )
        return render(
            request,
            "report_empty.html.j2",
            nav="runs",
            project=tenant.slug,
            run=usage.run,
            ended=usage.run.status != RunStatus.RUNNING,
            metrics=metrics,
        )
    report = usage_report(session, project_id=tenant.id, usage=usage)
    envelope = envelope_of(session, usage=usage)
    devices = report.energy.by_device
    device_unit, device_j = _energy_axis(*(d.energy_high_j or d.energy_j for d in devices))
    colors = {d.key: charts.color(i) for i, d in enumerate(devices)}
    phases = [charts.PhaseSpan(p.name, p.t0_s, p.t1_s) for p in report.energy.by_phase]
    power = charts.power_chart(envelope, phases, colors)
    by_device = charts.bar_chart(
        "energy-by-device",
        "Energy by device, with its uncertainty band",
        [
            charts.Bar(
                d.key, d.energy_j, d.energy_low_j, d.energy_high_j, colors[d.key], note=d.method
            )
            for d in devices
        ],
        unit=device_unit,
        scale=device_j,
    )
    by_phase = None
    if report.energy.by_phase:
        phase_unit, phase_j = _energy_axis(
            *(p.energy_high_j or p.energy_j for p in report.energy.by_phase)
        )
        by_phase = charts.bar_chart(
            "energy-by-phase",
            "Energy by phase, with its uncertainty band",
            [
                charts.Bar(p.name, p.energy_j, p.energy_low_j, p.energy_high_j, "#6b7b8c")
                for p in report.energy.by_phase
            ],
            unit=phase_unit,
            scale=phase_j,
        )
    bounds_chart = None
    bounds_assumptions: dict[str, list[tuple[str, str]]] = {}
    if report.bounds is not None and report.work.flops:
        bounds_chart = charts.strip_chart(
            "bounds",
            "Measured energy per FLOP against the three bounds",
            _bounds_rows(report, report.work.flops),
            unit="J/FLOP",
        )
        for key, label, _ in _BOUND_ROWS:
            bound = getattr(report.bounds, key)
            if bound is not None:
                bounds_assumptions[label] = _assumption_lines(bound.assumptions)
    decomposition_chart = _decomposition_chart(report)
    carbon, cost = report.carbon, report.cost
    priced = cost.energy_usd is not None or cost.hardware_usd is not None
    missing = _reasons_once(
        [
            (
                "co2e_location",
                None
                if carbon.location_based.co2e_g is not None
                else carbon.location_based.reason or "not available",
            ),
            (
                "co2e_market",
                None
                if carbon.market_based.co2e_g is not None
                else carbon.market_based.reason or "not available",
            ),
            ("cost", None if priced else cost.energy_reason or "no tariff applies"),
        ]
    )
    shown = {m.reason for m in missing.values()}
    return render(
        request,
        "report.html.j2",
        nav="runs",
        project=tenant.slug,
        run=usage.run,
        report=report,
        power=power,
        envelope=envelope,
        by_device=by_device,
        by_phase=by_phase,
        bounds_chart=bounds_chart,
        bounds_assumptions=bounds_assumptions,
        bounds_reason=_bounds_reason(report),
        decomposition_chart=decomposition_chart,
        mfu_reason=None if report.efficiency.mfu is not None else _mfu_reason(report),
        missing=missing,
        statement=_statement_once(list(report.accounting.statement), shown),
        methods=_method_lines(devices),
        uncertainty=_uncertainty(report),
        colors=colors,
        by_kind_shown=len(report.energy.by_kind) > 1 or not all(d.counted for d in devices),
        metrics=metrics,
    )


@router.get("/runs/{run_id}/report.json")
def report_json(run_id: UUID, tenant: PageTenant, session: SessionDep) -> JSONResponse:
    """The JSON report (as ``GET /api/v1/runs/{id}/report``), for a signed-in browser."""
    report = run_report(session, project_id=tenant.id, run_id=run_id)
    return JSONResponse(
        report.model_dump(mode="json"),
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}.json"'},
    )


@router.get("/runs/{run_id}/report.csv")
def report_csv_page(run_id: UUID, tenant: PageTenant, session: SessionDep) -> Response:
    """The CSV report (as ``GET /api/v1/runs/{id}/report.csv``), for a signed-in browser."""
    return csv_response(run_report(session, project_id=tenant.id, run_id=run_id))


# --------------------------------------------------------------------------------------------
# Compare


_COMPARED = (
    # (key, label, unit, display scale); energy's unit is picked by size (`_energy_axis`)
    ("energy", "Energy", "J", 1.0),
    ("j_per_token", "Energy per token", "J/token", 1.0),
    ("flop_per_j", "Efficiency", "FLOP/J", 1.0),
    ("cost", "Cost", "USD", 1.0),
    ("co2e", "Emissions (location-based)", "gCO2e", 1.0),
)


def _compared_value(
    report: RunReportPublic, key: str
) -> tuple[float | None, float | None, float | None]:
    if key == "energy":
        total = report.energy.total
        return total.energy_j, total.energy_low_j, total.energy_high_j
    if key == "cost":
        cost = report.cost
        priced = cost.energy_usd is not None or cost.hardware_usd is not None
        return (cost.total_usd if priced else None), None, None
    if key == "co2e":
        return report.carbon.location_based.co2e_g, None, None
    value: float | None = getattr(report.efficiency, key)
    return value, None, None


@dataclass(frozen=True, slots=True)
class _Column:
    run: RunRecord
    report: RunReportPublic | None
    color: str


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    tenant: PageTenant,
    session: SessionDep,
    run: Annotated[list[UUID], Query()] = [],  # noqa: B006 - FastAPI copies query defaults
) -> HTMLResponse:
    """Runs side by side: energy, J/token, FLOP/J, cost and CO2e."""
    ids = list(dict.fromkeys(run))
    if len(ids) > MAX_COMPARE:
        raise InvalidInput.one("run", f"{len(ids)} runs; compare at most {MAX_COMPARE}")
    columns = []
    for i, run_id in enumerate(ids):
        usage = run_usage(session, project_id=tenant.id, run_id=run_id)
        report = None
        if usage.devices:
            report = usage_report(session, project_id=tenant.id, usage=usage)
        columns.append(_Column(usage.run, report, charts.color(i)))
    metric_charts = []
    for key, label, unit, scale in _COMPARED:
        bars = []
        for c in columns:
            if c.report is None:
                continue
            value, low, high = _compared_value(c.report, key)
            bars.append(charts.Bar(c.run.name, value, low, high, c.color))
        if key == "energy":
            unit, scale = _energy_axis(*(b.high or b.value for b in bars))
        if any(bar.value is not None for bar in bars):
            metric_charts.append(
                (label, charts.bar_chart(f"compare-{key}", label, bars, unit=unit, scale=scale))
            )
    return render(
        request,
        "compare.html.j2",
        nav="runs",
        project=tenant.slug,
        columns=columns,
        metric_charts=metric_charts,
        max_compare=MAX_COMPARE,
    )


# --------------------------------------------------------------------------------------------
# Models and amortisation


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, tenant: PageTenant, session: SessionDep) -> HTMLResponse:
    """Every model tag in the project, with its training and inference run counts."""
    selection = select_runs(session, project_id=tenant.id)
    models: dict[str, Counter[str]] = {}
    for run in selection.runs:
        tag = run.tags.get(MODEL_TAG_KEY)
        if isinstance(tag, str) and tag:
            models.setdefault(tag, Counter())[run.kind.value] += 1
    return render(
        request,
        "models.html.j2",
        nav="models",
        project=tenant.slug,
        models=sorted(models.items()),
        tag_key=MODEL_TAG_KEY,
        truncated=selection.truncated,
    )


def _amortisation_charts(answer: AmortisationPublic) -> list[tuple[str, charts.Chart]]:
    curve = answer.curve
    other = answer.compare
    tokens = curve.tokens_served
    metrics = (
        ("j_per_token", "floor_j_per_token", "Energy per token", "J/token", "energy"),
        (
            "co2e_g_per_token",
            "floor_co2e_g_per_token",
            "Emissions per token",
            "gCO2e/token",
            "co2e",
        ),
        ("usd_per_token", "floor_usd_per_token", "Cost per token", "USD/token", "usd"),
    )
    out = []
    for key, floor_key, title, unit, metric in metrics:
        values: list[float] | None = getattr(curve, key)
        if values is None:
            continue
        lines = [charts.Curve(f"{answer.model_tag}: amortised", charts.color(0), tuple(values))]
        floor: float | None = getattr(curve, floor_key)
        if floor:
            lines.append(
                charts.Curve(
                    f"{answer.model_tag}: inference only",
                    charts.color(0),
                    (floor,) * len(tokens),
                    True,
                )
            )
        markers = []
        if answer.tokens_served_so_far > 0:
            markers.append(charts.Marker(answer.tokens_served_so_far, "served so far", "served"))
        parity: ParityRecord | None = getattr(answer.parity, metric)
        if parity is not None and parity.tokens:
            markers.append(charts.Marker(parity.tokens, "training = inference", "parity"))
        other_values: list[float] | None = None if other is None else getattr(other.curve, key)
        if other is not None and other_values is not None:
            lines.append(
                charts.Curve(f"{other.model_tag}: amortised", charts.color(1), tuple(other_values))
            )
            even: BreakEvenRecord | None = getattr(other.break_even, metric)
            if even is not None and even.tokens:
                markers.append(charts.Marker(even.tokens, "break-even", "break-even"))
        out.append(
            (
                title,
                charts.curve_chart(
                    f"amortisation-{metric}",
                    f"{title} as a function of tokens served",
                    tokens,
                    lines,
                    x_unit="tokens served",
                    y_unit=unit,
                    markers=markers,
                ),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class _ModelGaps:
    """What a model's runs have, when they do not have enough to amortise."""

    training_runs: int
    measured_training_runs: int
    inference_runs: int
    inference_runs_with_tokens: int


def _model_gaps(
    session: SessionDep, *, project_id: int, model_tag: str, assumed: bool
) -> _ModelGaps | None:
    """What keeps ``model_tag`` from an amortisation, or None when nothing does.

    The amortisation needs a measured training run and an inference run with measurements
    and declared tokens (or an assumed J/token). Without them `service.economics.amortisation`
    refuses with a 409 — right for the API, a dead end for a reader; the page shows what
    is there and how to tag the missing runs instead. A tag no run carries is left to the
    amortisation's 404.
    """
    tags = [(MODEL_TAG_KEY, model_tag)]
    training = select_runs(session, project_id=project_id, kind=RunKind.TRAINING, tags=tags)
    inference = select_runs(session, project_id=project_id, kind=RunKind.INFERENCE, tags=tags)
    if not training.runs and not inference.runs:
        return None
    served = sum(
        1 for r in inference.runs if r.id in inference.energy and (r.declared_tokens or 0) > 0
    )
    if training.measured_runs and (served or assumed):
        return None
    return _ModelGaps(
        training_runs=len(training.runs),
        measured_training_runs=training.measured_runs,
        inference_runs=len(inference.runs),
        inference_runs_with_tokens=served,
    )


@router.get("/models/{model_tag}", response_class=HTMLResponse)
def model_page(
    model_tag: str,
    request: Request,
    tenant: PageTenant,
    session: SessionDep,
    tokens_served: Annotated[float | None, Query(gt=0, le=1e30)] = None,
    inference_j_per_token: Annotated[float | None, Query(ge=0, le=1e9)] = None,
    compare: str | None = None,
    region: str | None = None,
    pue: str | None = None,
    tariff_usd_per_kwh: Annotated[float | None, Query(ge=0, le=100)] = None,
) -> HTMLResponse:
    """Amortised J/token, gCO2e/token and USD/token of a model over tokens served; or, while
    its runs cannot give one yet, what is missing and how to tag the runs that would."""
    gaps = _model_gaps(
        session,
        project_id=tenant.id,
        model_tag=model_tag,
        assumed=inference_j_per_token is not None,
    )
    if gaps is not None:
        return render(
            request,
            "model_missing.html.j2",
            nav="models",
            project=tenant.slug,
            model_tag=model_tag,
            tag_key=MODEL_TAG_KEY,
            gaps=gaps,
        )
    answer = amortisation(
        session,
        project_id=tenant.id,
        model_tag=model_tag,
        pricing=pricing(
            region=region or None, pue=pue or None, tariff_usd_per_kwh=tariff_usd_per_kwh
        ),
        tokens_served=tokens_served,
        inference_j_per_token=inference_j_per_token,
        compare=compare or None,
    )
    query = {
        "tokens_served": tokens_served,
        "inference_j_per_token": inference_j_per_token,
        "compare": compare or "",
        "region": region or "",
        "pue": pue or "",
        "tariff_usd_per_kwh": tariff_usd_per_kwh,
    }
    return render(
        request,
        "model.html.j2",
        nav="models",
        project=tenant.slug,
        answer=answer,
        charts=_amortisation_charts(answer),
        query=query,
        regions=sorted(default_emission_factors()),
        pues=list(default_pues()),
    )


# --------------------------------------------------------------------------------------------
# Planning


#: The inference-aware inputs (`PlanRequest`): a target loss and a lifetime inference demand.
_INFERENCE_FIELDS = (
    "target_loss",
    "inference_tokens",
    "test_time_multiplier",
    "queries",
    "inference_flop_per_j",
    "objective",
)
_PLAN_FIELDS = (
    "n_params",
    "n_tokens",
    "hardware",
    "n_devices",
    "dtype",
    "mfu",
    "region",
    "pue",
    "tariff_usd_per_kwh",
    "device_hour_usd",
    *_INFERENCE_FIELDS,
)
#: The objectives the inference-aware optimum can minimise (`PlanRequest.objective`).
_OBJECTIVES = (("energy", "energy (J)"), ("usd", "cost (USD)"), ("co2e", "emissions (gCO2e)"))


def _plan_form(params: dict[str, str]) -> tuple[PlanRequest | None, list[str]]:
    """The form's request, or the problems to show beside it (a form, not an API: no 422).

    A plan needs the hardware and either N and D or a target loss (the planner then picks N
    and D); until the form has them it shows no problem, only the form.
    """
    given = {k: v.strip() for k, v in params.items() if k in _PLAN_FIELDS and v.strip()}
    if "hardware" not in given or not (
        {"n_params", "n_tokens"} <= given.keys() or "target_loss" in given
    ):
        return None, []
    try:
        body = PlanRequest.model_validate(given)
        body.check_shape()
    except pydantic.ValidationError as e:
        return None, [
            f"{'.'.join(str(p) for p in error['loc']) or 'form'}: {error['msg']}"
            for error in e.errors()
        ]
    except InvalidInput as e:
        return None, [f"{p.field}: {p.message}" for p in e.problems]
    return body, []


def _plan_charts(result: PlanPublic) -> list[tuple[str, charts.Chart]]:
    energy = result.energy
    unit, j_per_unit = _energy_axis(energy.energy_j_high, energy.energy_j_central)
    out = [
        (
            "Energy estimate",
            charts.bar_chart(
                "plan-energy",
                "Planned energy: central estimate and range",
                [
                    charts.Bar(
                        "planned run",
                        energy.energy_j_central,
                        energy.energy_j_low,
                        energy.energy_j_high,
                        charts.color(0),
                    )
                ],
                unit=unit,
                scale=j_per_unit,
            ),
        )
    ]
    rows = [
        charts.StripRow(r.name, (r.flop_per_j,), charts.color(1), series=f"run-{r.id}")
        for r in result.basis.runs
    ]
    rows.append(
        charts.StripRow(
            "range used",
            (energy.flop_per_j_low, energy.flop_per_j_central, energy.flop_per_j_high),
            charts.color(0),
            note=f"median {energy.flop_per_j_central:.3g} FLOP/J",
            series="range",
        )
    )
    out.append(
        (
            "Efficiency basis",
            charts.strip_chart("plan-basis", "FLOP/J the plan rests on", rows, unit="FLOP/J"),
        )
    )
    return out


def _allocations(result: PlanPublic) -> list[tuple[str, str, AllocationRecord]]:
    """The inference-aware table's columns: (key, heading, allocation), optimum first."""
    aware = result.inference_aware
    if aware is None:
        return []
    out = [
        ("optimum", f"optimum (least {aware.objective})", aware.optimum),
        ("chinchilla", "Chinchilla (compute-optimal)", aware.chinchilla),
    ]
    if aware.given is not None:
        out.append(("given", "planned (N, D)", aware.given))
    return out


@router.get("/plan", response_class=HTMLResponse)
def plan_page(request: Request, tenant: PageTenant, session: SessionDep) -> HTMLResponse:
    """Plan a training run: the form, and the estimate once N, D and the hardware are given."""
    params = dict(request.query_params)
    body, problems = _plan_form(params)
    result = None
    if body is not None:
        try:
            result = plan(session, project_id=tenant.id, request=body)
        except InvalidInput as e:  # a target too close to E, no price for the objective
            problems = [f"{p.field}: {p.message}" for p in e.problems]
    catalog = builtin_catalog()
    return render(
        request,
        "plan.html.j2",
        nav="plan",
        project=tenant.slug,
        form={k: params.get(k, "") for k in _PLAN_FIELDS},
        problems=problems,
        result=result,
        plan_charts=[] if result is None else _plan_charts(result),
        aware=None if result is None else result.inference_aware,
        allocations=[] if result is None else _allocations(result),
        objectives=_OBJECTIVES,
        hardware=[(e.id, e.name) for e in catalog],
        regions=sorted(default_emission_factors()),
        pues=list(default_pues()),
    )
