"""Amortisation and planning from measured runs: the service side of `accounting.amortisation`
and `accounting.planning`.

**Amortisation.** Training and inference runs of one model are linked by a tag, ``model=<tag>``
(`MODEL_TAG_KEY`), set when the run is created. The model's training cost F is the measured
energy of its training runs; its inference cost per token m is the measured energy of its
inference runs over the tokens they declared (runs without declared tokens are left out of m,
and listed). A request may instead state m (``inference_j_per_token``), labelled *assumed*,
for a model not yet served. From F and m, `accounting.amortisation` gives the amortised J/token
(and USD, gCO2e per token when priced) over served-token volumes, the parity volume F/m, and
the break-even volume against another model (``compare``).

**Planning.** A planned training run of N parameters on D tokens needs 6·N·D FLOPs. Its energy
comes from the FLOP/J measured on **comparable runs**: the project's most recent training runs
(`COMPARABLE_RUNS_MAX`) whose every device is the requested catalog hardware and whose FLOPs
ran at the requested dtype. The central estimate uses their median, the range their extremes
(or percentiles). Without any such run the datasheet efficiency MFU × peak / TDP stands in
(`accounting.planning.rated_flop_per_j`, with the MFU at ½× … 1.5× for the range), and the plan
says so. Duration = FLOPs / (peak × devices × MFU), with MFU as requested, else the comparable
runs' median, else `DEFAULT_MFU` (labelled assumed).

**Inference-aware planning.** With a target loss or a lifetime inference demand the plan also
answers *which* N and D: those reaching the target loss (Hoffmann et al. 2022's loss model, or
constants given or fitted in the request) at the least training + inference energy, USD or
gCO2e (`accounting.scaling`, after Sardana et al. 2023), beside the compute-optimal (Chinchilla)
point serving the same demand, each with its training, inference and total cost. Training FLOPs
are priced at the plan's central FLOP/J; inference FLOPs at the request's
``inference_flop_per_j``, else at the same figure (labelled assumed). A test-time multiplier
scales the tokens generated per query, so a bigger model and a smaller one thinking longer
compare on energy per answer. With a target loss alone, the training plan is made for the
optimum.

**Pricing.** Both price energy in the project's accounting context — the one its run reports
and its ledger use (`db.factors.resolve_context`): the project's region and PUE, and the
location- and market-based factor and tariff versions valid now. A request may override the
region (a built-in one; its factor and tariff versions are then looked up as the ledger would),
the PUE (a built-in name) or the tariff (a price); every override is labelled as such, and the
assumptions travel with every answer. Without a region (configured or given) nothing is priced
in gCO2e or USD, for the same reason the ledger gives — never from a world average.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.orm import Session

from thermoledger.accounting.amortisation import (
    Metric,
    ServingOption,
    amortisation_curve,
    break_even,
    inference_parity,
    volume_grid,
)
from thermoledger.accounting.carbon import (
    J_PER_KWH,
    EmissionFactor,
    Pue,
    default_emission_factors,
    default_pues,
    scope2_emissions,
)
from thermoledger.accounting.catalog import builtin_catalog, normalize_dtype
from thermoledger.accounting.catalog import lookup as catalog_lookup
from thermoledger.accounting.cost import CloudPrice, Tariff, run_cost
from thermoledger.accounting.errors import InvalidQuantity
from thermoledger.accounting.planning import ComputeSetup, plan_training, rated_flop_per_j
from thermoledger.accounting.scaling import (
    CHINCHILLA,
    EnergyPrices,
    LossFit,
    LossModel,
    fit_loss_model,
    plan_inference_aware,
)
from thermoledger.db.errors import Conflict, FieldProblem, InvalidInput, NotFound
from thermoledger.db.factors import AccountingContext, AppliedVersion, resolve_context
from thermoledger.db.models import RunKind
from thermoledger.db.records import RunRecord
from thermoledger.db.runs import list_runs
from thermoledger.db.selection import RunEnergy, select_runs
from thermoledger.db.totals import run_usage
from thermoledger.db.types import utcnow

from .economics_schemas import (
    AmortisationPublic,
    AmortisedAt,
    BreakEvenByMetric,
    BreakEvenRecord,
    ComparableRunRecord,
    ComparedModel,
    CurveRecord,
    InferenceAwarePublic,
    InferenceFigures,
    ModelRunLine,
    ParityByMetric,
    PlanBasis,
    PlanHardware,
    PlanPublic,
    PricingPublic,
    ServingOptionRecord,
    TrainingFigures,
)
from .reports import emission_factor, usage_report

__all__ = [
    "COMPARABLE_RUNS_MAX",
    "DEFAULT_MFU",
    "LOSS_OBSERVATIONS_MAX",
    "MODEL_TAG_KEY",
    "N_PARAMS_MAX",
    "N_TOKENS_MAX",
    "ComparableRun",
    "LossModelIn",
    "LossObservation",
    "PlanRequest",
    "Pricing",
    "PricingOverrides",
    "amortisation",
    "comparable_runs",
    "plan",
    "pricing",
    "resolve_pricing",
]

#: Tag key that links runs to the model they train or serve.
MODEL_TAG_KEY = "model"
#: Most recent training runs examined for comparable efficiency.
COMPARABLE_RUNS_MAX = 100
#: MFU assumed for a plan's duration when neither the request nor comparable runs give one.
DEFAULT_MFU = 0.4
#: Largest N and D a plan takes, given or chosen.
N_PARAMS_MAX = 1e16
N_TOKENS_MAX = 1e18
#: Most (N, D, loss) triples a request may fit a loss model to (the fit is a grid search).
LOSS_OBSERVATIONS_MAX = 100
_METRICS: tuple[Metric, ...] = ("energy", "usd", "co2e")
_ASSUMED = "assumed (given in the request)"


# --------------------------------------------------------------------------------------------
# Pricing


@dataclass(frozen=True, slots=True)
class PricingOverrides:
    """What a request overrides of the project's accounting context (None: the project's).

    Attributes:
        region: A built-in grid region, upper-case.
        pue: A built-in PUE.
        tariff: A price given in the request.
    """

    region: str | None = None
    pue: Pue | None = None
    tariff: Tariff | None = None

    def names(self) -> list[str]:
        """Which parts are overridden."""
        return [
            name
            for name, value in (("region", self.region), ("pue", self.pue), ("tariff", self.tariff))
            if value is not None
        ]


@dataclass(frozen=True, slots=True)
class Pricing:
    """The accounting context of an answer: the project's, with the request's overrides.

    Attributes:
        context: The resolved context (region, PUE, versions, reasons for what is missing).
        overrides: What the request overrode.
        pue: The PUE applied.
        location_factor: The grid-average factor, or None when none applies.
        market_factor: The market-based factor, or None.
        tariff: The electricity price, or None when energy is not priced in USD.
        tariff_note: Why a tariff version that applies is not used, if one is not.
    """

    context: AccountingContext
    overrides: PricingOverrides
    pue: Pue
    location_factor: EmissionFactor | None
    market_factor: EmissionFactor | None
    tariff: Tariff | None
    tariff_note: str | None = None

    def _tag(self, name: str) -> str:
        return " [override: given in the request]" if name in self.overrides.names() else ""

    def assumptions(self) -> list[str]:
        """The context as lines a reader can check, overrides labelled."""
        context = self.context
        pue = self.pue
        region = context.region
        lines = [
            (f"region {region}" if region else "no region configured") + self._tag("region"),
            f"PUE {pue.value:g} ({pue.name}, {pue.kind}: {pue.source}){self._tag('pue')}",
        ]
        if context.location is not None:
            lines.append(f"grid: {context.location.label()}{self._tag('region')}")
        else:
            lines.append(
                "gCO2e figures are not available: "
                + context.unavailable.get("co2e_location", "no grid factor")
            )
        if self.tariff is not None and "tariff" in self.overrides.names():
            lines.append(
                f"tariff {self.tariff.usd_per_kwh:g} USD/kWh ({self.tariff.source})"
                + self._tag("tariff")
            )
        elif self.tariff is not None and context.tariff is not None:
            lines.append(f"tariff: {context.tariff.label()}{self._tag('region')}")
        else:
            reason = self.tariff_note or context.unavailable.get("energy_cost", "no tariff")
            lines.append(f"USD figures are not available: {reason}")
        return lines

    def public(self) -> PricingPublic:
        """The API record: what was applied, the basis it was resolved on, the overrides."""
        record = {
            "pue": self.pue.to_dict(),
            "location_factor": (
                None if self.location_factor is None else self.location_factor.to_dict()
            ),
            "market_factor": None if self.market_factor is None else self.market_factor.to_dict(),
            "tariff": None if self.tariff is None else self.tariff.to_dict(),
            "basis": self.context.to_dict(),
            "overrides": self.overrides.names(),
        }
        return PricingPublic.model_validate(record)


def pricing(
    *,
    region: str | None = None,
    pue: str | None = None,
    tariff_usd_per_kwh: float | None = None,
) -> PricingOverrides:
    """The request's overrides of the project's accounting context, checked.

    Args:
        region: Built-in grid region (``WORLD``, ``DE``, ...); None for the project's.
        pue: Built-in PUE name (``typical``, ``hyperscale``, ...); None for the project's.
        tariff_usd_per_kwh: Electricity price, USD/kWh; None for the project's tariff version.

    Raises:
        InvalidInput: An unknown region or PUE name, or a bad tariff (each field named).
    """
    problems: list[FieldProblem] = []
    where = None
    if region is not None:
        factors = default_emission_factors()
        key = region.strip().upper()
        if key in factors:
            where = key
        else:
            problems.append(
                FieldProblem("region", f"{region!r} is not built in; choose from {sorted(factors)}")
            )
    facility = None
    if pue is not None:
        pues = default_pues()
        if pue in pues:
            facility = pues[pue]
        else:
            problems.append(
                FieldProblem("pue", f"{pue!r} is not built in; choose from {list(pues)}")
            )
    tariff = None
    if tariff_usd_per_kwh is not None:
        if not (math.isfinite(tariff_usd_per_kwh) and 0 <= tariff_usd_per_kwh <= 100):
            problems.append(
                FieldProblem("tariff_usd_per_kwh", f"{tariff_usd_per_kwh!r} is not in [0, 100]")
            )
        else:
            tariff = Tariff(tariff_usd_per_kwh, source="given in the request")
    if problems:
        raise InvalidInput(problems)
    return PricingOverrides(region=where, pue=facility, tariff=tariff)


def _applied_tariff(applied: AppliedVersion | None) -> tuple[Tariff | None, str | None]:
    if applied is None:
        return None, None
    if applied.per_kwh < 0:
        return None, (
            f"{applied.label()} is negative; amortised and planned USD are not computed with it"
        )
    region = applied.provenance.get("region")
    return (
        Tariff(
            usd_per_kwh=applied.per_kwh,
            source=f"{applied.provenance.get('source')} [version {applied.id}]",
            region=region if isinstance(region, str) else None,
        ),
        None,
    )


def resolve_pricing(
    session: Session,
    *,
    project_id: int,
    overrides: PricingOverrides | None = None,
    at: datetime | None = None,
) -> Pricing:
    """The project's accounting context at ``at`` (default: now), with the overrides applied.

    The context is `db.factors.resolve_context`'s — the ledger's and the run reports' — so an
    answer without overrides prices energy exactly as a run ending now would be ledgered.
    """
    overrides = overrides or PricingOverrides()
    context = resolve_context(
        session,
        project_id=project_id,
        at=at or utcnow(),
        region=overrides.region,
        pue=overrides.pue,
    )
    tariff, note = _applied_tariff(context.tariff)
    if overrides.tariff is not None:
        tariff, note = overrides.tariff, None
    location = context.location
    return Pricing(
        context=context,
        overrides=overrides,
        pue=context.pue,
        location_factor=None if location is None else emission_factor(location, "location"),
        market_factor=(
            None if context.market is None else emission_factor(context.market, "market")
        ),
        tariff=tariff,
        tariff_note=note,
    )


# --------------------------------------------------------------------------------------------
# Amortisation


def _run_line(run: RunRecord, energy: RunEnergy | None) -> ModelRunLine:
    return ModelRunLine(
        id=str(run.id),
        name=run.name,
        kind=run.kind.value,
        status=run.status.value,
        started_at=run.started_at.isoformat(),
        energy_j=None if energy is None else energy.energy_j,
        tokens=run.declared_tokens,
        simulated=run.simulated,
    )


def _option(
    session: Session, *, project_id: int, model_tag: str, pricing: Pricing
) -> tuple[ServingOption | None, TrainingFigures, InferenceFigures]:
    """The model's measured training and inference figures, and its option when complete."""
    tags = [(MODEL_TAG_KEY, model_tag)]
    training = select_runs(session, project_id=project_id, kind=RunKind.TRAINING, tags=tags)
    inference = select_runs(session, project_id=project_id, kind=RunKind.INFERENCE, tags=tags)
    if not training.runs and not inference.runs:
        raise NotFound("model", f"{MODEL_TAG_KEY}={model_tag}")
    train_j = math.fsum(
        training.energy[r.id].energy_j for r in training.runs if r.id in training.energy
    )
    served = [
        r for r in inference.runs if r.id in inference.energy and (r.declared_tokens or 0) > 0
    ]
    infer_j = math.fsum(inference.energy[r.id].energy_j for r in served)
    tokens = float(sum(r.declared_tokens or 0 for r in served))
    trained = TrainingFigures(
        runs=[_run_line(r, training.energy.get(r.id)) for r in training.runs],
        measured_runs=training.measured_runs,
        energy_j=train_j,
        energy_kwh=train_j / J_PER_KWH,
    )
    serving = InferenceFigures(
        runs=[_run_line(r, inference.energy.get(r.id)) for r in inference.runs],
        runs_with_tokens=len(served),
        energy_j=infer_j,
        tokens=tokens,
        j_per_token=infer_j / tokens if tokens > 0 else None,
        source="measured" if tokens > 0 else None,
    )
    if not training.measured_runs or tokens <= 0:
        return None, trained, serving
    option = ServingOption.from_energy(
        model_tag,
        training_energy_j=train_j,
        inference_energy_j_per_token=infer_j / tokens,
        pue=pricing.pue,
        tariff=pricing.tariff,
        factor=pricing.location_factor,
    )
    return option, trained, serving


