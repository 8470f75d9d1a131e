"""Jinja2 rendering for the pages: one environment, number formats a reader can trust.

Autoescaping is on for every template (names, tags and notes come from clients), undefined
variables raise instead of rendering as empty, and the number filters never round a value to a
misleading zero: a figure too small for its format switches to scientific notation, and a
missing figure reads "n/a" rather than 0. Energy has one format (`energy`): J, Wh, kWh, MWh or
GWh, whichever the value reads best in.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from thermoledger.accounting.carbon import J_PER_KWH

from .headers import PAGE_CSP

__all__ = ["ENERGY_UNITS", "TEMPLATES_DIR", "energy", "energy_unit", "environment", "render"]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
_NA = "n/a"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _exp(value: float, digits: int) -> str:
    """Scientific notation without the ``+`` and leading zeros: ``1.09e12``, ``4.59e-20``."""
    mantissa, exponent = f"{value:.{max(digits - 1, 0)}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def num(value: float | None, digits: int = 4) -> str:
    """``digits`` significant figures, thousands separated; scientific beyond 1e9 or below 1e-3."""
    if _missing(value):
        return _NA
    assert value is not None
    magnitude = abs(value)
    if magnitude != 0 and (magnitude >= 1e9 or magnitude < 1e-3):
        return _exp(value, digits)
    decimals = max(digits - 1 - math.floor(math.log10(magnitude)), 0) if magnitude else 0
    return f"{value:,.{decimals}f}"


def sci(value: float | None, digits: int = 3) -> str:
    """Scientific notation with ``digits`` significant figures."""
    if _missing(value):
        return _NA
    assert value is not None
    return _exp(value, digits)


#: Energy units a page prints, largest first: (joules per unit, unit).
ENERGY_UNITS: tuple[tuple[float, str], ...] = (
    (3.6e12, "GWh"),
    (3.6e9, "MWh"),
    (J_PER_KWH, "kWh"),
    (3.6e3, "Wh"),
    (1.0, "J"),
)


def energy_unit(value_j: float | None) -> tuple[str, float]:
    """The unit to print ``value_j`` in, and its size in joules.

    J below 1 Wh, Wh below 1 kWh, kWh below 1 MWh, then MWh and GWh: the figure reads with
    one to four digits before the point, never as ``1.663e-4 kWh``. The choice is made on the
    value rounded to the four significant figures `energy` prints, so 999.96 Wh reads
    ``1.000 kWh``, not ``1,000 Wh``. A missing value gets joules.
    """
    if _missing(value_j):
        return "J", 1.0
    assert value_j is not None
    magnitude = float(f"{abs(value_j):.4g}")
    for j_per_unit, unit in ENERGY_UNITS:
        if magnitude >= j_per_unit:
            return unit, j_per_unit
    return "J", 1.0


def energy(value_j: float | None, like_j: float | None = None) -> str:
    """Joules in J, Wh, kWh, MWh or GWh by size (`energy_unit`), four significant figures.

    The one energy format of the pages. ``like_j`` picks the unit from another value instead:
    a band's ends print in the unit of its central value (``0.9800 kWh … 1.020 kWh``).
    """
    if _missing(value_j):
        return _NA
    assert value_j is not None
    unit, j_per_unit = energy_unit(value_j if _missing(like_j) else like_j)
    # Rounded first, so that 0.99997 kWh reads 1.000 kWh (num counts digits before rounding).
    return f"{num(float(f'{value_j / j_per_unit:.4g}'), 4)} {unit}"


def co2e(value_g: float | None) -> str:
    """Grams CO2e as g, kg or t."""
    if _missing(value_g):
        return _NA
    assert value_g is not None
    if abs(value_g) >= 1e6:
        return f"{num(value_g / 1e6, 4)} tCO2e"
    if abs(value_g) >= 1e3:
        return f"{num(value_g / 1e3, 4)} kgCO2e"
    return f"{num(value_g, 4)} gCO2e"


def usd(value: float | None) -> str:
    """US dollars: cents for ordinary amounts, significant figures for tiny per-token prices."""
    if _missing(value):
        return _NA
    assert value is not None
    if value != 0 and abs(value) < 0.01:
        return f"{sci(value, 3)} USD"
    return f"{value:,.2f} USD"


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage."""
    if _missing(value):
        return _NA
    assert value is not None
    return f"{value * 100:.{digits}f} %"


def duration(value_s: float | None) -> str:
    """Seconds as ``45 s``, ``12.5 min``, ``3.2 h`` or ``2.1 d``."""
    if _missing(value_s):
        return _NA
    assert value_s is not None
    for limit, factor, unit in ((120, 1, "s"), (7200, 60, "min"), (172800, 3600, "h")):
        if abs(value_s) < limit:
            return f"{num(value_s / factor, 3)} {unit}"
    return f"{num(value_s / 86400, 3)} d"


def utc(value: datetime | float | str | None) -> str:
    """A time (aware datetime, ISO text or unix seconds) as ``2026-05-01 12:00:05 UTC``."""
    if value is None:
        return _NA
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    when = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def segment(value: str) -> str:
    """``value`` quoted as one URL path segment (a ``/`` inside it is escaped too)."""
    return quote(value, safe="")


@functools.cache
def environment() -> jinja2.Environment:
    """The pages' Jinja2 environment (built once)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=num, sci=sci, energy=energy, co2e=co2e, usd=usd, pct=pct, duration=duration
    )
    env.filters["utc"] = utc
    env.filters["segment"] = segment
    return env


def render(
    request: Request, template: str, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """Render ``template`` with ``context`` as HTML.

    Every template also gets ``request``, ``project`` (the signed-in project's slug, or None),
    ``nav`` (the active navigation entry), ``root`` (the app's root path, for links) and
    ``csrf`` (the value the page's forms post back: the browser session's CSRF secret, which
    `service.pages.auth` leaves on ``request.state``; None for a bearer-header request, whose
    pages show no sign-out form). The response carries the pages' own Content-Security-Policy
    (`service.pages.headers.PAGE_CSP`).
    """
    context.setdefault("project", None)
    context.setdefault("nav", "")
    context.setdefault("root", str(request.scope.get("root_path", "")).rstrip("/"))
    context.setdefault("csrf", getattr(request.state, "csrf", None))
    html = environment().get_template(template).render(request=request, **context)
    return HTMLResponse(
        html, status_code=status_code, headers={"Content-Security-Policy": PAGE_CSP}
    )
