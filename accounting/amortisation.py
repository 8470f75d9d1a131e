"""Amortisation: a model as an investment that served tokens pay back.

The model
---------
A model whose training consumed F (J, USD or gCO2e) and whose inference costs m per token has,
after x tokens served, the **amortised per-token value** F/x + m (`amortised_per_token`,
`amortisation_curve`). This decreases monotonically towards the inference floor m.

At the **parity volume** x = F/m (`inference_parity`) the training share F/x equals the
inference cost m: below it, training dominates the per-token figure; above it, serving does, and
more volume barely helps.

Two options a and b cost the same at the **break-even** x* = (F_b − F_a) / (m_a − m_b)
(`break_even`). When x* is not a positive number of tokens, no break-even exists, and
`break_even` returns ``tokens=None`` with the reason (one option dominates, or the two are
parallel).

Each figure comes in energy (J), cost (USD) and emissions (gCO2e): `ServingOption.from_energy`
prices measured energies at one PUE, tariff and grid factor. What F and m are for a planned run
comes from `accounting.planning` (6·N·D, 2·N per token, energy from measured FLOP/J); this module
needs none of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _econ_checks as chk
from .carbon import J_PER_KWH, EmissionFactor, Pue
from .cost import Tariff
from .errors import InvalidQuantity

__all__ = [
    "AmortisationCurve",
    "BreakEven",
    "Metric",
    "Parity",
    "ServingOption",
    "amortisation_curve",
    "amortised_per_token",
    "break_even",
    "inference_parity",
    "volume_grid",
]

Metric: TypeAlias = Literal["energy", "usd", "co2e"]
_METRIC_UNITS: dict[str, str] = {"energy": "J", "usd": "USD", "co2e": "gCO2e"}


@dataclass(frozen=True, slots=True)
class ServingOption:
    """A model as an investment: a one-off training cost and a per-token inference cost.

    Energy is IT energy as metered; USD and gCO2e are whatever the caller (or `from_energy`)
    priced, PUE included where it applied. USD and CO2e are optional but come in pairs.

    Attributes:
        name: A label.
        training_energy_j: Training energy, J.
        inference_energy_j_per_token: Inference energy, J/token.
        training_usd: Training cost, USD.
        inference_usd_per_token: Inference cost, USD/token.
        training_co2e_g: Training emissions, gCO2e.
        inference_co2e_g_per_token: Inference emissions, gCO2e/token.
        assumptions: Where the USD and CO2e figures come from.
    """

    name: str
    training_energy_j: float
    inference_energy_j_per_token: float
    training_usd: float | None = None
    inference_usd_per_token: float | None = None
    training_co2e_g: float | None = None
    inference_co2e_g_per_token: float | None = None
    assumptions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        chk.non_empty(self.name, "name")
        for fixed, marginal in (
            ("training_energy_j", "inference_energy_j_per_token"),
            ("training_usd", "inference_usd_per_token"),
            ("training_co2e_g", "inference_co2e_g_per_token"),
        ):
            f, m = getattr(self, fixed), getattr(self, marginal)
            if fixed == "training_energy_j" and (f is None or m is None):
                raise InvalidQuantity("energy figures are required", field=fixed)
            if (f is None) != (m is None):
                raise InvalidQuantity(f"give both {fixed} and {marginal}, or neither", field=fixed)
            if f is not None:
                object.__setattr__(self, fixed, chk.non_negative(f, fixed))
                object.__setattr__(self, marginal, chk.non_negative(m, marginal))

    @classmethod
    def from_energy(
        cls,
        name: str,
        *,
        training_energy_j: float,
        inference_energy_j_per_token: float,
        pue: Pue,
        tariff: Tariff | None = None,
        factor: EmissionFactor | None = None,
        training_hardware_usd: float = 0.0,
        inference_hardware_usd_per_token: float = 0.0,
    ) -> ServingOption:
        """Price both energies at one PUE, tariff and grid factor.

        Args:
            name: A label.
            training_energy_j: Training IT energy, J.
            inference_energy_j_per_token: Inference IT energy, J/token.
            pue: Facility overhead applied to both.
            tariff: Electricity price; gives the USD pair with the hardware costs.
            factor: Grid intensity (any kind; it is recorded) for the gCO2e pair.
            training_hardware_usd: Hardware cost of training, USD.
            inference_hardware_usd_per_token: Hardware cost per served token, USD/token.

        Returns:
            The option, with its assumptions listed.
        """
        train_j = chk.non_negative(training_energy_j, "training_energy_j")
        infer_j = chk.non_negative(inference_energy_j_per_token, "inference_energy_j_per_token")
        assumptions = [f"PUE {pue.value} ({pue.kind}: {pue.source})"]
        usd: tuple[float | None, float | None] = (None, None)
        if tariff is not None:
            usd_per_j = pue.value / J_PER_KWH * tariff.usd_per_kwh
            usd = (
                train_j * usd_per_j + chk.non_negative(training_hardware_usd, "training_hw"),
                infer_j * usd_per_j
                + chk.non_negative(inference_hardware_usd_per_token, "inference_hw"),
            )
            assumptions.append(f"tariff {tariff.usd_per_kwh} USD/kWh ({tariff.source})")
        co2e: tuple[float | None, float | None] = (None, None)
        if factor is not None:
            g_per_j = pue.value / J_PER_KWH * factor.intensity_g_per_kwh
            co2e = (train_j * g_per_j, infer_j * g_per_j)
            assumptions.append(
                f"{factor.kind} factor {factor.region} {factor.intensity_g_per_kwh} gCO2e/kWh "
                f"({factor.source})"
            )
        return cls(
            name=name,
            training_energy_j=train_j,
            inference_energy_j_per_token=infer_j,
            training_usd=usd[0],
            inference_usd_per_token=usd[1],
            training_co2e_g=co2e[0],
            inference_co2e_g_per_token=co2e[1],
            assumptions=tuple(assumptions),
        )

    def fixed_and_marginal(self, metric: Metric) -> tuple[float, float] | None:
        """(training total, per-token inference) for ``metric``; None when not priced."""
        pairs: dict[str, tuple[float | None, float | None]] = {
            "energy": (self.training_energy_j, self.inference_energy_j_per_token),
            "usd": (self.training_usd, self.inference_usd_per_token),
            "co2e": (self.training_co2e_g, self.inference_co2e_g_per_token),
        }
        if metric not in pairs:
            raise InvalidQuantity(
                f"metric must be one of {', '.join(pairs)}, got {metric!r}", field="metric"
            )
        fixed, marginal = pairs[metric]
        return None if fixed is None or marginal is None else (fixed, marginal)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "name": self.name,
            "training_energy_j": self.training_energy_j,
            "inference_energy_j_per_token": self.inference_energy_j_per_token,
            "training_usd": self.training_usd,
            "inference_usd_per_token": self.inference_usd_per_token,
            "training_co2e_g": self.training_co2e_g,
            "inference_co2e_g_per_token": self.inference_co2e_g_per_token,
            "assumptions": list(self.assumptions),
        }


def amortised_per_token(
    training_total: float, per_token: float, tokens_served: ArrayLike
) -> NDArray[np.float64]:
    """Amortised cost per token after serving ``tokens_served``: training / x + per_token.

    Args:
        training_total: One-off training cost (J, USD or gCO2e; ≥ 0).
        per_token: Inference cost per token, same unit per token (≥ 0).
        tokens_served: Tokens served so far (any shape, each > 0).

    Returns:
        Per-token cost, same shape as ``tokens_served``; non-increasing in it and tending to
        ``per_token``.
    """
    fixed = chk.non_negative(training_total, "training_total")
    marginal = chk.non_negative(per_token, "per_token")
    tokens = chk.positive_array(tokens_served, "tokens_served")
    result: NDArray[np.float64] = fixed / tokens + marginal
    return result


@dataclass(frozen=True, slots=True)
class AmortisationCurve:
    """Amortised per-token energy, cost and emissions of one option over served-token volumes.

    Attributes:
        option: The option.
        tokens_served: The volumes, tokens.
        j_per_token: Amortised energy, J/token.
        usd_per_token: Amortised cost, USD/token, when the option is priced.
        co2e_g_per_token: Amortised emissions, gCO2e/token, when the option has them.
    """

    option: ServingOption
    tokens_served: NDArray[np.float64]
    j_per_token: NDArray[np.float64]
    usd_per_token: NDArray[np.float64] | None
    co2e_g_per_token: NDArray[np.float64] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record (arrays as lists)."""

        def listed(a: NDArray[np.float64] | None) -> list[Any] | None:
            return None if a is None else a.tolist()

        return {
            "option": self.option.to_dict(),
            "tokens_served": self.tokens_served.tolist(),
            "j_per_token": self.j_per_token.tolist(),
            "usd_per_token": listed(self.usd_per_token),
            "co2e_g_per_token": listed(self.co2e_g_per_token),
            "floor_j_per_token": self.option.inference_energy_j_per_token,
            "floor_usd_per_token": self.option.inference_usd_per_token,
            "floor_co2e_g_per_token": self.option.inference_co2e_g_per_token,
        }


