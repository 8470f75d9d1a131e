"""Ingest batches: parse, validate (vectorised over the whole batch), hash, and hand over.

A batch (`meters.wire.IngestBatch`) is parsed from the raw body in one pass by pydantic's JSON
parser (types, finiteness, per-field bounds), then every check that spans fields or samples runs
as numpy over all chunks and all samples at once:

* per chunk: ``t0_s ≤ t1_s``; ``energy_low_j ≤ energy_j ≤ energy_high_j`` and
  ``min_power_w ≤ mean_power_w ≤ max_power_w`` (within `REL_TOLERANCE` for float rounding; the
  stored values are clipped into order); ``gap_count > 0`` whenever ``gap_s > 0``; a known
  ``device_key``; a method the table stores (a per-chunk ``mixed`` is refused);
* per chunk with samples: equal column lengths, ``n`` = their length, at most
  ``max_samples_per_chunk``;
* per sample: ``t_s`` strictly increasing within the chunk and inside ``[t0_s, t1_s]`` (within
  `repository.TIME_TOLERANCE_S`); ``power_w`` inside ``[min_power_w, max_power_w]``.

Whatever fails, every problem found is reported (up to a limit) with its field path, e.g.
``chunks[3].samples.t_s[17]``, and nothing is written. Checks against stored rows (duplicates,
conflicts, time order between chunks, power plausibility against the stored device limit) are
the repository's, in the same transaction.

Content hash. The idempotency check needs a digest of each chunk that is identical for an
identical chunk. It is SHA-256 over a fixed binary layout (`HASH_LAYOUT`): the summary fields
packed little-endian in a fixed order, then each sample column as float64. Hashing the parsed
binary values is ~10× faster than re-serialising JSON (`meters.wire.content_hash` costs ~2 s per
million samples in CPython), cannot change with a JSON library's float formatting, and treats
``5`` and ``5.0`` as the same number. The key (device, seq) is not part of the digest.

Raw samples are stored with the columns `db.samples` recommends: ``t_s`` as float32 seconds
since the chunk's ``t0_s``, ``power_w`` float32, ``energy_j`` (the counter) float64.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from db.models import EnergyMethod
from db.repository import TIME_TOLERANCE_S, ChunkRow, DeviceSpec, FieldProblem, InvalidInput
from service.schemas import ChunkIn, IngestBatchIn

__all__ = [
    "HASH_LAYOUT",
    "REL_TOLERANCE",
    "PreparedBatch",
    "chunk_content_hash",
    "prepare_batch",
]

#: Relative slack of the order checks between summary fields (float rounding only).
REL_TOLERANCE = 1e-9
#: Version tag and struct layout of the content hash's summary part.
HASH_LAYOUT = (b"thermoledger.chunk.v1", struct.Struct("<ddq" + "d" * 10 + "qqq"))
_MAX_PROBLEMS = 20
_METHODS = {m.value: m for m in EnergyMethod}


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A validated batch: devices and chunks as the repository takes them."""

    devices: tuple[DeviceSpec, ...]
    chunks: tuple[ChunkRow, ...]


def chunk_content_hash(chunk: ChunkIn, columns: Sequence[tuple[str, npt.NDArray[Any]]]) -> str:
    """SHA-256 (hex) of a chunk's content in the `HASH_LAYOUT` binary form.

    Args:
        chunk: The parsed chunk (summary fields).
        columns: ``(name, float64 array)`` of each sample column present, in wire order.
    """
    tag, layout = HASH_LAYOUT
    digest = hashlib.sha256(tag)
    digest.update(chunk.method.encode("ascii") + b"\0")
    digest.update(
        layout.pack(
            chunk.t0_s,
            chunk.t1_s,
            chunk.n,
            chunk.energy_j,
            chunk.energy_low_j,
            chunk.energy_high_j,
            chunk.sensor_uncertainty_j,
            chunk.bound_below_j,
            chunk.bound_above_j,
            chunk.min_power_w,
            chunk.mean_power_w,
            chunk.max_power_w,
            chunk.gap_s,
            chunk.gap_count,
            chunk.reset_count,
            chunk.wrap_count,
        )
    )
    for name, values in columns:
        digest.update(name.encode("ascii") + struct.pack("<q", values.size))
        digest.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return digest.hexdigest()


