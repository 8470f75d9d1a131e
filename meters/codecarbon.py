"""``thermoledger import codecarbon FILE --project SLUG``: CodeCarbon's ``emissions.csv`` as
estimated runs, so that a team can bring its history.

The file
    One row per run, written by CodeCarbon's ``EmissionsTracker`` at ``stop()`` (and at each
    ``flush()``, which appends the run's cumulative totals again: the same run id on several
    rows). The last row of a run is its total, and is the one imported. Columns differ across
    versions; the importer needs ``timestamp``, ``project_name``, ``duration`` (s),
    ``emissions`` (kgCO2e), ``energy_consumed`` (kWh) and a run id: ``run_id`` (CodeCarbon ≥ 2.0)
    or, in 1.x files, ``experiment_id`` (a fresh id per output there). Everything else is used
    where present: ``cpu_energy``, ``gpu_energy``, ``ram_energy`` (kWh), ``pue`` (≥ 2.3),
    ``tracking_mode``, ``codecarbon_version`` (≥ 2.2), the country, region and cloud columns,
    the CPU and GPU models. ``timestamp`` is local time without a zone (CodeCarbon writes
    ``datetime.now()``); it is read in ``--timezone`` (default UTC) and is the run's end; its
    start is ``duration`` earlier.

What is recorded (one ``POST /api/v1/runs/{id}/estimate`` per run, method ``estimate``)
    * IT energy = ``energy_consumed`` / ``pue``: CodeCarbon multiplies every energy it adds up
      by its PUE (``energy *= pue`` since 2.2.3), so ``energy_consumed`` is facility energy;
      the estimate states the PUE again and the ledger's facility energy is ``energy_consumed``
      once more. A file without a ``pue`` column (before 2.3) states none: the project's applies,
      as for a metered run.
    * Location-based intensity = ``emissions`` / ``energy_consumed`` (kg/kWh × 1000 = g/kWh):
      the grid figure CodeCarbon applied (its own data for the country or region, or the
      electricity-maps figure it fetched). With the PUE stated, the ledger's location-based CO2e
      is CodeCarbon's ``emissions``. No market-based figure is derived from it.
    * Provenance: source ``CodeCarbon <version>``, document = the file's name, page = the line
      and run id, note = the split, tracking mode, place, hardware and the band's assumptions.
      Tags ``source=codecarbon``, ``codecarbon.project`` and ``codecarbon.run_id``.

The band (a stated assumption per part, not a bound; the parts' ranges add, worst case)
    * GPU energy ±5 %: CodeCarbon reads NVML (the energy counter, else power × time); ±5 % is
      NVIDIA's stated accuracy of an NVML power reading, the figure thermoledger's own NVML
      backend uses.
    * CPU energy ±50 %: the file does not say whether it was read from RAPL or modelled from a
      TDP (CodeCarbon's fallback: TDP × 50 %, or 85 W × 50 % for a CPU its table lacks, or TDP ×
      load in 3.x), and RAPL is root-only on most distributions since CVE-2020-8694, so the
      width of a TDP model applies (thermoledger's own CPU estimate's, ±50 %).
      ``--cpu-measured`` says the CPU figures were read (RAPL or powermetrics): ±10 % then, an
      allowance for RAPL being a model on CPUs before Haswell.
    * RAM energy ±50 %: always a model in CodeCarbon (3 W per 8 GB in 2.x, about 5 W per DIMM
      in 3.x), never read.
    * ``tracking_mode`` ``process``: CPU and RAM are the process's share of the machine's
      (by its CPU and memory use), an attribution model: ±50 % whatever was read.
    * No split (1.x files, or empty parts): ±50 % on the whole.

Identity and repeats
    The run id is ``uuid5`` of the thermoledger project, CodeCarbon's ``project_name`` and its
    run id, so importing the same file again posts the same estimates to the same runs: the
    service appends nothing ("already there"). A run whose figures changed since (a file
    flushed again while its job ran) is a conflict unless ``--replace`` (the ledger supersedes
    the old entries, never edits them). ``--project`` is sent with every estimate and the
    service refuses it when the token belongs to another project.

Refusals
    A file that cannot be read as CodeCarbon's (not UTF-8 text, broken CSV, a missing column, a
    number that is not one, a row with the wrong number of fields) is refused whole, before
    anything is sent: exit 2, with the line and the column. A run whose energy is missing or zero
    is refused with its reason (nothing is stored for it: a zero would be a made-up figure), as
    is one the service refuses; the others are imported. The summary lists each refusal with
    its line; exit 1 when any run was refused or conflicted, 0 otherwise.

This module is imported only when ``thermoledger import codecarbon`` runs; it needs the
standard library and httpx, as ``thermoledger push`` does.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final, TextIO

import httpx

__all__ = [
    "ESSENTIAL",
    "ImportResult",
    "MalformedFile",
    "Row",
    "band_rel",
    "estimate_body",
    "import_codecarbon",
    "read_emissions_csv",
    "run_uuid",
    "timezone",
]

#: The columns every CodeCarbon version writes, and the importer needs.
ESSENTIAL: Final = ("timestamp", "project_name", "duration", "emissions", "energy_consumed")
#: The run id's column: ``run_id`` from 2.0, ``experiment_id`` in 1.x (one id per output there).
ID_COLUMNS: Final = ("run_id", "experiment_id")
_NUMBERS: Final[tuple[str, ...]] = (
    "duration", "emissions", "energy_consumed", "cpu_energy", "gpu_energy", "ram_energy", "pue",
)  # fmt: skip
_TEXT: Final[tuple[str, ...]] = (
    "tracking_mode", "codecarbon_version", "country_name", "country_iso_code", "region",
    "cloud_provider", "cloud_region", "cpu_model", "gpu_model",
)  # fmt: skip

#: Relative half-widths of the band's parts (see the module docstring for their grounds).
GPU_REL: Final = 0.05
CPU_MODEL_REL: Final = 0.5
CPU_READ_REL: Final = 0.10
RAM_REL: Final = 0.5
WHOLE_REL: Final = 0.5
#: How far the parts may exceed ``energy_consumed`` (float rounding in CodeCarbon's sums).
_SPLIT_SLACK: Final = 1e-6

#: The namespace of the runs' uuid5 ids (fixed: the ids must not change between releases).
NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "thermoledger:import:codecarbon")
KINDS: Final = ("training", "inference", "eval", "other")


class MalformedFile(ValueError):
    """The file cannot be read as CodeCarbon's ``emissions.csv`` (nothing is imported).

    Attributes:
        line: The file's line (1: the header).
        column: The column, when one is at fault.
    """

    def __init__(self, message: str, *, line: int, column: str | None = None) -> None:
        where = f"line {line}" + (f", column {column}" if column else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Row:
    """One run of the file: its last row, read.

    Attributes:
        line: The file line of that row.
        rows: How many rows the run has (cumulative flushes).
        project_name: CodeCarbon's project.
        run_id: CodeCarbon's run id (``experiment_id`` in 1.x files).
        ended_at: The row's timestamp in the chosen zone (None: empty).
        numbers: The numeric columns present and non-empty (kWh, kg, s, PUE as written).
        text: The descriptive columns present and non-empty.
        refused: Why this run is not imported (None: it is).
    """

    line: int
    rows: int
    project_name: str
    run_id: str
    ended_at: datetime | None
    numbers: Mapping[str, float]
    text: Mapping[str, str]
    refused: str | None = None

    @property
    def energy_kwh(self) -> float:
        """``energy_consumed``, kWh (facility energy: CodeCarbon's PUE is in it)."""
        return self.numbers["energy_consumed"]

    @property
    def pue(self) -> float | None:
        """CodeCarbon's PUE, when the file has the column."""
        return self.numbers.get("pue")

    @property
    def version(self) -> str:
        """``CodeCarbon 2.4.2``, or without a version where the file has none."""
        version = self.text.get("codecarbon_version")
        return f"CodeCarbon {version}" if version else "CodeCarbon (version not recorded)"


def timezone(name: str) -> tzinfo:
    """``UTC``, an offset (``+02:00``) or an IANA zone name (``Europe/Paris``).

    Raises:
        ValueError: Not one of those (the message says what is accepted).
    """
    text = name.strip()
    if text.upper() in ("UTC", "Z"):
        return UTC
    if text[:1] in "+-" and len(text) > 1:
        try:
            parsed = datetime.strptime(text, "%z")
        except ValueError:
            pass
        else:
            assert parsed.tzinfo is not None
            return parsed.tzinfo
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"--timezone {name!r}: expected UTC, an offset such as +02:00, or a zone name such "
            "as Europe/Paris"
        ) from None


