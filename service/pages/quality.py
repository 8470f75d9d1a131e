"""Energy to quality on the pages: a run's metric-vs-energy chart and the ``/quality`` page.

The figures are the JSON API's (``GET /api/v1/runs/{id}/metrics``, ``/quality/pareto`` and
``/quality/trend``), read through the same functions (`service.routes.metrics_api.get_metrics`,
`service.quality`), so a chart and its JSON never disagree. The page adds only geometry: the
Pareto scatter of each run's best value against what reaching it cost (energy, or CO2e / USD
where the runs are priced), with the chosen front highlighted, and the trend of
joules-to-target against each run's start (log y) with the fitted halving line and Hernandez &
Brown's 16-month halving beside it, both drawn through the fit's value at its reference time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from thermoledger.accounting.quality import DAYS_PER_MONTH
from thermoledger.db.metrics import METRIC_NAME_PATTERN, project_metric_names

from ..deps import SessionDep
from ..quality import pareto, trend
from ..quality_schemas import Direction, ParetoPublic, RunMetricsPublic, TrendPublic
from ..routes.metrics_api import get_metrics
from . import charts
from .auth import PageTenant
from .render import energy_unit, render

__all__ = [
    "COSTS",
    "HERNANDEZ_BROWN_MONTHS",
    "MetricChart",
    "metric_chart",
    "pareto_chart",
    "router",
    "trend_chart",
]

router = APIRouter(include_in_schema=False)

#: The halving time Hernandez & Brown 2020 measured (AlexNet-level accuracy, 2012-2019), months.
HERNANDEZ_BROWN_MONTHS = 16.0
#: Most metric names the /quality form offers (most runs first).
MAX_LISTED_METRICS = 200
#: The Pareto page's cost axes: key → (record field, label, unit word).
COSTS: dict[str, tuple[str, str]] = {
    "energy": ("energy_j", "energy"),
    "co2e": ("co2e_g", "CO2e, location-based (gCO2e)"),
    "usd": ("usd", "energy cost (USD)"),
}
#: Metric points that count tokens, not quality: listed, not drawn beside a loss.
_COUNTERS = frozenset({"tokens_seen"})
_S_PER_MONTH = DAYS_PER_MONTH * 86_400.0


# --------------------------------------------------------------------------------------------
# A run's metrics against its cumulative energy


@dataclass(frozen=True, slots=True)
class MetricChart:
    """A run's metric points as the run page shows them.

    Attributes:
        answer: ``GET /runs/{id}/metrics``'s answer.
        chart: Metric vs cumulative energy (None when no point has energy).
        names: The metrics, with their point counts.
        left_out: Metrics not drawn (token counters beside a quality metric).
        primary: The first metric drawn (the one the page links to the project's fronts).
    """

    answer: RunMetricsPublic
    chart: charts.Chart | None
    names: list[tuple[str, int]]
    left_out: list[str]
    primary: str


def metric_chart(session: SessionDep, *, tenant: Any, run_id: UUID) -> MetricChart | None:
    """The run's metric-vs-energy chart (one line per metric, the energy band shaded along
    x), or None when the run recorded no metric."""
    answer = get_metrics(run_id, tenant, session)
    if not answer.points:
        return None
    by_name: dict[str, list[Any]] = {}
    for p in answer.points:
        by_name.setdefault(p.name, []).append(p)
    drawn = [n for n in by_name if n not in _COUNTERS] or list(by_name)
    left_out = [n for n in by_name if n not in drawn]
    with_energy = [p for n in drawn for p in by_name[n] if p.energy_j is not None]
    chart = None
    if with_energy:
        unit, j_per_unit = energy_unit(max(p.energy_j for p in with_energy))
        series = []
        for i, name in enumerate(drawn):
            points = [p for p in by_name[name] if p.energy_j is not None]
            series.append(
                charts.XYSeries(
                    name,
                    charts.color(i),
                    tuple(p.energy_j / j_per_unit for p in points),
                    tuple(p.value for p in points),
                    x_low=tuple((p.energy_low_j or 0.0) / j_per_unit for p in points),
                    x_high=tuple(
                        None if p.energy_high_j is None else p.energy_high_j / j_per_unit
                        for p in points
                    ),
                    tips=tuple(
                        f"{name} = {p.value:.4g} at step {p.step}, "
                        f"{p.energy_j / j_per_unit:.4g} {unit}"
                        for p in points
                    ),
                )
            )
        chart = charts.xy_chart(
            "metric-energy",
            "Metric against the run's cumulative energy (band: the energy's uncertainty)",
            series,
            x_label=f"cumulative IT energy ({unit})",
            y_label=drawn[0] if len(drawn) == 1 else "metric value (each in its own unit)",
        )
    names = [(n, len(v)) for n, v in by_name.items()]
    return MetricChart(answer, chart, names, left_out, drawn[0])


# --------------------------------------------------------------------------------------------
# The project's Pareto fronts and trend


def _cost_axis(answer: ParetoPublic, cost: str) -> tuple[str, float]:
    label = COSTS[cost][1]
    if cost != "energy":
        return label, 1.0
    values = [r.energy_j for r in answer.runs if r.energy_j is not None]
    unit, j_per_unit = energy_unit(max(values, default=0.0))
    return f"IT energy to reach the best value ({unit})", j_per_unit


def _spread(values: list[float]) -> bool:
    """Whether values span enough orders of magnitude for a log axis."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and bool(values) and max(values) > 30 * min(values)