def _volumes(anchors: Sequence[float | None], points: int) -> np.ndarray[Any, Any]:
    known = [a for a in anchors if a is not None and math.isfinite(a) and a > 0]
    if not known:
        return volume_grid(1e6, 1e15, points)
    low = max(1.0, min(known) / 100.0)
    high = max(max(known) * 100.0, low * 10.0)
    return volume_grid(low, high, points)


def amortisation(
    session: Session,
    *,
    project_id: int,
    model_tag: str,
    pricing: PricingOverrides | None = None,
    tokens_served: float | None = None,
    inference_j_per_token: float | None = None,
    compare: str | None = None,
    points: int = 64,
) -> AmortisationPublic:
    """Amortised J/token, USD/token and gCO2e/token of a model over served tokens.

    Args:
        session: The caller's session.
        project_id: The project.
        model_tag: Value of the runs' ``model`` tag.
        pricing: The request's overrides of the project's accounting context (`pricing`);
            resolved now (`resolve_pricing`).
        tokens_served: Volume to evaluate at (default: the tokens served so far, else the
            parity volume).
        inference_j_per_token: Assumed inference energy per token, J (replaces the measured
            figure; labelled assumed).
        compare: Another model tag: adds the break-even volume between the two.
        points: Volumes on the curve.

    Returns:
        The answer (`service.economics_schemas.AmortisationPublic`).

    Raises:
        NotFound: No run carries the tag (or the compared one).
        Conflict: No measured training run, or no inference energy per token (measured or
            assumed).
    """
    context = resolve_pricing(session, project_id=project_id, overrides=pricing)
    option, training, inference = _option(
        session, project_id=project_id, model_tag=model_tag, pricing=context
    )
    if inference_j_per_token is not None:
        inference = inference.model_copy(
            update={"j_per_token": inference_j_per_token, "source": _ASSUMED}
        )
        option = None
        if training.measured_runs:
            option = ServingOption.from_energy(
                model_tag,
                training_energy_j=training.energy_j,
                inference_energy_j_per_token=inference_j_per_token,
                pue=context.pue,
                tariff=context.tariff,
                factor=context.location_factor,
            )
    if not training.measured_runs:
        raise Conflict(
            f"no training run tagged {MODEL_TAG_KEY}={model_tag} has measurements: "
            "nothing to amortise",
            field="model_tag",
        )
    if option is None:
        raise Conflict(
            f"no inference run tagged {MODEL_TAG_KEY}={model_tag} has measurements and declared "
            "tokens: give inference_j_per_token to assume one",
            field="inference_j_per_token",
        )
    parity = ParityByMetric.model_validate(
        {
            m: inference_parity(option, metric=m).to_dict() if _priced(option, m) else None
            for m in _METRICS
        }
    )
    so_far = inference.tokens
    parity_tokens = parity.energy.tokens if parity.energy else None
    rival = None if compare is None else _rival(session, project_id, compare, option, context)
    crossings = [] if rival is None else [e.tokens for e in rival.break_even if e is not None]
    at_tokens = tokens_served or (so_far if so_far > 0 else parity_tokens) or 1e9
    volumes = _volumes([so_far, parity_tokens, tokens_served, *crossings], points)
    point = amortisation_curve(option, [at_tokens])
    return AmortisationPublic(
        model_tag=model_tag,
        tag=f"{MODEL_TAG_KEY}={model_tag}",
        training=training,
        inference=inference,
        tokens_served_so_far=so_far,
        option=ServingOptionRecord.model_validate(option.to_dict()),
        at=AmortisedAt(
            tokens_served=at_tokens,
            j_per_token=float(point.j_per_token[0]),
            usd_per_token=_first(point.usd_per_token),
            co2e_g_per_token=_first(point.co2e_g_per_token),
        ),
        parity=parity,
        curve=_curve(option, volumes),
        compare=None if rival is None else rival.public(volumes),
        pricing=context.public(),
        assumptions=[
            "training cost = measured IT energy of the model's training runs",
            "inference cost per token = measured IT energy of its inference runs / their "
            "declared tokens"
            if inference.source == "measured"
            else f"inference cost per token {_ASSUMED}",
            "hardware purchase or rental is not included",
            *context.assumptions(),
        ],
    )


