"""Charts as plain SVG, computed here and drawn by one Jinja2 macro (``_chart.html.j2``).

Why hand-made SVG rather than matplotlib: the pages need four simple chart shapes (a time
series band, horizontal bars, points on a log axis, log-log curves). Computing their geometry
is a few dozen lines of arithmetic; the SVG is inline, so a page is one request with no
JavaScript, no image files and no extra dependency (matplotlib would add ~40 MB and ~0.4 s of
import to the service). Every element is plain markup with stable classes and ``data-``
attributes (``<g class="series" data-series="…" data-points="…">``), which is what the browser
tests and a screen reader can inspect. Text goes through Jinja2's autoescaping like the rest of
the page.

A `Chart` is a list of `Group` s (a data series, the phase shading, annotations), each a list
of `Mark` s: an SVG element name, its attributes, an optional tooltip and text. Builders below
turn report figures into charts: `power_chart` (per-device min/mean/max envelope over time with
phases shaded), `bar_chart` (values with their uncertainty band), `strip_chart` (points on a
log axis: efficiency against the bounds), `curve_chart` (log-log curves with markers:
amortisation) and `stacked_bar` (the parts of a whole: the energy decomposition).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from thermoledger.db.envelope import PowerEnvelope

__all__ = [
    "PALETTE",
    "Bar",
    "Chart",
    "Curve",
    "Group",
    "Mark",
    "Marker",
    "PhaseSpan",
    "Segment",
    "StripRow",
    "Tick",
    "XYSeries",
    "bar_chart",
    "color",
    "curve_chart",
    "headroom_ticks",
    "linear_ticks",
    "log_ticks",
    "power_chart",
    "stacked_bar",
    "strip_chart",
    "xy_chart",
]

#: Series colours (Tableau 10), cycled by series position.
PALETTE: tuple[str, ...] = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
WIDTH = 960
_CHAR_W = 6.6  # px per character at the charts' 12 px font, for margins
_GAP_BUCKETS = 2  # more empty buckets than this in a row break a line (a visible gap)


def color(i: int) -> str:
    """The ``i``-th series colour."""
    return PALETTE[i % len(PALETTE)]


def _f(value: float) -> str:
    return f"{value:.1f}"


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis tick: position in px along its axis and its label."""

    pos: float
    label: str


@dataclass(frozen=True, slots=True)
class Mark:
    """One SVG element: its name, attributes, optional ``<title>`` tooltip and text content."""

    tag: str
    attrs: dict[str, str]
    title: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True)
class Group:
    """A ``<g>`` of marks: a data series (``kind="series"``), phase shading, or annotations.

    ``points`` is the number of data points a series draws (``data-points``).
    """

    kind: str
    name: str
    color: str
    marks: tuple[Mark, ...]
    points: int = 0


@dataclass(frozen=True, slots=True)
class Chart:
    """An SVG chart: size, plot area, axes and groups. ``chart_id`` becomes ``data-chart``."""

    chart_id: str
    title: str
    height: int
    plot: tuple[float, float, float, float]  # left, top, right, bottom
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    x_label: str
    y_label: str
    groups: tuple[Group, ...]
    legend: tuple[tuple[str, str, str], ...] = ()  # (name, colour, "line" | "band" | "dash")
    width: int = WIDTH
    x_grid: bool = True
    y_grid: bool = True

    @property
    def series(self) -> tuple[Group, ...]:
        """The data series."""
        return tuple(g for g in self.groups if g.kind == "series")


# --------------------------------------------------------------------------------------------
# Scales and ticks


