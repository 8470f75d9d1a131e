"""Response schemas of amortisation (``GET /models/{tag}/amortisation``) and planning
(``POST /plan``, with its inference-aware part): the answers `service.economics` builds, typed
once and read by attribute by the routes and the pages.

Units are in the names (``energy_j``, ``j_per_token``, ``usd_per_token``, ``co2e_g_per_token``,
``flop_per_j``, ``duration_s``); where one record serves several metrics (parity, break-even),
``metric`` and ``unit`` say which, and the figures are in that unit. A figure that cannot be
given is None with the reason beside it (``reason``), never 0: an unpriced option has no USD
parity, a pair of parallel options no break-even. Like the run report's (`service.report_schemas`),
these models forbid keys they do not declare.
"""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .report_schemas import (
    AccountingContextRecord,
    CarbonRecord,
    CostRecord,
    EmissionFactorRecord,
    PueRecord,
    TariffRecord,
)

__all__ = [
    "AllocationRecord",
    "AmortisationPublic",
    "BreakEvenRecord",
    "ComparableRunRecord",
    "InferenceAwarePublic",
    "LossModelRecord",
    "ParityRecord",
    "PlanPublic",
    "PricingPublic",
    "ServingOptionRecord",
]

_OUT = ConfigDict(extra="forbid")
RecordT = TypeVar("RecordT")

MetricName = Literal["energy", "usd", "co2e"]
TokensServed = Annotated[float, Field(description="Tokens served, tokens.")]
JPerToken = Annotated[float, Field(description="Amortised energy per token, J/token.")]
UsdPerToken = Annotated[
    float | None, Field(description="Amortised cost per token, USD/token; None when not priced.")
]
Co2ePerToken = Annotated[
    float | None,
    Field(description="Amortised emissions per token, gCO2e/token; None without a grid factor."),
]


class PricingPublic(BaseModel):
    """The accounting context an answer is priced in: the project's, with the overrides."""

    model_config = _OUT

    pue: PueRecord
    location_factor: EmissionFactorRecord | None = Field(
        description="Grid-average factor; None when none applies (no gCO2e figures)."
    )
    market_factor: EmissionFactorRecord | None = Field(description="Market-based factor, if any.")
    tariff: TariffRecord | None = Field(description="Electricity price; None: no USD figures.")
    basis: AccountingContextRecord
    overrides: list[str] = Field(description="What the request overrode: region, pue, tariff.")


# --------------------------------------------------------------------------------------------
# Amortisation


class ModelRunLine(BaseModel):
    """A run tagged with the model."""

    model_config = _OUT

    id: str = Field(description="The run's id (UUID).")
    name: str
    kind: str = Field(description="``training`` or ``inference``.")
    status: str
    started_at: str = Field(description="Start (ISO 8601).")
    energy_j: float | None = Field(description="Measured IT energy, J; None before any chunk.")
    tokens: int | None = Field(description="Declared tokens, if any.")
    simulated: bool


class TrainingFigures(BaseModel):
    """The model's training cost F: the measured energy of its training runs."""

    model_config = _OUT

    runs: list[ModelRunLine]
    measured_runs: int = Field(description="Training runs with measurements.")
    energy_j: float = Field(description="F, their IT energy, J.")
    energy_kwh: float = Field(description="F, kWh.")


class InferenceFigures(BaseModel):
    """The model's inference cost per token m, measured or assumed."""

    model_config = _OUT

    runs: list[ModelRunLine]
    runs_with_tokens: int = Field(description="Inference runs with measurements and tokens.")
    energy_j: float = Field(description="Their IT energy, J.")
    tokens: float = Field(description="Their declared tokens.")
    j_per_token: float | None = Field(
        description="m, J/token; None when no run has measurements and tokens."
    )
    source: str | None = Field(description="``measured`` or ``assumed (…)``; None without m.")


