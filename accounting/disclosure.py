"""Pure arithmetic and wording for the disclosure exports (`db.disclosure` reads the ledger).

Nothing here touches a database: significant-figure formatting (the EU AI Act's GPAI Model
Documentation Form asks for training energy in MWh to at least two significant figures), the
wall-clock union of run intervals, the boundary a set of figures was measured at, the
methodology sentence generated from the ledger's measurement records, and the Markdown face
of an export. Units are in every name: ``_j``, ``_mwh``, ``_days``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from .carbon import J_PER_KWH

__all__ = [
    "J_PER_MWH",
    "Boundary",
    "boundary_of",
    "markdown",
    "methodology_text",
    "sig_figs",
    "union_days",
]

#: Joules in one megawatt-hour.
J_PER_MWH = J_PER_KWH * 1000.0
_S_PER_DAY = 86_400.0

Boundary = Literal["accelerators", "node", "facility"]


def sig_figs(value: float, figures: int = 3) -> str:
    """``value`` as text with ``figures`` significant figures (at least 2), trailing zeros kept.

    ``sig_figs(0.0002, 3)`` is ``"0.000200"``; ``sig_figs(12345.0, 3)`` is ``"12300"``.

    Raises:
        ValueError: Fewer than 2 figures, or a non-finite value.
    """
    if figures < 2:
        raise ValueError("at least 2 significant figures")
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not finite")
    if value == 0:
        return "0." + "0" * (figures - 1)
    exponent = math.floor(math.log10(abs(value)))
    decimals = figures - 1 - exponent
    rounded = round(value, decimals)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > exponent:  # 9.99 → 10.0
        decimals -= 1
    return f"{value:.{max(decimals, 0)}f}" if decimals > 0 else f"{round(value, decimals):.0f}"


def union_days(intervals: Iterable[tuple[datetime, datetime]]) -> float:
    """Days covered by the union of ``[start, end]`` intervals (overlaps counted once)."""
    total_s = 0.0
    current: tuple[datetime, datetime] | None = None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                total_s += (current[1] - current[0]).total_seconds()
            current = (start, end)
        elif end > current[1]:
            current = (current[0], end)
    if current is not None:
        total_s += (current[1] - current[0]).total_seconds()
    return total_s / _S_PER_DAY


def boundary_of(device_kinds: Iterable[str], pue_kinds: Sequence[str | None]) -> Boundary:
    """The measurement boundary a set of runs shares.

    ``facility`` when every run's facility figure applied a PUE other than the IT-only
    definition (1.0); else ``node`` when any device measured is not an accelerator (CPU
    package, DRAM, a node-level sensor); else ``accelerators``.
    """
    if pue_kinds and all(k is not None and k != "definition" for k in pue_kinds):
        return "facility"
    if any(kind != "gpu" for kind in device_kinds):
        return "node"
    return "accelerators"


def methodology_text(
    *,
    subject: str,
    runs: int,
    runs_with_energy: int,
    methods: Mapping[str, Mapping[str, float]],
    boundary: Boundary,
    pue_values: Sequence[float],
    band_low_j: float | None,
    band_high_j: float | None,
    estimated_runs: int,
    simulated_runs: int,
) -> str:
    """The measurement methodology, in sentences generated from the ledger's records.

    Args:
        subject: What is disclosed (``"training of model llama-x"``).
        runs: Runs selected.
        runs_with_energy: Of those, runs with a current ``it_energy`` entry.
        methods: Per energy method (``counter``, ``power_avg``, ``estimate`` …): ``devices``
            and ``energy_j`` summed over the runs.
        boundary: `boundary_of`'s answer.
        pue_values: The PUE each run's facility figure applied.
        band_low_j, band_high_j: The summed uncertainty band of the IT energy, J (None: open).
        estimated_runs: Runs whose energy is an estimate, not a measurement.
        simulated_runs: Runs metered on simulated devices.
    """
    parts = [f"Energy of the {subject}, from the thermoledger ledger (append-only, hash-chained)."]
    if methods:
        described = ", ".join(
            f"{name} ({int(m['devices'])} device(s), {m['energy_j'] / J_PER_KWH:.6g} kWh)"
            for name, m in sorted(methods.items())
        )
        parts.append(f"Methods: {described}.")
    parts.append(
        f"Coverage: {runs_with_energy} of {runs} run(s) have a ledgered energy figure"
        + ("." if runs_with_energy == runs else "; the others are not included.")
    )
    if estimated_runs:
        parts.append(
            f"{estimated_runs} run(s) are estimates (device time × mean power × PUE), not "
            "measurements."
        )
    if simulated_runs:
        parts.append(f"{simulated_runs} run(s) were metered on simulated devices.")
    described_boundary = {
        "accelerators": "accelerators only (GPU energy as the devices report it)",
        "node": "node (accelerators plus CPU/DRAM or node-level sensors)",
        "facility": "facility: IT energy × PUE",
    }[boundary]
    if boundary == "facility" and pue_values:
        low, high = min(pue_values), max(pue_values)
        described_boundary += f" ({low:g})" if low == high else f" ({low:g}–{high:g})"
    parts.append(f"Boundary: {described_boundary}.")
    if band_low_j is not None:
        upper = "unbounded" if band_high_j is None else f"{band_high_j / J_PER_KWH:.6g} kWh"
        parts.append(
            f"Uncertainty band of the IT energy: {band_low_j / J_PER_KWH:.6g} kWh to {upper} "
            "(sensor error root-sum-square; gap, reset and coverage bounds linear)."
        )
    return " ".join(parts)


def _cell(value: Any) -> str:
    if value is None:
        return "N/A"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(title: str, sections: Sequence[tuple[str, Sequence[tuple[str, Any]]]]) -> str:
    """A Markdown document: a heading, then per section a two-column table of fields."""
    lines = [f"# {title}", ""]
    for heading, rows in sections:
        lines += [f"## {heading}", "", "| Field | Value |", "| --- | --- |"]
        lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in rows]
        lines.append("")
    return "\n".join(lines)