def pareto_chart(answer: ParetoPublic, cost: str) -> charts.Chart | None:
    """Each run's best value against its cost, the front on ``cost`` highlighted and joined."""
    field, _ = COSTS[cost]
    label, scale = _cost_axis(answer, cost)
    rows = [r for r in answer.runs if getattr(r, field) is not None]
    if not rows:
        return None
    xs = tuple(getattr(r, field) / scale for r in rows)
    on_front = tuple(bool(getattr(r, f"on_{cost}_front")) for r in rows)
    front = sorted((x, r.best_value) for x, r, on in zip(xs, rows, on_front, strict=True) if on)
    series = [
        charts.XYSeries(
            "runs",
            charts.color(0),
            xs,
            tuple(r.best_value for r in rows),
            style="points",
            highlight=on_front,
            tips=tuple(
                f"{r.name}: {r.best_value:.4g} at {x:.4g}" + (" (on the front)" if on else "")
                for r, x, on in zip(rows, xs, on_front, strict=True)
            ),
        ),
        charts.XYSeries(
            "front",
            charts.color(2),
            tuple(x for x, _ in front),
            tuple(y for _, y in front),
            style="dashed",
        ),
    ]
    return charts.xy_chart(
        f"pareto-{cost}",
        f"{answer.metric} against {COSTS[cost][1]}: every run's best value, the front joined",
        series,
        x_label=label,
        y_label=answer.metric,
        log_x=_spread(list(xs)),
    )