class ServingOptionRecord(BaseModel):
    """A model as an investment: training total F and per-token inference cost m."""

    model_config = _OUT

    name: str
    training_energy_j: float = Field(description="F in energy, J.")
    inference_energy_j_per_token: float = Field(description="m in energy, J/token.")
    training_usd: float | None = Field(description="F in USD; None when not priced.")
    inference_usd_per_token: float | None = Field(description="m in USD/token.")
    training_co2e_g: float | None = Field(description="F in gCO2e; None without a grid factor.")
    inference_co2e_g_per_token: float | None = Field(description="m in gCO2e/token.")
    assumptions: list[str] = Field(description="Where the USD and gCO2e figures come from.")


class AmortisedAt(BaseModel):
    """The amortised per-token figures at one volume."""

    model_config = _OUT

    tokens_served: TokensServed
    j_per_token: JPerToken
    usd_per_token: UsdPerToken
    co2e_g_per_token: Co2ePerToken


class ParityRecord(BaseModel):
    """The volume F/m at which training's share per token equals the inference cost."""

    model_config = _OUT

    metric: MetricName
    unit: str = Field(description="The metric's unit: J, USD or gCO2e.")
    option: str = Field(description="The option's name.")
    tokens: float | None = Field(description="F / m, tokens; None when there is no such volume.")
    per_token_at_parity: float | None = Field(description="2·m there, in ``unit`` per token.")
    reason: str = Field(description="Plain-language explanation, always set.")


class _ByMetric(BaseModel, Generic[RecordT]):
    model_config = _OUT

    energy: RecordT | None = Field(description="In energy, J.")
    usd: RecordT | None = Field(description="In cost, USD; None when not priced.")
    co2e: RecordT | None = Field(description="In emissions, gCO2e; None without a grid factor.")


class ParityByMetric(_ByMetric[ParityRecord]):
    """Parity per metric; None where the option is not priced in that metric."""


class BreakEvenRecord(BaseModel):
    """Where two options cost the same, or why they never do."""

    model_config = _OUT

    metric: MetricName
    unit: str = Field(description="The metric's unit: J, USD or gCO2e.")
    option_a: str
    option_b: str
    tokens: float | None = Field(description="Tokens served at break-even; None if none exists.")
    cost_at_break_even: float | None = Field(description="Either option's total there, ``unit``.")
    cheaper_below: str | None = Field(description="Option cheaper for fewer tokens.")
    cheaper_above: str | None = Field(description="Option cheaper for more tokens.")
    reason: str = Field(description="Plain-language explanation, always set.")


class BreakEvenByMetric(_ByMetric[BreakEvenRecord]):
    """Break-even per metric; None where an option is not priced in that metric."""


class CurveRecord(BaseModel):
    """Amortised per-token figures over served-token volumes, with the inference floors."""

    model_config = _OUT

    option: ServingOptionRecord
    tokens_served: list[float] = Field(description="The volumes, tokens (log-spaced).")
    j_per_token: list[float] = Field(description="Amortised energy per token, J/token.")
    usd_per_token: list[float] | None = Field(description="USD/token; None when not priced.")
    co2e_g_per_token: list[float] | None = Field(description="gCO2e/token; None without factor.")
    floor_j_per_token: float = Field(description="The inference floor m, J/token.")
    floor_usd_per_token: float | None = Field(description="m in USD/token.")
    floor_co2e_g_per_token: float | None = Field(description="m in gCO2e/token.")


class ComparedModel(BaseModel):
    """The model compared against (``compare``), with the break-even volumes."""

    model_config = _OUT

    model_tag: str
    option: ServingOptionRecord
    training: TrainingFigures
    inference: InferenceFigures
    break_even: BreakEvenByMetric
    curve: CurveRecord


class AmortisationPublic(BaseModel):
    """A model's amortised J/token (USD/token, gCO2e/token when priced) over tokens served."""

    model_config = _OUT

    model_tag: str
    tag: str = Field(description="The tag its runs carry, ``model=<tag>``.")
    training: TrainingFigures
    inference: InferenceFigures
    tokens_served_so_far: float = Field(description="Tokens its inference runs declared.")
    option: ServingOptionRecord
    at: AmortisedAt
    parity: ParityByMetric
    curve: CurveRecord
    compare: ComparedModel | None = Field(description="None without ``compare``.")
    pricing: PricingPublic
    assumptions: list[str]


# --------------------------------------------------------------------------------------------
# Planning