@dataclass(frozen=True, slots=True)
class _Scale:
    d0: float
    d1: float
    r0: float
    r1: float
    log: bool = False

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(value)
        span = self.d1 - self.d0
        frac = 0.5 if span == 0 else (value - self.d0) / span
        return self.r0 + frac * (self.r1 - self.r0)

    def many(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        v = np.log10(values) if self.log else values
        span = self.d1 - self.d0
        frac = np.full_like(v, 0.5) if span == 0 else (v - self.d0) / span
        out: npt.NDArray[np.float64] = self.r0 + frac * (self.r1 - self.r0)
        return out


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    base = 10.0**exponent
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * base * (1 + 1e-9):
            return m * base
    return 10.0 * base


def linear_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering [lo, hi], about ``count`` of them."""
    if not hi > lo:
        return [lo]
    step = _nice_step((hi - lo) / max(count - 1, 1))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value = first + len(ticks) * step
    return ticks


#: Space a value axis leaves above its highest value, as a fraction of the span it shows.
HEADROOM = 0.1


def headroom_ticks(
    hi: float, *, lo: float = 0.0, count: int = 6, headroom: float = HEADROOM
) -> list[float]:
    """Round ticks from ``lo`` to the first round value at least ``headroom`` above ``hi``.

    Why: an axis that ends at the data's maximum draws a constant (or peaking) line on the
    plot's top border, where it reads as part of the frame and the chart looks empty. The top
    tick here lies at least ``headroom × (hi − lo)`` above ``hi``, so the line sits inside the
    plot. When ``hi <= lo`` (one constant value, nothing to span) the axis runs from 0 to the
    value (0 to 1 for a value of 0), never a zero-height axis that would put the line at its
    middle with no scale.
    """
    if not hi > lo:
        lo, hi = min(lo, hi, 0.0), max(lo, hi, 0.0)
        if not hi > lo:
            hi = lo + 1.0
    top = hi + headroom * (hi - lo)
    step = _nice_step((top - lo) / max(count - 1, 1))
    first = math.floor(lo / step + 1e-9) * step
    n = math.ceil((top - first) / step - 1e-9)
    return [0.0 if abs(v) < step * 1e-9 else v for v in (first + i * step for i in range(n + 1))]


def log_ticks(lo: float, hi: float, most: int = 12) -> list[float]:
    """Powers of ten covering [lo, hi] (every k-th decade when there are more than ``most``)."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    every = max(1, math.ceil((b - a + 1) / most))
    return [10.0**e for e in range(a, b + 1) if (e - a) % every == 0]


def _sci(value: float) -> str:
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    if -3 <= exponent <= 5:
        return f"{value:,.{max(0, -exponent)}f}" if exponent < 0 else f"{value:,.0f}"
    mantissa = value / 10.0**exponent
    return f"1e{exponent}" if abs(mantissa - 1) < 1e-9 else f"{mantissa:.3g}e{exponent}"


def _plain(value: float) -> str:
    """A round tick value: ``0.015``, ``20,000``, ``2.5e11``."""
    if value == 0 or 1e-4 <= abs(value) < 1e6:
        return f"{value:,.6g}"
    mantissa, exponent = f"{value:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _g4(value: float) -> str:
    return f"{value:,.4g}" if 1e-3 <= abs(value) < 1e6 or value == 0 else f"{value:.3e}"


def _time_unit(span_s: float) -> tuple[float, str]:
    for limit_s, seconds, name in (
        (300, 1.0, "s"),
        (3 * 3600, 60.0, "min"),
        (3 * 86400, 3600.0, "h"),
    ):
        if span_s < limit_s:
            return seconds, name
    return 86400.0, "d"


# --------------------------------------------------------------------------------------------
# Power over time


@dataclass(frozen=True, slots=True)
class PhaseSpan:
    """A phase to shade: name and unix start/end seconds."""

    name: str
    t0_s: float
    t1_s: float


def _segments(bucket: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """[start, stop) index ranges of runs of buckets without a long gap."""
    if bucket.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(bucket) > _GAP_BUCKETS + 1) + 1
    edges = [0, *breaks.tolist(), int(bucket.size)]
    return list(itertools.pairwise(edges))


def power_chart(
    envelope: PowerEnvelope,
    phases: Sequence[PhaseSpan],
    colors: dict[str, str],
    *,
    height: int = 380,
) -> Chart:
    """Power of every device over time: a min–max band and a mean line, phases shaded.

    Args:
        envelope: The run's bucketed power (`db.envelope`).
        phases: Phases to shade behind the data.
        colors: Device key → colour (the same as in the other charts of the page).
        height: Chart height, px.
    """
    left, top, right, bottom = 64.0, 24.0, WIDTH - 16.0, height - 44.0
    span_s = max(envelope.t1_s - envelope.t0_s, envelope.bucket_s)
    unit_s, unit = _time_unit(span_s)
    peak = max((float(d.max_power_w.max()) for d in envelope.devices if len(d)), default=0.0)
    # From 0 W, with headroom above the peak: a constant draw is a line inside the plot.
    y_ticks = headroom_ticks(max(peak, 0.0), lo=0.0, count=6)
    y_top = y_ticks[-1]
    x = _Scale(0.0, span_s, left, right)
    y = _Scale(0.0, y_top, bottom, top)
    groups: list[Group] = []
    shading: list[Mark] = []
    for i, phase in enumerate(phases):
        a = min(max(phase.t0_s - envelope.t0_s, 0.0), span_s)
        b = min(max(phase.t1_s - envelope.t0_s, 0.0), span_s)
        if b <= a:
            continue
        xa, xb = x(a), x(b)
        shading.append(
            Mark(
                "rect",
                {
                    "class": f"phase phase-{i % 2}",
                    "x": _f(xa),
                    "y": _f(top),
                    "width": _f(max(xb - xa, 1.0)),
                    "height": _f(bottom - top),
                    "data-phase": phase.name,
                },
                title=f"{phase.name}: {(b - a) / unit_s:.4g} {unit}",
            )
        )
        if xb - xa > _CHAR_W * (len(phase.name) + 1):
            shading.append(
                Mark(
                    "text",
                    {"class": "phase-label", "x": _f(xa + 4), "y": _f(top + 12)},
                    text=phase.name,
                )
            )
    groups.append(Group("phases", "phases", "", tuple(shading), points=len(phases)))
    for device in envelope.devices:
        hue = colors.get(device.key, PALETTE[0])
        start = envelope.start_s(device) - envelope.t0_s
        marks: list[Mark] = []
        for a, b in _segments(device.bucket):
            t = start[a:b] + envelope.bucket_s / 2.0
            if b - a == 1:  # a lone bucket: draw it across its own width
                t = np.array([start[a], start[a] + envelope.bucket_s])
                lo = np.repeat(device.min_power_w[a:b], 2)
                hi = np.repeat(device.max_power_w[a:b], 2)
                mean = np.repeat(device.mean_power_w[a:b], 2)
            else:
                lo, hi = device.min_power_w[a:b], device.max_power_w[a:b]
                mean = device.mean_power_w[a:b]
            xs = x.many(np.clip(t, 0.0, span_s))
            band = np.concatenate(
                [np.column_stack([xs, y.many(hi)]), np.column_stack([xs[::-1], y.many(lo[::-1])])]
            )
            marks.append(Mark("polygon", {"class": "band", "points": _points(band)}))
            marks.append(
                Mark(
                    "polyline",
                    {"class": "mean", "points": _points(np.column_stack([xs, y.many(mean)]))},
                )
            )
        groups.append(
            Group(
                "series",
                device.key,
                hue,
                tuple(marks),
                points=len(device),
            )
        )
    x_ticks = [v * unit_s for v in linear_ticks(0.0, span_s / unit_s, 8)]
    return Chart(
        chart_id="power",
        title="Power over time per device (band: min–max per time bucket; line: mean)",
        height=height,
        plot=(left, top, right, bottom),
        x_ticks=tuple(Tick(x(v), _plain(v / unit_s)) for v in x_ticks if v <= span_s),
        y_ticks=tuple(Tick(y(v), _plain(v)) for v in y_ticks),
        x_label=f"time since the first sample ({unit})",
        y_label="power (W)",
        groups=tuple(groups),
        legend=tuple((d.key, colors.get(d.key, PALETTE[0]), "band") for d in envelope.devices),
    )


def _points(xy: npt.NDArray[np.float64]) -> str:
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)


