"""Planning and amortisation: the economics of when to compute.

The model
---------
**FLOPs** (Kaplan et al. 2020, arXiv:2001.08361). A dense transformer with N non-embedding
parameters spends ≈ 2·N FLOP per token in the forward pass and ≈ 4·N in the backward pass, so

    training FLOPs   ≈ 6·N·D                  (D training tokens)
    inference FLOPs  ≈ 2·N per token

Attention over the context adds ≈ 2·n_layer·n_ctx·d_model FLOP per token forward (taking the
attention width d_attn = d_model), three times that in training. It is small when
d_model ≫ n_ctx/12 and left out unless an `AttentionShape` is given. For inference, ``n_ctx`` is
the number of context positions attended per generated token (the mean KV-cache length over the
generation), not the model's maximum context.

**Chinchilla** (Hoffmann et al. 2022, arXiv:2203.15556): compute-optimal D ≈ 20·N.
`chinchilla_check` reports D / (20·N) and flags it outside a band, by default 0.5×–5× (10–100
tokens per parameter).
Below 0.5× the same compute would reach a lower loss with a smaller model trained on more data.
Above 5× the model is deliberately over-trained (Llama 2 7B: 2T tokens ≈ 14×), which pays off only
when inference volume is large. The flag is information, never an error.

**Energy of a planned run** = FLOPs / (FLOP/J), where FLOP/J comes from measured comparable runs:
the central estimate uses the median FLOP/J and the range uses the extreme (or chosen percentile)
FLOP/J values. The best efficiency gives the low energy. **Duration** = FLOPs / (peak FLOP/s per
device × devices × MFU). Cost and CO2e follow from `accounting.cost` and `accounting.carbon`.

Without comparable runs, `rated_flop_per_j` gives the datasheet figure MFU × peak / TDP: the
efficiency of boards drawing exactly TDP at that MFU. Boards usually draw less, so energy
estimated from it errs high; a plan must say which basis it used.

**Amortisation.** A model whose training consumed F (J, USD or gCO2e) and whose inference costs
m per token has, after x tokens served, the amortised per-token value F/x + m. This decreases
monotonically towards the inference floor m. At the **parity volume** x = F/m
(`inference_parity`) the training share F/x equals the inference cost m: below it, training
dominates the per-token figure; above it, serving does, and more volume barely helps.
Two options a and b cost the same at
x* = (F_b − F_a) / (m_a − m_b). When x* is not a positive number of tokens, no break-even exists,
and `break_even` returns ``tokens=None`` with the reason (one option dominates, or the two are
parallel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _econ_checks as chk
from .carbon import J_PER_KWH, EmissionFactor, Pue, Scope2Emissions, scope2_emissions
from .cost import CostBreakdown, HardwarePrice, Tariff, run_cost
from .errors import InvalidQuantity

__all__ = [
    "CHINCHILLA_BAND",
    "CHINCHILLA_TOKENS_PER_PARAM",
    "INFERENCE_FLOP_PER_PARAM_TOKEN",
    "TRAINING_FLOP_PER_PARAM_TOKEN",
    "AmortisationCurve",
    "AttentionShape",
    "BreakEven",
    "ChinchillaCheck",
    "ComputeSetup",
    "EnergyEstimate",
    "Metric",
    "Parity",
    "ServingOption",
    "TrainingPlan",
    "amortisation_curve",
    "amortised_per_token",
    "break_even",
    "chinchilla_check",
    "estimate_energy",
    "inference_flops_per_token",
    "inference_parity",
    "plan_training",
    "rated_flop_per_j",
    "training_flops",
    "volume_grid",
]

#: FLOP per parameter per training token: 2 forward + 4 backward (Kaplan 2020).
TRAINING_FLOP_PER_PARAM_TOKEN = 6.0
#: FLOP per parameter per inference token: the forward pass (Kaplan 2020).
INFERENCE_FLOP_PER_PARAM_TOKEN = 2.0
#: Compute-optimal training tokens per parameter (Hoffmann et al. 2022).
CHINCHILLA_TOKENS_PER_PARAM = 20.0
#: Default band of D / (20·N) inside which a run counts as near compute-optimal.
CHINCHILLA_BAND = (0.5, 5.0)

Metric: TypeAlias = Literal["energy", "usd", "co2e"]
_METRIC_UNITS: dict[str, str] = {"energy": "J", "usd": "USD", "co2e": "gCO2e"}


# --------------------------------------------------------------------------------------------
# FLOPs and Chinchilla


@dataclass(frozen=True, slots=True)
class AttentionShape:
    """The transformer dimensions the attention-context FLOP term needs.

    Attributes:
        n_layer: Number of layers.
        n_ctx: Context positions attended per token (training: the sequence length; inference:
            the mean KV-cache length while generating).
        d_model: Model (= attention) width.
    """

    n_layer: int
    n_ctx: int
    d_model: int

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_ctx", "d_model"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidQuantity(f"must be a positive integer, got {value!r}", field=name)

    @property
    def forward_flops_per_token(self) -> float:
        """2·n_layer·n_ctx·d_model, FLOP per token in the forward pass."""
        return 2.0 * self.n_layer * self.n_ctx * self.d_model

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {"n_layer": self.n_layer, "n_ctx": self.n_ctx, "d_model": self.d_model}


def training_flops(
    n_params: float, n_tokens: float, *, attention: AttentionShape | None = None
) -> float:
    """Training compute ≈ 6·N·D (+ 6·n_layer·n_ctx·d_model·D with ``attention``).

    Args:
        n_params: N, non-embedding parameters.
        n_tokens: D, training tokens.
        attention: Adds the attention-context term when given.

    Returns:
        FLOPs.
    """
    n = chk.positive(n_params, "n_params")
    d = chk.non_negative(n_tokens, "n_tokens")
    per_token = TRAINING_FLOP_PER_PARAM_TOKEN * n
    if attention is not None:
        per_token += 3.0 * attention.forward_flops_per_token
    return per_token * d


def inference_flops_per_token(n_params: float, *, attention: AttentionShape | None = None) -> float:
    """Inference compute ≈ 2·N FLOP per token (+ 2·n_layer·n_ctx·d_model with ``attention``).

    Args:
        n_params: N, non-embedding parameters.
        attention: Adds attention over ``attention.n_ctx`` cached positions when given.

    Returns:
        FLOP per generated or processed token.
    """
    n = chk.positive(n_params, "n_params")
    extra = 0.0 if attention is None else attention.forward_flops_per_token
    return INFERENCE_FLOP_PER_PARAM_TOKEN * n + extra


Regime: TypeAlias = Literal["under_trained", "near_optimal", "over_trained"]


@dataclass(frozen=True, slots=True)
class ChinchillaCheck:
    """How far a run's data budget sits from Chinchilla's D ≈ 20·N.

    Attributes:
        n_params: N.
        n_tokens: D.
        optimal_tokens: 20·N.
        tokens_per_param: D / N.
        ratio: D / (20·N).
        band: (low, high) ratio band counted as near-optimal.
        regime: ``under_trained`` (ratio < low), ``near_optimal``, or ``over_trained`` (> high).
    """

    n_params: float
    n_tokens: float
    optimal_tokens: float
    tokens_per_param: float
    ratio: float
    band: tuple[float, float]
    regime: Regime

    @property
    def flagged(self) -> bool:
        """True outside the band."""
        return self.regime != "near_optimal"

    @property
    def message(self) -> str:
        """One line for a report."""
        where = {
            "under_trained": "below the band: a smaller model on more tokens would use the "
            "same compute better",
            "near_optimal": "within the band",
            "over_trained": "above the band: over-trained, worthwhile only for large inference "
            "volume",
        }[self.regime]
        return (
            f"{self.tokens_per_param:.3g} tokens/parameter = {self.ratio:.3g}× the Chinchilla "
            f"optimum of {CHINCHILLA_TOKENS_PER_PARAM:g}; {where} "
            f"({self.band[0]:g}×–{self.band[1]:g}×)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "n_params": self.n_params,
            "n_tokens": self.n_tokens,
            "optimal_tokens": self.optimal_tokens,
            "tokens_per_param": self.tokens_per_param,
            "ratio": self.ratio,
            "band": list(self.band),
            "regime": self.regime,
            "flagged": self.flagged,
            "message": self.message,
        }


def chinchilla_check(
    n_params: float, n_tokens: float, *, band: tuple[float, float] = CHINCHILLA_BAND
) -> ChinchillaCheck:
    """Compare D with the compute-optimal 20·N.

    Args:
        n_params: N, parameters.
        n_tokens: D, training tokens.
        band: Ratio band (low, high) of D / (20·N) counted as near-optimal; inclusive.

    Returns:
        The ratio and regime.
    """
    n = chk.positive(n_params, "n_params")
    d = chk.non_negative(n_tokens, "n_tokens")
    low, high = chk.positive(band[0], "band"), chk.positive(band[1], "band")
    if low > high:
        raise InvalidQuantity(f"low end {low} above high end {high}", field="band")
    optimal = CHINCHILLA_TOKENS_PER_PARAM * n
    ratio = d / optimal
    regime: Regime = (
        "under_trained" if ratio < low else "over_trained" if ratio > high else "near_optimal"
    )
    return ChinchillaCheck(
        n_params=n,
        n_tokens=d,
        optimal_tokens=optimal,
        tokens_per_param=d / n,
        ratio=ratio,
        band=(low, high),
        regime=regime,
    )


# --------------------------------------------------------------------------------------------
# Energy and duration of a planned run


@dataclass(frozen=True, slots=True)
class EnergyEstimate:
    """Energy for a given amount of compute, from measured FLOP/J of comparable runs.

    Attributes:
        flops: The compute, FLOP.
        energy_j_central: flops / median FLOP/J, J.
        energy_j_low: flops / the high FLOP/J, J.
        energy_j_high: flops / the low FLOP/J, J.
        flop_per_j_central: Median of the samples.
        flop_per_j_low: Minimum (or lower percentile) of the samples.
        flop_per_j_high: Maximum (or upper percentile) of the samples.
        n_samples: How many measured runs the estimate rests on.
        range_method: ``"min/max"`` or ``"p<lo>–p<hi>"``.
    """

    flops: float
    energy_j_central: float
    energy_j_low: float
    energy_j_high: float
    flop_per_j_central: float
    flop_per_j_low: float
    flop_per_j_high: float
    n_samples: int
    range_method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "flops": self.flops,
            "energy_j_central": self.energy_j_central,
            "energy_j_low": self.energy_j_low,
            "energy_j_high": self.energy_j_high,
            "flop_per_j_central": self.flop_per_j_central,
            "flop_per_j_low": self.flop_per_j_low,
            "flop_per_j_high": self.flop_per_j_high,
            "n_samples": self.n_samples,
            "range_method": self.range_method,
        }


def estimate_energy(
    flops: float,
    flop_per_j_samples: Sequence[float] | NDArray[np.float64],
    *,
    percentiles: tuple[float, float] | None = None,
) -> EnergyEstimate:
    """Energy to do ``flops`` at the efficiency measured on comparable runs.

    Args:
        flops: Compute to do, FLOP (≥ 0).
        flop_per_j_samples: Measured FLOP/J of comparable runs (at least one, all > 0).
        percentiles: (lo, hi) in [0, 100] for the range; None uses min and max.

    Returns:
        Central estimate (median efficiency) and range.
    """
    work = chk.non_negative(flops, "flops")
    samples = chk.positive_array(flop_per_j_samples, "flop_per_j_samples").ravel()
    central = float(np.median(samples))
    if percentiles is None:
        low, high = float(samples.min()), float(samples.max())
        method = "min/max"
    else:
        lo_pct, hi_pct = (chk.finite(p, "percentiles") for p in percentiles)
        if not 0.0 <= lo_pct <= hi_pct <= 100.0:
            raise InvalidQuantity(
                f"need 0 ≤ lo ≤ hi ≤ 100, got ({lo_pct}, {hi_pct})", field="percentiles"
            )
        low, high = (float(v) for v in np.percentile(samples, [lo_pct, hi_pct]))
        method = f"p{lo_pct:g}–p{hi_pct:g}"
    return EnergyEstimate(
        flops=work,
        energy_j_central=work / central,
        energy_j_low=work / high,
        energy_j_high=work / low,
        flop_per_j_central=central,
        flop_per_j_low=low,
        flop_per_j_high=high,
        n_samples=int(samples.size),
        range_method=method,
    )


@dataclass(frozen=True, slots=True)
class ComputeSetup:
    """The hardware a planned run will use.

    Attributes:
        peak_flop_per_s: Dense peak of one device at the run's precision, FLOP/s.
        n_devices: Devices used in parallel.
        mfu: Expected model FLOPs utilisation, in (0, 1].
        device: A label (catalog name), for the report.
    """

    peak_flop_per_s: float
    n_devices: int
    mfu: float
    device: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "peak_flop_per_s", chk.positive(self.peak_flop_per_s, "peak_flop_per_s")
        )
        if isinstance(self.n_devices, bool) or not isinstance(self.n_devices, int):
            raise InvalidQuantity(f"must be an integer, got {self.n_devices!r}", field="n_devices")
        if self.n_devices <= 0:
            raise InvalidQuantity(f"must be > 0, got {self.n_devices}", field="n_devices")
        mfu = chk.fraction(self.mfu, "mfu")
        if mfu == 0.0:
            raise InvalidQuantity("must be > 0", field="mfu")
        object.__setattr__(self, "mfu", mfu)

    @property
    def achieved_flop_per_s(self) -> float:
        """peak × devices × MFU, FLOP/s."""
        return self.peak_flop_per_s * self.n_devices * self.mfu

    def duration_s(self, flops: float) -> float:
        """Wall time to do ``flops`` at the achieved rate, s."""
        return chk.non_negative(flops, "flops") / self.achieved_flop_per_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "peak_flop_per_s": self.peak_flop_per_s,
            "n_devices": self.n_devices,
            "mfu": self.mfu,
            "device": self.device,
            "achieved_flop_per_s": self.achieved_flop_per_s,
        }


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """A planned training run: compute, energy, time, CO2e and cost before it starts.

    Attributes:
        n_params: N.
        n_tokens: D.
        flops: 6·N·D (+ attention term).
        attention: The attention shape, if the term was included.
        chinchilla: D against 20·N.
        energy: Energy estimate from measured FLOP/J.
        setup: Hardware, if given.
        duration_s: Wall time, s, if ``setup`` was given.
        device_hours: Devices × hours, if ``setup`` was given.
        carbon: Scope 2 emissions at the central energy, if a location factor was given.
        co2e_location_g_range: (low, high) location-based gCO2e over the energy range.
        co2e_market_g_range: (low, high) market-based gCO2e, when available.
        cost: Cost at the central energy, if a tariff or hardware price was given.
        total_usd_range: (low, high) USD over the energy range.
    """

    n_params: float
    n_tokens: float
    flops: float
    attention: AttentionShape | None
    chinchilla: ChinchillaCheck
    energy: EnergyEstimate
    setup: ComputeSetup | None
    duration_s: float | None
    device_hours: float | None
    carbon: Scope2Emissions | None
    co2e_location_g_range: tuple[float, float] | None
    co2e_market_g_range: tuple[float, float] | None
    cost: CostBreakdown | None
    total_usd_range: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the plan and everything it assumed."""

        def pair(r: tuple[float, float] | None) -> list[float] | None:
            return None if r is None else [r[0], r[1]]

        return {
            "n_params": self.n_params,
            "n_tokens": self.n_tokens,
            "flops": self.flops,
            "attention": None if self.attention is None else self.attention.to_dict(),
            "chinchilla": self.chinchilla.to_dict(),
            "energy": self.energy.to_dict(),
            "setup": None if self.setup is None else self.setup.to_dict(),
            "duration_s": self.duration_s,
            "device_hours": self.device_hours,
            "carbon": None if self.carbon is None else self.carbon.to_dict(),
            "co2e_location_g_range": pair(self.co2e_location_g_range),
            "co2e_market_g_range": pair(self.co2e_market_g_range),
            "cost": None if self.cost is None else self.cost.to_dict(),
            "total_usd_range": pair(self.total_usd_range),
        }