@dataclass(frozen=True, slots=True)
class _Rival:
    """The model an answer is compared with (``compare``), and where the two break even."""

    model_tag: str
    option: ServingOption
    training: TrainingFigures
    inference: InferenceFigures
    even: BreakEvenByMetric

    @property
    def break_even(self) -> tuple[BreakEvenRecord | None, ...]:
        return (self.even.energy, self.even.usd, self.even.co2e)

    def public(self, volumes: np.ndarray[Any, Any]) -> ComparedModel:
        return ComparedModel(
            model_tag=self.model_tag,
            option=ServingOptionRecord.model_validate(self.option.to_dict()),
            training=self.training,
            inference=self.inference,
            break_even=self.even,
            curve=_curve(self.option, volumes),
        )


def _rival(
    session: Session, project_id: int, compare: str, option: ServingOption, context: Pricing
) -> _Rival:
    other, training, inference = _option(
        session, project_id=project_id, model_tag=compare, pricing=context
    )
    if other is None:
        raise Conflict(
            f"model {compare!r} lacks a measured training run or inference tokens",
            field="compare",
        )
    even = BreakEvenByMetric.model_validate(
        {
            m: break_even(option, other, metric=m).to_dict()
            if _priced(option, m) and _priced(other, m)
            else None
            for m in _METRICS
        }
    )
    return _Rival(compare, other, training, inference, even)


