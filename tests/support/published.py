"""Published training footprints and the inputs they were computed from.

One table, read by the accounting tests (`tests/accounting/test_published_estimates.py`, through
`accounting.estimates.estimate_run`) and the service tests (`tests/service/test_estimates.py`,
through ``POST /api/v1/runs/{id}/estimate``). Quantities are written as the publications print
them, with units (``"14.8 day"``, ``"0.954 lbCO2e/kWh"``), and converted by the unit registry.

Where a publication does not state an input, it is derived from the publication's own totals and
the case's ``derived`` note says how; such a case checks the arithmetic chain and the other rows,
never the derived figure against itself alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CASES", "LLAMA2_INTENSITY", "LLAMA31_INTENSITY", "PublishedCase"]


@dataclass(frozen=True)
class PublishedCase:
    """One published figure and its published inputs.

    Attributes:
        id: Short test id.
        citation: Title, authors, year, and where in the document.
        inputs: Estimate inputs as the API takes them (quantities as text).
        energy: Published energy (text with a unit), and whether it is IT or facility energy.
        co2e: Published emissions (text with a unit), location-based, of the facility energy.
        rel: Relative tolerance of the comparison.
        derived: What was derived rather than read off the publication.
    """

    id: str
    citation: str
    inputs: dict[str, Any]
    energy: tuple[str, str] | None = None
    co2e: str | None = None
    rel: float = 0.005
    derived: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# Llama 2 (Touvron et al. 2023, Table 2; the model card's "CO2 emissions during pretraining"):
# neither states a grid intensity (or a PUE: "peak power capacity per GPU device ... adjusted for
# power usage efficiency"). Derived from the publication's own total: 539.00 tCO2eq over the
# four models' GPU-hours × power (184,320 h × 400 W + 368,640 h × 400 W + 1,038,336 h × 350 W +
# 1,720,320 h × 400 W = 1,272,729.6 kWh) = 423.50 gCO2e/kWh, applied with PUE 1 (the intensity
# absorbs whatever adjustment Meta made).
LLAMA2_INTENSITY = f"{539.00e6 / 1_272_729.6!r} gCO2e/kWh"

# Llama 3.1 model card ("Training Greenhouse Gas Emissions"): no intensity stated. Derived from
# the card's total, 11,390 t location-based over 39.3M GPU-hours × 700 W = 27.51 GWh:
# 414.03 gCO2e/kWh, PUE 1 (none stated).
LLAMA31_INTENSITY = f"{11_390e6 / (39.3e6 * 0.7)!r} gCO2e/kWh"

_LLAMA2 = (
    "Touvron et al. 2023, 'Llama 2: Open Foundation and Fine-Tuned Chat Models' "
    "(arXiv:2307.09288), Table 2 'CO2 emissions during pretraining'; the same rows in the "
    "Llama 2 model card (Meta, 2023, 'Carbon Footprint')"
)
_LLAMA31 = (
    "Meta, 2024, Llama 3.1 model card (github.com/meta-llama/llama-models, "
    "models/llama3_1/MODEL_CARD.md), 'Training Greenhouse Gas Emissions' table"
)
_STRUBELL = (
    "Strubell, Ganesh & McCallum 2019, 'Energy and Policy Considerations for Deep Learning in "
    "NLP', ACL 2019, §2 (p_t = 1.58·t·(p_c + p_r + g·p_g)/1000; CO2e = 0.954·p_t) and Table 3"
)
_STRUBELL_NOTE = (
    "Table 3's Power column is the node's p_c + p_r + g·p_g; one node for t hours; PUE 1.58 and "
    "0.954 lbs/kWh (EPA 2018, US average) from §2"
)


def _strubell(
    name: str, power_w: str, hours: str, kwh: str, lbs: str, rel: float = 0.005
) -> PublishedCase:
    return PublishedCase(
        id=f"strubell-{name}",
        citation=f"{_STRUBELL}, row {name}",
        inputs={
            # the table's hours are hardware-hours (its p_t sums CPU, DRAM and g GPUs)
            "device_hours": f"{hours} h",
            "mean_power": f"{power_w} W",
            "pue": 1.58,
            "intensity": "0.954 lbCO2e/kWh",
            "note": _STRUBELL_NOTE,
        },
        energy=(f"{kwh} kWh", "facility"),
        co2e=f"{lbs} lbCO2e",
        rel=rel,
    )


CASES: tuple[PublishedCase, ...] = (
    PublishedCase(
        id="gpt3",
        citation=(
            "Patterson et al. 2021, 'Carbon Emissions and Large Neural Network Training' "
            "(arXiv:2104.10350), Table 4, GPT-3 column: 10,000 V100, 14.8 days, 330 W average "
            "per processor, PUE 1.10, 0.429 kgCO2e/kWh -> 1,287 MWh, 552 tCO2e"
        ),
        inputs={
            "devices": 10_000,
            "duration": "14.8 day",
            "mean_power": "330 W",
            "pue": 1.10,
            "intensity": "0.429 kgCO2e/kWh",
        },
        energy=("1287 MWh", "facility"),
        co2e="552 tCO2e",
    ),
    PublishedCase(
        id="bloom",
        citation=(
            "Luccioni, Viguier & Ligozat 2023, 'Estimating the Carbon Footprint of BLOOM, a 176B "
            "Parameter Language Model', JMLR 24(253), §4.1 and Table 2: 1,082,990 A100 GPU-hours "
            "x 400 W (TDP) = 433,196 kWh; 57 gCO2eq/kWh (French grid) -> 24.69 t, dynamic "
            "consumption only (no PUE: idle and infrastructure are counted apart)"
        ),
        inputs={
            "device_hours": "1082990 h",
            "device": "A100-SXM4-80GB",
            "utilisation": 1.0,
            "intensity": "57 gCO2e/kWh",
        },
        energy=("433 MWh", "it"),
        co2e="24.69 tCO2e",
        extra={"energy_exact": "433196 kWh"},
    ),
    PublishedCase(
        id="llama2-7b",
        citation=f"{_LLAMA2}, row 7B: 184,320 GPU-hours, 400 W, 31.22 tCO2eq",
        inputs={"device_hours": "184320 h", "mean_power": "400 W", "intensity": LLAMA2_INTENSITY},
        co2e="31.22 tCO2e",
        derived="intensity from the table's total (LLAMA2_INTENSITY)",
    ),
    PublishedCase(
        id="llama2-13b",
        citation=f"{_LLAMA2}, row 13B: 368,640 GPU-hours, 400 W, 62.44 tCO2eq",
        inputs={"device_hours": "368640 h", "mean_power": "400 W", "intensity": LLAMA2_INTENSITY},
        co2e="62.44 tCO2e",
        derived="intensity from the table's total (LLAMA2_INTENSITY)",
    ),
    PublishedCase(
        id="llama2-34b",
        citation=(
            f"{_LLAMA2}, row 34B (in the paper's Table 2 and in the total, not released): "
            "1,038,336 GPU-hours, 350 W (the production cluster's power cap), 153.90 tCO2eq"
        ),
        inputs={
            "device_hours": "1038336 h",
            "mean_power": "350 W",
            "intensity": LLAMA2_INTENSITY,
        },
        co2e="153.90 tCO2e",
        derived="intensity from the table's total (LLAMA2_INTENSITY)",
    ),
    PublishedCase(
        id="llama2-70b",
        citation=f"{_LLAMA2}, row 70B: 1,720,320 GPU-hours, 400 W, 291.42 tCO2eq",
        inputs={
            "device_hours": "1720320 h",
            "mean_power": "400 W",
            "intensity": LLAMA2_INTENSITY,
        },
        co2e="291.42 tCO2e",
        derived="intensity from the table's total (LLAMA2_INTENSITY)",
    ),
    PublishedCase(
        id="llama31-405b",
        citation=f"{_LLAMA31}, row 405B: 30.84M GPU-hours, 700 W (H100-80GB TDP), 8,930 t",
        inputs={
            "device_hours": "30.84e6 h",
            "device": "H100 SXM5 80GB",
            "utilisation": 1.0,
            "intensity": LLAMA31_INTENSITY,
        },
        co2e="8930 tCO2e",
        derived="intensity from the card's total (LLAMA31_INTENSITY)",
    ),
    _strubell("Transformer_big", "1515.43", "84", "201", "192"),
    _strubell("ELMo", "517.66", "336", "275", "262"),
    _strubell("BERT_base", "12041.51", "79", "1507", "1438"),
    _strubell("NAS", "1515.43", "274120", "656347", "626155"),
)
