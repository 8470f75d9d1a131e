"""Schemas of energy to quality: a run's metric points (``/runs/{run_id}/metrics``), the Pareto
fronts of metric vs energy, CO2e and USD across a project's runs (``/quality/pareto``), and the
trend of joules-to-target over calendar time (``/quality/trend``).

Units are in the names (``energy_j``, ``co2e_g``, ``usd``, ``t_s`` unix seconds, ``*_months``
mean Gregorian months); a metric's value is in the metric's own unit. A band is
``energy_low_j`` … ``energy_high_j`` with ``energy_high_j`` None when unbounded above, as in
the run report. A figure that cannot be given is None with the reason beside it, never 0.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from thermoledger.db.metrics import MAX_METRIC_POINTS, METRIC_NAME_PATTERN
from thermoledger.db.records import INT64_MAX

from .timebounds import StoredUnixS

__all__ = [
    "Direction",
    "HalvingFitRecord",
    "MetricBatch",
    "MetricName",
    "MetricNameRecord",
    "MetricNamesPublic",
    "MetricPointIn",
    "MetricPointPublic",
    "MetricsWrittenPublic",
    "ParetoPublic",
    "ParetoRunRecord",
    "RunMetricsPublic",
    "TrendPublic",
    "TrendRunRecord",
]

_API = ConfigDict(extra="forbid", allow_inf_nan=False)
_OUT = ConfigDict(extra="forbid")

#: Metric names: as tag keys (1-64 of letters, digits and ``_ . : / -``).
MetricName = Annotated[str, StringConstraints(pattern=METRIC_NAME_PATTERN.pattern)]
#: ``lower`` (a loss: lower is better, the default) or ``higher`` (an accuracy).
Direction = Literal["lower", "higher"]
EnergyHighJ = Annotated[
    float | None,
    Field(description="High end of the energy's band, J; None when unbounded above."),
]


class MetricPointIn(BaseModel):
    """One point: ``(name, step)`` identifies it, so a re-sent point is recognised."""

    model_config = _API

    name: MetricName
    step: Annotated[int, Field(ge=0, le=INT64_MAX)]
    value: Annotated[float, Field(description="finite, in the metric's own unit")]
    t_s: StoredUnixS


class MetricBatch(BaseModel):
    """``POST /runs/{run_id}/metrics``: stored whole or not at all."""

    model_config = _API

    points: Annotated[list[MetricPointIn], Field(min_length=1, max_length=MAX_METRIC_POINTS)]


class MetricsWrittenPublic(BaseModel):
    """What a batch did."""

    model_config = _OUT

    stored: int = Field(description="points newly stored")
    duplicates: int = Field(description="points already stored with the same value and time")


class MetricPointPublic(BaseModel):
    """A point with the run's cumulative measured energy at its time (for metric-vs-energy)."""

    model_config = _OUT

    name: str
    step: int
    value: float
    t_s: float
    energy_j: float | None = Field(description="cumulative IT energy at t_s, J; None: no chunks")
    energy_low_j: float | None
    energy_high_j: EnergyHighJ


class RunMetricsPublic(BaseModel):
    """A run's metric points, by name then step."""

    model_config = _OUT

    run_id: str
    points: list[MetricPointPublic]
    energy_reason: str | None = Field(
        description="why the points carry no energy (None when they do)"
    )


class MetricNameRecord(BaseModel):
    """A metric the project's runs recorded."""

    model_config = _OUT

    name: str
    runs: int = Field(description="runs that recorded it")
    points: int = Field(description="points in all")
    last_t_s: float = Field(description="the newest point's time, unix s")


class MetricNamesPublic(BaseModel):
    """``GET /quality/metrics``: what ``/quality/pareto`` and ``/quality/trend`` can read."""

    model_config = _OUT

    metrics: list[MetricNameRecord] = Field(description="most runs first, then by name")
    truncated: bool = Field(description="more names were recorded than listed")


class ParetoRunRecord(BaseModel):
    """One run's best point of the metric and what reaching it cost."""

    model_config = _OUT

    run_id: str
    name: str
    started_at: str
    best_value: float
    step: int
    t_s: float
    energy_j: float | None
    energy_low_j: float | None
    energy_high_j: EnergyHighJ
    co2e_g: float | None = Field(description="location-based CO2e of energy_j, g")
    usd: float | None = Field(description="energy cost of energy_j at the run's tariff, USD")
    on_energy_front: bool
    on_co2e_front: bool
    on_usd_front: bool


class ParetoPublic(BaseModel):
    """``GET /quality/pareto``: each run's best value vs its cost, and the fronts."""

    model_config = _OUT

    metric: str
    direction: Direction
    runs: list[ParetoRunRecord] = Field(description="by energy, cheapest first; None last")
    energy_front: list[str] = Field(description="run ids on the metric-vs-energy front")
    co2e_front: list[str]
    usd_front: list[str]
    unpriced: dict[str, str] = Field(
        description="per figure (co2e_g, usd) missing for some run, one reason"
    )
    truncated: bool = Field(description="more runs recorded the metric than were read")


class TrendRunRecord(BaseModel):
    """One run's joules to reach the target."""

    model_config = _OUT

    run_id: str
    name: str
    started_at: str
    energy_j: float
    energy_low_j: float
    energy_high_j: EnergyHighJ
    step: int = Field(description="the first step at or beyond the target")


class HalvingFitRecord(BaseModel):
    """``log2 E = a + b·t`` by least squares, with the slope's t-interval."""

    model_config = _OUT

    n: int
    confidence: float
    slope_log2_per_month: float
    slope_low: float
    slope_high: float
    halving_months: float | None = Field(description="−1/slope; None unless falling")
    halving_low_months: float | None
    halving_high_months: float | None = Field(
        description="None: unbounded (the interval reaches a flat or rising trend)"
    )
    intercept_log2_j: float
    reference_s: float = Field(description="the time the intercept refers to, unix s")


class TrendPublic(BaseModel):
    """``GET /quality/trend``: joules-to-target against run start, with a halving time."""

    model_config = _OUT

    metric: str
    target: float
    direction: Direction
    runs: list[TrendRunRecord] = Field(description="runs that reached the target, oldest first")
    not_reached: int = Field(description="runs with the metric that never reached the target")
    unmeasured: int = Field(description="runs that reached it without measured energy")
    fit: HalvingFitRecord | None
    fit_reason: str | None
    reference: str = Field(description="the published trend this compares with")
    truncated: bool