def _number(text: str, *, line: int, column: str) -> float | None:
    value = text.strip()
    if not value or value.lower() == "nan":  # pandas writes a missing value as an empty cell
        return None
    try:
        number = float(value)
    except ValueError:
        raise MalformedFile(f"{value!r} is not a number", line=line, column=column) from None
    if not math.isfinite(number):
        raise MalformedFile(f"{value!r} is not a finite number", line=line, column=column)
    return number


def _timestamp(text: str, zone: tzinfo, *, line: int) -> datetime | None:
    value = text.strip()
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedFile(
            f"{value!r} is not a time such as 2024-05-27T10:49:55", line=line, column="timestamp"
        ) from None
    return stamp.replace(tzinfo=zone) if stamp.tzinfo is None else stamp


def _header(row: Sequence[str]) -> dict[str, int]:
    columns: dict[str, int] = {}
    for i, raw in enumerate(row):
        name = raw.strip()
        if name in columns:
            raise MalformedFile(f"{name!r} appears twice in the header", line=1, column=name)
        columns[name] = i
    missing = [c for c in ESSENTIAL if c not in columns]
    if missing:
        raise MalformedFile(
            f"the header lacks {', '.join(missing)}: every CodeCarbon emissions.csv has "
            f"{', '.join(ESSENTIAL)} (this header: {', '.join(columns) or 'empty'})",
            line=1,
            column=missing[0],
        )
    if not any(c in columns for c in ID_COLUMNS):
        raise MalformedFile(
            "the header has neither run_id (CodeCarbon ≥ 2.0) nor experiment_id (1.x): runs "
            "cannot be told apart",
            line=1,
            column="run_id",
        )
    return columns