def plan_training(
    *,
    n_params: float,
    n_tokens: float,
    flop_per_j_samples: Sequence[float] | NDArray[np.float64],
    attention: AttentionShape | None = None,
    percentiles: tuple[float, float] | None = None,
    setup: ComputeSetup | None = None,
    pue: Pue | None = None,
    location_factor: EmissionFactor | None = None,
    market_factor: EmissionFactor | None = None,
    market_coverage: float = 1.0,
    residual_mix_factor: EmissionFactor | None = None,
    tariff: Tariff | None = None,
    hardware: HardwarePrice | None = None,
    at: date | None = None,
) -> TrainingPlan:
    """Estimate a training run's FLOPs, energy, duration, CO2e and cost before it starts.

    Args:
        n_params: N, parameters.
        n_tokens: D, training tokens.
        flop_per_j_samples: Measured FLOP/J of comparable runs.
        attention: Include the attention-context FLOP term.
        percentiles: Range of the efficiency samples to use; None for min/max.
        setup: Hardware; needed for duration, device-hours and a hardware price.
        pue: Facility overhead; required for CO2e, optional for cost.
        location_factor: Grid-average factor; gives the CO2e part of the plan.
        market_factor: Contractual-instrument factor (see `accounting.carbon.scope2_emissions`).
        market_coverage: Fraction of facility energy under ``market_factor``.
        residual_mix_factor: Residual-mix factor for the market-based figure.
        tariff: Electricity price.
        hardware: Hourly hardware price; needs ``setup``.
        at: Planned date, checked against time-bounded factors and prices.

    Returns:
        The plan. CO2e and cost are given at the central energy, with ranges over the
        efficiency range (duration and hardware cost do not depend on FLOP/J).

    Raises:
        InvalidQuantity: Bad numbers, CO2e asked without a PUE, hardware without a setup.
    """
    flops = training_flops(n_params, n_tokens, attention=attention)
    energy = estimate_energy(flops, flop_per_j_samples, percentiles=percentiles)
    duration_s = None if setup is None else setup.duration_s(flops)
    device_hours = (
        None if setup is None or duration_s is None else duration_s * setup.n_devices / 3600.0
    )

    carbon: Scope2Emissions | None = None
    location_range: tuple[float, float] | None = None
    market_range: tuple[float, float] | None = None
    if location_factor is not None:
        if pue is None:
            raise InvalidQuantity(
                "a PUE is required for CO2e (default_pue('none') for an IT-only boundary)",
                field="pue",
            )

        def emissions(energy_j: float) -> Scope2Emissions:
            return scope2_emissions(
                energy_j,
                pue=pue,
                location_factor=location_factor,
                market_factor=market_factor,
                market_coverage=market_coverage,
                residual_mix_factor=residual_mix_factor,
                at=at,
            )

        carbon = emissions(energy.energy_j_central)
        low, high = emissions(energy.energy_j_low), emissions(energy.energy_j_high)
        location_range = (low.location_co2e_g, high.location_co2e_g)
        if low.market_co2e_g is not None and high.market_co2e_g is not None:
            market_range = (low.market_co2e_g, high.market_co2e_g)
    elif market_factor is not None or residual_mix_factor is not None:
        raise InvalidQuantity(
            "market-based CO2e is reported beside the location-based figure; give one",
            field="location_factor",
        )

    cost: CostBreakdown | None = None
    usd_range: tuple[float, float] | None = None
    if hardware is not None and device_hours is None:
        raise InvalidQuantity(
            "a hardware price needs a ComputeSetup for device-hours", field="setup"
        )
    if tariff is not None or hardware is not None:

        def priced(energy_j: float) -> CostBreakdown:
            return run_cost(
                energy_j=energy_j,
                tariff=tariff,
                pue=pue,
                hardware=hardware,
                device_hours=device_hours,
                at=at,
            )

        cost = priced(energy.energy_j_central)
        usd_range = (
            priced(energy.energy_j_low).total_usd,
            priced(energy.energy_j_high).total_usd,
        )

    return TrainingPlan(
        n_params=float(n_params),
        n_tokens=float(n_tokens),
        flops=flops,
        attention=attention,
        chinchilla=chinchilla_check(n_params, n_tokens),
        energy=energy,
        setup=setup,
        duration_s=duration_s,
        device_hours=device_hours,
        carbon=carbon,
        co2e_location_g_range=location_range,
        co2e_market_g_range=market_range,
        cost=cost,
        total_usd_range=usd_range,
    )


def rated_flop_per_j(peak_flop_per_s: float, tdp_w: float, mfu: float) -> float:
    """Datasheet efficiency at a utilisation: MFU × peak / TDP, FLOP/J.

    The efficiency of a board that sustains ``mfu`` of its dense peak while drawing its full
    TDP. Real boards usually draw less than TDP at typical MFU, so this is a conservative
    (low) efficiency and the energy estimated from it a high one. Use it only when no
    comparable run has been measured, and say so.

    Args:
        peak_flop_per_s: Dense peak of one device at the run's precision, FLOP/s.
        tdp_w: The device's board power limit, W.
        mfu: Model FLOPs utilisation, in (0, 1].

    Returns:
        FLOP/J.
    """
    peak = chk.positive(peak_flop_per_s, "peak_flop_per_s")
    tdp = chk.positive(tdp_w, "tdp_w")
    utilisation = chk.fraction(mfu, "mfu")
    if utilisation == 0.0:
        raise InvalidQuantity("must be > 0", field="mfu")
    return utilisation * peak / tdp


# --------------------------------------------------------------------------------------------
# Amortisation and break-even


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