# --------------------------------------------------------------------------------------------
# Bars with an uncertainty band


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: label, value, optional band (low, high; high None = unbounded), colour."""

    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    color: str = PALETTE[0]
    note: str = ""


def bar_chart(
    chart_id: str,
    title: str,
    bars: Sequence[Bar],
    *,
    unit: str,
    scale: float = 1.0,
    fmt: Callable[[float], str] = _g4,
) -> Chart:
    """Horizontal bars, one per row, with whiskers over each value's band.

    Args:
        chart_id: ``data-chart`` of the SVG.
        title: Accessible title.
        bars: The rows; a bar without a value is drawn as "n/a".
        unit: Axis unit, after ``scale``.
        scale: Values are divided by it for display (e.g. 3.6e6 for J → kWh).
        fmt: Formats a value label.
    """
    row_h = 24.0
    label_w = min(max((len(b.label) for b in bars), default=4) * _CHAR_W + 16, 300)
    left, top = label_w, 8.0
    right = WIDTH - 110.0
    height = int(top + row_h * max(len(bars), 1) + 48)
    bottom = height - 40.0
    values = [b.value / scale for b in bars if b.value is not None]
    highs = [b.high / scale for b in bars if b.high is not None]
    hi = max([*values, *highs, 0.0])
    ticks = linear_ticks(0.0, hi if hi > 0 else 1.0, 6)
    x = _Scale(0.0, max(ticks[-1], hi, 1e-300), left, right)
    groups = []
    y_ticks = []
    for i, bar in enumerate(bars):
        yc = top + row_h * (i + 0.5)
        y_ticks.append(Tick(yc, bar.label))
        marks: list[Mark] = []
        if bar.value is None:
            marks.append(
                Mark("text", {"class": "value na", "x": _f(left + 4), "y": _f(yc + 4)}, text="n/a")
            )
        else:
            v = bar.value / scale
            tip = f"{bar.label}: {fmt(v)} {unit}"
            marks.append(
                Mark(
                    "rect",
                    {
                        "class": "bar",
                        "x": _f(left),
                        "y": _f(yc - row_h * 0.35),
                        "width": _f(max(x(v) - left, 0.5)),
                        "height": _f(row_h * 0.7),
                        "data-value": repr(v),
                    },
                    title=tip + (f" ({bar.note})" if bar.note else ""),
                )
            )
            label_x = x(v)
            if bar.low is not None:
                lo_x = x(bar.low / scale)
                hi_x = right + 6 if bar.high is None else x(bar.high / scale)
                marks.append(
                    Mark(
                        "line",
                        {
                            "class": "whisker" + (" unbounded" if bar.high is None else ""),
                            "x1": _f(lo_x),
                            "x2": _f(hi_x),
                            "y1": _f(yc),
                            "y2": _f(yc),
                        },
                        title=f"band {fmt(bar.low / scale)} … "
                        + ("unbounded" if bar.high is None else f"{fmt(bar.high / scale)} {unit}"),
                    )
                )
                label_x = max(label_x, hi_x)
            marks.append(
                Mark(
                    "text",
                    {"class": "value", "x": _f(label_x + 6), "y": _f(yc + 4)},
                    text=fmt(v),
                )
            )
        groups.append(
            Group("series", bar.label, bar.color, tuple(marks), points=int(bar.value is not None))
        )
    return Chart(
        chart_id=chart_id,
        title=title,
        height=height,
        plot=(left, top, right, bottom),
        x_ticks=tuple(Tick(x(v), _plain(v)) for v in ticks),
        y_ticks=tuple(y_ticks),
        x_label=unit,
        y_label="",
        groups=tuple(groups),
        y_grid=False,
    )


# --------------------------------------------------------------------------------------------
# Points on a log axis


@dataclass(frozen=True, slots=True)
class StripRow:
    """One row of a strip chart: a label, its values, a colour and a note beside the points."""

    label: str
    values: tuple[float, ...]
    color: str
    note: str = ""
    series: str = ""


def strip_chart(chart_id: str, title: str, rows: Sequence[StripRow], *, unit: str) -> Chart:
    """Each row's values as points on one shared log axis (orders of magnitude side by side).

    Args:
        chart_id: ``data-chart`` of the SVG.
        title: Accessible title.
        rows: The rows (each with at least one positive value).
        unit: Axis unit.
    """
    row_h = 34.0
    label_w = min(max((len(r.label) for r in rows), default=4) * _CHAR_W + 16, 300)
    left, top, right = label_w, 10.0, WIDTH - 24.0
    height = int(top + row_h * max(len(rows), 1) + 44)
    bottom = height - 34.0
    values = [v for r in rows for v in r.values if v > 0 and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (1.0, 10.0)
    d0 = math.floor(math.log10(lo)) - 0.3
    d1 = math.ceil(math.log10(hi)) + 0.3
    x = _Scale(d0, d1, left, right, log=True)
    groups = []
    y_ticks = []
    for i, row in enumerate(rows):
        yc = top + row_h * (i + 0.5)
        y_ticks.append(Tick(yc, row.label))
        marks = [
            Mark(
                "line",
                {
                    "class": "stem",
                    "x1": _f(left),
                    "x2": _f(x(v)),
                    "y1": _f(yc),
                    "y2": _f(yc),
                },
            )
            for v in row.values[:1]
            if v > 0
        ]
        for v in row.values:
            if v > 0 and math.isfinite(v):
                marks.append(
                    Mark(
                        "circle",
                        {
                            "class": "point",
                            "cx": _f(x(v)),
                            "cy": _f(yc),
                            "r": "5",
                            "data-value": repr(v),
                        },
                        title=f"{row.label}: {v:.4g} {unit}",
                    )
                )
        if row.note:
            xs = [x(v) for v in row.values if v > 0]
            anchor_x = max(xs, default=left) + 10
            end = anchor_x > right - 240
            marks.append(
                Mark(
                    "text",
                    {
                        "class": "note",
                        "x": _f(min(xs, default=left) - 10 if end else anchor_x),
                        "y": _f(yc + 4),
                        "text-anchor": "end" if end else "start",
                    },
                    text=row.note,
                )
            )
        groups.append(
            Group(
                "series", row.series or row.label, row.color, tuple(marks), points=len(row.values)
            )
        )
    ticks = log_ticks(10.0**d0, 10.0**d1)
    return Chart(
        chart_id=chart_id,
        title=title,
        height=height,
        plot=(left, top, right, bottom),
        x_ticks=tuple(Tick(x(v), _sci(v)) for v in ticks if d0 <= math.log10(v) <= d1),
        y_ticks=tuple(y_ticks),
        x_label=f"{unit} (log scale)",
        y_label="",
        groups=tuple(groups),
        y_grid=False,
    )


# --------------------------------------------------------------------------------------------
# Log-log curves


@dataclass(frozen=True, slots=True)
class Curve:
    """A curve: name, colour, y per x, and whether it is drawn dashed (a floor, a reference)."""

    name: str
    color: str
    y: tuple[float, ...]
    dashed: bool = False


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical marker at ``x`` with a label (served so far, parity, break-even)."""

    x: float
    label: str
    kind: str = "marker"


