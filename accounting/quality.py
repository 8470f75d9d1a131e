"""Energy to quality: what a metric (``eval_loss``) cost in joules, across runs and over time.

Three pieces, all numpy on float64 magnitudes (J, unix s, the metric's own unit):

Cumulative energy at a time
    A run's energy arrives as chunks ``[t0_s, t1_s]`` per device. The energy up to ``t`` adds
    every chunk that ended before ``t`` and the share of a chunk that straddles it, **linearly
    in time** (the chunk's mean power times the part elapsed); a zero-length chunk counts whole
    from its instant on. Written as ``Σ r_i·(max(t − t0_i, 0) − max(t − t1_i, 0))`` with
    ``r_i = E_i/(t1_i − t0_i)``, it is four prefix sums over the chunks sorted by ``t0`` and by
    ``t1`` and one `numpy.searchsorted` per query time: O((N + M) log N) for N chunks and M
    points. The band is `accounting.integrate`'s model taken up to ``t``: per device the sensor
    error and the one-sided bounds accumulate like the energy; across devices sensor errors
    combine root-sum-square and bounds add linearly (`accounting.integrate.aggregate_energy`);
    ``[max(0, E − sensor − below), E + sensor + above]``. A chunk unbounded above makes the
    band unbounded from its start on.

Joules to reach a target
    Given the metric's points over a run with the cumulative energy at each, the energy at
    which the metric *first* reaches the target (``<=`` when lower is better, as for a loss;
    ``>=`` for an accuracy), interpolated linearly in energy between the point before and the
    point that reaches it. The band's edges are interpolated with the same fraction.

Fronts and trends across runs
    `pareto_front`: the runs no other run beats on both cost (J, gCO2e or USD) and quality.
    `halving_time`: a log-linear least-squares fit of joules-to-target against calendar time,
    ``log2 E = a + b·t``, whose halving time is ``−1/b``, with a t-interval on the slope
    (Student's t with n − 2 degrees of freedom, computed exactly for integer degrees of
    freedom; no scipy). Hernandez & Brown (2020), "Measuring the Algorithmic Efficiency of
    Neural Networks" (arXiv:2005.04305), measured a 16-month halving of the training compute
    needed to reach AlexNet-level accuracy on ImageNet between 2012 and 2019; this is the same
    fit applied to measured joules instead of FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import InvalidQuantity

__all__ = [
    "DAYS_PER_MONTH",
    "CumulativeEnergy",
    "HalvingFit",
    "TargetCrossing",
    "cumulative_at",
    "cumulative_energy",
    "energy_to_target",
    "halving_time",
    "pareto_front",
    "t_quantile",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Mean Gregorian month, days (365.2425 / 12): halving times are given in these months.
DAYS_PER_MONTH = 365.2425 / 12.0
_S_PER_MONTH = DAYS_PER_MONTH * 86_400.0


def _array(values: npt.ArrayLike, name: str) -> FloatArray:
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1:
        raise InvalidQuantity(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def cumulative_at(
    t0_s: npt.ArrayLike, t1_s: npt.ArrayLike, amount: npt.ArrayLike, at_s: npt.ArrayLike
) -> FloatArray:
    """The running sum of per-chunk amounts at each query time, linear inside each chunk.

    Args:
        t0_s: Chunk starts, unix s.
        t1_s: Chunk ends, unix s (``>= t0_s``).
        amount: Per chunk, what accrues uniformly over it (energy J, an error term J); finite.
        at_s: Query times, unix s (any order).

    Returns:
        Per query time, the sum of every chunk's amount times the share of it before ``at_s``
        (a zero-length chunk counts whole at and after its instant).

    Raises:
        InvalidQuantity: Shapes differ, a chunk ends before it starts, or a value is not finite.
    """
    t0 = _array(t0_s, "t0_s")
    t1 = _array(t1_s, "t1_s")
    e = _array(amount, "amount")
    at = _array(at_s, "at_s")
    if not t0.shape == t1.shape == e.shape:
        raise InvalidQuantity("t0_s, t1_s and amount must have one entry per chunk")
    if not (np.all(np.isfinite(t0)) and np.all(np.isfinite(t1)) and np.all(np.isfinite(e))):
        raise InvalidQuantity("chunk times and amounts must be finite")
    if np.any(t1 < t0):
        raise InvalidQuantity("a chunk ends before it starts (t1_s < t0_s)")
    duration = t1 - t0
    spread = duration > 0
    # Chunks with a duration accrue at rate r from t0 to t1.
    rate = np.where(spread, e / np.where(spread, duration, 1.0), 0.0)
    out = np.zeros(at.shape, dtype=np.float64)
    for edge, sign in ((t0, 1.0), (t1, -1.0)):
        order = np.argsort(edge[spread], kind="stable")
        x = edge[spread][order]
        r = rate[spread][order]
        cum_r = np.concatenate(([0.0], np.cumsum(r)))
        cum_rx = np.concatenate(([0.0], np.cumsum(r * x)))
        k = np.searchsorted(x, at, side="left")  # edges strictly before each query time
        out += sign * (at * cum_r[k] - cum_rx[k])
    # Instants count whole from their instant on.
    instants = np.sort(t0[~spread])
    cum_e = np.concatenate(([0.0], np.cumsum(e[~spread][np.argsort(t0[~spread], kind="stable")])))
    out += cum_e[np.searchsorted(instants, at, side="right")]
    # Rounding of the prefix differences may leave -1e-12 before the first chunk.
    return np.maximum(out, 0.0)


@dataclass(frozen=True, slots=True)
class CumulativeEnergy:
    """A run's energy up to each query time, with its band.

    Attributes:
        energy_j: Energy up to each time, J.
        energy_low_j: Lower edge of its band, J.
        energy_high_j: Upper edge, J (+inf where a chunk unbounded above has begun).
    """

    energy_j: FloatArray
    energy_low_j: FloatArray
    energy_high_j: FloatArray


def cumulative_energy(
    *,
    t0_s: npt.ArrayLike,
    t1_s: npt.ArrayLike,
    energy_j: npt.ArrayLike,
    sensor_uncertainty_j: npt.ArrayLike,
    bound_below_j: npt.ArrayLike,
    bound_above_j: npt.ArrayLike,
    device: npt.ArrayLike,
    at_s: npt.ArrayLike,
) -> CumulativeEnergy:
    """A run's cumulative energy and band at each query time, from its chunks.

    Args:
        t0_s, t1_s: Per chunk, its window, unix s.
        energy_j: Per chunk, its energy, J.
        sensor_uncertainty_j: Per chunk, the sensor term, J (systematic within a device).
        bound_below_j: Per chunk, the one-sided bound below, J.
        bound_above_j: Per chunk, the one-sided bound above, J (+inf: unbounded).
        device: Per chunk, its device (any hashable key numpy can sort).
        at_s: Query times, unix s.

    Returns:
        The energy and band at each query time (see the module docstring for the rules).

    Raises:
        InvalidQuantity: Mismatched shapes, times out of order, or negative/NaN terms.
    """
    at = _array(at_s, "at_s")
    dev = np.atleast_1d(np.asarray(device))
    above = _array(bound_above_j, "bound_above_j")
    terms = [
        _array(x, name)
        for x, name in (
            (energy_j, "energy_j"),
            (sensor_uncertainty_j, "sensor_uncertainty_j"),
            (bound_below_j, "bound_below_j"),
        )
    ]
    if any(x.shape != dev.shape for x in (*terms, above)):
        raise InvalidQuantity("every chunk column must have one entry per chunk")
    if any(np.any(~(x >= 0)) for x in (*terms, above)):
        raise InvalidQuantity("energies and band terms must be >= 0 and not NaN")
    t0 = _array(t0_s, "t0_s")
    t1 = _array(t1_s, "t1_s")
    unbounded = np.isinf(above)
    finite_above = np.where(unbounded, 0.0, above)
    energy = np.zeros(at.shape)
    sensor_sq = np.zeros(at.shape)
    below = np.zeros(at.shape)
    upper = np.zeros(at.shape)
    for key in np.unique(dev):  # a few devices; each pass is vectorised over its chunks
        mine = dev == key
        a, b = t0[mine], t1[mine]
        energy += cumulative_at(a, b, terms[0][mine], at)
        sensor_sq += cumulative_at(a, b, terms[1][mine], at) ** 2
        below += cumulative_at(a, b, terms[2][mine], at)
        upper += cumulative_at(a, b, finite_above[mine], at)
    sensor = np.sqrt(sensor_sq)
    # Unbounded from the moment a share of such a chunk is in (an instant: at its instant).
    spread = t1 > t0
    begun = np.sort(t0[unbounded & spread])
    instants = np.sort(t0[unbounded & ~spread])
    open_above = (np.searchsorted(begun, at, side="left") > 0) | (
        np.searchsorted(instants, at, side="right") > 0
    )
    low = np.maximum(energy - sensor - below, 0.0)
    high = np.where(open_above, np.inf, energy + sensor + upper)
    return CumulativeEnergy(energy_j=energy, energy_low_j=low, energy_high_j=high)


@dataclass(frozen=True, slots=True)
class TargetCrossing:
    """Where a run's metric first reached a target.

    Attributes:
        energy_j: Cumulative energy at the crossing, J (interpolated).
        energy_low_j: Lower edge of its band, J.
        energy_high_j: Upper edge, J.
        index: The first point at or beyond the target (0: the first point already was).
        fraction: Where between point ``index − 1`` and ``index`` the target lies (1 when
            ``index`` is 0).
    """

    energy_j: float
    energy_low_j: float
    energy_high_j: float
    index: int
    fraction: float


def energy_to_target(
    *,
    values: npt.ArrayLike,
    energy_j: npt.ArrayLike,
    energy_low_j: npt.ArrayLike,
    energy_high_j: npt.ArrayLike,
    target: float,
    lower_is_better: bool = True,
) -> TargetCrossing | None:
    """The energy at which the metric first reaches ``target``, interpolated linearly.

    Args:
        values: The metric at each point, in time order (finite).
        energy_j: Cumulative energy at each point, J (non-decreasing).
        energy_low_j, energy_high_j: Its band at each point, J.
        target: The metric value to reach.
        lower_is_better: True for a loss (reached at ``value <= target``), False for an
            accuracy (``value >= target``).

    Returns:
        The crossing, or None when no point reaches the target.

    Raises:
        InvalidQuantity: Shapes differ, or a value or the target is not finite.
    """
    v = _array(values, "values")
    e = _array(energy_j, "energy_j")
    lo = _array(energy_low_j, "energy_low_j")
    hi = _array(energy_high_j, "energy_high_j")
    if not v.shape == e.shape == lo.shape == hi.shape:
        raise InvalidQuantity("values and energies must have one entry per point")
    if not (math.isfinite(target) and np.all(np.isfinite(v))):
        raise InvalidQuantity("the metric values and the target must be finite")
    reached = v <= target if lower_is_better else v >= target
    if not np.any(reached):
        return None
    i = int(np.argmax(reached))
    if i == 0:
        return TargetCrossing(float(e[0]), float(lo[0]), float(hi[0]), 0, 1.0)
    step = v[i] - v[i - 1]
    fraction = float((target - v[i - 1]) / step) if step != 0 else 1.0
    fraction = min(max(fraction, 0.0), 1.0)

    def between(x: FloatArray) -> float:
        if math.isinf(x[i]) or math.isinf(x[i - 1]):
            return math.inf if fraction > 0 or math.isinf(x[i - 1]) else float(x[i - 1])
        return float(x[i - 1] + fraction * (x[i] - x[i - 1]))

    return TargetCrossing(between(e), between(lo), between(hi), i, fraction)


def pareto_front(
    cost: npt.ArrayLike, quality: npt.ArrayLike, *, lower_is_better: bool = True
) -> BoolArray:
    """Which points no other point beats on both cost and quality (the cheapest-best front).

    A point is on the front when every point at most as costly has a worse metric. Of points
    equal in both, the first is kept. NaN costs or metrics (not priced, not measured) are never
    on the front.

    Args:
        cost: Per point, its cost (J, gCO2e, USD; lower is better).
        quality: Per point, the metric.
        lower_is_better: The metric's direction.

    Returns:
        Per point, whether it is on the front.
    """
    c = _array(cost, "cost")
    q = _array(quality, "quality")
    if c.shape != q.shape:
        raise InvalidQuantity("cost and quality must have one entry per point")
    score = q if lower_is_better else -q
    valid = np.isfinite(c) & np.isfinite(score)
    idx = np.flatnonzero(valid)
    order = idx[np.lexsort((idx, score[idx], c[idx]))]
    ranked = score[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(ranked)[:-1]))
    on = np.zeros(c.shape, dtype=np.bool_)
    on[order] = ranked < best_before
    return on


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile for ``p`` in (0.5, 1) and integer ``df >= 1``.

    The two-sided probability ``A(t|ν) = P(|T| < t)`` has a closed form for integer ν
    (Abramowitz & Stegun 26.7.3-4, a finite series in ``θ = atan(t/√ν)``), solved for
    ``A = 2p − 1`` by bisection on θ: exact to rounding, without scipy.
    """
    if not (0.5 < p < 1.0) or df < 1:
        raise InvalidQuantity(f"need 0.5 < p < 1 and df >= 1, got p={p!r}, df={df!r}")
    want = 2.0 * p - 1.0

    def two_sided(theta: float) -> float:
        s, c = math.sin(theta), math.cos(theta)
        c2 = c * c
        if df % 2 == 1:
            if df == 1:
                return 2.0 * theta / math.pi
            term, series = c, c
            for k in range(3, df, 2):  # cos θ (1 + 2/3 cos² θ + 2·4/(3·5) cos⁴ θ …)
                term *= c2 * (k - 1) / k
                series += term
            return 2.0 / math.pi * (theta + s * series)
        term, series = 1.0, 1.0
        for k in range(2, df, 2):  # 1 + 1/2 cos² θ + 1·3/(2·4) cos⁴ θ …
            term *= c2 * (k - 1) / k
            series += term
        return s * series

    lo, hi = 0.0, math.pi / 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if two_sided(mid) < want:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan(0.5 * (lo + hi))