def _refusal(numbers: Mapping[str, float], ended_at: datetime | None, run_id: str) -> str | None:
    """Why a run's last row cannot be imported, or None."""
    if not run_id:
        return "its run id is empty: a re-import could not recognise it"
    energy = numbers.get("energy_consumed")
    if energy is None:
        return "energy_consumed is empty: CodeCarbon recorded no energy (nothing is stored)"
    if energy == 0:
        return "energy_consumed is 0 kWh: nothing was measured (a zero is not stored as a figure)"
    if energy < 0:
        return f"energy_consumed is negative ({energy!r} kWh)"
    if ended_at is None:
        return "timestamp is empty: the run cannot be dated"
    duration = numbers.get("duration")
    if duration is None or duration <= 0:
        return "duration is empty or not above 0 s: the run cannot be dated"
    emissions = numbers.get("emissions")
    if emissions is not None and emissions < 0:
        return f"emissions is negative ({emissions!r} kg)"
    pue = numbers.get("pue")
    if pue is not None and pue < 1:
        return f"pue is {pue!r}, below 1 (facility energy cannot be below IT energy)"
    parts = {k: numbers[k] for k in ("cpu_energy", "gpu_energy", "ram_energy") if k in numbers}
    negative = [k for k, v in parts.items() if v < 0]
    if negative:
        return f"{negative[0]} is negative ({parts[negative[0]]!r} kWh)"
    split = math.fsum(parts.values())
    if split > energy * (1 + _SPLIT_SLACK):
        return (
            f"cpu_energy + gpu_energy + ram_energy = {split!r} kWh exceeds energy_consumed = "
            f"{energy!r} kWh"
        )
    return None


