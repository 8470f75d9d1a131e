"""Inference-aware planning: the N and D that reach a target loss at the least lifetime cost.

The loss model
--------------
Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", arXiv:2203.15556,
§3.3 Approach 3, eq. 10) fit the final pre-training loss of a dense transformer with N
parameters trained on D tokens as

    L(N, D) = E + A / N^α + B / D^β
    E = 1.69, A = 406.4, B = 410.7, α = 0.34, β = 0.28          (`CHINCHILLA`)

E is the irreducible loss; no finite model reaches it, so a target loss must lie above E. For a
target L* the data a model of N parameters needs is closed-form,

    D(N) = (B / (L* − E − A/N^α))^(1/β),

finite only above N_min = (A / (L* − E))^(1/α) (where D → ∞). Constants fitted to a project's
own (N, D, loss) triples can replace the published ones (`fit_loss_model`).

The objective
-------------
Training costs 6·N·D FLOP; serving T tokens costs 2·N FLOP each (`accounting.planning`), and
test-time compute (reasoning) multiplies the tokens generated per query by k. Sardana et al. 2023
("Beyond Chinchilla-Optimal: Accounting for Inference in Language Model Scaling Laws",
arXiv:2401.00448) minimise training + inference FLOPs at a fixed loss and demand. Here each
phase's FLOPs are priced at its own efficiency (FLOP/J of comparable runs; inference and training
may differ) and, for USD or gCO2e, at a price per joule, so the objective is

    cost(N) = w_train·6·N·D(N) + w_inf·2·N·T·k,        w = price per J / (FLOP/J).

With D = D(N) write the two loss terms u = A/N^α and v = B/D^β = L* − E − u, and s = v/(L* − E)
the data term's share. d cost / d ln N = 0 reads

    h(s) = D(s)·(α(1 − s)/(β s) − 1) = (2·w_inf·T·k) / (6·w_train) = c.

h falls strictly from +∞ (s → 0, N → N_min) to 0 at s* = α/(α + β) — the compute-optimal point,
where α·u = β·v. So the optimum is unique; for c = 0 (no demand) it is the Chinchilla point,
which has a closed form (`LossModel.compute_optimal`); and as demand grows, c grows, s falls,
N falls towards N_min and D rises: monotonically, as Sardana et al. find. The root is found by
bisection on ln s (ln h evaluated in logs, so no D overflows), vectorised across problems: every
array argument broadcasts, and 64 halvings leave the bracket at the float spacing of ln s. A
bisection on a monotone function is itself monotone in c, so the computed N is monotone in demand
too, not only the true one. This replaces a log grid over N plus refinement: the stationarity
condition is monotone, so a bracketing root-finder is both exact and cheaper.

What it does not model: the loss model is of pre-training loss only, so "a bigger model" versus
"thinking longer" (the test-time multiplier k) is compared at a quality the caller states is equal
(each option with its own target loss and k); the multiplier's quality gain is the caller's
assumption, its energy is computed here. Attention-context FLOPs and the KV cache are left out
(see `accounting.planning`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _econ_checks as chk
from .errors import InvalidQuantity
from .planning import INFERENCE_FLOP_PER_PARAM_TOKEN, TRAINING_FLOP_PER_PARAM_TOKEN

__all__ = [
    "CHINCHILLA",
    "Allocation",
    "EnergyPrices",
    "InferenceAwarePlan",
    "LossFit",
    "LossModel",
    "Objective",
    "PhaseCosts",
    "fit_loss_model",
    "lifetime_costs",
    "optimal_allocation",
    "plan_inference_aware",
]

Floats: TypeAlias = NDArray[np.float64]
Objective: TypeAlias = Literal["energy", "usd", "co2e"]

_BISECTIONS = 64
#: ln s where the bracket starts: s = e^-700 ≈ 1e-304, above the smallest normal float.
_LN_S_FLOOR = -700.0


def _array(value: ArrayLike, field: str, *, positive: bool = True) -> Floats:
    """A float64 array of finite values (> 0 or ≥ 0), refused with the field named."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidQuantity(f"expected numbers, got {value!r}", field=field) from e
    if array.size == 0:
        raise InvalidQuantity("must hold at least one value", field=field)
    if not np.all(np.isfinite(array)):
        raise InvalidQuantity("must be finite", field=field)
    if positive and np.any(array <= 0.0):
        raise InvalidQuantity("must be > 0", field=field)
    if not positive and np.any(array < 0.0):
        raise InvalidQuantity("must be ≥ 0", field=field)
    return array


