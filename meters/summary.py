"""The end-of-run summary of ``thermoledger run`` / ``sidecar``, and the live status line.

`render_summary` is the table on stderr: per device the energy (J and kWh), mean and peak power,
duration, integration method and band, then the totals; with a grid intensity and/or a tariff
configured, `render_footprint` adds the location-based CO2e and the cost, with the PUE applied
and stated and the band carried through (low energy → low figure). Plain arithmetic, the
accounting core's model without pint: ``facility kWh = J / 3.6e6 × PUE``; CO2e g = facility kWh
× g/kWh; USD = facility kWh × USD/kWh. `write_summary` prints it (or, with JSON logs, one
``summary`` record carrying it); `StatusLine` is the one line refreshed on a terminal while the
job runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

from thermoledger.accounting.integrate import aggregate_energy, covered_by, kind_order

from .api import Meter, RunSummary
from .chunker import DeviceSummary
from .logs import JsonFormatter
from .quality import RunQuality
from .sampler import MeterSummary
from .settings import FootprintSettings
from .uploader import PushResult, push_later

if TYPE_CHECKING:
    from .pods import RunTotal

__all__ = [
    "StatusLine",
    "emit_summary",
    "format_energy",
    "render_attribution",
    "render_footprint",
    "render_quality",
    "render_run_summary",
    "render_summary",
    "write_summary",
]

_J_PER_KWH: Final = 3.6e6
_J_PER_WH: Final = 3.6e3
_KIND_NAMES: Final = {"gpu": "GPU", "cpu": "CPU", "dram": "DRAM", "other": "other"}


def format_energy(energy_j: float) -> str:
    """Joules for people: ``812 J``, ``3.21 kJ``, ``4.5 MJ`` (and kWh beside the large ones)."""
    if energy_j != energy_j:  # NaN
        return "n/a"
    for scale, unit in ((1e9, "GJ"), (1e6, "MJ"), (1e3, "kJ")):
        if abs(energy_j) >= scale:
            return f"{energy_j / scale:.3g} {unit}"
    return f"{energy_j:.3g} J"


def _duration(seconds: float) -> str:
    total = max(int(seconds), 0)
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _number(value: float, spec: str) -> str:
    return "n/a" if value != value else format(value, spec)


def _significant(value: float, digits: int = 3) -> str:
    """``0.012345`` → ``0.0123``; ``5.678`` → ``5.68``; ``1234.5`` → ``1235`` (no exponent)."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
    return f"{value:.{decimals}f}"


def _format_wh(energy_j: float) -> str:
    """Joules as Wh, kWh or MWh with three significant figures."""
    energy_wh = energy_j / _J_PER_WH
    for scale, unit in ((1e6, "MWh"), (1e3, "kWh")):
        if abs(energy_wh) >= scale:
            return f"{_significant(energy_wh / scale)} {unit}"
    return f"{_significant(energy_wh)} Wh"


def render_footprint(
    energy_j: float,
    energy_low_j: float,
    energy_high_j: float,
    footprint: FootprintSettings,
) -> list[str]:
    """The cost and CO2e lines of the summary; empty when neither is configured.

    Args:
        energy_j: Metered (IT) energy, J.
        energy_low_j: Lower end of its band, J.
        energy_high_j: Upper end of its band, J.
        footprint: Grid intensity (gCO2e/kWh), PUE and tariff (USD/kWh) as configured.

    Returns:
        Lines (indented, no newline): ``cost`` when a tariff is set, ``CO2e`` when a grid
        intensity is set, each with its inputs and its band.
    """
    facility_kwh = [e / _J_PER_KWH * footprint.pue for e in (energy_j, energy_low_j, energy_high_j)]
    pue = f"PUE {footprint.pue:.2f}" + (", IT energy only" if footprint.pue == 1.0 else "")
    energy = _format_wh(energy_j)
    lines = []
    # (label, rate per kWh, unit, what the figure is, a note on the rate), in the printed order
    rates = (
        ("cost", footprint.tariff_usd_per_kwh, "USD", "", ""),
        (
            "CO2e",
            footprint.grid_intensity_g_per_kwh,
            "g",
            " location-based",
            "; region as configured",
        ),
    )
    for label, rate, unit, what, note in rates:
        if rate is None:
            continue
        value, low, high = (kwh * rate for kwh in facility_kwh)
        lines.append(
            f"  {label:<6} {_significant(value)} {unit}{what} ({energy} × {pue} at {rate:g} "
            f"{unit}/kWh{note}); band [{_significant(low)}, {_significant(high)}] {unit}"
        )
    return lines