def read_emissions_csv(text: str, *, zone: tzinfo = UTC) -> list[Row]:
    """The runs of an ``emissions.csv``, each from its last row, in order of first appearance.

    Args:
        text: The file's text.
        zone: The zone of timestamps written without one (CodeCarbon's are local time).

    Raises:
        MalformedFile: The file cannot be read as CodeCarbon's (line and column named).
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise MalformedFile("the file is empty: expected CodeCarbon's header", line=1)
        columns = _header(header)
        id_column = next(c for c in ID_COLUMNS if c in columns)
        counts: dict[tuple[str, str], int] = {}
        order: list[tuple[str, str]] = []
        parsed: dict[tuple[str, str], Row] = {}
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            if len(cells) != len(header):
                raise MalformedFile(
                    f"{len(cells)} fields where the header has {len(header)} (CodeCarbon "
                    "appends a row without its empty columns when a value is missing; such a "
                    "row's values are shifted and cannot be read)",
                    line=line,
                )
            value = {name: cells[i] for name, i in columns.items()}
            numbers = {
                name: number
                for name in _NUMBERS
                if name in value
                and (number := _number(value[name], line=line, column=name)) is not None
            }
            ended_at = _timestamp(value["timestamp"], zone, line=line)
            key = (value["project_name"].strip(), value[id_column].strip())
            if key not in counts:
                order.append(key)
            counts[key] = counts.get(key, 0) + 1
            parsed[key] = Row(
                line=line,
                rows=0,
                project_name=key[0],
                run_id=key[1],
                ended_at=ended_at,
                numbers=numbers,
                text={n: value[n].strip() for n in _TEXT if n in value and value[n].strip()},
                refused=_refusal(numbers, ended_at, key[1]),
            )
    except csv.Error as e:
        raise MalformedFile(f"not CSV: {e}", line=reader.line_num) from None
    return [dataclasses.replace(parsed[k], rows=counts[k]) for k in order]


def band_rel(row: Row, *, cpu_measured: bool = False) -> tuple[float, str]:
    """The relative half-width of a run's energy band, and what it assumes.

    The parts' ranges add (worst case): rel = Σ part × rel_part / Σ parts. Whatever
    ``energy_consumed`` holds beyond the three parts, or all of it without a split, takes the
    wide band.
    """
    process = row.text.get("tracking_mode") == "process"
    cpu_rel = CPU_READ_REL if cpu_measured and not process else CPU_MODEL_REL
    if process:
        cpu_basis = "the process's share of the machine's"
    elif cpu_measured:
        cpu_basis = "read from RAPL or powermetrics (--cpu-measured)"
    else:
        cpu_basis = "RAPL or a TDP model: the file does not say"
    parts = [
        ("gpu_energy", GPU_REL, "GPU ±5 % (NVML)"),
        ("cpu_energy", cpu_rel, f"CPU ±{cpu_rel * 100:.0f} % ({cpu_basis})"),
        ("ram_energy", RAM_REL, "RAM ±50 % (modelled" + (", process share)" if process else ")")),
    ]
    energy = row.energy_kwh
    present = [(row.numbers[name], rel, text) for name, rel, text in parts if name in row.numbers]
    split = math.fsum(v for v, _, _ in present)
    if not present or split <= 0:
        return WHOLE_REL, "±50 % on the whole (no CPU/GPU/RAM split in the file)"
    rest = max(energy - split, 0.0)
    spread = math.fsum(v * rel for v, rel, _ in present) + rest * WHOLE_REL
    used = [text for v, _, text in present if v > 0]
    if rest > energy * _SPLIT_SLACK:
        used.append("the rest ±50 %")
    return min(spread / energy, 1.0), "; ".join(used)


def run_uuid(project: str, row: Row) -> uuid.UUID:
    """The thermoledger run id of a CodeCarbon run: the same on every import."""
    return uuid.uuid5(NAMESPACE, "\n".join((project, row.project_name, row.run_id)))


def _kwh(value: float) -> str:
    return f"{value:.6g}"


def _note(row: Row, *, rel: float, assumptions: str, zone_name: str) -> str:
    n, t = row.numbers, row.text
    split = ", ".join(
        f"{label} {_kwh(n[key])} kWh"
        for key, label in (("cpu_energy", "CPU"), ("gpu_energy", "GPU"), ("ram_energy", "RAM"))
        if key in n
    )
    pue = row.pue
    parts = [
        f"energy_consumed {_kwh(row.energy_kwh)} kWh"
        + (f" ({split})" if split else "")
        + (f", with CodeCarbon's PUE {pue:g}" if pue is not None else ", no pue column"),
    ]
    if "emissions" in n:
        parts.append(
            f"emissions {n['emissions']:.6g} kgCO2e: intensity = emissions / energy_consumed"
        )
    else:
        parts.append("emissions empty: no intensity from CodeCarbon")
    where = ("country_name", "country_iso_code", "region", "cloud_provider", "cloud_region")
    place = ", ".join(t[k] for k in where if k in t)
    if place:
        parts.append(f"place {place}")
    if "tracking_mode" in t:
        parts.append(f"tracking_mode {t['tracking_mode']}")
    hardware = ", ".join(t[k] for k in ("cpu_model", "gpu_model") if k in t)
    if hardware:
        parts.append(f"hardware {hardware}")
    parts.append(f"timestamp read as {zone_name}")
    if row.rows > 1:
        parts.append(f"last of {row.rows} rows (cumulative flushes)")
    parts.append(f"band ±{rel:.1%}: {assumptions}")
    return "; ".join(parts)[:1000]


def estimate_body(
    row: Row,
    *,
    project: str,
    file_name: str,
    zone_name: str = "UTC",
    cpu_measured: bool = False,
    kind: str = "other",
    replace: bool = False,
) -> dict[str, Any]:
    """The ``POST /runs/{id}/estimate`` body of a run (it must not be refused).

    Raises:
        ValueError: The run is refused (`Row.refused`).
    """
    if row.refused is not None or row.ended_at is None:
        raise ValueError(f"line {row.line}: {row.refused}")
    n = row.numbers
    rel, assumptions = band_rel(row, cpu_measured=cpu_measured)
    pue = row.pue
    it_kwh = row.energy_kwh / (pue if pue is not None else 1.0)
    ended_at = row.ended_at.astimezone(UTC)
    started_at = ended_at - timedelta(seconds=n["duration"])
    short = row.run_id[:8]
    body: dict[str, Any] = {
        "name": f"{row.project_name or 'codecarbon'} {short}"[:200],
        "kind": kind,
        "project": project,
        "supersede": replace,
        "started_at": started_at.isoformat(),
        "ended_at": ended_at.isoformat(),
        "tags": {
            "source": "codecarbon",
            "codecarbon.project": row.project_name[:200],
            "codecarbon.run_id": row.run_id[:200],
        },
        "energy": f"{it_kwh!r} kWh",
        "band": {"energy": {"rel": rel}},
        "provenance": {
            "source": row.version,
            "document": file_name[:300] or "emissions.csv",
            "page": f"line {row.line}, run_id {row.run_id}"[:300],
            "note": _note(row, rel=rel, assumptions=assumptions, zone_name=zone_name),
        },
    }
    if pue is not None:
        body["pue"] = pue
    if "emissions" in n:
        body["intensity"] = f"{n['emissions'] * 1000.0 / row.energy_kwh!r} gCO2e/kWh"
    gpu = row.text.get("gpu_model")
    if gpu:
        body["device"] = gpu[:300]
    return body


# --------------------------------------------------------------------------- the command


@dataclass
class ImportResult:
    """What an import did, run by run."""

    imported: list[Row] = field(default_factory=list)
    replaced: list[Row] = field(default_factory=list)
    already: list[Row] = field(default_factory=list)
    refused: list[tuple[Row, str]] = field(default_factory=list)
    conflicts: list[tuple[Row, str]] = field(default_factory=list)
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        """Every run imported or already there."""
        return not (self.refused or self.conflicts or self.stopped)


class _Stop(Exception):
    """The service cannot take any run (token, project, unreachable): stop the import."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def _detail(response: httpx.Response) -> tuple[str, str | None]:
    try:
        data = response.json()
    except ValueError:
        return (response.text[:300] or response.reason_phrase), None
    if isinstance(data, dict) and "detail" in data:
        named = data.get("field")
        return str(data["detail"])[:500], named if isinstance(named, str) else None
    return str(data)[:300], None


