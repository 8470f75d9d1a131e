"""Energy to quality across a project's runs: the answers of ``/quality/pareto`` and
``/quality/trend``, built from `db.metrics` and `accounting.quality`.

Each run's cost of a quality is its cumulative measured IT energy at the metric's point
(`db.metrics.energy_at`); CO2e (location-based) and USD follow from that energy with the run's
own accounting basis (`db.basis.run_bases`: frozen in the ledger at its end, else resolved now),
as the runs list prices its runs.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from thermoledger.accounting.quality import energy_to_target, halving_time, pareto_front
from thermoledger.db.basis import run_bases
from thermoledger.db.metrics import RunMetrics, project_metric_runs

from .quality_schemas import (
    Direction,
    HalvingFitRecord,
    ParetoPublic,
    ParetoRunRecord,
    TrendPublic,
    TrendRunRecord,
)

__all__ = ["HERNANDEZ_BROWN_2020", "pareto", "trend"]

#: The published trend the fit is read against.
HERNANDEZ_BROWN_2020 = (
    "Hernandez & Brown 2020 (arXiv:2005.04305): the training compute to reach AlexNet-level "
    "ImageNet accuracy halved every 16 months, 2012-2019"
)


def _high(x: float) -> float | None:
    return None if math.isinf(x) else x


def _best(run: RunMetrics, lower: bool) -> int:
    values = np.asarray([p.value for p in run.points])
    return int(np.argmin(values) if lower else np.argmax(values))


def pareto(session: Session, *, project_id: int, metric: str, direction: Direction) -> ParetoPublic:
    """Each run's best value of ``metric``, the energy (CO2e, USD) spent to first reach it, and
    the runs on the fronts (no other run better and cheaper)."""
    lower = direction == "lower"
    runs, truncated = project_metric_runs(session, project_id=project_id, name=metric)
    bases = run_bases(session, project_id=project_id, runs=[r.run for r in runs])
    rows: list[dict[str, Any]] = []
    unpriced: dict[str, str] = {}
    for run in runs:
        i = _best(run, lower)
        point = run.points[i]
        row: dict[str, Any] = {
            "run_id": str(run.run.id),
            "name": run.run.name,
            "started_at": run.run.started_at.isoformat(),
            "best_value": point.value,
            "step": point.step,
            "t_s": point.t_s,
            "energy_j": None,
            "energy_low_j": None,
            "energy_high_j": None,
            "co2e_g": None,
            "usd": None,
        }
        if run.energy is not None:
            energy_j = float(run.energy.energy_j[i])
            context = bases[run.run.id].context
            row.update(
                energy_j=energy_j,
                energy_low_j=float(run.energy.energy_low_j[i]),
                energy_high_j=_high(float(run.energy.energy_high_j[i])),
                co2e_g=context.co2e_location_g(energy_j),
                usd=context.energy_cost_usd(energy_j),
            )
            for figure, source in (("co2e_g", "co2e_location"), ("usd", "energy_cost")):
                if row[figure] is None:
                    unpriced.setdefault(
                        figure, context.unavailable.get(source, "not priced for this run")
                    )
        rows.append(row)
    quality = np.asarray([r["best_value"] for r in rows], dtype=np.float64)
    fronts: dict[str, list[str]] = {}
    for figure in ("energy_j", "co2e_g", "usd"):
        cost = np.asarray(
            [math.nan if r[figure] is None else r[figure] for r in rows], dtype=np.float64
        )
        on = pareto_front(cost, quality, lower_is_better=lower) if rows else np.zeros(0, bool)
        name = figure.split("_")[0]
        for r, flag in zip(rows, on.tolist(), strict=True):
            r[f"on_{name}_front"] = bool(flag)
        order = np.argsort(np.where(np.isnan(cost), np.inf, cost), kind="stable")
        fronts[name] = [rows[k]["run_id"] for k in order.tolist() if on[k]]
    rows.sort(key=lambda r: (r["energy_j"] is None, r["energy_j"] or 0.0))
    return ParetoPublic(
        metric=metric,
        direction=direction,
        runs=[ParetoRunRecord(**r) for r in rows],
        energy_front=fronts["energy"],
        co2e_front=fronts["co2e"],
        usd_front=fronts["usd"],
        unpriced=unpriced,
        truncated=truncated,
    )


def trend(
    session: Session, *, project_id: int, metric: str, target: float, direction: Direction
) -> TrendPublic:
    """Joules to reach ``target`` per run against its start, with a fitted halving time."""
    lower = direction == "lower"
    runs, truncated = project_metric_runs(session, project_id=project_id, name=metric)
    reached: list[TrendRunRecord] = []
    not_reached = unmeasured = 0
    for run in runs:
        values = [p.value for p in run.points]
        hit = any(v <= target if lower else v >= target for v in values)
        if not hit:
            not_reached += 1
            continue
        if run.energy is None:
            unmeasured += 1
            continue
        crossing = energy_to_target(
            values=values,
            energy_j=run.energy.energy_j,
            energy_low_j=run.energy.energy_low_j,
            energy_high_j=run.energy.energy_high_j,
            target=target,
            lower_is_better=lower,
        )
        assert crossing is not None  # `hit` says a point reaches it
        reached.append(
            TrendRunRecord(
                run_id=str(run.run.id),
                name=run.run.name,
                started_at=run.run.started_at.isoformat(),
                energy_j=crossing.energy_j,
                energy_low_j=crossing.energy_low_j,
                energy_high_j=_high(crossing.energy_high_j),
                step=run.points[crossing.index].step,
            )
        )
    reached.sort(key=lambda r: (r.started_at, r.run_id))
    fit: HalvingFitRecord | None = None
    reason: str | None = None
    usable = [r for r in reached if r.energy_j > 0]
    starts = [datetime.fromisoformat(r.started_at).astimezone(UTC).timestamp() for r in usable]
    if len(usable) < 3:
        reason = f"{len(usable)} run(s) reached the target with energy > 0; a fit needs 3"
    elif len(set(starts)) < 2:
        reason = "every run that reached the target started at the same time"
    else:
        f = halving_time(starts, [r.energy_j for r in usable])
        fit = HalvingFitRecord(
            n=f.n,
            confidence=f.confidence,
            slope_log2_per_month=f.slope_log2_per_month,
            slope_low=f.slope_low,
            slope_high=f.slope_high,
            halving_months=f.halving_months,
            halving_low_months=f.halving_low_months,
            halving_high_months=f.halving_high_months,
            intercept_log2_j=f.intercept_log2_j,
            reference_s=f.reference_s,
        )
    return TrendPublic(
        metric=metric,
        target=target,
        direction=direction,
        runs=reached,
        not_reached=not_reached,
        unmeasured=unmeasured,
        fit=fit,
        fit_reason=reason,
        reference=HERNANDEZ_BROWN_2020,
        truncated=truncated,
    )
