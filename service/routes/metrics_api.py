"""Energy to quality: a run's metric points (ingest, read) and the project's fronts and trend.

``POST /runs/{run_id}/metrics`` stores a batch of points, idempotent by ``(run, name, step)``
(`db.metrics`); ``GET`` returns them with the run's cumulative energy at each, which is what a
metric-vs-energy plot draws. ``GET /quality/pareto`` and ``GET /quality/trend`` read every run
of the project that recorded the metric (`service.quality`); ``GET /quality/metrics`` lists the
metric names recorded.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response, status

from thermoledger.db import metrics

from ..deps import IngestTenant, ReadTenant, SessionDep
from ..quality import pareto, trend
from ..quality_schemas import (
    Direction,
    MetricBatch,
    MetricName,
    MetricNameRecord,
    MetricNamesPublic,
    MetricPointPublic,
    MetricsWrittenPublic,
    ParetoPublic,
    RunMetricsPublic,
    TrendPublic,
)

router = APIRouter(tags=["quality"])

DirectionQuery = Annotated[
    Direction, Query(description="lower (a loss, default) or higher (an accuracy) is better")
]


@router.post(
    "/runs/{run_id}/metrics",
    responses={201: {"model": MetricsWrittenPublic, "description": "some points were new"}},
)
def post_metrics(
    run_id: UUID, body: MetricBatch, tenant: IngestTenant, session: SessionDep, response: Response
) -> MetricsWrittenPublic:
    """Record metric points (``eval_loss`` at a step, ``tokens_seen``); all or nothing.

    201 when a point was new, 200 when every point was already stored; 409 naming the point
    when its ``(name, step)`` is stored with another value or time.
    """
    written = metrics.record_metrics(
        session,
        project_id=tenant.id,
        run_id=run_id,
        points=[metrics.MetricPoint(p.name, p.step, p.value, p.t_s) for p in body.points],
    )
    response.status_code = status.HTTP_201_CREATED if written.stored else status.HTTP_200_OK
    return MetricsWrittenPublic(stored=written.stored, duplicates=written.duplicates)


@router.get("/runs/{run_id}/metrics")
def get_metrics(
    run_id: UUID,
    tenant: ReadTenant,
    session: SessionDep,
    name: Annotated[MetricName | None, Query(description="only this metric")] = None,
) -> RunMetricsPublic:
    """A run's metric points with the cumulative energy at each (metric vs energy)."""
    points, energy = metrics.metrics_with_energy(
        session, project_id=tenant.id, run_id=run_id, name=name
    )
    out = []
    for i, p in enumerate(points):
        high = None if energy is None else float(energy.energy_high_j[i])
        out.append(
            MetricPointPublic(
                name=p.name,
                step=p.step,
                value=p.value,
                t_s=p.t_s,
                energy_j=None if energy is None else float(energy.energy_j[i]),
                energy_low_j=None if energy is None else float(energy.energy_low_j[i]),
                energy_high_j=None if high is None or high == float("inf") else high,
            )
        )
    reason = "the run has no measured chunks yet" if energy is None and points else None
    return RunMetricsPublic(run_id=str(run_id), points=out, energy_reason=reason)


@router.get("/quality/metrics")
def get_metric_names(tenant: ReadTenant, session: SessionDep) -> MetricNamesPublic:
    """The metrics the project's runs recorded (most runs first), with their run and point
    counts: the names ``/quality/pareto`` and ``/quality/trend`` take."""
    names, truncated = metrics.project_metric_names(session, project_id=tenant.id)
    return MetricNamesPublic(
        metrics=[
            MetricNameRecord(name=m.name, runs=m.runs, points=m.points, last_t_s=m.last_t_s)
            for m in names
        ],
        truncated=truncated,
    )


@router.get("/quality/pareto")
def get_pareto(
    tenant: ReadTenant,
    session: SessionDep,
    metric: Annotated[MetricName, Query(description="the metric, e.g. eval_loss")],
    direction: DirectionQuery = "lower",
) -> ParetoPublic:
    """Per run, its best value of ``metric`` and the energy, CO2e and USD spent to first reach
    it; the runs on each front (no other run is both cheaper and better)."""
    return pareto(session, project_id=tenant.id, metric=metric, direction=direction)


@router.get("/quality/trend")
def get_trend(
    tenant: ReadTenant,
    session: SessionDep,
    metric: Annotated[MetricName, Query(description="the metric, e.g. eval_loss")],
    target: Annotated[float, Query(allow_inf_nan=False, description="the value to reach")],
    direction: DirectionQuery = "lower",
) -> TrendPublic:
    """Joules to reach ``target`` per run against its start date, with a fitted halving time
    and its interval (log-linear least squares, t-interval on the slope)."""
    return trend(session, project_id=tenant.id, metric=metric, target=target, direction=direction)