# --------------------------------------------------------------------------------------------
# The loss model


@dataclass(frozen=True, slots=True)
class LossModel:
    """L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022), losses in nats per token.

    Attributes:
        e: E, the irreducible loss.
        a: A, the parameter term's scale.
        b: B, the data term's scale.
        alpha: α, the parameter exponent.
        beta: β, the data exponent.
        source: Where the constants come from.
    """

    e: float
    a: float
    b: float
    alpha: float
    beta: float
    source: str = "given"

    def __post_init__(self) -> None:
        object.__setattr__(self, "e", chk.non_negative(self.e, "e"))
        for name in ("a", "b", "alpha", "beta"):
            object.__setattr__(self, name, chk.positive(getattr(self, name), name))
        chk.non_empty(self.source, "source")

    def loss(self, n_params: ArrayLike, n_tokens: ArrayLike) -> Floats:
        """L(N, D), vectorised (broadcasts)."""
        n = _array(n_params, "n_params")
        d = _array(n_tokens, "n_tokens")
        return np.asarray(
            self.e + self.a * n ** (-self.alpha) + self.b * d ** (-self.beta), dtype=np.float64
        )

    def check_target(self, target_loss: ArrayLike) -> Floats:
        """The target losses as an array, each above E (else `InvalidQuantity` on target_loss)."""
        target = _array(target_loss, "target_loss", positive=False)
        if np.any(target <= self.e):
            worst = float(target.min())
            raise InvalidQuantity(
                f"must be above the loss model's irreducible loss E = {self.e:g} (no finite "
                f"model reaches it), got {worst:g}",
                field="target_loss",
            )
        return target

    def min_params(self, target_loss: ArrayLike) -> Floats:
        """N_min = (A / (L* − E))^(1/α): below it no amount of data reaches L*."""
        gap = self.check_target(target_loss) - self.e
        return np.asarray((self.a / gap) ** (1.0 / self.alpha), dtype=np.float64)

    def tokens_for_loss(self, n_params: ArrayLike, target_loss: ArrayLike) -> Floats:
        """D(N) = (B / (L* − E − A/N^α))^(1/β); +inf where N ≤ N_min (unreachable)."""
        n = _array(n_params, "n_params")
        room = self.check_target(target_loss) - self.e - self.a * n ** (-self.alpha)
        safe = np.where(room > 0.0, room, 1.0)
        d = np.where(room > 0.0, (self.b / safe) ** (1.0 / self.beta), np.inf)
        return np.asarray(d, dtype=np.float64)

    def compute_optimal(self, target_loss: ArrayLike) -> tuple[Floats, Floats]:
        """The (N, D) reaching L* with the least training compute 6·N·D, in closed form.

        Minimising ln N + ln D subject to A/N^α + B/D^β = L* − E (Lagrange) gives
        α·A/N^α = β·B/D^β: the parameter term takes β/(α+β) of the gap, the data term α/(α+β).

        Returns:
            (N, D), each broadcast to the shape of ``target_loss``.
        """
        gap = self.check_target(target_loss) - self.e
        share = self.alpha + self.beta
        n = (self.a * share / (self.beta * gap)) ** (1.0 / self.alpha)
        d = (self.b * share / (self.alpha * gap)) ** (1.0 / self.beta)
        return np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "e": self.e,
            "a": self.a,
            "b": self.b,
            "alpha": self.alpha,
            "beta": self.beta,
            "source": self.source,
        }


