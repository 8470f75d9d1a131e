"""Planning: a training run's compute, energy, time, CO2e and cost before it starts.

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

Amortisation — what served tokens pay back of a run's training (F/x + m, the parity volume, the
break-even between two options) — lives in `accounting.amortisation`, which needs nothing from
here. Choosing N and D for a target loss at the least training + lifetime inference cost (the
Chinchilla loss model, Sardana et al. 2023) lives in `accounting.scaling`, which takes its FLOP
constants from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from . import _econ_checks as chk
from .carbon import EmissionFactor, Pue, Scope2Emissions, scope2_emissions
from .cost import CostBreakdown, HardwarePrice, Tariff, run_cost
from .errors import InvalidQuantity

__all__ = [
    "CHINCHILLA_BAND",
    "CHINCHILLA_TOKENS_PER_PARAM",
    "INFERENCE_FLOP_PER_PARAM_TOKEN",
    "TRAINING_FLOP_PER_PARAM_TOKEN",
    "AttentionShape",
    "ChinchillaCheck",
    "ComputeSetup",
    "EnergyEstimate",
    "TrainingPlan",
    "chinchilla_check",
    "estimate_energy",
    "inference_flops_per_token",
    "plan_training",
    "rated_flop_per_j",
    "training_flops",
]

#: FLOP per parameter per training token: 2 forward + 4 backward (Kaplan 2020).
TRAINING_FLOP_PER_PARAM_TOKEN = 6.0
#: FLOP per parameter per inference token: the forward pass (Kaplan 2020).
INFERENCE_FLOP_PER_PARAM_TOKEN = 2.0
#: Compute-optimal training tokens per parameter (Hoffmann et al. 2022).
CHINCHILLA_TOKENS_PER_PARAM = 20.0
#: Default band of D / (20·N) inside which a run counts as near compute-optimal.
CHINCHILLA_BAND = (0.5, 5.0)


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
