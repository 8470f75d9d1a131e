"""API schemas of the disclosure exports (`service.routes.disclosures`).

The figures keep their units in their names (``_mwh``, ``_tco2e``); a figure that cannot be
given is ``value: null`` with ``text: "N/A"`` and the reason, never a zero.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AnchorEntryPublic",
    "AnchorPublic",
    "BoundaryPublic",
    "CoveredFigurePublic",
    "EsrsE15Public",
    "EsrsE16Public",
    "EsrsPublic",
    "EuAiActPublic",
    "FigurePublic",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AnchorEntryPublic(_Out):
    """One ledger entry an export rests on."""

    seq: int
    hash: str
    figure: str
    run_id: str | None


class HeadPublic(_Out):
    """The chain head the export was read under."""

    seq: int
    hash: str


class AnchorPublic(_Out):
    """What proves the export unchanged: the head and the entries, with the commands."""

    project: str
    head: HeadPublic
    entries: list[AnchorEntryPublic]
    verify: dict[str, str]


class FigurePublic(_Out):
    """A disclosed figure, its text (significant figures kept), or N/A with the reason."""

    value: float | None
    text: str
    reason: str | None


class BoundaryPublic(_Out):
    """Where the energy was measured: accelerators, node, or facility (with the PUE)."""

    kind: str
    pue: list[float] | None


class EuAiActPublic(_Out):
    """EU AI Act Annex XI §1(2)(d)-(e) / GPAI Model Documentation Form: energy and compute."""

    standard: str
    model: str | None
    runs: list[str] = Field(description="the training runs disclosed")
    training_energy_mwh: FigurePublic
    methodology: str
    boundary: BoundaryPublic
    training_flops: FigurePublic
    wall_clock_days: float | None = Field(description="union of the runs' start-to-end spans")
    hardware_days: float | None = Field(description="device-days: measured span × devices")
    anchor: AnchorPublic


class CoveredFigurePublic(_Out):
    """A period total: available only when every run has the figure."""

    value: float | None
    covered_value: float | None
    runs_covered: int
    reason: str | None


class EsrsE15Public(_Out):
    """ESRS E1-5: energy consumption."""

    total_energy_consumption_mwh: CoveredFigurePublic
    it_energy_mwh: float | None
    boundary: str
    energy_mix: str


class EsrsE16Public(_Out):
    """ESRS E1-6: gross Scope 2 GHG emissions."""

    gross_scope2_location_based_tco2e: CoveredFigurePublic
    gross_scope2_market_based_tco2e: CoveredFigurePublic


class EsrsPublic(_Out):
    """ESRS E1-5 and E1-6 of the project for a period."""

    standard: str
    start: str | None = Field(alias="from")
    end: str | None = Field(alias="to")
    runs: int
    e1_5: EsrsE15Public
    e1_6: EsrsE16Public
    anchor: AnchorPublic

    def dump(self) -> dict[str, Any]:
        """JSON form with ``from``/``to``."""
        return self.model_dump(by_alias=True)