def amortisation_curve(option: ServingOption, tokens_served: ArrayLike) -> AmortisationCurve:
    """Amortised J/token (and USD/token, gCO2e/token when priced) over ``tokens_served``.

    Args:
        option: The model's training and inference costs.
        tokens_served: Volumes to evaluate at, tokens (any shape, each > 0).

    Returns:
        The curves, each non-increasing in tokens served and tending to the inference floor.
    """
    tokens = chk.positive_array(tokens_served, "tokens_served")

    def curve(metric: Metric) -> NDArray[np.float64] | None:
        pair = option.fixed_and_marginal(metric)
        return None if pair is None else amortised_per_token(pair[0], pair[1], tokens)

    return AmortisationCurve(
        option=option,
        tokens_served=tokens,
        j_per_token=amortised_per_token(
            option.training_energy_j, option.inference_energy_j_per_token, tokens
        ),
        usd_per_token=curve("usd"),
        co2e_g_per_token=curve("co2e"),
    )


def volume_grid(low_tokens: float, high_tokens: float, points: int = 64) -> NDArray[np.float64]:
    """Log-spaced served-token volumes from ``low_tokens`` to ``high_tokens``, both included.

    Args:
        low_tokens: Smallest volume, tokens (> 0).
        high_tokens: Largest volume, tokens (> ``low_tokens``).
        points: Number of volumes (2 … 10 000).

    Returns:
        Increasing volumes, evenly spaced in log10.
    """
    low = chk.positive(low_tokens, "low_tokens")
    high = chk.positive(high_tokens, "high_tokens")
    if not high > low:
        raise InvalidQuantity(
            f"must be above low_tokens = {low:g}, got {high:g}", field="high_tokens"
        )
    if isinstance(points, bool) or not isinstance(points, int) or not 2 <= points <= 10_000:
        raise InvalidQuantity(f"must be an integer in [2, 10000], got {points!r}", field="points")
    grid: NDArray[np.float64] = np.logspace(math.log10(low), math.log10(high), points)
    grid[0], grid[-1] = low, high  # exact ends despite rounding in log space
    return grid