def _post(client: httpx.Client, run_id: uuid.UUID, body: Mapping[str, Any]) -> httpx.Response:
    try:
        response = client.post(f"runs/{run_id}/estimate", json=body)
    except httpx.TransportError as e:
        raise _Stop(f"{type(e).__name__} talking to {client.base_url}: {e}") from e
    status = response.status_code
    if status in (401, 403):
        detail, _ = _detail(response)
        raise _Stop(
            f"the service refused the token (HTTP {status}: {detail}); an import needs a "
            "token with the ingest scope"
        )
    if status == 429 or status >= 500:
        detail, _ = _detail(response)
        raise _Stop(f"HTTP {status} from the service: {detail}")
    return response


def _send(
    rows: Iterable[Row],
    bodies: Mapping[int, dict[str, Any]],
    ids: Mapping[int, uuid.UUID],
    client: httpx.Client,
    result: ImportResult,
) -> None:
    for row in rows:
        response = _post(client, ids[row.line], bodies[row.line])
        status = response.status_code
        if status == 201:
            result.imported.append(row)
        elif status == 200:
            entries = response.json().get("entries")
            (result.replaced if entries else result.already).append(row)
        else:
            detail, named = _detail(response)
            if status == 409 and named == "project":
                raise _Stop(detail, usage=True)
            if status == 409:
                result.conflicts.append((row, detail))
            else:
                result.refused.append((row, f"the service refused it (HTTP {status}): {detail}"))