def _curve(option: ServingOption, volumes: np.ndarray[Any, Any]) -> CurveRecord:
    return CurveRecord.model_validate(amortisation_curve(option, volumes).to_dict())


def _priced(option: ServingOption, metric: Metric) -> bool:
    return option.fixed_and_marginal(metric) is not None


def _first(values: np.ndarray[Any, Any] | None) -> float | None:
    return None if values is None else float(values[0])


# --------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True, slots=True)
class ComparableRun:
    """A measured training run whose efficiency a plan may rest on."""

    id: UUID
    name: str
    flop_per_j: float
    mfu: float | None
    energy_j: float
    flops: float
    simulated: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        return {
            "id": str(self.id),
            "name": self.name,
            "flop_per_j": self.flop_per_j,
            "mfu": self.mfu,
            "energy_j": self.energy_j,
            "flops": self.flops,
            "simulated": self.simulated,
        }


def comparable_runs(
    session: Session, *, project_id: int, hardware: str, dtype: str
) -> list[ComparableRun]:
    """Recent training runs on ``hardware`` alone, with FLOPs at ``dtype`` (newest first).

    Args:
        session: The caller's session.
        project_id: The project.
        hardware: Catalog id every device of the run must resolve to.
        dtype: Precision the run's FLOPs must have been declared at.
    """
    wanted = normalize_dtype(dtype)
    records = list_runs(
        session, project_id=project_id, kind=RunKind.TRAINING, limit=COMPARABLE_RUNS_MAX
    )
    out = []
    for record in records:
        # One read of the run's aggregates, for the check and the report alike.
        usage = run_usage(session, project_id=project_id, run_id=record.id)
        if not usage.devices:
            continue
        report = usage_report(session, project_id=project_id, usage=usage)
        flop_per_j, flops = report.efficiency.flop_per_j, report.work.flops
        if flop_per_j is None or not flop_per_j > 0 or flops is None:
            continue
        if any(d.catalog_id != hardware for d in report.energy.by_device):
            continue
        if normalize_dtype(report.work.dtype) != wanted:
            continue
        out.append(
            ComparableRun(
                id=record.id,
                name=record.name,
                flop_per_j=flop_per_j,
                mfu=report.efficiency.mfu,
                energy_j=report.energy.total.energy_j,
                flops=flops,
                simulated=report.run.simulated,
            )
        )
    return out