@dataclass(frozen=True, slots=True)
class Parity:
    """The served volume at which training's share per token equals the inference cost.

    Attributes:
        metric: ``energy``, ``usd`` or ``co2e``.
        unit: The metric's unit (J, USD, gCO2e).
        option: The option's name.
        tokens: F / m, tokens; None when there is no such volume.
        per_token_at_parity: Amortised value there, 2·m, in ``unit`` per token.
        reason: Plain-language explanation, always set.
    """

    metric: Metric
    unit: str
    option: str
    tokens: float | None
    per_token_at_parity: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "metric": self.metric,
            "unit": self.unit,
            "option": self.option,
            "tokens": self.tokens,
            "per_token_at_parity": self.per_token_at_parity,
            "reason": self.reason,
        }


def inference_parity(option: ServingOption, *, metric: Metric = "energy") -> Parity:
    """Tokens served at which training's amortised share F/x equals the per-token cost m.

    Args:
        option: The model's training and inference costs.
        metric: Energy (J), cost (USD) or emissions (gCO2e).

    Returns:
        x = F/m, or ``tokens=None`` with the reason when F or m is zero or x overflows.

    Raises:
        InvalidQuantity: Unknown metric, or the option lacks that metric.
    """
    fixed, marginal = _priced(option, metric)
    unit = _METRIC_UNITS[metric]
    if fixed == 0.0:
        return Parity(
            metric, unit, option.name, None, None, "no training cost: nothing to amortise"
        )
    if marginal == 0.0:
        return Parity(
            metric,
            unit,
            option.name,
            None,
            None,
            "inference costs nothing per token: the training share dominates at every volume",
        )
    tokens = fixed / marginal
    if not math.isfinite(tokens):
        return Parity(
            metric,
            unit,
            option.name,
            None,
            None,
            f"the inference cost per token ({marginal:.3g} {unit}) is too small against the "
            f"training cost ({fixed:.3g} {unit}): parity lies beyond any representable volume",
        )
    return Parity(
        metric,
        unit,
        option.name,
        tokens,
        2.0 * marginal,
        f"below {tokens:.4g} tokens served, training dominates the per-token {metric}; "
        "above it, inference does",
    )


