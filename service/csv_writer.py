"""The one CSV writer of the service: the run report CSV and the auditor's export both use it.

The policy, for every CSV the service writes:

* **Layout.** RFC 4180: a header row, then one row per record; lines end with CRLF; text is
  UTF-8; a cell is quoted only when it holds a comma, a quote or a line break.
* **Cells by type.** None is an empty cell (a figure that is not available is empty, never 0);
  a bool is ``true``/``false``; an int is its digits; a finite float is its shortest
  round-trip form (``repr``: ``-1.5``, ``6.499999974e+17``), a non-finite one (an unbounded
  band) is empty; a dict, list or tuple is compact JSON with sorted keys (as the ledger hashes
  it); anything else is text (``str``).
* **Formula guard.** A *text* cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
  carriage return is a formula to a spreadsheet (CSV injection: a run named
  ``=HYPERLINK("http://x","y")``, a ledger note ``+cmd|' /C calc'!A0``), and so is one where
  such a character follows leading whitespace (a space, a line break: several spreadsheets
  trim before they parse). It is written with a leading apostrophe, which spreadsheets show
  as text. Every text cell goes through the guard, whatever it came from: names, notes, tags,
  device and host names, and JSON built from nested values (which starts with ``{`` or ``[``,
  so it is never a formula itself). A text cell that already starts with an apostrophe gets
  one more, so the guard can be undone exactly: a reader strips one leading apostrophe from a
  text cell that has one (`unguard`), and gets the value back — an auditor recomputing a hash
  from the export does.
* **Numbers are not text.** The guard looks at text only: numbers the writer formats itself
  (``-1.5`` USD for a negative tariff, a value below zero) are never prefixed, so a spreadsheet
  reads them as numbers. A number that arrives as a string is text and is guarded like any
  text: callers pass numbers as numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["FORMULA_LEADS", "cell", "unguard", "write_csv"]

#: A text cell starting with one of these is a formula to a spreadsheet.
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_GUARD = "'"


def cell(value: Any) -> str:
    """One CSV cell under the policy above.

    Args:
        value: None, a bool, an int, a float, a dict/list/tuple (written as JSON) or text.

    Returns:
        The cell's text (before CSV quoting).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return repr(number) if math.isfinite(number) else ""
    if isinstance(value, dict | list | tuple):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = str(value)
    return _GUARD + text if _needs_guard(text) else text


def _needs_guard(text: str) -> bool:
    """Whether ``text`` reads as a formula (a lead, possibly after whitespace) or starts with
    the guard itself (doubled, so `unguard` is exact)."""
    return text.startswith((*FORMULA_LEADS, _GUARD)) or text.lstrip().startswith(FORMULA_LEADS)


def unguard(text: str) -> str:
    """A text cell as it was before `cell` guarded it (one leading apostrophe removed)."""
    return text[1:] if text.startswith(_GUARD) else text


def write_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """A CSV document: the header, then each row's ``columns`` in order (missing keys empty).

    Args:
        columns: Column names, in order (units in the names).
        rows: Records keyed by column; keys not in ``columns`` are left out.

    Returns:
        The CSV text, CRLF line ends.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([cell(row.get(column)) for column in columns] for row in rows)
    return out.getvalue()