def render_summary(
    summary: MeterSummary,
    *,
    title: str,
    backend_label: str,
    simulated: bool,
    upload: PushResult | None,
    spool_dir: str,
    footprint: FootprintSettings | None = None,
    verbose: bool = False,
    refused: Sequence[str] = (),
    uploading_to: str | None = None,
    server: str | None = None,
) -> str:
    """The end-of-run table: per device J, kWh, mean/peak W, duration, method and band; totals.

    With ``footprint`` configured (a grid intensity and/or a tariff), the cost and CO2e lines of
    `render_footprint` follow the table; unconfigured, nothing about them is printed, but for
    one hint line when ``verbose``. ``refused`` declarations (`meters.api.RunSummary`) are
    listed: the figures they would have given are missing. ``uploading_to`` (a server) with no
    ``upload`` says the run is still being uploaded as it goes (a summary taken mid-run). A
    refused token says how to push the run later, to ``server``.
    """
    lines = [title]
    lines.append(f"  devices read by: {backend_label}")
    if simulated:
        lines.append("  SIMULATED devices: these figures are not measurements.")
    header = (
        f"  {'device':<28} {'energy J':>12} {'kWh':>10} {'mean W':>8} {'peak W':>8} "
        f"{'duration s':>10}  {'method':<13} band J"
    )
    lines.append(header)
    for d in summary.devices:
        band = f"[{d.energy_low_j:.4g}, {d.energy_high_j:.4g}]"
        lines.append(
            f"  {d.key[-28:]:<28} {d.energy_j:>12.2f} {d.energy_j / _J_PER_KWH:>10.6f} "
            f"{_number(d.mean_power_w, '>8.1f')} {_number(d.peak_power_w, '>8.1f')} "
            f"{d.duration_s:>10.2f}  {d.method:<13} {band}"
        )
        if d.missed:
            missed = ", ".join(f"{k} {v}" for k, v in sorted(d.missed.items()))
            lines.append(f"  {'':<28} missed readings: {missed}")
    if not summary.devices:
        lines.append("  (no device was metered by this process: nothing measurable, no energy)")
    else:
        duration = max((d.duration_s for d in summary.devices), default=0.0)
        split = _kind_lines(summary.devices, duration)
        lines.extend(split)
        mean_w = summary.energy_j / duration if duration > 0 else float("nan")
        band = f"[{summary.energy_low_j:.4g}, {summary.energy_high_j:.4g}]"
        # No total peak: the devices' peaks need not coincide, and their sum would mislead.
        label = "node total" if split else "total"
        lines.append(
            f"  {label:<28} {summary.energy_j:>12.2f} {summary.energy_j / _J_PER_KWH:>10.6f} "
            f"{_number(mean_w, '>8.1f')} {'':>8} {duration:>10.2f}  {'':<13} {band}"
        )
        if footprint is not None and footprint.configured:
            lines.extend(
                render_footprint(
                    summary.energy_j, summary.energy_low_j, summary.energy_high_j, footprint
                )
            )
        elif verbose:
            lines.append(
                "  cost and CO2e: not configured (--tariff / THERMOLEDGER_TARIFF_USD_PER_KWH, "
                "--grid-intensity / THERMOLEDGER_GRID_INTENSITY_G_PER_KWH, --pue)"
            )
    if summary.quality is not None and summary.devices:
        lines.extend(render_quality(summary.quality))
    if summary.overruns or summary.read_errors or summary.spool_errors or summary.unspooled:
        lines.append(
            f"  meter: {summary.overruns} overruns, {summary.read_errors} failed reads, "
            f"{summary.spool_errors} spool errors, {summary.unspooled} chunks not spooled"
        )
    for line in refused:
        lines.append(f"  REFUSED declaration: {line}")
    if upload is None and uploading_to is not None:
        lines.append(f"  uploading to {uploading_to} as the run goes")
    elif upload is None:
        lines.append(
            f"  offline: the run is in the spool {spool_dir}; `thermoledger push` sends it"
        )
    elif upload.complete:
        lines.append(
            f"  uploaded: {upload.stored} chunks stored, {upload.duplicates} duplicates, "
            f"{upload.messages_sent} run/phase/work messages"
        )
    elif upload.token_refused:
        lines.append(
            f"  NOT uploaded ({upload.error}): {upload.remaining + upload.refused} chunks and "
            f"{upload.messages_pending} messages kept in {spool_dir}; push them later with "
            f"`{push_later(server, spool_dir)}`"
        )
    else:
        why = upload.error or "; ".join(upload.blocked) or "refused by the service"
        lines.append(
            f"  NOT fully uploaded ({why}): {upload.remaining + upload.refused} chunks and "
            f"{upload.messages_pending} messages wait in {spool_dir}; `thermoledger push` later"
        )
    return "\n".join(lines) + "\n"