@dataclass(frozen=True, slots=True)
class BreakEven:
    """Where two options cost the same, or why they never do.

    Attributes:
        metric: ``energy``, ``usd`` or ``co2e``.
        unit: The metric's unit (J, USD, gCO2e).
        option_a: Name of the first option.
        option_b: Name of the second option.
        tokens: Served tokens at which both cost the same; None when there is no such volume.
        cost_at_break_even: Total cost of either option at ``tokens``, in ``unit``.
        cheaper_below: Option cheaper for fewer tokens (None when they never differ).
        cheaper_above: Option cheaper for more tokens (None when they never differ).
        reason: Plain-language explanation, always set.
    """

    metric: Metric
    unit: str
    option_a: str
    option_b: str
    tokens: float | None
    cost_at_break_even: float | None
    cheaper_below: str | None
    cheaper_above: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "metric": self.metric,
            "unit": self.unit,
            "option_a": self.option_a,
            "option_b": self.option_b,
            "tokens": self.tokens,
            "cost_at_break_even": self.cost_at_break_even,
            "cheaper_below": self.cheaper_below,
            "cheaper_above": self.cheaper_above,
            "reason": self.reason,
        }


def break_even(a: ServingOption, b: ServingOption, *, metric: Metric = "energy") -> BreakEven:
    """Served tokens x at which training_a + infer_a·x = training_b + infer_b·x.

    Args:
        a: First option.
        b: Second option.
        metric: Compare energy (J), cost (USD) or emissions (gCO2e).

    Returns:
        The break-even volume, or ``tokens=None`` with the reason: the options are identical,
        parallel (same per-token cost, one always cheaper), or one dominates (the lines cross at
        zero or negative volume).

    Raises:
        InvalidQuantity: Unknown metric, or an option lacks that metric.
    """
    fixed_a, per_a = _priced(a, metric)
    fixed_b, per_b = _priced(b, metric)
    unit = _METRIC_UNITS[metric]

    def result(
        tokens: float | None, below: str | None, above: str | None, reason: str
    ) -> BreakEven:
        cost = None if tokens is None else fixed_a + per_a * tokens
        return BreakEven(metric, unit, a.name, b.name, tokens, cost, below, above, reason)

    if per_a == per_b:
        if fixed_a == fixed_b:
            return result(None, None, None, "identical at every volume: no break-even")
        cheaper = a.name if fixed_a < fixed_b else b.name
        return result(
            None,
            cheaper,
            cheaper,
            f"same inference cost per token ({per_a:g} {unit}/token): {cheaper!r} has the "
            f"lower training cost and is cheaper at every volume",
        )
    tokens = (fixed_b - fixed_a) / (per_a - per_b)
    lower_marginal = a.name if per_a < per_b else b.name
    lower_fixed = a.name if fixed_a < fixed_b else b.name
    if tokens <= 0.0:
        return result(
            None,
            lower_marginal,
            lower_marginal,
            f"{lower_marginal!r} costs no more to train and less per token: it is cheaper at "
            "every positive volume, so there is no break-even",
        )
    if math.isinf(tokens):
        return result(
            None,
            lower_fixed,
            lower_fixed,
            f"the per-token costs differ by only {abs(per_a - per_b):.3g} {unit}/token: the "
            f"break-even lies beyond any representable volume, so {lower_fixed!r} is cheaper "
            "in practice",
        )
    return result(
        tokens,
        lower_fixed,
        lower_marginal,
        f"{lower_fixed!r} is cheaper below {tokens:.4g} tokens served, {lower_marginal!r} above",
    )


def _priced(option: ServingOption, metric: Metric) -> tuple[float, float]:
    pair = option.fixed_and_marginal(metric)
    if pair is None:
        raise InvalidQuantity(f"option {option.name!r} has no {metric} figures", field="metric")
    return pair
