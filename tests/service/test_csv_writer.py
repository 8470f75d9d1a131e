"""The service's one CSV writer: layout, cells by type, and the formula guard."""

from __future__ import annotations

import csv
import io

import pytest

from thermoledger.service.csv_writer import FORMULA_LEADS, cell, unguard, write_csv


@pytest.mark.parametrize("lead", FORMULA_LEADS)
def test_text_a_spreadsheet_would_run_is_quoted_as_text(lead: str) -> None:
    text = f'{lead}HYPERLINK("http://x","y")'
    assert cell(text) == "'" + text
    assert unguard(cell(text)) == text


@pytest.mark.parametrize(
    "text", ["=1+1", "-1.5", "+1", "@SUM(A1)", "\tx", "\rx", "'=already", "'", "plain", ""]
)
def test_the_guard_can_be_undone_exactly(text: str) -> None:
    assert unguard(cell(text)) == text


def test_numbers_stay_numbers_and_text_stays_text() -> None:
    # A negative number the writer formats itself is a number: no guard.
    assert cell(-1.5) == "-1.5"
    assert cell(-3) == "-3"
    assert cell(6.499999974e17) == "6.499999974e+17"
    assert cell(0.1 + 0.2) == repr(0.1 + 0.2)  # round-trips
    # The same characters as text are text, and guarded.
    assert cell("-1.5") == "'-1.5"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (float("inf"), ""),
        (float("nan"), ""),
        (True, "true"),
        (False, "false"),
        ({"b": 1, "a": [2, "x"]}, '{"a":[2,"x"],"b":1}'),
        ("énergie", "énergie"),
    ],
)
def test_cells_by_type(value: object, expected: str) -> None:
    assert cell(value) == expected


def test_a_document_has_a_header_crlf_lines_and_round_trips() -> None:
    rows: list[dict[str, object]] = [
        {"name": '=HYPERLINK("http://x","y")', "cost_usd": -0.0044, "note": "a,b\nc"},
        {"name": "plain", "cost_usd": None, "ignored": 1},
    ]
    text = write_csv(("name", "cost_usd", "note"), rows)
    assert text.startswith("name,cost_usd,note\r\n")
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "").replace("a,b\nc", "")
    parsed = list(csv.DictReader(io.StringIO(text, newline="")))
    assert parsed[0] == {
        "name": '\'=HYPERLINK("http://x","y")',
        "cost_usd": "-0.0044",
        "note": "a,b\nc",
    }
    assert float(parsed[0]["cost_usd"]) == -0.0044
    assert parsed[1] == {"name": "plain", "cost_usd": "", "note": ""}