class AttentionRecord(BaseModel):
    """The transformer dimensions of the attention-context FLOP term."""

    model_config = _OUT

    n_layer: int
    n_ctx: int = Field(description="Context positions attended per token.")
    d_model: int


class ChinchillaRecord(BaseModel):
    """How far D sits from Chinchilla's compute-optimal 20·N."""

    model_config = _OUT

    n_params: float = Field(description="N, parameters.")
    n_tokens: float = Field(description="D, training tokens.")
    optimal_tokens: float = Field(description="20·N, tokens.")
    tokens_per_param: float = Field(description="D / N.")
    ratio: float = Field(description="D / (20·N).")
    band: tuple[float, float] = Field(description="(low, high) ratio counted as near-optimal.")
    regime: Literal["under_trained", "near_optimal", "over_trained"]
    flagged: bool = Field(description="True outside the band.")
    message: str


class EnergyEstimateRecord(BaseModel):
    """Energy for the plan's FLOPs at the efficiency of comparable runs (or the datasheet)."""

    model_config = _OUT

    flops: float = Field(description="The compute, FLOP.")
    energy_j_central: float = Field(description="flops / median FLOP/J, J.")
    energy_j_low: float = Field(description="flops / the high FLOP/J, J.")
    energy_j_high: float = Field(description="flops / the low FLOP/J, J.")
    flop_per_j_central: float = Field(description="Median efficiency, FLOP/J.")
    flop_per_j_low: float = Field(description="Low efficiency, FLOP/J.")
    flop_per_j_high: float = Field(description="High efficiency, FLOP/J.")
    n_samples: int = Field(description="Efficiency figures the estimate rests on.")
    range_method: str = Field(description="``min/max`` or ``p<lo>–p<hi>``.")


class ComputeSetupRecord(BaseModel):
    """The hardware the planned run uses."""

    model_config = _OUT

    peak_flop_per_s: float = Field(description="Dense peak of one device at the dtype, FLOP/s.")
    n_devices: int
    mfu: float = Field(description="Model FLOPs utilisation used (0–1].")
    device: str | None
    achieved_flop_per_s: float = Field(description="peak × devices × MFU, FLOP/s.")


class PlanHardware(BaseModel):
    """The catalog hardware the plan asked for."""

    model_config = _OUT

    id: str = Field(description="Catalog id.")
    name: str
    dtype: str
    peak_flop_per_s: float = Field(description="Dense peak of one device at the dtype, FLOP/s.")
    tdp_w: float | None = Field(description="Board power limit, W, if catalogued.")
    n_devices: int


class ComparableRunRecord(BaseModel):
    """A measured training run the plan's efficiency rests on."""

    model_config = _OUT

    id: str = Field(description="The run's id (UUID).")
    name: str
    flop_per_j: float = Field(description="Its measured efficiency, FLOP/J.")
    mfu: float | None = Field(description="Its MFU, if known.")
    energy_j: float = Field(description="Its measured IT energy, J.")
    flops: float = Field(description="Its FLOPs.")
    simulated: bool


class PlanBasis(BaseModel):
    """Which efficiency figures the plan rests on."""

    model_config = _OUT

    kind: Literal["measured", "datasheet"]
    description: str
    runs: list[ComparableRunRecord]


# --------------------------------------------------------------------------------------------
# Inference-aware planning (``accounting.scaling``)


class LossModelRecord(BaseModel):
    """L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022), losses in nats per token."""

    model_config = _OUT

    e: float = Field(description="E, the irreducible loss.")
    a: float = Field(description="A, the parameter term's scale.")
    b: float = Field(description="B, the data term's scale.")
    alpha: float = Field(description="α, the parameter exponent.")
    beta: float = Field(description="β, the data exponent.")
    source: str = Field(description="Published, given in the request, or fitted.")


class LossFitRecord(BaseModel):
    """How well the loss model fits the (N, D, loss) triples it was fitted to."""

    model_config = _OUT

    n_points: int = Field(description="Triples used.")
    rms_log_residual: float = Field(description="√mean((ln L_fit − ln L)²).")
    max_abs_log_residual: float = Field(description="max |ln L_fit − ln L|.")
    huber_delta: float = Field(description="δ of the Huber loss on ln residuals.")


