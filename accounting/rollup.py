"""Period rollups of ledger figures: energy, Scope 2 (both methods), cost and SCI per group.

Input is the ledger's *current* figures (an entry superseded by a correction is left out by
the caller), each with the instant it belongs to and the group it falls in (a tag's value, or
the project). Nothing is recomputed from factors here: every number is a sum of frozen ledger
figures, so a rollup never changes when a factor or tariff version is added later.

Per period (calendar month ``2026-03`` or quarter ``2026-Q1``, UTC) and group:

* **runs** — runs with an ``it_energy`` figure;
* **energy** — IT energy, kWh (Σ ``it_energy``), and facility energy, kWh (Σ
  ``facility_energy``: IT × the PUE each run was ledgered with);
* **CO2e location- and market-based side by side** (GHG Protocol Scope 2 dual reporting), and
  **cost** (Σ ``energy_cost`` + Σ ``hardware_cost``). Each is a `CoveredSum`: *available* only
  when every run of the group has the figure; otherwise *not available*, with how many runs
  have it and their partial sum shown apart — never filled in from the other method or guessed;
* **embodied** (the SCI's M, Σ ``embodied``) and **offsets** (Σ ``offset``, reported beside
  the emissions and never netted from them);
* **SCI** (ISO/IEC 21031) = (O + M) / R with O the location-based operational emissions
  (market-based instruments are excluded by the specification), per **run** (R = runs) and
  per **1k tokens** (R = Σ ``tokens`` / 1000, only when every run declared its tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .carbon import J_PER_KWH
from .errors import InvalidQuantity

__all__ = [
    "CoveredSum",
    "GroupRollup",
    "LedgerFigure",
    "Period",
    "SciFigure",
    "period_key",
    "rollup",
]

Period = Literal["month", "quarter"]


@dataclass(frozen=True, slots=True)
class LedgerFigure:
    """One current ledger figure, as the rollup needs it.

    Attributes:
        seq: The entry's seq (kept so every rolled-up number names its entries).
        figure: The figure's name (``it_energy``, ``co2e_location`` …).
        value_si: Its value in the figure's storage unit (J, gCO2e, USD, token, FLOP).
        accounted_at: The instant it belongs to (aware).
        run_id: The run, if any.
        group: The group it falls in (None: the run lacks the grouping tag).
        simulated: Whether its run was metered on simulated devices.
    """

    seq: int
    figure: str
    value_si: float
    accounted_at: datetime
    run_id: str | None = None
    group: str | None = None
    simulated: bool = False


def period_key(at: datetime, period: Period) -> str:
    """``2026-03`` (month) or ``2026-Q1`` (quarter) of ``at`` in UTC.

    Raises:
        InvalidQuantity: A naive ``at`` or an unknown period.
    """
    if at.tzinfo is None:
        raise InvalidQuantity("must be timezone-aware", field="accounted_at")
    utc = at.astimezone(UTC)
    if period == "month":
        return f"{utc.year:04d}-{utc.month:02d}"
    if period == "quarter":
        return f"{utc.year:04d}-Q{(utc.month - 1) // 3 + 1}"
    raise InvalidQuantity(f"must be month or quarter, got {period!r}", field="period")


@dataclass(frozen=True, slots=True)
class CoveredSum:
    """A sum that is only meaningful when every run of the group contributes to it.

    Attributes:
        covered_value: Sum over the entries that exist.
        runs_covered: Runs of the group with the figure.
        runs: Runs of the group.
        entries: Entries summed.
        unavailable: Why there is no total, when there is none.
    """

    covered_value: float
    runs_covered: int
    runs: int
    entries: int
    unavailable: str | None = None

    @property
    def value(self) -> float | None:
        """The total, or None when not available."""
        return None if self.unavailable is not None else self.covered_value

    @property
    def status(self) -> str:
        """``available`` or ``not_available``."""
        return "not_available" if self.unavailable is not None else "available"

    def to_dict(self, unit_key: str, scale: float = 1.0) -> dict[str, Any]:
        """JSON-safe form; values divided by ``scale`` (e.g. J → kWh) under ``unit_key``."""
        return {
            "status": self.status,
            unit_key: None if self.value is None else self.value / scale,
            "runs_covered": self.runs_covered,
            "runs": self.runs,
            # No entry summed: no partial sum either (None, not 0).
            f"covered_{unit_key}": None if self.entries == 0 else self.covered_value / scale,
            "reason": self.unavailable,
        }


def _covered(
    figures: Sequence[LedgerFigure], runs: set[str], what: str, missing_means: str
) -> CoveredSum:
    covered_runs = {f.run_id for f in figures if f.run_id is not None} & runs
    total = math.fsum(f.value_si for f in figures)
    reason = None
    if not figures and not runs:
        reason = "no runs and no entries in this group and period"
    elif len(covered_runs) < len(runs):
        lacking = len(runs) - len(covered_runs)
        reason = f"{lacking} of {len(runs)} run(s) have no {what}: {missing_means}"
    return CoveredSum(
        covered_value=total,
        runs_covered=len(covered_runs),
        runs=len(runs),
        entries=len(figures),
        unavailable=reason,
    )


@dataclass(frozen=True, slots=True)
class SciFigure:
    """An SCI score per one functional unit, or why there is none.

    Attributes:
        functional_unit: ``run`` or ``1k tokens``.
        g_per_unit: (O + M) / R, gCO2e, or None.
        count: R.
        unavailable: Why there is no score.
    """

    functional_unit: str
    g_per_unit: float | None
    count: float
    unavailable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "status": "available" if self.g_per_unit is not None else "not_available",
            "functional_unit": self.functional_unit,
            "g_per_unit": self.g_per_unit,
            "count": self.count,
            "reason": self.unavailable,
        }


@dataclass(frozen=True, slots=True)
class GroupRollup:
    """One period and group.

    Attributes:
        period: ``2026-03`` or ``2026-Q1``.
        group: The group (a tag value, the project slug), None for runs without the tag.
        runs: Runs with an IT energy figure.
        simulated_runs: Of which metered on simulated devices.
        it_energy_j: Σ IT energy, J.
        facility_energy: Σ facility energy, J.
        co2e_location: Σ location-based CO2e, g.
        co2e_market: Σ market-based CO2e, g.
        energy_cost: Σ energy cost, USD.
        hardware_cost_usd: Σ hardware cost, USD.
        embodied_g: Σ embodied emissions (M), g.
        offsets_g: Σ offsets retired, g (never netted).
        tokens: Σ tokens declared.
        runs_with_tokens: Runs that declared tokens.
        sci_per_run: SCI per run.
        sci_per_1k_tokens: SCI per 1000 tokens.
        entries: Seqs of every entry summed.
        notes: Caveats for the reader.
        recorded: The figures the group has entries of: a sum of none is not available
            (None in `to_dict`), never 0 (hardware cost, embodied emissions, tokens).
    """

    period: str
    group: str | None
    runs: int
    simulated_runs: int
    it_energy_j: float
    facility_energy: CoveredSum
    co2e_location: CoveredSum
    co2e_market: CoveredSum
    energy_cost: CoveredSum
    hardware_cost_usd: float
    embodied_g: float
    offsets_g: float
    tokens: float
    runs_with_tokens: int
    sci_per_run: SciFigure
    sci_per_1k_tokens: SciFigure
    entries: tuple[int, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())
    recorded: frozenset[str] = field(default=frozenset())

    @property
    def cost_usd(self) -> float | None:
        """Energy cost (when available) plus hardware cost, USD."""
        energy = self.energy_cost.value
        return None if energy is None else energy + self.hardware_cost_usd

    def _recorded(self, figure: str, value: float) -> float | None:
        """``value``, or None when the group has no entry of ``figure`` to sum."""
        return value if figure in self.recorded else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form with units in every key; a sum of no entries is None, not 0."""
        return {
            "period": self.period,
            "group": self.group,
            "runs": self.runs,
            "simulated_runs": self.simulated_runs,
            "energy": {
                "it_kwh": self.it_energy_j / J_PER_KWH,
                "facility": self.facility_energy.to_dict("kwh", J_PER_KWH),
            },
            "co2e": {
                "location_based": self.co2e_location.to_dict("g"),
                "market_based": self.co2e_market.to_dict("g"),
            },
            "cost": {
                "status": self.energy_cost.status,
                "usd": self.cost_usd,
                "energy": self.energy_cost.to_dict("usd"),
                "hardware_usd": self._recorded("hardware_cost", self.hardware_cost_usd),
            },
            "embodied_g": self._recorded("embodied", self.embodied_g),
            # Offsets are an act: none retired is truly 0 g.
            "offsets_g": self.offsets_g,
            "tokens": self._recorded("tokens", self.tokens),
            "runs_with_tokens": self.runs_with_tokens,
            "sci": {
                "per_run": self.sci_per_run.to_dict(),
                "per_1k_tokens": {
                    **self.sci_per_1k_tokens.to_dict(),
                    "count": self._recorded("tokens", self.sci_per_1k_tokens.count),
                },
            },
            "entries": list(self.entries),
            "notes": list(self.notes),
        }