def _start_s(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


def halving_words(answer: TrendPublic) -> str | None:
    """``halving every 14.2 months [9.1, 31.0] (95 % interval, 5 runs)``, or why not."""
    fit = answer.fit
    if fit is None:
        return None
    level = f"{fit.confidence * 100:g} % interval, {fit.n} runs"
    if fit.halving_months is None:
        return (
            f"not halving: joules-to-target change by {fit.slope_log2_per_month:+.3g} doublings "
            f"a month [{fit.slope_low:+.3g}, {fit.slope_high:+.3g}] ({level})"
        )
    low = "n/a" if fit.halving_low_months is None else f"{fit.halving_low_months:.3g}"
    high = "unbounded" if fit.halving_high_months is None else f"{fit.halving_high_months:.3g}"
    return f"halving every {fit.halving_months:.3g} months [{low}, {high}] ({level})"


def trend_chart(answer: TrendPublic) -> charts.Chart | None:
    """Joules-to-target against each run's start (log y), the fit and the 16-month reference."""
    if not answer.runs:
        return None
    starts = tuple(_start_s(r.started_at) for r in answer.runs)
    unit, j_per_unit = energy_unit(max(r.energy_j for r in answer.runs))
    series = [
        charts.XYSeries(
            "runs",
            charts.color(0),
            starts,
            tuple(r.energy_j / j_per_unit for r in answer.runs),
            style="points",
            tips=tuple(
                f"{r.name}: {r.energy_j / j_per_unit:.4g} {unit} to reach {answer.target:g} "
                f"(step {r.step})"
                for r in answer.runs
            ),
        )
    ]
    fit = answer.fit
    if fit is not None:
        ends = (min(starts), max(starts))

        def line(slope_per_month: float) -> tuple[float, ...]:
            log2_j = [
                fit.intercept_log2_j + slope_per_month * (t - fit.reference_s) / _S_PER_MONTH
                for t in ends
            ]
            return tuple(2.0**v / j_per_unit for v in log2_j)

        series.append(
            charts.XYSeries(
                "fitted halving" if fit.halving_months is not None else "fitted trend",
                charts.color(2),
                ends,
                line(fit.slope_log2_per_month),
            )
        )
        series.append(
            charts.XYSeries(
                f"Hernandez & Brown: {HERNANDEZ_BROWN_MONTHS:g}-month halving",
                charts.color(4),
                ends,
                line(-1.0 / HERNANDEZ_BROWN_MONTHS),
                style="dashed",
            )
        )
    return charts.xy_chart(
        "trend",
        f"Joules to reach {answer.metric} {'≤' if answer.direction == 'lower' else '≥'} "
        f"{answer.target:g}, by run start",
        series,
        x_label="run start (UTC date)",
        y_label=f"IT energy to reach the target ({unit})",
        log_y=True,
        x_dates=True,
    )


def _float(text: str, field: str, problems: list[str]) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{field}: {text!r} is not a number")
        return None
    if not math.isfinite(value):
        problems.append(f"{field}: {text!r} is not a finite number")
        return None
    return value


@router.get("/quality", response_class=HTMLResponse)
def quality_page(
    request: Request,
    tenant: PageTenant,
    session: SessionDep,
    metric: str = "",
    target: str = "",
    direction: str = "lower",
    cost: str = "energy",
) -> HTMLResponse:
    """Energy to quality across the project: Pareto fronts and the joules-to-target trend."""
    problems: list[str] = []
    recorded, _ = project_metric_names(session, project_id=tenant.id, limit=MAX_LISTED_METRICS)
    # no metric asked for: the one most runs recorded (eval_loss when none has any)
    metric = metric.strip() or (recorded[0].name if recorded else "eval_loss")
    if not METRIC_NAME_PATTERN.match(metric):
        shown = metric if len(metric) <= 64 else metric[:64] + "…"
        problems.append(f"metric: {shown!r} is not a metric name (1-64 of letters, digits, _.:/-)")
    if direction not in ("lower", "higher"):
        problems.append(f"direction: {direction!r} is not one of lower, higher")
        direction = "lower"
    if cost not in COSTS:
        problems.append(f"cost: {cost!r} is not one of {', '.join(COSTS)}")
        cost = "energy"
    target_value = _float(target, "target", problems)
    fronts = trend_answer = None
    direction_: Direction = "higher" if direction == "higher" else "lower"
    if not problems:
        fronts = pareto(session, project_id=tenant.id, metric=metric, direction=direction_)
        if target_value is not None:
            trend_answer = trend(
                session,
                project_id=tenant.id,
                metric=metric,
                target=target_value,
                direction=direction_,
            )
    priced = {
        key: fronts is not None and any(getattr(r, f) is not None for r in fronts.runs)
        for key, (f, _) in COSTS.items()
    }
    return render(
        request,
        "quality.html.j2",
        nav="quality",
        project=tenant.slug,
        form={"metric": metric, "target": target, "direction": direction, "cost": cost},
        recorded=recorded,
        problems=problems,
        fronts=fronts,
        cost=cost,
        costs=COSTS,
        priced=priced,
        pareto=None if fronts is None else pareto_chart(fronts, cost),
        trend=trend_answer,
        trend_chart=None if trend_answer is None else trend_chart(trend_answer),
        halving=None if trend_answer is None else halving_words(trend_answer),
        reference_months=HERNANDEZ_BROWN_MONTHS,
    )