class PhaseCostRecord(BaseModel):
    """One phase's compute and cost (training, inference, their total, or per answer)."""

    model_config = _OUT

    flops: float = Field(description="FLOP.")
    energy_j: float = Field(description="IT energy, J.")
    usd: float | None = Field(description="USD (energy, PUE included); None when not priced.")
    co2e_g: float | None = Field(description="Location-based gCO2e; None without a grid factor.")


class AllocationRecord(BaseModel):
    """A model size and data budget with its lifetime cost: training + inference = total."""

    model_config = _OUT

    n_params: float = Field(description="N, parameters.")
    n_tokens: float = Field(description="D, training tokens.")
    tokens_per_param: float = Field(description="D / N.")
    loss: float = Field(description="L(N, D) under the loss model, nats/token.")
    training: PhaseCostRecord = Field(description="6·N·D FLOP and its cost.")
    inference: PhaseCostRecord = Field(description="2·N·T·k FLOP and its cost.")
    total: PhaseCostRecord
    per_answer: PhaseCostRecord | None = Field(description="total / queries; None without them.")


class InferenceAwarePublic(BaseModel):
    """The (N, D) reaching the target loss at the least training + lifetime inference cost,
    beside the compute-optimal (Chinchilla) point serving the same demand."""

    model_config = _OUT

    objective: MetricName = Field(description="What the optimum minimises.")
    unit: str = Field(description="The objective's unit: J, USD or gCO2e.")
    loss_model: LossModelRecord
    loss_fit: LossFitRecord | None = Field(description="Set when fitted to loss_observations.")
    target_loss: float = Field(description="L*, nats/token.")
    target_source: str = Field(description="Given, or the loss of the planned (N, D).")
    inference_tokens: float = Field(description="T, lifetime tokens served at k = 1.")
    test_time_multiplier: float = Field(description="k, tokens per query relative to T's.")
    served_tokens: float = Field(description="T·k, tokens the model generates over its life.")
    queries: float | None = Field(description="Answers over the life, for per-answer figures.")
    training_flop_per_j: float = Field(description="Training efficiency used, FLOP/J.")
    inference_flop_per_j: float = Field(description="Inference efficiency used, FLOP/J.")
    optimum: AllocationRecord
    chinchilla: AllocationRecord = Field(description="The compute-optimal point at L* (T = 0).")
    given: AllocationRecord | None = Field(description="The planned (N, D), when one was given.")
    saving: float = Field(description="Chinchilla's lifetime cost − the optimum's, in ``unit``.")
    saving_fraction: float = Field(description="saving / Chinchilla's lifetime cost.")
    assumptions: list[str]


class PlanPublic(BaseModel):
    """A planned training run: FLOPs, energy (with a range), duration, CO2e and cost."""

    model_config = _OUT

    n_params: float = Field(description="N, parameters.")
    n_tokens: float = Field(description="D, training tokens.")
    flops: float = Field(description="6·N·D (+ attention), FLOP.")
    attention: AttentionRecord | None
    chinchilla: ChinchillaRecord
    energy: EnergyEstimateRecord
    setup: ComputeSetupRecord | None
    duration_s: float | None = Field(description="Wall time, s.")
    device_hours: float | None = Field(description="Devices × hours, h.")
    carbon: CarbonRecord | None = Field(
        description="Scope 2 at the central energy; None without a grid factor."
    )
    co2e_location_g_range: tuple[float, float] | None = Field(
        description="(low, high) location-based gCO2e over the energy range."
    )
    co2e_market_g_range: tuple[float, float] | None = Field(
        description="(low, high) market-based gCO2e, when available."
    )
    cost: CostRecord | None = Field(description="Cost at the central energy; None: not priced.")
    total_usd_range: tuple[float, float] | None = Field(
        description="(low, high) USD over the energy range."
    )
    hardware: PlanHardware
    mfu_source: str = Field(description="Where the MFU comes from.")
    basis: PlanBasis
    pricing: PricingPublic
    assumptions: list[str]
    inference_aware: InferenceAwarePublic | None = Field(
        default=None,
        description="Set when the request gives a target loss or an inference demand.",
    )