def render_run_summary(summary: RunSummary) -> str:
    """The table of `render_summary` for a meter's own summary (``print(m.summary())``).

    A meter that samples nothing here (another process meters the node) says so instead of
    printing 0 J; its refused declarations are listed all the same.
    """
    if summary.ended:
        verb = "finished" if summary.exit_code in (0, None) else "failed"
        code = "" if summary.exit_code is None else f" (exit {summary.exit_code})"
        title = f"thermoledger: run {summary.run_id} {summary.name!r} {verb}{code}"
    else:
        title = f"thermoledger: run {summary.run_id} {summary.name!r} so far"
    return render_summary(
        summary,
        title=title,
        backend_label=summary.backend_label,
        simulated=summary.simulated,
        upload=summary.upload,
        spool_dir=summary.spool_dir or "?",
        refused=summary.refused_declarations,
        uploading_to=None if summary.ended else summary.server,
        server=summary.server,
    )


_GRADE_WORDS: Final = {
    "A": "exact: every device by its energy counter, both edges read",
    "B": "good: within a few tenths of a percent, the band says how much",
    "C": "rough: the band is wide and parts are estimates",
    "D": "not a measurement",
}


def render_quality(quality: RunQuality) -> list[str]:
    """The grade line, what limits it, and what would improve it (`meters.quality`)."""
    lines = [f"  measurement quality: {quality.grade} ({_GRADE_WORDS[quality.grade]})"]
    lines.extend(f"    limited by: {limit}" for limit in quality.limits)
    lines.extend(f"    to improve: {step}" for step in quality.improve)
    return lines


def _kind_lines(devices: Sequence[DeviceSummary], duration_s: float) -> list[str]:
    """Per-kind subtotals (GPU, CPU, DRAM) with their bands, when a node has several kinds.

    A kind another device covers (the CPU inside a GH200-class module's figure) is shown with
    its own figure and marked: the node total leaves it out, as it leaves out its devices
    (`meters.chunker.counted_devices`). Empty for a single kind with nothing covered.
    """
    flags = covered_by(
        ["node"] * len(devices), [d.kind for d in devices], [d.covers for d in devices]
    )
    kinds = sorted({d.kind for d in devices}, key=kind_order)
    if len(kinds) < 2 and all(by is None for by in flags):
        return []
    lines = []
    for kind in kinds:
        members = [(d, by) for d, by in zip(devices, flags, strict=True) if d.kind == kind]
        totals = aggregate_energy(
            [d.energy_j for d, _ in members],
            [d.sensor_uncertainty_j for d, _ in members],
            [d.bound_below_j for d, _ in members],
            [d.bound_above_j for d, _ in members],
            device=[d.key for d, _ in members],
        )
        energy_j = float(totals.energy_j[0])
        band = f"[{float(totals.energy_low_j[0]):.4g}, {float(totals.energy_high_j[0]):.4g}]"
        mean_w = energy_j / duration_s if duration_s > 0 else float("nan")
        covering = {devices[by].kind for _, by in members if by is not None}
        note = (
            f"  (inside the {'/'.join(sorted(k.upper() for k in covering))} figure: not added)"
            if covering
            else ""
        )
        label = f"{_KIND_NAMES.get(kind, kind)} ({len(members)})"
        lines.append(
            f"  {label:<28} {energy_j:>12.2f} {energy_j / _J_PER_KWH:>10.6f} "
            f"{_number(mean_w, '>8.1f')} {'':>8} {duration_s:>10.2f}  {'':<13} {band}{note}"
        )
    return lines