@dataclass(frozen=True, slots=True)
class HalvingFit:
    """A log-linear fit of joules-to-target against calendar time.

    Attributes:
        n: Points fitted.
        slope_log2_per_month: Fitted change of ``log2 E`` per month (negative: falling).
        slope_low, slope_high: Its two-sided t-interval at ``confidence``.
        halving_months: ``−1/slope`` when the slope is negative, else None (not halving).
        halving_low_months, halving_high_months: The halving time's interval, from the slope's:
            ``high`` is None (unbounded) when the interval reaches zero slope or beyond; both
            None when the slope's interval is all ``>= 0``.
        confidence: The interval's confidence level.
        intercept_log2_j: ``log2 E`` at the reference time, J.
        reference_s: The time the intercept refers to (the first point), unix s.
    """

    n: int
    slope_log2_per_month: float
    slope_low: float
    slope_high: float
    halving_months: float | None
    halving_low_months: float | None
    halving_high_months: float | None
    confidence: float
    intercept_log2_j: float
    reference_s: float


def halving_time(
    t_s: Sequence[float] | npt.ArrayLike,
    energy_j: Sequence[float] | npt.ArrayLike,
    *,
    confidence: float = 0.95,
) -> HalvingFit:
    """Fit ``log2 E = a + b·t`` by least squares and turn the slope into a halving time.

    Args:
        t_s: Per run, when it started, unix s.
        energy_j: Per run, the joules it took to reach the target, J (> 0, finite).
        confidence: The level of the slope's two-sided t-interval (n − 2 degrees of freedom).

    Returns:
        The fit (`HalvingFit`); halving times in mean Gregorian months (`DAYS_PER_MONTH`).

    Raises:
        InvalidQuantity: Fewer than 3 points, energies not > 0 and finite, all runs started
            at the same time, or ``confidence`` outside (0, 1).
    """
    t = _array(t_s, "t_s")
    e = _array(energy_j, "energy_j")
    if t.shape != e.shape:
        raise InvalidQuantity("t_s and energy_j must have one entry per run")
    if t.size < 3:
        raise InvalidQuantity(f"a slope with an interval needs at least 3 runs, got {t.size}")
    if not (np.all(np.isfinite(e)) and np.all(e > 0) and np.all(np.isfinite(t))):
        raise InvalidQuantity("energies must be finite and > 0, times finite")
    if not 0.0 < confidence < 1.0:
        raise InvalidQuantity(f"confidence must lie in (0, 1), got {confidence!r}")
    reference = float(t.min())
    x = (t - reference) / _S_PER_MONTH
    y = np.log2(e)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        raise InvalidQuantity("every run started at the same time: no trend to fit")
    slope = float(dx @ (y - y.mean())) / sxx
    intercept = float(y.mean() - slope * x.mean())
    residuals = y - (intercept + slope * x)
    df = t.size - 2
    se = math.sqrt(float(residuals @ residuals) / df / sxx)
    half_width = t_quantile(0.5 + confidence / 2.0, df) * se
    low, high = slope - half_width, slope + half_width
    halving = -1.0 / slope if slope < 0 else None
    # The steepest fall gives the shortest halving time.
    h_low = -1.0 / low if low < 0 else None
    h_high = -1.0 / high if high < 0 else None
    return HalvingFit(
        n=int(t.size),
        slope_log2_per_month=slope,
        slope_low=low,
        slope_high=high,
        halving_months=halving,
        halving_low_months=h_low,
        halving_high_months=h_high,
        confidence=confidence,
        intercept_log2_j=intercept,
        reference_s=reference,
    )