#: Hoffmann et al. 2022 (arXiv:2203.15556), Approach 3, eq. (10): the default loss model.
CHINCHILLA = LossModel(
    e=1.69,
    a=406.4,
    b=410.7,
    alpha=0.34,
    beta=0.28,
    source="Hoffmann et al. 2022, arXiv:2203.15556, Approach 3 (eq. 10)",
)


# --------------------------------------------------------------------------------------------
# Fitting the loss model to recorded runs


@dataclass(frozen=True, slots=True)
class LossFit:
    """A loss model fitted to (N, D, loss) triples, with how well it fits.

    Attributes:
        model: The fitted constants.
        n_points: Triples used.
        rms_log_residual: √mean((ln L_fit − ln L)²) over the triples.
        max_abs_log_residual: max |ln L_fit − ln L|.
        huber_delta: δ of the Huber loss on ln residuals.
    """

    model: LossModel
    n_points: int
    rms_log_residual: float
    max_abs_log_residual: float
    huber_delta: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "model": self.model.to_dict(),
            "n_points": self.n_points,
            "rms_log_residual": self.rms_log_residual,
            "max_abs_log_residual": self.max_abs_log_residual,
            "huber_delta": self.huber_delta,
        }


def _linear_fit(
    alpha: Floats, beta: Floats, ln_n: Floats, ln_d: Floats, loss: Floats, weight: Floats
) -> tuple[Floats, Floats]:
    """For each (α, β) (shape G), the weighted least-squares (E, A, B) and its objective.

    With α and β fixed the model is linear in (E, A, B) (variable projection). Each column is
    scaled to unit maximum before the 3×3 normal equations are solved, which keeps them well
    conditioned whatever the magnitude of N^-α. Fits with a negative constant score +inf.
    """
    x_n = np.exp(-alpha[:, None] * ln_n[None, :])  # (G, P)
    x_d = np.exp(-beta[:, None] * ln_d[None, :])
    s_n = x_n.max(axis=1)
    s_d = x_d.max(axis=1)
    cols = np.stack([np.ones_like(x_n), x_n / s_n[:, None], x_d / s_d[:, None]], axis=2)
    w = weight / loss**2  # relative residuals ≈ ln residuals
    weighted = cols * w[None, :, None]
    normal = np.einsum("gpi,gpj->gij", weighted, cols)
    rhs = np.einsum("gpi,p->gi", weighted, loss)
    with np.errstate(all="ignore"):
        try:
            theta = np.linalg.solve(normal, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            theta = np.stack(
                [np.linalg.lstsq(m, r, rcond=None)[0] for m, r in zip(normal, rhs, strict=True)]
            )
        theta[:, 1] /= s_n
        theta[:, 2] /= s_d
        fitted = theta[:, 0:1] + theta[:, 1:2] * x_n + theta[:, 2:3] * x_d
        objective = np.sum(w[None, :] * (fitted - loss[None, :]) ** 2, axis=1)
    bad = ~np.all(np.isfinite(theta), axis=1) | np.any(theta < 0.0, axis=1)
    bad |= (theta[:, 1] <= 0.0) | (theta[:, 2] <= 0.0) | ~np.isfinite(objective)
    objective = np.where(bad, np.inf, objective)
    return theta, objective


def _best_exponents(
    ln_n: Floats, ln_d: Floats, loss: Floats, weight: Floats
) -> tuple[float, float, Floats]:
    """Grid search over (α, β) in [0.02, 2]², then six finer grids around the best."""
    lo_a, hi_a, lo_b, hi_b = 0.02, 2.0, 0.02, 2.0
    points = 40
    best_a = best_b = math.nan
    best_theta: Floats = np.full(3, np.nan)
    for _ in range(7):
        grid_a, grid_b = np.meshgrid(
            np.linspace(lo_a, hi_a, points), np.linspace(lo_b, hi_b, points), indexing="ij"
        )
        alpha, beta = grid_a.ravel(), grid_b.ravel()
        theta, objective = _linear_fit(alpha, beta, ln_n, ln_d, loss, weight)
        k = int(np.argmin(objective))
        if not np.isfinite(objective[k]):
            raise InvalidQuantity(
                "no loss model with E ≥ 0, A > 0, B > 0 fits these losses", field="loss"
            )
        best_a, best_b, best_theta = float(alpha[k]), float(beta[k]), theta[k]
        step_a, step_b = (hi_a - lo_a) / (points - 1), (hi_b - lo_b) / (points - 1)
        lo_a, hi_a = max(1e-3, best_a - 2 * step_a), best_a + 2 * step_a
        lo_b, hi_b = max(1e-3, best_b - 2 * step_b), best_b + 2 * step_b
        points = 21
    return best_a, best_b, best_theta


def fit_loss_model(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    *,
    huber_delta: float = 1e-3,
    iterations: int = 6,
    source: str = "fitted to recorded runs",
) -> LossFit:
    """Fit L(N, D) = E + A/N^α + B/D^β to (N, D, loss) triples, robustly, with numpy only.

    Hoffmann et al. minimise a Huber loss (δ = 10⁻³) of ln-space residuals with L-BFGS from a
    grid of starts. Without scipy this fit uses variable projection: for fixed (α, β) the model
    is linear in (E, A, B), solved by weighted least squares on relative residuals (≈ ln
    residuals); (α, β) is found by a grid search refined six times. Robustness comes from
    iteratively reweighted least squares with Huber weights min(1, δ/|r|) on the ln residuals r,
    so an outlying run pulls the fit like an absolute (not squared) error.

    Args:
        n_params: N of each run (> 0).
        n_tokens: D of each run (> 0).
        loss: Final loss of each run, nats/token (> 0).
        huber_delta: δ of the Huber loss on ln residuals.
        iterations: Reweighting rounds.
        source: Label for the fitted model.

    Returns:
        The fit and its residuals.

    Raises:
        InvalidQuantity: Fewer than 5 triples, mismatched lengths, bad numbers, N or D without
            spread (the two terms cannot be told apart), or no fit with non-negative constants.
    """
    n = _array(n_params, "n_params").ravel()
    d = _array(n_tokens, "n_tokens").ravel()
    observed = _array(loss, "loss").ravel()
    if not n.size == d.size == observed.size:
        raise InvalidQuantity(
            f"n_params, n_tokens and loss differ in length ({n.size}, {d.size}, {observed.size})",
            field="loss",
        )
    if n.size < 5:
        raise InvalidQuantity(f"need at least 5 (N, D, loss) triples, got {n.size}", field="loss")
    ln_n, ln_d = np.log(n), np.log(d)
    if np.ptp(ln_n) < 1e-6:
        raise InvalidQuantity("all runs have the same N: α cannot be fitted", field="n_params")
    if np.ptp(ln_d) < 1e-6:
        raise InvalidQuantity("all runs have the same D: β cannot be fitted", field="n_tokens")
    delta = chk.positive(huber_delta, "huber_delta")
    weight = np.ones_like(observed)
    alpha = beta = math.nan
    theta: Floats = np.full(3, np.nan)
    for _ in range(max(1, iterations)):
        alpha, beta, theta = _best_exponents(ln_n, ln_d, observed, weight)
        fitted = theta[0] + theta[1] * n ** (-alpha) + theta[2] * d ** (-beta)
        residual = np.log(fitted) - np.log(observed)
        weight = np.minimum(1.0, delta / np.maximum(np.abs(residual), 1e-300))
    model = LossModel(
        e=float(theta[0]),
        a=float(theta[1]),
        b=float(theta[2]),
        alpha=alpha,
        beta=beta,
        source=source,
    )
    residual = np.log(model.loss(n, d)) - np.log(observed)
    return LossFit(
        model=model,
        n_points=int(n.size),
        rms_log_residual=float(np.sqrt(np.mean(residual**2))),
        max_abs_log_residual=float(np.max(np.abs(residual))),
        huber_delta=delta,
    )


# --------------------------------------------------------------------------------------------
# The inference-aware optimum


def optimal_allocation(
    target_loss: ArrayLike,
    inference_tokens: ArrayLike,
    *,
    model: LossModel = CHINCHILLA,
    test_time_multiplier: ArrayLike = 1.0,
    cost_ratio: ArrayLike = 1.0,
) -> tuple[Floats, Floats]:
    """The (N, D) that reach ``target_loss`` at the least training + inference cost.

    Vectorised: every argument broadcasts against the others (see the module docstring for
    the stationarity condition and why bisection on it is exact and monotone).

    Args:
        target_loss: L*, above the model's E.
        inference_tokens: T, tokens served over the model's life before the test-time
            multiplier (≥ 0; 0 gives the compute-optimal point).
        model: The loss model.
        test_time_multiplier: k, tokens generated per query relative to T's (> 0).
        cost_ratio: w_inf / w_train: the cost of an inference FLOP relative to a training FLOP
            (> 0); 1 when both run at the same FLOP/J and price.

    Returns:
        (N, D), broadcast together.
    """
    target = model.check_target(target_loss)
    demand = _array(inference_tokens, "inference_tokens", positive=False)
    multiplier = _array(test_time_multiplier, "test_time_multiplier")
    ratio = _array(cost_ratio, "cost_ratio")
    target, demand, multiplier, ratio = np.broadcast_arrays(target, demand, multiplier, ratio)
    alpha, beta = model.alpha, model.beta
    gap = target - model.e
    ln_gap = np.log(gap)
    with np.errstate(divide="ignore"):
        ln_c = np.log(INFERENCE_FLOP_PER_PARAM_TOKEN * demand * multiplier * ratio) - math.log(
            TRAINING_FLOP_PER_PARAM_TOKEN
        )
    ln_d_scale = (math.log(model.b) - ln_gap) / beta  # ln D = ln_d_scale − ln s / β
    s_star = alpha / (alpha + beta)
    lo = np.full(gap.shape, _LN_S_FLOOR)
    hi = np.full(gap.shape, math.log(s_star))
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            s = np.exp(mid)
            # ln h(s) = ln D(s) + ln(α − (α+β)s) − ln β − ln s; h falls with s.
            ln_h = (
                ln_d_scale
                - mid / beta
                + np.log(np.maximum(alpha - (alpha + beta) * s, 0.0))
                - math.log(beta)
                - mid
            )
            right = ln_h >= ln_c
            lo = np.where(right, mid, lo)
            hi = np.where(right, hi, mid)
    ln_s = np.where(demand > 0.0, 0.5 * (lo + hi), math.log(s_star))
    s = np.exp(ln_s)
    ln_n = (math.log(model.a) - np.log1p(-s) - ln_gap) / alpha
    ln_d = ln_d_scale - ln_s / beta
    with np.errstate(over="ignore"):
        return np.exp(ln_n), np.exp(ln_d)


@dataclass(frozen=True, slots=True)
class EnergyPrices:
    """What a joule of IT energy costs, facility overhead (PUE) included.

    Attributes:
        usd_per_j: USD per J of IT energy; None when not priced.
        co2e_g_per_j: Location-based gCO2e per J of IT energy; None without a grid factor.
    """

    usd_per_j: float | None = None
    co2e_g_per_j: float | None = None

    def __post_init__(self) -> None:
        for name in ("usd_per_j", "co2e_g_per_j"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, chk.non_negative(value, name))


@dataclass(frozen=True, slots=True)
class PhaseCosts:
    """One phase's (or the lifetime's) compute and what it costs, as arrays.

    Attributes:
        flops: FLOP.
        energy_j: IT energy, J.
        usd: USD; None when not priced.
        co2e_g: Location-based gCO2e; None without a grid factor.
    """

    flops: Floats
    energy_j: Floats
    usd: Floats | None
    co2e_g: Floats | None

    def of(self, objective: Objective) -> Floats | None:
        """The figure for ``objective``."""
        return {"energy": self.energy_j, "usd": self.usd, "co2e": self.co2e_g}[objective]

    def __add__(self, other: PhaseCosts) -> PhaseCosts:
        def plus(a: Floats | None, b: Floats | None) -> Floats | None:
            return None if a is None or b is None else a + b

        return PhaseCosts(
            flops=self.flops + other.flops,
            energy_j=self.energy_j + other.energy_j,
            usd=plus(self.usd, other.usd),
            co2e_g=plus(self.co2e_g, other.co2e_g),
        )

    def per(self, count: Floats) -> PhaseCosts:
        """Each figure divided by ``count`` (per answer)."""
        return PhaseCosts(
            flops=self.flops / count,
            energy_j=self.energy_j / count,
            usd=None if self.usd is None else self.usd / count,
            co2e_g=None if self.co2e_g is None else self.co2e_g / count,
        )

    def item(self, index: int) -> dict[str, float | None]:
        """One point's figures as a JSON-safe record."""

        def at(a: Floats | None) -> float | None:
            return None if a is None else float(a.ravel()[index])

        return {
            "flops": float(self.flops.ravel()[index]),
            "energy_j": float(self.energy_j.ravel()[index]),
            "usd": at(self.usd),
            "co2e_g": at(self.co2e_g),
        }


def _phase(flops: Floats, flop_per_j: Floats, prices: EnergyPrices) -> PhaseCosts:
    energy = flops / flop_per_j
    return PhaseCosts(
        flops=flops,
        energy_j=energy,
        usd=None if prices.usd_per_j is None else energy * prices.usd_per_j,
        co2e_g=None if prices.co2e_g_per_j is None else energy * prices.co2e_g_per_j,
    )


@dataclass(frozen=True, slots=True)
class Allocation:
    """Model sizes and data, with their lifetime costs (arrays of one shape).

    Attributes:
        n_params: N.
        n_tokens: D.
        loss: L(N, D) under the plan's loss model.
        training: 6·N·D FLOP and its costs.
        inference: 2·N·T·k FLOP and its costs.
        total: training + inference.
        per_answer: total / queries; None without a query count.
    """

    n_params: Floats
    n_tokens: Floats
    loss: Floats
    training: PhaseCosts
    inference: PhaseCosts
    total: PhaseCosts
    per_answer: PhaseCosts | None

    def item(self, index: int = 0) -> dict[str, Any]:
        """One point as a JSON-safe record."""
        n = float(self.n_params.ravel()[index])
        d = float(self.n_tokens.ravel()[index])
        return {
            "n_params": n,
            "n_tokens": d,
            "tokens_per_param": d / n,
            "loss": float(self.loss.ravel()[index]),
            "training": self.training.item(index),
            "inference": self.inference.item(index),
            "total": self.total.item(index),
            "per_answer": None if self.per_answer is None else self.per_answer.item(index),
        }


def lifetime_costs(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    inference_tokens: ArrayLike,
    *,
    training_flop_per_j: ArrayLike,
    inference_flop_per_j: ArrayLike | None = None,
    test_time_multiplier: ArrayLike = 1.0,
    model: LossModel = CHINCHILLA,
    prices: EnergyPrices | None = None,
    inference_prices: EnergyPrices | None = None,
    queries: ArrayLike | None = None,
) -> Allocation:
    """Training + lifetime inference cost of models (N, D) serving T·k tokens, vectorised.

    Args:
        n_params: N.
        n_tokens: D.
        inference_tokens: T, lifetime tokens served before the test-time multiplier (≥ 0).
        training_flop_per_j: Training efficiency, FLOP/J.
        inference_flop_per_j: Inference efficiency, FLOP/J; None: the training figure.
        test_time_multiplier: k, tokens generated per query relative to T's (> 0).
        model: Loss model, for the loss each (N, D) reaches.
        prices: Price of a joule of training (and, by default, inference) IT energy.
        inference_prices: Price of a joule of inference IT energy; None: ``prices``.
        queries: Answers served over the life, for per-answer figures (> 0).

    Returns:
        The allocations with their costs; training + inference = total in every unit.
    """
    n = _array(n_params, "n_params")
    d = _array(n_tokens, "n_tokens")
    demand = _array(inference_tokens, "inference_tokens", positive=False)
    multiplier = _array(test_time_multiplier, "test_time_multiplier")
    eta_train = _array(training_flop_per_j, "training_flop_per_j")
    eta_inf = (
        eta_train
        if inference_flop_per_j is None
        else _array(inference_flop_per_j, "inference_flop_per_j")
    )
    count = None if queries is None else _array(queries, "queries")
    n, d, demand, multiplier = np.broadcast_arrays(n, d, demand, multiplier)
    train_prices = prices or EnergyPrices()
    infer_prices = inference_prices or train_prices
    training = _phase(TRAINING_FLOP_PER_PARAM_TOKEN * n * d, eta_train, train_prices)
    inference = _phase(
        INFERENCE_FLOP_PER_PARAM_TOKEN * n * demand * multiplier, eta_inf, infer_prices
    )
    total = training + inference
    return Allocation(
        n_params=np.asarray(n, dtype=np.float64),
        n_tokens=np.asarray(d, dtype=np.float64),
        loss=model.loss(n, d),
        training=training,
        inference=inference,
        total=total,
        per_answer=None if count is None else total.per(count),
    )


@dataclass(frozen=True, slots=True)
class InferenceAwarePlan:
    """The inference-aware optimum beside the Chinchilla point (and a given plan), per problem.

    Attributes:
        objective: What the optimum minimises: ``energy`` (J), ``usd`` or ``co2e`` (g).
        model: The loss model.
        target_loss: L* of each problem.
        inference_tokens: T of each problem, before the multiplier.
        test_time_multiplier: k of each problem.
        optimum: The (N, D) minimising training + inference ``objective`` at L*.
        chinchilla: The compute-optimal (N, D) at L* (zero demand), serving the same demand.
        given: The planned (N, D) whose loss set L*, when the plan was given as (N, D).
    """

    objective: Objective
    model: LossModel
    target_loss: Floats
    inference_tokens: Floats
    test_time_multiplier: Floats
    optimum: Allocation
    chinchilla: Allocation
    given: Allocation | None

    @property
    def saving(self) -> Floats:
        """Chinchilla's lifetime cost minus the optimum's, in the objective's unit (≥ 0)."""
        chin, best = self.chinchilla.total.of(self.objective), self.optimum.total.of(self.objective)
        assert chin is not None
        assert best is not None
        return chin - best

    @property
    def saving_fraction(self) -> Floats:
        """The saving as a fraction of Chinchilla's lifetime cost (0 where that cost is 0: the
        saving, between 0 and it, is then 0 too)."""
        chin = self.chinchilla.total.of(self.objective)
        assert chin is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(chin > 0, self.saving / np.where(chin > 0, chin, 1.0), 0.0)


def plan_inference_aware(
    *,
    training_flop_per_j: ArrayLike,
    inference_tokens: ArrayLike,
    target_loss: ArrayLike | None = None,
    n_params: ArrayLike | None = None,
    n_tokens: ArrayLike | None = None,
    model: LossModel = CHINCHILLA,
    test_time_multiplier: ArrayLike = 1.0,
    inference_flop_per_j: ArrayLike | None = None,
    prices: EnergyPrices | None = None,
    inference_prices: EnergyPrices | None = None,
    objective: Objective = "energy",
    queries: ArrayLike | None = None,
) -> InferenceAwarePlan:
    """For each target loss (or planned (N, D)) and demand, the cheapest (N, D) over a life.

    Give either ``target_loss`` or a planned ``n_params`` and ``n_tokens`` (then L* = L(N, D)
    and the plan is costed beside the optimum). Every array argument broadcasts.

    Args:
        training_flop_per_j: Training efficiency, FLOP/J (of comparable measured runs).
        inference_tokens: T, tokens served over the model's life at k = 1 (≥ 0).
        target_loss: L*, above the loss model's E.
        n_params: A planned N (with ``n_tokens``, instead of ``target_loss``).
        n_tokens: A planned D.
        model: The loss model (`CHINCHILLA` by default, or `fit_loss_model`'s).
        test_time_multiplier: k, tokens per query relative to T's: reasoning longer.
        inference_flop_per_j: Inference efficiency, FLOP/J; None: the training figure.
        prices: Price of a joule of IT energy (training, and inference by default).
        inference_prices: Price of a joule of inference IT energy; None: ``prices``.
        objective: Minimise ``energy``, ``usd`` or ``co2e``; the latter two need that price
            (> 0) in ``prices`` and ``inference_prices``.
        queries: Answers over the life, for per-answer figures.

    Returns:
        The optimum, the Chinchilla point and the given plan, each with training, inference and
        total costs.

    Raises:
        InvalidQuantity: Bad numbers, a target loss at or below E, both or neither of a target
            and a planned (N, D), an objective without its price.
    """
    if objective not in ("energy", "usd", "co2e"):
        raise InvalidQuantity(f"must be energy, usd or co2e, got {objective!r}", field="objective")
    planned = n_params is not None or n_tokens is not None
    if planned and target_loss is not None:
        raise InvalidQuantity(
            "give a target loss or a planned (n_params, n_tokens), not both", field="target_loss"
        )
    if target_loss is None:
        if n_params is None or n_tokens is None:
            raise InvalidQuantity(
                "give a target loss, or both n_params and n_tokens", field="target_loss"
            )
        target = model.loss(n_params, n_tokens)
    else:
        target = model.check_target(target_loss)
    eta_train = _array(training_flop_per_j, "training_flop_per_j")
    eta_inf = (
        eta_train
        if inference_flop_per_j is None
        else _array(inference_flop_per_j, "inference_flop_per_j")
    )
    train_prices = prices or EnergyPrices()
    infer_prices = inference_prices or train_prices
    ratio: Floats = eta_train / eta_inf
    if objective != "energy":
        field = "usd_per_j" if objective == "usd" else "co2e_g_per_j"
        per_j = [getattr(p, field) for p in (train_prices, infer_prices)]
        if any(p is None or p <= 0.0 for p in per_j):
            raise InvalidQuantity(
                f"minimising {objective} needs a price per joule > 0 ({field}) for training "
                "and inference",
                field="objective",
            )
        assert per_j[0] is not None
        assert per_j[1] is not None
        ratio = ratio * (per_j[1] / per_j[0])
    demand = _array(inference_tokens, "inference_tokens", positive=False)
    multiplier = _array(test_time_multiplier, "test_time_multiplier")
    target, demand, multiplier = np.broadcast_arrays(target, demand, multiplier)
    n_best, d_best = optimal_allocation(
        target, demand, model=model, test_time_multiplier=multiplier, cost_ratio=ratio
    )
    n_chin, d_chin = model.compute_optimal(target)
    if not (np.all(np.isfinite(d_best)) and np.all(np.isfinite(n_best))):
        raise InvalidQuantity(
            "the optimum needs more than 1e308 tokens: the target loss is too close to E for "
            "this demand",
            field="target_loss",
        )

    def costed(n: ArrayLike, d: ArrayLike) -> Allocation:
        return lifetime_costs(
            n,
            d,
            demand,
            training_flop_per_j=eta_train,
            inference_flop_per_j=eta_inf,
            test_time_multiplier=multiplier,
            model=model,
            prices=train_prices,
            inference_prices=infer_prices,
            queries=queries,
        )

    given = None
    if planned:
        assert n_params is not None
        assert n_tokens is not None
        given = costed(n_params, n_tokens)
    return InferenceAwarePlan(
        objective=objective,
        model=model,
        target_loss=np.asarray(target, dtype=np.float64),
        inference_tokens=np.asarray(demand, dtype=np.float64),
        test_time_multiplier=np.asarray(multiplier, dtype=np.float64),
        optimum=costed(n_best, d_best),
        chinchilla=costed(n_chin, d_chin),
        given=given,
    )