class StatusLine:
    """The live one-line status on a terminal (stderr), refreshed about once a second.

    Drawn only when ``wanted`` (not quiet, text logs), the meter samples and ``stream`` is a
    terminal; a failure to draw turns it off for good.
    """

    def __init__(self, stream: TextIO, meter: Meter, *, wanted: bool) -> None:
        self._stream = stream
        self._meter = meter
        self.enabled = wanted and meter.sampling and _isatty(stream)
        self._start_s = time.monotonic()
        self._last: tuple[float, float] | None = None
        self._shown = False

    def refresh(self) -> None:
        if not self.enabled:
            return
        try:
            self._draw()
        except Exception:
            self.enabled = False  # a status line is not worth disturbing the wrapper for

    def _draw(self) -> None:
        now_s = time.monotonic()
        summary = self._meter.summary()
        energy_j = summary.energy_j
        power = ""
        if self._last is not None and now_s > self._last[0]:
            power = f"{(energy_j - self._last[1]) / (now_s - self._last[0]):7.1f} W | "
        self._last = (now_s, energy_j)
        devices = len(summary.devices)
        label = " | SIMULATED" if self._meter.simulated else ""
        text = (
            f"[thermoledger] {devices} device(s) | {power}{format_energy(energy_j)} | "
            f"{_duration(now_s - self._start_s)}{label}"
        )
        self._write("\r\x1b[K" + text)

    def clear(self) -> None:
        if self._shown:
            self._write("\r\x1b[K")

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
            self._shown = True
        except (OSError, ValueError):
            self.enabled = False  # the terminal went away (SIGHUP): stop drawing


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _title(meter: Meter, verb: str, code: int | None) -> str:
    ended = "" if code is None else (" (exit 0)" if code == 0 else f" (exit {code})")
    return f"thermoledger: run {meter.run_id} {meter.name!r} {verb}{ended}"


def write_summary(
    err: TextIO,
    log: logging.Logger,
    meter: Meter,
    summary: MeterSummary,
    verb: str,
    code: int | None,
    footprint: FootprintSettings,
    verbose: bool,
) -> None:
    """Print the summary table; a failure to format it must not change the exit code.

    With JSON logs the table is one log record (whatever the log level), with the totals as
    fields, so that stderr stays one JSON object per line.
    """
    try:
        table = render_summary(
            summary,
            title=_title(meter, verb, code),
            backend_label=meter.backend_label,
            simulated=meter.simulated,
            upload=meter.upload,
            spool_dir=str(meter.settings.spool_dir if meter.settings else "?"),
            footprint=footprint,
            verbose=verbose,
            refused=summary.refused_declarations if isinstance(summary, RunSummary) else (),
            server=meter.settings.server if meter.settings else None,
        )
        emit_summary(
            err,
            log,
            table,
            {
                "exit_code": code,
                # None, not NaN or 0: with no device nothing was measured
                "energy_j": _figure(summary.energy_j),
                "energy_low_j": _figure(summary.energy_low_j),
                "energy_high_j": _figure(summary.energy_high_j),
                "devices": len(summary.devices),
                "simulated": meter.simulated,
                "quality": None if summary.quality is None else summary.quality.to_dict(),
                "refused_declarations": list(
                    summary.refused_declarations if isinstance(summary, RunSummary) else ()
                ),
            },
        )
    except Exception as e:
        log.error("could not print the summary (%s: %s)", type(e).__name__, e)


def _figure(value: float) -> float | None:
    return value if math.isfinite(value) else None


def emit_summary(err: TextIO, log: logging.Logger, table: str, facts: dict[str, Any]) -> None:
    """The summary table on stderr, or, with JSON logs, one ``summary`` record carrying it and
    ``facts`` (written past the level check: the summary is always written)."""
    if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        err.write(table)
        return
    record = log.makeRecord(
        log.name,
        logging.INFO,
        __file__,
        0,
        table.rstrip("\n"),
        (),
        None,
        extra={"event": "summary", **facts},
    )
    log.handle(record)


def render_attribution(totals: Mapping[str, RunTotal], *, title: str, spool_dir: str) -> str:
    """The end-of-process table: per run, GPUs and energy; then the node's total.

    Args:
        totals: `PodAttribution.totals` after `PodAttribution.stop`.
        title: The first line.
        spool_dir: Where the runs wait when not uploaded.
    """
    lines = [title, f"  {'run':<48} {'GPUs':>4} {'energy J':>12} {'kWh':>10}  run id"]
    ordered = sorted(totals.values(), key=lambda t: (t.name.endswith("(unallocated GPUs)"), t.name))
    for t in ordered:
        lines.append(
            f"  {t.name[-48:]:<48} {len(t.gpus):>4} {t.energy_j:>12.2f} "
            f"{t.energy_j / 3.6e6:>10.6f}  {t.run_id}"
        )
    energy_j = math.fsum(t.energy_j for t in totals.values())
    lines.append(f"  {'node total':<48} {'':>4} {energy_j:>12.2f} {energy_j / 3.6e6:>10.6f}")
    if not totals:
        lines.append("  (nothing was metered)")
    lines.append(f"  spool: {spool_dir}")
    return "\n".join(lines) + "\n"