def _catalog_id(value: str) -> str:
    if catalog_lookup(value) is None or value not in builtin_catalog():
        raise ValueError(f"{value!r} is not a catalog id; see accounting/data/catalog.toml")
    return value


class LossModelIn(BaseModel):
    """Loss-model constants given in a request: L(N, D) = E + A/N^α + B/D^β."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    e: Annotated[float, Field(ge=0, le=100, description="E, the irreducible loss.")]
    a: Annotated[float, Field(gt=0, le=1e12, description="A, the parameter term's scale.")]
    b: Annotated[float, Field(gt=0, le=1e12, description="B, the data term's scale.")]
    alpha: Annotated[float, Field(gt=0, le=5, description="α, the parameter exponent.")]
    beta: Annotated[float, Field(gt=0, le=5, description="β, the data exponent.")]


class LossObservation(BaseModel):
    """One recorded run's (N, D, final loss), for fitting the loss model."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_params: Annotated[float, Field(gt=0, le=1e16, description="N, parameters.")]
    n_tokens: Annotated[float, Field(gt=0, le=1e18, description="D, training tokens.")]
    loss: Annotated[float, Field(gt=0, le=100, description="Final loss, nats/token.")]


#: Fields that only inference-aware planning reads: refused without a target or a demand.
_INFERENCE_ONLY = (
    "test_time_multiplier",
    "queries",
    "inference_flop_per_j",
    "objective",
    "loss_model",
    "loss_observations",
)