def _plan_line(row: Row, run_id: uuid.UUID, body: Mapping[str, Any]) -> str:
    rel = body["band"]["energy"]["rel"]
    intensity = body.get("intensity")
    grid = f"{float(intensity.split()[0]):.4g} gCO2e/kWh" if intensity else "no intensity"
    pue = f"PUE {body['pue']:g}" if "pue" in body else "no PUE (the project's)"
    return (
        f"  line {row.line:>5}  {row.run_id[:36]:<36}  {_kwh(row.energy_kwh):>10} kWh "
        f"±{rel:.1%}  {grid}, {pue}  → run {run_id}\n"
    )


def _summary(result: ImportResult, total: int, out: TextIO) -> None:
    out.write(f"  imported: {len(result.imported)}\n")
    if result.replaced:
        out.write(f"  replaced (--replace; the old entries superseded): {len(result.replaced)}\n")
    out.write(f"  already there: {len(result.already)}\n")
    out.write(f"  refused: {len(result.refused)}\n")
    for row, reason in result.refused:
        out.write(f"    line {row.line} (run_id {row.run_id or '-'}): {reason}\n")
    if result.conflicts:
        out.write(f"  conflicts: {len(result.conflicts)} (import again with --replace)\n")
        for row, reason in result.conflicts:
            out.write(f"    line {row.line} (run_id {row.run_id}): {reason}\n")
    sent = len(result.imported) + len(result.replaced) + len(result.already)
    sent += len(result.refused) + len(result.conflicts)
    if result.stopped:
        out.write(f"  stopped after {sent} of {total} run(s): {result.stopped}\n")


def import_codecarbon(
    path: Path,
    *,
    project: str,
    api_url: str | None,
    token: str | None,
    out: TextIO,
    err: TextIO,
    dry_run: bool = False,
    zone_name: str = "UTC",
    cpu_measured: bool = False,
    kind: str = "other",
    replace: bool = False,
    transport: httpx.BaseTransport | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Run ``thermoledger import codecarbon``; returns the exit status.

    0: every run imported or already there; 1: a run refused or in conflict, or the service
    stopped the import (token, unreachable); 2: a malformed file, a bad option, or a token of
    another project.
    """
    try:
        zone = timezone(zone_name)
    except ValueError as e:
        err.write(f"thermoledger import: {e}\n")
        return 2
    if kind not in KINDS:
        err.write(f"thermoledger import: --kind {kind!r}: expected one of {', '.join(KINDS)}\n")
        return 2
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        err.write(f"thermoledger import: cannot read {path}: {e.strerror or e}\n")
        return 2
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        err.write(f"thermoledger import: {path}: line {line}: not UTF-8 text\n")
        return 2
    try:
        runs = read_emissions_csv(text, zone=zone)
    except MalformedFile as e:
        err.write(f"thermoledger import: {path}: {e}\n")
        return 2
    result = ImportResult(refused=[(r, r.refused) for r in runs if r.refused is not None])
    good = [r for r in runs if r.refused is None]
    bodies = {
        r.line: estimate_body(
            r,
            project=project,
            file_name=path.name,
            zone_name=zone_name,
            cpu_measured=cpu_measured,
            kind=kind,
            replace=replace,
        )
        for r in good
    }
    ids = {r.line: run_uuid(project, r) for r in good}
    rows = sum(r.rows for r in runs)
    out.write(
        f"CodeCarbon file {path.name}: {len(runs)} run(s) in {rows} row(s) → project {project}\n"
    )
    if dry_run:
        out.write(f"dry run: would import {len(good)} run(s), nothing sent\n")
        for r in good:
            out.write(_plan_line(r, ids[r.line], bodies[r.line]))
        out.write(f"  refused: {len(result.refused)}\n")
        for row, reason in result.refused:
            out.write(f"    line {row.line} (run_id {row.run_id or '-'}): {reason}\n")
        return 0 if not result.refused else 1
    if api_url is None:
        err.write("thermoledger import: no server: pass --server URL or set THERMOLEDGER_SERVER\n")
        return 2
    headers = {"Accept": "application/json", "User-Agent": "thermoledger-import"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    usage = False
    with httpx.Client(
        base_url=api_url.rstrip("/") + "/", headers=headers, timeout=timeout_s, transport=transport
    ) as client:
        try:
            _send(good, bodies, ids, client, result)
        except _Stop as e:
            result.stopped, usage = str(e), e.usage
    _summary(result, len(runs), out)
    if result.stopped:
        err.write(f"thermoledger import: {result.stopped}\n")
        if not usage:
            err.write(
                "  nothing is lost: import the file again (runs already imported are recognised)\n"
            )
        return 2 if usage else 1
    return 0 if result.complete else 1