def curve_chart(
    chart_id: str,
    title: str,
    x_values: Sequence[float],
    curves: Sequence[Curve],
    *,
    x_unit: str,
    y_unit: str,
    markers: Sequence[Marker] = (),
    height: int = 340,
) -> Chart:
    """Curves on log-log axes with vertical markers.

    Args:
        chart_id: ``data-chart`` of the SVG.
        title: Accessible title.
        x_values: Shared x values (all > 0).
        curves: The curves; non-positive y values are left out.
        x_unit: X axis unit.
        y_unit: Y axis unit.
        markers: Vertical markers (outside the x range: left out).
        height: Chart height, px.
    """
    left, top, right, bottom = 84.0, 16.0, WIDTH - 20.0, height - 44.0
    xs = np.asarray(x_values, dtype=np.float64)
    ys = [v for c in curves for v in c.y if v > 0 and math.isfinite(v)]
    y_lo, y_hi = (min(ys), max(ys)) if ys else (1.0, 10.0)
    if y_hi <= y_lo:
        y_lo, y_hi = y_lo / 10, y_hi * 10
    x_lo, x_hi = float(xs.min()), float(xs.max())
    x = _Scale(math.log10(x_lo), math.log10(x_hi), left, right, log=True)
    y0 = math.floor(math.log10(y_lo) * 4) / 4
    y1 = math.ceil(math.log10(y_hi) * 4) / 4
    y = _Scale(y0, max(y1, y0 + 0.25), bottom, top, log=True)
    groups = []
    for curve in curves:
        values = np.asarray(curve.y, dtype=np.float64)
        keep = (values > 0) & np.isfinite(values)
        xy = np.column_stack([x.many(xs[keep]), y.many(values[keep])])
        groups.append(
            Group(
                "series",
                curve.name,
                curve.color,
                (
                    Mark(
                        "polyline",
                        {
                            "class": "curve" + (" dashed" if curve.dashed else ""),
                            "points": _points(xy),
                        },
                        title=curve.name,
                    ),
                ),
                points=int(keep.sum()),
            )
        )
    notes = []
    for marker in markers:
        if not x_lo <= marker.x <= x_hi:
            continue
        mx = x(marker.x)
        notes.append(
            Mark(
                "line",
                {
                    "class": f"marker {marker.kind}",
                    "x1": _f(mx),
                    "x2": _f(mx),
                    "y1": _f(top),
                    "y2": _f(bottom),
                },
                title=f"{marker.label}: {marker.x:.4g} {x_unit}",
            )
        )
        notes.append(
            Mark(
                "text",
                {
                    "class": "marker-label",
                    "x": _f(mx + 4 if mx < right - 160 else mx - 4),
                    "y": _f(top + 12 + 14 * (len(notes) // 2 % 3)),
                    "text-anchor": "start" if mx < right - 160 else "end",
                },
                text=marker.label,
            )
        )
    groups.append(Group("annotations", "markers", "", tuple(notes), points=len(notes) // 2))
    x_ticks = log_ticks(x_lo, x_hi)
    y_ticks = log_ticks(10.0**y.d0, 10.0**y.d1)
    return Chart(
        chart_id=chart_id,
        title=title,
        height=height,
        plot=(left, top, right, bottom),
        x_ticks=tuple(Tick(x(v), _sci(v)) for v in x_ticks if x_lo <= v <= x_hi),
        y_ticks=tuple(Tick(y(v), _sci(v)) for v in y_ticks if y.d0 <= math.log10(v) <= y.d1),
        x_label=f"{x_unit} (log scale)",
        y_label=f"{y_unit} (log)",
        groups=tuple(groups),
        legend=tuple((c.name, c.color, "dash" if c.dashed else "line") for c in curves),
    )


# --------------------------------------------------------------------------------------------
# Points and lines on x-y axes (metric vs energy, Pareto scatter, trend over time)


@dataclass(frozen=True, slots=True)
class XYSeries:
    """A series of (x, y) points, drawn as a line, dashed line or points.

    ``x_low``/``x_high`` shade a band along x behind a line (an energy's band at each point;
    a high of None is unbounded: the band runs to the plot's edge). ``highlight`` marks points
    drawn emphasised (a Pareto front); ``tips`` are per-point tooltips.
    """

    name: str
    color: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    style: str = "line"  # "line" | "dashed" | "points"
    x_low: tuple[float, ...] | None = None
    x_high: tuple[float | None, ...] | None = None
    highlight: tuple[bool, ...] = ()
    tips: tuple[str, ...] = ()


def _date(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d")


def _axis(
    values: Sequence[float], log: bool, r0: float, r1: float, dates: bool = False
) -> tuple[_Scale, list[Tick]]:
    """A scale over ``values`` (positive ones only on a log axis) and its labelled ticks."""
    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    lo, hi = (min(finite), max(finite)) if finite else (1.0, 10.0)
    if log:
        d0 = math.floor(math.log10(lo) * 4) / 4
        d1 = max(math.ceil(math.log10(hi) * 4) / 4, d0 + 0.25)
        scale = _Scale(d0, d1, r0, r1, log=True)
        ticks = [v for v in log_ticks(10.0**d0, 10.0**d1) if d0 <= math.log10(v) <= d1]
        if len(ticks) < 3:  # a decade or two: 1-2-5 ticks, so the axis has a scale
            ticks = [
                m * 10.0**e
                for e in range(math.floor(d0), math.ceil(d1) + 1)
                for m in (1.0, 2.0, 5.0)
                if d0 <= math.log10(m * 10.0**e) <= d1
            ]
        return scale, [Tick(scale(v), _plain(v)) for v in ticks]
    if dates:
        day_lo, day_hi = lo / 86_400.0, hi / 86_400.0
        if day_hi - day_lo < 2:
            day_lo, day_hi = day_lo - 1, day_hi + 1
        pad = 0.05 * (day_hi - day_lo)
        scale = _Scale((day_lo - pad) * 86_400.0, (day_hi + pad) * 86_400.0, r0, r1)
        days = linear_ticks(day_lo - pad, day_hi + pad, 6)
        return scale, [Tick(scale(d * 86_400.0), _date(d * 86_400.0)) for d in days]
    if hi <= lo:
        lo, hi = (lo - 1.0, hi + 1.0) if lo == 0 else (lo - abs(lo) * 0.1, hi + abs(hi) * 0.1)
    pad = 0.05 * (hi - lo)
    ticks = linear_ticks(lo - pad, hi + pad, 6)
    scale = _Scale(min(ticks[0], lo - pad), max(ticks[-1], hi + pad), r0, r1)
    return scale, [Tick(scale(v), _plain(v)) for v in ticks]


def xy_chart(
    chart_id: str,
    title: str,
    series: Sequence[XYSeries],
    *,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    log_y: bool = False,
    x_dates: bool = False,
    height: int = 340,
) -> Chart:
    """Series on shared x-y axes, each a line (with an optional band along x) or points.

    Args:
        chart_id: ``data-chart`` of the SVG.
        title: Accessible title.
        series: The series; a point that a log axis cannot show (≤ 0) is left out.
        x_label: X axis label (with its unit).
        y_label: Y axis label (with its unit).
        log_x: Log-scale x.
        log_y: Log-scale y.
        x_dates: X values are unix seconds, ticked by UTC date.
        height: Chart height, px.
    """
    left, top, right, bottom = 84.0, 16.0, WIDTH - 20.0, height - 44.0
    xs_all = [v for s in series for v in s.x]
    xs_all += [v for s in series for v in (s.x_low or ()) if v is not None]
    xs_all += [v for s in series for v in (s.x_high or ()) if v is not None]
    x, x_ticks = _axis(xs_all, log_x, left, right, dates=x_dates)
    y, y_ticks = _axis([v for s in series for v in s.y], log_y, bottom, top)
    groups = []
    for s in series:
        keep = [
            i
            for i in range(len(s.x))
            if math.isfinite(s.x[i])
            and math.isfinite(s.y[i])
            and (s.x[i] > 0 or not log_x)
            and (s.y[i] > 0 or not log_y)
        ]
        marks: list[Mark] = []
        if s.x_low is not None and s.x_high is not None and len(keep) > 1:
            lows = [(x(max(s.x_low[i], 1e-300) if log_x else s.x_low[i]), y(s.y[i])) for i in keep]
            highs = [
                (right if s.x_high[i] is None else x(s.x_high[i] or 0.0), y(s.y[i])) for i in keep
            ]
            band = np.asarray([*highs, *reversed(lows)], dtype=np.float64)
            marks.append(
                Mark(
                    "polygon",
                    {
                        "class": "band",
                        "points": _points(np.clip(band, [left, top], [right, bottom])),
                    },
                    title=f"{s.name}: the energy's band",
                )
            )
        xy = np.asarray([(x(s.x[i]), y(s.y[i])) for i in keep], dtype=np.float64).reshape(-1, 2)
        if s.style != "points" and len(keep) > 1:
            marks.append(
                Mark(
                    "polyline",
                    {
                        "class": "curve" + (" dashed" if s.style == "dashed" else ""),
                        "points": _points(xy),
                    },
                    title=s.name,
                )
            )
        if s.style == "points" or len(keep) == 1:
            for k, i in enumerate(keep):
                front = bool(s.highlight[i]) if i < len(s.highlight) else False
                marks.append(
                    Mark(
                        "circle",
                        {
                            "class": "point" + (" front" if front else ""),
                            "cx": _f(xy[k, 0]),
                            "cy": _f(xy[k, 1]),
                            "r": "6" if front else "4",
                            "data-value": repr(s.y[i]),
                        },
                        title=s.tips[i] if i < len(s.tips) else f"{s.name}: {_g4(s.y[i])}",
                    )
                )
        groups.append(Group("series", s.name, s.color, tuple(marks), points=len(keep)))
    return Chart(
        chart_id=chart_id,
        title=title,
        height=height,
        plot=(left, top, right, bottom),
        x_ticks=tuple(t for t in x_ticks if left - 0.5 <= t.pos <= right + 0.5),
        y_ticks=tuple(t for t in y_ticks if top - 0.5 <= t.pos <= bottom + 0.5),
        x_label=x_label + (" (log scale)" if log_x else ""),
        y_label=y_label + (" (log)" if log_y else ""),
        groups=tuple(groups),
        legend=tuple(
            (s.name, s.color, {"points": "band", "dashed": "dash"}.get(s.style, "line"))
            for s in series
        ),
    )


# --------------------------------------------------------------------------------------------
# One stacked bar: the parts of a whole


@dataclass(frozen=True, slots=True)
class Segment:
    """One part of a stacked bar: its label, value (> 0 to be drawn), colour and a note."""

    label: str
    value: float
    color: str
    note: str = ""


def stacked_bar(
    chart_id: str,
    title: str,
    segments: Sequence[Segment],
    *,
    total: float,
    total_label: str,
    unit: str,
    scale: float = 1.0,
    fmt: Callable[[float], str] = _g4,
) -> Chart:
    """The parts of a whole as one horizontal stacked bar, with the whole marked by a line.

    Parts that add up to more than the whole run past its line (the parts over-explain it);
    a part of no positive value is not drawn (its legend entry stays).

    Args:
        chart_id: ``data-chart`` of the SVG.
        title: Accessible title.
        segments: The parts, drawn left to right.
        total: The whole, in the values' unit before ``scale``.
        total_label: What the line marks (``"measured"``).
        unit: Axis unit, after ``scale``.
        scale: Values are divided by it for display.
        fmt: Formats a value label.
    """
    left, top, right = 16.0, 18.0, WIDTH - 24.0
    height = 110
    bottom = height - 40.0
    drawn = [s for s in segments if s.value > 0 and math.isfinite(s.value)]
    whole = total / scale
    end = max(sum(s.value for s in drawn) / scale, whole, 1e-300)
    ticks = linear_ticks(0.0, end, 6)
    x = _Scale(0.0, max(ticks[-1], end), left, right)
    groups = []
    at = 0.0
    for s in drawn:
        v = s.value / scale
        groups.append(
            Group(
                "series",
                s.label,
                s.color,
                (
                    Mark(
                        "rect",
                        {
                            "class": "bar segment",
                            "x": _f(x(at)),
                            "y": _f(top + 6),
                            "width": _f(max(x(at + v) - x(at), 0.5)),
                            "height": _f(bottom - top - 12),
                            "data-value": repr(v),
                        },
                        title=f"{s.label}: {fmt(v)} {unit}" + (f" ({s.note})" if s.note else ""),
                    ),
                ),
                points=1,
            )
        )
        at += v
    groups.append(
        Group(
            "total",
            total_label,
            "#333333",
            (
                Mark(
                    "line",
                    {
                        "class": "total",
                        "x1": _f(x(whole)),
                        "x2": _f(x(whole)),
                        "y1": _f(top),
                        "y2": _f(bottom),
                        "data-value": repr(whole),
                    },
                    title=f"{total_label}: {fmt(whole)} {unit}",
                ),
                Mark(
                    "text",
                    {"class": "note", "x": _f(x(whole)), "y": _f(top - 4), "text-anchor": "end"},
                    text=f"{total_label} {fmt(whole)}",
                ),
            ),
        )
    )
    return Chart(
        chart_id=chart_id,
        title=title,
        height=height,
        plot=(left, top, right, bottom),
        x_ticks=tuple(Tick(x(v), _plain(v)) for v in ticks),
        y_ticks=(),
        x_label=unit,
        y_label="",
        groups=tuple(groups),
        legend=tuple((s.label, s.color, "band") for s in segments),
        y_grid=False,
    )