class _Problems:
    """Problems keyed by chunk position, so the report lists them in request order."""

    def __init__(self) -> None:
        self.found: list[tuple[int, int, FieldProblem]] = []

    def add(self, position: int, field: str, message: str) -> None:
        self.found.append((position, len(self.found), FieldProblem(field, message)))

    def first_in(self, mask: npt.NDArray[np.bool_], field: str, describe: Any) -> None:
        """Add the first chunk where ``mask`` holds (one problem per check keeps it short)."""
        hits = np.flatnonzero(mask)
        if hits.size:
            i = int(hits[0])
            self.add(i, f"chunks[{i}].{field}", describe(i))

    def raise_if_any(self) -> None:
        if self.found:
            ordered = [p for _, _, p in sorted(self.found, key=lambda x: (x[0], x[1]))]
            raise InvalidInput(ordered[:_MAX_PROBLEMS])


def _column(chunks: Sequence[ChunkIn], name: str, dtype: type[Any] = np.float64) -> Any:
    return np.fromiter((getattr(c, name) for c in chunks), dtype=dtype, count=len(chunks))


def _slack(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return REL_TOLERANCE * np.maximum(np.abs(values), 1.0)


def _check_devices(batch: IngestBatchIn, problems: _Problems) -> tuple[DeviceSpec, ...]:
    seen: dict[str, int] = {}
    specs = []
    for i, d in enumerate(batch.devices):
        if d.key in seen:
            problems.add(-1, f"devices[{i}].key", f"{d.key!r} repeats devices[{seen[d.key]}]")
            continue
        seen[d.key] = i
        specs.append(
            DeviceSpec(
                key=d.key,
                host=d.host,
                kind=d.kind,
                index=d.index,
                uid=d.uid or None,
                name=d.name,
                power_limit_w=d.power_limit_w,
                has_energy_counter=d.has_energy_counter,
                power_method=d.power_method,
                simulated=d.simulated,
            )
        )
    return tuple(specs)


def _check_summaries(
    chunks: Sequence[ChunkIn], device_keys: set[str], problems: _Problems
) -> dict[str, npt.NDArray[Any]]:
    cols = {
        name: _column(chunks, name)
        for name in (
            "t0_s",
            "t1_s",
            "energy_j",
            "energy_low_j",
            "energy_high_j",
            "min_power_w",
            "mean_power_w",
            "max_power_w",
            "gap_s",
        )
    }
    t0, t1 = cols["t0_s"], cols["t1_s"]
    e, lo, hi = cols["energy_j"], cols["energy_low_j"], cols["energy_high_j"]
    pmin, pmean, pmax = cols["min_power_w"], cols["mean_power_w"], cols["max_power_w"]
    gap_count = _column(chunks, "gap_count", np.int64)
    energy_slack = _slack(e)
    power_slack = _slack(pmean)
    problems.first_in(t1 < t0, "t1_s", lambda i: f"t1_s = {t1[i]!r} s is before t0_s = {t0[i]!r} s")
    problems.first_in(
        lo > e + energy_slack,
        "energy_low_j",
        lambda i: f"energy_low_j = {lo[i]!r} J exceeds energy_j = {e[i]!r} J",
    )
    problems.first_in(
        e > hi + energy_slack,
        "energy_high_j",
        lambda i: f"energy_high_j = {hi[i]!r} J is below energy_j = {e[i]!r} J",
    )
    problems.first_in(
        pmin > pmean + power_slack,
        "mean_power_w",
        lambda i: f"mean_power_w = {pmean[i]!r} W is below min_power_w = {pmin[i]!r} W",
    )
    problems.first_in(
        pmean > pmax + power_slack,
        "mean_power_w",
        lambda i: f"mean_power_w = {pmean[i]!r} W exceeds max_power_w = {pmax[i]!r} W",
    )
    problems.first_in(
        (cols["gap_s"] > 0) & (gap_count == 0),
        "gap_count",
        lambda i: f"gap_count is 0 but gap_s = {cols['gap_s'][i]!r} s",
    )
    for i, c in enumerate(chunks):
        if c.device_key not in device_keys:
            problems.add(i, f"chunks[{i}].device_key", f"{c.device_key!r} is not in devices")
        if c.method not in _METHODS:
            problems.add(
                i,
                f"chunks[{i}].method",
                f"{c.method!r} cannot be stored per chunk; one of {', '.join(_METHODS)}",
            )
    return cols


@dataclass(frozen=True, slots=True)
class _Samples:
    """Every chunk's samples concatenated; chunk k's are ``[offsets[k], offsets[k+1])``."""

    offsets: npt.NDArray[np.int64]
    t_s: npt.NDArray[np.float64]
    power_w: npt.NDArray[np.float64]
    energy_j: npt.NDArray[np.float64] | None
    has_energy: npt.NDArray[np.bool_]


def _gather_samples(
    chunks: Sequence[ChunkIn], max_samples: int, problems: _Problems
) -> _Samples | None:
    lengths = np.zeros(len(chunks), np.int64)
    has_energy = np.zeros(len(chunks), np.bool_)
    for i, c in enumerate(chunks):
        s = c.samples
        if s is None:
            continue
        k = len(s.t_s)
        where = f"chunks[{i}].samples"
        if len(s.power_w) != k or (s.energy_j is not None and len(s.energy_j) != k):
            sizes = f"t_s {k}, power_w {len(s.power_w)}"
            if s.energy_j is not None:
                sizes += f", energy_j {len(s.energy_j)}"
            problems.add(i, where, f"columns differ in length ({sizes})")
        elif k > max_samples:
            problems.add(i, where, f"{k} samples; at most {max_samples} per chunk")
        elif k != c.n:
            problems.add(i, f"chunks[{i}].n", f"n = {c.n} but the chunk carries {k} samples")
        else:
            lengths[i] = k
            has_energy[i] = s.energy_j is not None
    if problems.found:
        return None
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    with_samples = [c.samples for c in chunks if c.samples is not None]
    t_s = np.fromiter(itertools.chain.from_iterable(s.t_s for s in with_samples), np.float64, total)
    power_w = np.fromiter(
        itertools.chain.from_iterable(s.power_w for s in with_samples), np.float64, total
    )
    energy_j = None
    if has_energy.any():
        # Chunks without a counter column get NaN placeholders; they are never read.
        energy_j = np.full(total, np.nan)
        for position in np.flatnonzero(has_energy).tolist():
            samples = chunks[position].samples
            assert samples is not None
            assert samples.energy_j is not None
            energy_j[offsets[position] : offsets[position + 1]] = samples.energy_j
    return _Samples(offsets, t_s, power_w, energy_j, has_energy)


def _check_samples(
    samples: _Samples, summaries: dict[str, npt.NDArray[Any]], problems: _Problems
) -> None:
    off = samples.offsets
    total = int(off[-1])
    if total == 0:
        return
    lengths = np.diff(off)
    owner = np.repeat(np.arange(lengths.size), lengths)
    t, p = samples.t_s, samples.power_w

    def report(mask: npt.NDArray[np.bool_], column: str, describe: Any) -> None:
        hits = np.flatnonzero(mask)
        if hits.size:
            g = int(hits[0])
            k = int(owner[g])
            j = g - int(off[k])
            problems.add(k, f"chunks[{k}].samples.{column}[{j}]", describe(g, k, j))

    back = np.zeros(total, np.bool_)
    back[1:] = t[1:] <= t[:-1]
    back[off[:-1][lengths > 0]] = False  # a chunk's first sample has no predecessor in it
    report(
        back,
        "t_s",
        lambda g, k, j: (
            f"{t[g]!r} s is not after t_s[{j - 1}] = {t[g - 1]!r} s (time must strictly increase)"
        ),
    )
    t0 = summaries["t0_s"][owner]
    t1 = summaries["t1_s"][owner]
    report(
        (t < t0 - TIME_TOLERANCE_S) | (t > t1 + TIME_TOLERANCE_S),
        "t_s",
        lambda g, k, j: (
            f"{t[g]!r} s is outside the chunk's [t0_s, t1_s] = [{t0[g]!r}, {t1[g]!r}] s"
        ),
    )
    pmin = summaries["min_power_w"][owner]
    pmax = summaries["max_power_w"][owner]
    slack = _slack(p)
    report(
        (p < pmin - slack) | (p > pmax + slack),
        "power_w",
        lambda g, k, j: (
            f"{p[g]!r} W is outside the chunk's [min_power_w, max_power_w] = "
            f"[{pmin[g]!r}, {pmax[g]!r}] W"
        ),
    )


def prepare_batch(
    batch: IngestBatchIn, *, max_chunks: int, max_samples_per_chunk: int
) -> PreparedBatch:
    """Validate a parsed batch and turn it into the repository's inputs.

    Args:
        batch: The parsed body.
        max_chunks: Most chunks accepted in one batch.
        max_samples_per_chunk: Most samples accepted in one chunk.

    Returns:
        Device specs and chunk rows (with content hashes and sample columns to store).

    Raises:
        InvalidInput: Every problem found (up to 20), each naming its field path.
    """
    problems = _Problems()
    chunks = batch.chunks
    if len(chunks) > max_chunks:
        raise InvalidInput.one("chunks", f"{len(chunks)} chunks; at most {max_chunks} per batch")
    devices = _check_devices(batch, problems)
    summaries = _check_summaries(chunks, {d.key for d in devices}, problems)
    samples = _gather_samples(chunks, max_samples_per_chunk, problems)
    problems.raise_if_any()
    assert samples is not None  # no problems: gathered
    _check_samples(samples, summaries, problems)
    problems.raise_if_any()
    return PreparedBatch(devices=devices, chunks=tuple(_rows(chunks, samples, summaries)))


def _rows(
    chunks: Sequence[ChunkIn], samples: _Samples, summaries: dict[str, npt.NDArray[Any]]
) -> list[ChunkRow]:
    off = samples.offsets
    # Clip into order: the checks allowed float-rounding slack that the table's CHECKs do not.
    low = np.minimum(summaries["energy_low_j"], summaries["energy_j"])
    high = np.maximum(summaries["energy_high_j"], summaries["energy_j"])
    mean = np.clip(summaries["mean_power_w"], summaries["min_power_w"], summaries["max_power_w"])
    t_rel = (samples.t_s - np.repeat(summaries["t0_s"], np.diff(off))).astype(np.float32)
    power32 = samples.power_w.astype(np.float32)
    rows = []
    for i, c in enumerate(chunks):
        a, b = int(off[i]), int(off[i + 1])
        hashed: list[tuple[str, npt.NDArray[Any]]] = []
        stored: dict[str, npt.NDArray[Any]] | None = None
        if c.samples is not None:
            hashed = [("t_s", samples.t_s[a:b]), ("power_w", samples.power_w[a:b])]
            stored = {"t_s": t_rel[a:b], "power_w": power32[a:b]}
            if samples.has_energy[i]:
                assert samples.energy_j is not None
                hashed.append(("energy_j", samples.energy_j[a:b]))
                stored["energy_j"] = samples.energy_j[a:b]
        rows.append(
            ChunkRow(
                position=i,
                device_key=c.device_key,
                seq=c.seq,
                t0_s=c.t0_s,
                t1_s=c.t1_s,
                n=c.n,
                energy_j=c.energy_j,
                energy_low_j=float(low[i]),
                energy_high_j=float(high[i]),
                min_power_w=c.min_power_w,
                mean_power_w=float(mean[i]),
                max_power_w=c.max_power_w,
                method=_METHODS[c.method],
                gap_s=c.gap_s,
                gap_count=c.gap_count,
                content_hash=chunk_content_hash(c, hashed),
                samples=stored,
            )
        )
    return rows
