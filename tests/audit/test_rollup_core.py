"""`accounting.rollup` on plain figures: periods, coverage, SCI — arithmetic written out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from thermoledger.accounting.errors import InvalidQuantity
from thermoledger.accounting.rollup import LedgerFigure, period_key, rollup

MAR = datetime(2026, 3, 15, tzinfo=UTC)


def fig(
    seq: int,
    figure: str,
    value: float,
    run: str | None = "r1",
    *,
    at: datetime = MAR,
    **kw: Any,
) -> LedgerFigure:
    return LedgerFigure(seq=seq, figure=figure, value_si=value, accounted_at=at, run_id=run, **kw)


def test_periods_are_utc_months_and_quarters() -> None:
    # 2026-04-01 00:30 at UTC+01:00 is still March 31st in UTC.
    late = datetime(2026, 4, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert period_key(late, "month") == "2026-03"
    assert period_key(late, "quarter") == "2026-Q1"
    assert period_key(datetime(2026, 10, 1, tzinfo=UTC), "quarter") == "2026-Q4"
    with pytest.raises(InvalidQuantity, match="period"):
        period_key(MAR, "week")  # type: ignore[arg-type]
    with pytest.raises(InvalidQuantity, match="aware"):
        period_key(datetime(2026, 3, 1), "month")


def test_one_run_all_figures() -> None:
    (row,) = rollup(
        [
            fig(1, "it_energy", 7.2e6),  # 2 kWh
            fig(2, "facility_energy", 7.2e6 * 1.2),  # 2.4 kWh
            fig(3, "co2e_location", 2.4 * 300),  # 720 g
            fig(4, "co2e_market", 2.4 * 50),  # 120 g
            fig(5, "energy_cost", 2.4 * 0.2),  # 0.48 USD
            fig(6, "hardware_cost", 3.0),
            fig(7, "embodied", 80.0),
            fig(8, "tokens", 4e6),
            fig(9, "offset", 500.0, run=None),
        ],
        period="month",
    )
    d = row.to_dict()
    assert d["energy"]["it_kwh"] == pytest.approx(2.0)
    assert d["energy"]["facility"]["kwh"] == pytest.approx(2.4)
    assert d["co2e"]["location_based"]["g"] == pytest.approx(720.0)
    assert d["co2e"]["market_based"]["g"] == pytest.approx(120.0)
    assert d["cost"]["usd"] == pytest.approx(3.48)  # 0.48 energy + 3.00 hardware
    # SCI per run = (720 + 80) / 1 = 800 g; per 1k tokens = 800 / 4000 = 0.2 g
    assert d["sci"]["per_run"]["g_per_unit"] == pytest.approx(800.0)
    assert d["sci"]["per_1k_tokens"]["g_per_unit"] == pytest.approx(0.2)
    assert d["offsets_g"] == 500.0
    assert d["co2e"]["location_based"]["g"] == pytest.approx(720.0)  # offsets never netted
    assert d["entries"] == list(range(1, 10))
    assert not any("understated" in n for n in d["notes"])


def test_a_total_needs_every_run() -> None:
    (row,) = rollup(
        [
            fig(1, "it_energy", 3.6e6, run="a"),
            fig(2, "co2e_location", 100.0, run="a"),
            fig(3, "it_energy", 3.6e6, run="b", simulated=True),
        ],
        period="quarter",
    )
    assert (row.period, row.runs, row.simulated_runs) == ("2026-Q1", 2, 1)
    location = row.co2e_location
    assert (location.value, location.covered_value, location.runs_covered) == (None, 100.0, 1)
    assert location.unavailable is not None
    assert location.unavailable.startswith("1 of 2 run(s) have no location-based figure")
    assert row.sci_per_run.g_per_unit is None
    assert row.cost_usd is None
    assert any("simulated" in n for n in row.notes)


def test_groups_sort_with_none_last() -> None:
    rows = rollup(
        [
            fig(1, "it_energy", 1.0, run="a", group="b"),
            fig(2, "it_energy", 1.0, run="b", group=None),
            fig(3, "it_energy", 1.0, run="c", group="a"),
            fig(4, "it_energy", 1.0, run="d", group="a", at=datetime(2026, 1, 1, tzinfo=UTC)),
        ],
        period="month",
    )
    assert [(r.period, r.group) for r in rows] == [
        ("2026-01", "a"),
        ("2026-03", "a"),
        ("2026-03", "b"),
        ("2026-03", None),
    ]