class PlanRequest(BaseModel):
    """A planned training run: model size, data, hardware, and the accounting context.

    ``hardware`` is a catalog id (e.g. ``nvidia-h100-sxm5-80gb``). ``region`` (a built-in
    region), ``pue`` (a built-in name) and ``tariff_usd_per_kwh`` override the project's
    accounting context and are labelled as overrides; absent, the project's region, PUE and
    tariff version apply (`resolve_pricing`). ``device_hour_usd`` (a rental price per
    device-hour) is optional; without it hardware time is not priced.

    **Inference-aware planning** (`accounting.scaling`) is asked for with ``target_loss`` or
    ``inference_tokens`` (the lifetime demand, tokens served at ``test_time_multiplier`` 1).
    With ``target_loss`` (and no N, D) the plan is made for the (N, D) that reach it at the
    least training + inference ``objective``; with N and D, the target is their loss and the
    optimum is shown beside them. The loss model is Hoffmann et al. 2022's unless
    ``loss_model`` gives constants or ``loss_observations`` (N, D, loss) triples to fit.
    ``inference_flop_per_j`` prices inference FLOPs (default: the training figure).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_params: Annotated[float | None, Field(gt=0, le=N_PARAMS_MAX, description="N, parameters")] = (
        None
    )
    n_tokens: Annotated[
        float | None, Field(gt=0, le=N_TOKENS_MAX, description="D, training tokens")
    ] = None
    hardware: Annotated[str, Field(min_length=1, max_length=64)]
    n_devices: Annotated[int, Field(ge=1, le=10_000_000)] = 8
    dtype: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,16}$")] = "bf16"
    mfu: Annotated[float | None, Field(gt=0, le=1)] = None
    region: Annotated[str | None, Field(max_length=16)] = None
    pue: Annotated[str | None, Field(max_length=32)] = None
    tariff_usd_per_kwh: Annotated[float | None, Field(ge=0, le=100)] = None
    device_hour_usd: Annotated[float | None, Field(ge=0, le=10_000)] = None
    percentiles: tuple[float, float] | None = None
    target_loss: Annotated[
        float | None, Field(gt=0, le=100, description="L*, nats/token; above the model's E.")
    ] = None
    inference_tokens: Annotated[
        float | None,
        Field(ge=0, le=1e22, description="T, tokens served over the model's life at k = 1."),
    ] = None
    test_time_multiplier: Annotated[
        float, Field(gt=0, le=10_000, description="k, tokens per query relative to T's.")
    ] = 1.0
    queries: Annotated[
        float | None, Field(gt=0, le=1e20, description="Answers over the life (per-answer).")
    ] = None
    inference_flop_per_j: Annotated[
        float | None, Field(ge=1, le=1e16, description="Inference efficiency, FLOP/J.")
    ] = None
    objective: Literal["energy", "usd", "co2e"] = "energy"
    loss_model: LossModelIn | None = None
    loss_observations: Annotated[
        list[LossObservation] | None, Field(min_length=5, max_length=LOSS_OBSERVATIONS_MAX)
    ] = None

    @field_validator("hardware")
    @classmethod
    def _known_hardware(cls, value: str) -> str:
        return _catalog_id(value)

    @model_validator(mode="after")
    def _dtype_on_hardware(self) -> PlanRequest:
        entry = builtin_catalog().get(self.hardware)
        if not entry.supports(self.dtype):
            raise ValueError(
                f"dtype {self.dtype!r} has no published peak on {self.hardware}; it has: "
                f"{', '.join(entry.dtypes)}"
            )
        return self

    @property
    def inference_aware(self) -> bool:
        """Whether the request asks for inference-aware planning."""
        return self.target_loss is not None or self.inference_tokens is not None

    def check_shape(self) -> None:
        """Refuse a request whose fields do not make one plan, naming the field.

        Raises:
            InvalidInput: N without D (or D without N), N and D beside a target loss, neither,
                both a loss model and observations, or inference-only fields without a target
                or a demand.
        """
        planned = (self.n_params is not None, self.n_tokens is not None)
        if self.target_loss is not None and any(planned):
            raise InvalidInput.one(
                "target_loss",
                "give a target loss (the plan is made for the optimum) or n_params and "
                "n_tokens (the target is their loss), not both",
            )
        if self.target_loss is None and not all(planned):
            missing = "n_tokens" if planned[0] else "n_params"
            raise InvalidInput.one(missing, "required unless target_loss is given")
        if self.loss_model is not None and self.loss_observations is not None:
            raise InvalidInput.one(
                "loss_observations", "give loss_model constants or observations to fit, not both"
            )
        if not self.inference_aware:
            for name in _INFERENCE_ONLY:
                if name in self.model_fields_set:
                    raise InvalidInput.one(
                        name,
                        "applies to inference-aware planning: give inference_tokens or target_loss",
                    )


def _loss_model(request: PlanRequest) -> tuple[LossModel, LossFit | None]:
    if request.loss_model is not None:
        given = request.loss_model
        model = LossModel(
            e=given.e,
            a=given.a,
            b=given.b,
            alpha=given.alpha,
            beta=given.beta,
            source="given in the request",
        )
        return model, None
    if request.loss_observations is not None:
        rows = request.loss_observations
        try:
            fit = fit_loss_model(
                [r.n_params for r in rows],
                [r.n_tokens for r in rows],
                [r.loss for r in rows],
                source=f"fitted to {len(rows)} (N, D, loss) triples given in the request",
            )
        except InvalidQuantity as e:
            message = str(e).removeprefix(f"{e.field}: ") if e.field else str(e)
            raise InvalidInput.one("loss_observations", message) from e
        return fit.model, fit
    return CHINCHILLA, None


def _energy_prices(context: Pricing) -> EnergyPrices:
    """Price of one joule of IT energy in the context: the tariff and the grid factor at its
    PUE, through the same functions that price a run (both are linear in energy)."""
    usd = None
    if context.tariff is not None:
        energy_usd = run_cost(energy_j=J_PER_KWH, tariff=context.tariff, pue=context.pue).energy_usd
        usd = None if energy_usd is None else energy_usd / J_PER_KWH
    co2e = None
    if context.location_factor is not None:
        emissions = scope2_emissions(
            J_PER_KWH, pue=context.pue, location_factor=context.location_factor
        )
        co2e = emissions.location_co2e_g / J_PER_KWH
    return EnergyPrices(usd_per_j=usd, co2e_g_per_j=co2e)


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    return True


_UNITS = {"energy": "J", "usd": "USD", "co2e": "gCO2e"}


def _inference_aware(
    request: PlanRequest, *, training_flop_per_j: float, context: Pricing
) -> InferenceAwarePublic:
    """The inference-aware part of a plan (see `PlanRequest`), checked to be finite."""
    model, fit = _loss_model(request)
    prices = _energy_prices(context)
    objective = request.objective
    if objective != "energy":
        per_j = prices.usd_per_j if objective == "usd" else prices.co2e_g_per_j
        if per_j is None:
            needs = "a tariff (tariff_usd_per_kwh)" if objective == "usd" else "a grid region"
            raise InvalidInput.one(
                "objective",
                f"no price applies to this project: planning in {objective} needs {needs}",
            )
        if per_j == 0.0:
            raise InvalidInput.one(
                "objective", f"a joule costs 0 in {objective} here: there is nothing to minimise"
            )
    inference_flop_per_j = request.inference_flop_per_j or training_flop_per_j
    demand = request.inference_tokens or 0.0
    try:
        result = plan_inference_aware(
            training_flop_per_j=training_flop_per_j,
            inference_flop_per_j=inference_flop_per_j,
            inference_tokens=demand,
            target_loss=request.target_loss,
            n_params=request.n_params if request.target_loss is None else None,
            n_tokens=request.n_tokens if request.target_loss is None else None,
            model=model,
            test_time_multiplier=request.test_time_multiplier,
            prices=prices,
            objective=objective,
            queries=request.queries,
        )
    except InvalidQuantity as e:
        field = e.field if e.field in PlanRequest.model_fields else "target_loss"
        message = str(e).removeprefix(f"{e.field}: ") if e.field else str(e)
        raise InvalidInput.one(field, message) from e
    target_source = (
        "given in the request"
        if request.target_loss is not None
        else "the loss of the planned (n_params, n_tokens) under the loss model"
    )
    record = {
        "objective": objective,
        "unit": _UNITS[objective],
        "loss_model": model.to_dict(),
        "loss_fit": None
        if fit is None
        else {k: v for k, v in fit.to_dict().items() if k != "model"},
        "target_loss": float(result.target_loss),
        "target_source": target_source,
        "inference_tokens": demand,
        "test_time_multiplier": request.test_time_multiplier,
        "served_tokens": demand * request.test_time_multiplier,
        "queries": request.queries,
        "training_flop_per_j": training_flop_per_j,
        "inference_flop_per_j": inference_flop_per_j,
        "optimum": result.optimum.item(),
        "chinchilla": result.chinchilla.item(),
        "given": None if result.given is None else result.given.item(),
        "saving": float(result.saving),
        "saving_fraction": float(result.saving_fraction),
        "assumptions": [
            f"loss model L(N, D) = {model.e:g} + {model.a:g}/N^{model.alpha:.4g} + "
            f"{model.b:g}/D^{model.beta:.4g} ({model.source})",
            "training FLOPs = 6·N·D, inference FLOPs = 2·N per token × T × k (Kaplan et al. "
            "2020); the optimum minimises their sum at the target loss (Sardana et al. 2023, "
            "arXiv:2401.00448)",
            f"training priced at {training_flop_per_j:.4g} FLOP/J (the plan's central figure)",
            f"inference priced at {inference_flop_per_j:.4g} FLOP/J "
            + (
                "(given in the request)"
                if request.inference_flop_per_j is not None
                else "(assumed: the training figure; give inference_flop_per_j)"
            ),
            "the loss model is of pre-training loss: a test-time multiplier's gain in quality "
            "is the caller's to state; its energy is computed here",
        ],
    }
    points = [result.optimum.item(), result.chinchilla.item()]
    too_big = any(p["n_params"] > N_PARAMS_MAX or p["n_tokens"] > N_TOKENS_MAX for p in points)
    if too_big or not _all_finite(record):
        worst = max(points, key=lambda p: p["n_tokens"])
        raise InvalidInput.one(
            "target_loss" if request.target_loss is not None else "inference_tokens",
            f"the optimum needs N = {worst['n_params']:.3g}, D = {worst['n_tokens']:.3g}, beyond "
            f"what a plan takes ({N_PARAMS_MAX:g} parameters, {N_TOKENS_MAX:g} tokens): the "
            "target loss is too close to the loss model's E for this demand",
        )
    return InferenceAwarePublic.model_validate(record)


def plan(session: Session, *, project_id: int, request: PlanRequest) -> PlanPublic:
    """Estimate a training run before it starts (see the module docstring).

    Args:
        session: The caller's session.
        project_id: The project whose runs count as comparable.
        request: The planned run.

    Returns:
        The plan (`service.economics_schemas.PlanPublic`): `accounting.planning.TrainingPlan`
        plus ``hardware``, ``basis`` (which efficiency figures it rests on), ``pricing``,
        ``assumptions`` and, when asked for, ``inference_aware``: the (N, D) minimising
        training + lifetime inference cost at the target loss, beside the Chinchilla point.
        With ``target_loss`` the training plan is made for that optimum.

    Raises:
        InvalidInput: Unknown region or PUE, bad percentiles, fields that do not make one
            plan, a target loss at or below the loss model's E, unfittable observations.
        Conflict: No comparable run and no TDP in the catalog to fall back on.
    """
    request.check_shape()
    context = resolve_pricing(
        session,
        project_id=project_id,
        overrides=pricing(
            region=request.region, pue=request.pue, tariff_usd_per_kwh=request.tariff_usd_per_kwh
        ),
    )
    entry = builtin_catalog().get(request.hardware)
    dtype = normalize_dtype(request.dtype)
    peak = entry.peak(dtype)
    comparable = comparable_runs(
        session, project_id=project_id, hardware=request.hardware, dtype=dtype
    )
    measured_mfu = [r.mfu for r in comparable if r.mfu is not None]
    if request.mfu is not None:
        mfu, mfu_source = request.mfu, "given in the request"
    elif measured_mfu:
        mfu, mfu_source = statistics.median(measured_mfu), "median of the comparable runs"
    else:
        mfu, mfu_source = DEFAULT_MFU, "assumed (no request value, no comparable run)"
    mfu = min(mfu, 1.0)
    if comparable:
        samples = [r.flop_per_j for r in comparable]
        basis = PlanBasis(
            kind="measured",
            description=f"FLOP/J measured on {len(comparable)} comparable run(s): training, "
            f"every device {request.hardware}, FLOPs at {dtype}",
            runs=[ComparableRunRecord.model_validate(r.to_dict()) for r in comparable],
        )
    else:
        if entry.tdp_w is None:
            raise Conflict(
                f"no comparable run was measured and {request.hardware} has no TDP in the "
                "catalog: there is no efficiency to plan with",
                field="hardware",
            )
        mfus = (0.5 * mfu, mfu, min(1.0, 1.5 * mfu))
        samples = [rated_flop_per_j(peak, entry.tdp_w, m) for m in mfus]
        basis = PlanBasis(
            kind="datasheet",
            description=f"no comparable run measured: MFU × peak / TDP of {entry.name} at "
            f"{dtype} (MFU {mfus[0]:.2g} … {mfus[2]:.2g}); boards usually draw less than TDP, "
            "so this errs high on energy",
            runs=[],
        )
    percentiles = request.percentiles
    if percentiles is not None and not 0 <= percentiles[0] <= percentiles[1] <= 100:
        raise InvalidInput.one("percentiles", f"need 0 ≤ lo ≤ hi ≤ 100, got {list(percentiles)}")
    hardware_price = (
        None
        if request.device_hour_usd is None
        else CloudPrice(request.device_hour_usd, source="given in the request")
    )
    aware: InferenceAwarePublic | None = None
    n_params, n_tokens = request.n_params, request.n_tokens
    if request.inference_aware:
        aware = _inference_aware(
            request, training_flop_per_j=float(np.median(samples)), context=context
        )
        if request.target_loss is not None:
            n_params, n_tokens = aware.optimum.n_params, aware.optimum.n_tokens
    assert n_params is not None  # check_shape: N and D, or a target that gives them
    assert n_tokens is not None
    result = plan_training(
        n_params=n_params,
        n_tokens=n_tokens,
        flop_per_j_samples=samples,
        percentiles=percentiles,
        setup=ComputeSetup(peak, request.n_devices, mfu, device=entry.name),
        pue=context.pue,
        location_factor=context.location_factor,
        market_factor=context.market_factor if context.location_factor is not None else None,
        tariff=context.tariff,
        hardware=hardware_price,
    )
    hardware = PlanHardware(
        id=entry.id,
        name=entry.name,
        dtype=dtype,
        peak_flop_per_s=peak,
        tdp_w=entry.tdp_w,
        n_devices=request.n_devices,
    )
    assumptions = [
        "FLOPs = 6·N·D (Kaplan et al. 2020; attention-context FLOPs not included)",
        f"duration = FLOPs / (peak {peak:.4g} FLOP/s × {request.n_devices} device(s) × MFU "
        f"{mfu:.3g}); MFU {mfu_source}",
        basis.description,
        *context.assumptions(),
        "hardware rental not priced"
        if hardware_price is None
        else f"hardware {request.device_hour_usd:g} USD per device-hour (given in the request)",
    ]
    if request.target_loss is not None:
        assumptions.insert(
            0,
            f"N and D are the inference-aware optimum for target loss {request.target_loss:g}",
        )
    return PlanPublic.model_validate(
        {
            **result.to_dict(),
            "hardware": hardware,
            "mfu_source": mfu_source,
            "basis": basis,
            "pricing": context.public(),
            "assumptions": assumptions,
            "inference_aware": aware,
        }
    )