def _sci(
    location: CoveredSum, embodied_g: float, count: float, unit: str, lacking: str | None
) -> SciFigure:
    if location.value is None:
        return SciFigure(unit, None, count, f"no location-based total: {location.unavailable}")
    if lacking is not None:
        return SciFigure(unit, None, count, lacking)
    if count <= 0:
        return SciFigure(unit, None, count, f"no {unit} in this group and period")
    return SciFigure(unit, (location.value + embodied_g) / count, count)


def _group(period: str, group: str | None, figures: Sequence[LedgerFigure]) -> GroupRollup:
    by_name: dict[str, list[LedgerFigure]] = {}
    for f in figures:
        by_name.setdefault(f.figure, []).append(f)

    def of(name: str) -> list[LedgerFigure]:
        return by_name.get(name, [])

    runs = {f.run_id for f in of("it_energy") if f.run_id is not None}
    simulated = {f.run_id for f in of("it_energy") if f.run_id is not None and f.simulated}
    no_region = "the project had no region configured, or no factor covered the run's end"
    facility = _covered(of("facility_energy"), runs, "facility energy", "posted by hand")
    location = _covered(of("co2e_location"), runs, "location-based figure", no_region)
    market = _covered(
        of("co2e_market"),
        runs,
        "market-based factor",
        "no contractual-instrument or residual-mix factor covered the run's end; the "
        "location-based figure is not substituted",
    )
    cost = _covered(
        of("energy_cost"), runs, "energy cost", "no tariff covered the run's region and end"
    )
    embodied_g = math.fsum(f.value_si for f in of("embodied"))
    tokens = math.fsum(f.value_si for f in of("tokens"))
    token_runs = {f.run_id for f in of("tokens") if f.run_id is not None} & runs
    lacking_tokens = None
    if len(token_runs) < len(runs):
        lacking_tokens = f"{len(runs) - len(token_runs)} of {len(runs)} run(s) declared no tokens"
    notes = []
    if simulated:
        notes.append(
            f"{len(simulated)} run(s) were metered on simulated devices: their figures are "
            "synthetic"
        )
    if not of("embodied"):
        notes.append("No embodied emissions (M) were recorded: the SCI is understated.")
    if of("offset"):
        notes.append("Offsets are reported beside the emissions and never netted from them.")
    return GroupRollup(
        period=period,
        group=group,
        runs=len(runs),
        simulated_runs=len(simulated),
        it_energy_j=math.fsum(f.value_si for f in of("it_energy")),
        facility_energy=facility,
        co2e_location=location,
        co2e_market=market,
        energy_cost=cost,
        hardware_cost_usd=math.fsum(f.value_si for f in of("hardware_cost")),
        embodied_g=embodied_g,
        offsets_g=math.fsum(f.value_si for f in of("offset")),
        tokens=tokens,
        runs_with_tokens=len(token_runs),
        sci_per_run=_sci(location, embodied_g, float(len(runs)), "run", None),
        sci_per_1k_tokens=_sci(location, embodied_g, tokens / 1000.0, "1k tokens", lacking_tokens),
        entries=tuple(sorted(f.seq for f in figures)),
        notes=tuple(notes),
        recorded=frozenset(by_name),
    )


def rollup(figures: Iterable[LedgerFigure], *, period: Period) -> list[GroupRollup]:
    """Roll current ledger figures up per period and group.

    Args:
        figures: The current figures to include (already filtered by time range).
        period: ``month`` or ``quarter``.

    Returns:
        One `GroupRollup` per (period, group) that has any figure, ordered by period, then
        group (None last).
    """
    buckets: dict[tuple[str, str | None], list[LedgerFigure]] = {}
    for f in figures:
        buckets.setdefault((period_key(f.accounted_at, period), f.group), []).append(f)
    ordered = sorted(buckets, key=lambda k: (k[0], k[1] is None, k[1] or ""))
    return [_group(p, g, buckets[(p, g)]) for p, g in ordered]
