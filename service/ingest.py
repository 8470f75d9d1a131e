"""Ingest batches: parse, validate (vectorised over the whole batch), hash, and hand over.

A batch (`meters.wire.IngestBatch`) is parsed from the raw body in one pass by pydantic's JSON
parser (types, finiteness, per-field bounds), then every check that spans fields or samples runs
as numpy over all chunks and all samples at once:

* per chunk: ``t0_s ≤ t1_s``, both inside the stored time range (`service.timebounds`; the
  chunk's samples must lie in ``[t0_s, t1_s]``, so they are bounded with it); the band the
  meter sent agrees with its terms,
  ``energy_low_j = max(0, energy_j − sensor_uncertainty_j − bound_below_j)`` and
  ``energy_high_j = energy_j + sensor_uncertainty_j + bound_above_j`` (within `REL_TOLERANCE`;
  the table stores only the terms, so a band that contradicts them would be silently lost);
  ``min_power_w ≤ max_power_w``, and ``min_power_w ≤ mean_power_w ≤ max_power_w`` for the
  power methods only (`db.models.MEAN_IN_RANGE_METHODS`: a ``counter`` chunk's mean comes from
  the counter, its min/max from the lagging power sensor, so it may lie outside them; within
  `REL_TOLERANCE`, the stored mean is clipped into order); ``gap_count > 0`` whenever
  ``gap_s > 0``; ``reset_count + wrap_count ≤ n`` (at most one per interval); a known
  ``device_key``;
* per chunk with samples: equal column lengths, ``n`` = their length, at most
  ``max_samples_per_chunk``;
* per sample: ``t_s`` strictly increasing within the chunk and inside ``[t0_s, t1_s]`` (within
  `db.chunks.TIME_TOLERANCE_S`); ``power_w`` inside ``[min_power_w, max_power_w]``.

Samples arrive as JSON lists (checked by pydantic) or base64 float64 columns
(`meters.wire.SAMPLES_F64_BASE64`, decoded by `meters.wire.decode_column` while parsing and
checked here, vectorised, with the same rules and the same field paths).

Whatever fails, every problem found is reported (up to a limit) with its field path, e.g.
``chunks[3].samples.t_s[17]``, and nothing is written. Checks against stored rows (duplicates,
conflicts, time order between chunks, power plausibility against the stored device limit) are
`db.chunks.ingest_chunks`', in the same transaction.

``mem_busy_frac`` (optional: the chunk's memory-busy fraction, `meters.wire`) must lie in
[0, 1] (a NaN or an infinity is refused by the parser, naming the field); chunks without it store
NULL.

Content hash. The idempotency check needs a digest of each chunk that is identical for an
identical chunk. It is SHA-256 over a fixed binary layout (`HASH_LAYOUT`): the summary fields
packed little-endian in a fixed order, then, only when the chunk carries it, ``mem_busy_frac``
(`MEM_BUSY_TAG` and a float64: a chunk without it hashes exactly as before the field existed),
then each sample column as float64. Hashing the parsed
binary values is ~10× faster than re-serialising JSON (`meters.wire.content_hash` costs ~2 s per
million samples in CPython), cannot change with a JSON library's float formatting, and treats
``5`` and ``5.0``, or a list and its base64 column, as the same content. The key (device, seq)
is not part of the digest.

Raw samples are stored with the columns `db.samples` recommends: ``t_s`` as float32 seconds
since the chunk's ``t0_s``, ``power_w`` float32, ``energy_j`` (the counter) float64.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from thermoledger.db.chunks import TIME_TOLERANCE_S
from thermoledger.db.errors import FieldProblem, InvalidInput
from thermoledger.db.models import MEAN_IN_RANGE_METHODS, EnergyMethod
from thermoledger.db.records import ChunkRow, DeviceSpec
from thermoledger.db.samples import concat_rows, encode_sample_rows
from thermoledger.meters.wire import split_binary_batch

from . import timebounds
from .schemas import (
    FINITE_MAX,
    BinaryBatchHeaderIn,
    ChunkColumnsIn,
    ChunkIn,
    DeviceIn,
    IngestBatchIn,
)
from .timebounds import TimeRange

__all__ = [
    "HASH_LAYOUT",
    "MEM_BUSY_TAG",
    "REL_TOLERANCE",
    "PreparedBatch",
    "chunk_content_hash",
    "prepare_batch",
    "prepare_binary_batch",
]

#: Relative slack of the order checks between summary fields (float rounding only).
REL_TOLERANCE = 1e-9
#: Version tag and struct layout of the content hash's summary part.
HASH_LAYOUT = (b"thermoledger.chunk.v1", struct.Struct("<ddq" + "d" * 10 + "qqq"))
#: What precedes ``mem_busy_frac`` in the content hash, for the chunks that carry it.
MEM_BUSY_TAG = b"mem_busy_frac\0"
_MAX_PROBLEMS = 20
#: The summary fields in `HASH_LAYOUT` order: a chunk's summary is one row of this table.
_SUMMARY_FIELDS = (
    ("t0_s", "<f8"),
    ("t1_s", "<f8"),
    ("n", "<i8"),
    ("energy_j", "<f8"),
    ("energy_low_j", "<f8"),
    ("energy_high_j", "<f8"),
    ("sensor_uncertainty_j", "<f8"),
    ("bound_below_j", "<f8"),
    ("bound_above_j", "<f8"),
    ("min_power_w", "<f8"),
    ("mean_power_w", "<f8"),
    ("max_power_w", "<f8"),
    ("gap_s", "<f8"),
    ("gap_count", "<i8"),
    ("reset_count", "<i8"),
    ("wrap_count", "<i8"),
)
#: Packed (unaligned) like `HASH_LAYOUT`, so a row's bytes are exactly what it packs.
_SUMMARY_DTYPE = np.dtype(list(_SUMMARY_FIELDS))
assert _SUMMARY_DTYPE.itemsize == HASH_LAYOUT[1].size
_SUMMARY_GETTER = operator.attrgetter(*(name for name, _ in _SUMMARY_FIELDS))


@dataclass(frozen=True, slots=True)
class _Chunks:
    """A batch's chunks columnar, however they arrived: the per-chunk strings as lists, the
    numeric summary as one structured array in `HASH_LAYOUT` order."""

    device_key: Sequence[str]
    method: Sequence[EnergyMethod]
    seq: Sequence[int]
    table: npt.NDArray[np.void]
    sampled: Sequence[bool]
    mem_busy_frac: npt.NDArray[np.float64]  # NaN where a chunk has none

    @classmethod
    def of_objects(cls, chunks: Sequence[ChunkIn]) -> _Chunks:
        return cls(
            device_key=[c.device_key for c in chunks],
            method=[c.method for c in chunks],
            seq=[c.seq for c in chunks],
            table=np.array([_SUMMARY_GETTER(c) for c in chunks], dtype=_SUMMARY_DTYPE),
            sampled=[c.samples is not None for c in chunks],
            mem_busy_frac=_fractions([c.mem_busy_frac for c in chunks]),
        )

    @classmethod
    def of_columns(cls, columns: ChunkColumnsIn) -> _Chunks:
        count = len(columns.device_key)
        table = np.zeros(count, dtype=_SUMMARY_DTYPE)
        for name, _ in _SUMMARY_FIELDS:
            table[name] = getattr(columns, name)
        busy = columns.mem_busy_frac
        return cls(
            device_key=columns.device_key,
            method=columns.method,
            seq=columns.seq,
            table=table,
            sampled=columns.sampled,
            mem_busy_frac=np.full(count, np.nan) if busy is None else _fractions(busy),
        )

    def __len__(self) -> int:
        return len(self.device_key)


def _fractions(values: Sequence[float | None]) -> npt.NDArray[np.float64]:
    """An optional per-chunk figure as float64, NaN where absent (the parser refused NaN)."""
    return np.fromiter(
        (np.nan if v is None else v for v in values), dtype=np.float64, count=len(values)
    )


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A validated batch: devices and chunks as `db.chunks.ingest_chunks` takes them."""

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
    if chunk.mem_busy_frac is not None:
        digest.update(MEM_BUSY_TAG + struct.pack("<d", chunk.mem_busy_frac))
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


def _slack(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return REL_TOLERANCE * np.maximum(np.abs(values), 1.0)


def _check_devices(devices: Sequence[DeviceIn], problems: _Problems) -> tuple[DeviceSpec, ...]:
    seen: dict[str, int] = {}
    specs = []
    for i, d in enumerate(devices):
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
                mig=d.mig,
                covers=tuple(dict.fromkeys(k for k in d.covers if k != d.kind)),
            )
        )
    return tuple(specs)


def _check_summaries(
    chunks: _Chunks, device_keys: set[str], time_range: TimeRange, problems: _Problems
) -> dict[str, npt.NDArray[Any]]:
    table = chunks.table
    cols: dict[str, npt.NDArray[Any]] = {name: table[name] for name, _ in _SUMMARY_FIELDS}
    cols["table"] = table
    cols["mean_in_range"] = np.fromiter(
        (m in MEAN_IN_RANGE_METHODS for m in chunks.method), dtype=np.bool_, count=len(chunks)
    )
    t0, t1 = cols["t0_s"], cols["t1_s"]
    e, lo, hi = cols["energy_j"], cols["energy_low_j"], cols["energy_high_j"]
    sensor, below = cols["sensor_uncertainty_j"], cols["bound_below_j"]
    above = cols["bound_above_j"]
    pmin, pmean, pmax = cols["min_power_w"], cols["mean_power_w"], cols["max_power_w"]
    in_range = cols["mean_in_range"]
    gap_count = cols["gap_count"]
    counts = cols["reset_count"] + cols["wrap_count"]
    n = cols["n"]
    earliest_s, latest_s = time_range.earliest_s, time_range.latest_s
    for name, times in (("t0_s", t0), ("t1_s", t1)):
        problems.first_in(
            (times < earliest_s) | (times > latest_s),
            name,
            lambda i, times=times: time_range.refusal(f"{float(times[i])!r} s (unix time)"),
        )
    problems.first_in(t1 < t0, "t1_s", lambda i: f"t1_s = {t1[i]!r} s is before t0_s = {t0[i]!r} s")

    want_low = np.maximum(e - sensor - below, 0.0)
    problems.first_in(
        np.abs(lo - want_low) > _slack(e + sensor + below),
        "energy_low_j",
        lambda i: (
            f"energy_low_j = {float(lo[i])!r} J disagrees with max(0, energy_j - "
            f"sensor_uncertainty_j - bound_below_j) = {float(want_low[i])!r} J"
        ),
    )
    want_high = e + sensor + above  # inf where the bound above is
    unbounded = np.isinf(want_high)
    finite_high = np.where(unbounded | np.isinf(hi), 0.0, want_high)
    problems.first_in(
        np.where(
            unbounded | np.isinf(hi),
            unbounded != np.isinf(hi),
            np.abs(np.where(np.isinf(hi), 0.0, hi) - finite_high) > _slack(finite_high),
        ),
        "energy_high_j",
        lambda i: (
            f"energy_high_j = {float(hi[i])!r} J disagrees with energy_j + sensor_uncertainty_j "
            f"+ bound_above_j = {float(want_high[i])!r} J"
        ),
    )
    problems.first_in(
        pmin > pmax,
        "min_power_w",
        lambda i: f"min_power_w = {float(pmin[i])!r} W exceeds max_power_w = {float(pmax[i])!r} W",
    )
    power_slack = _slack(pmean)
    problems.first_in(
        in_range & (pmin > pmean + power_slack),
        "mean_power_w",
        lambda i: (
            f"mean_power_w = {float(pmean[i])!r} W is below min_power_w = {float(pmin[i])!r} W "
            f"(method {chunks.method[i].value!r} averages the power samples)"
        ),
    )
    problems.first_in(
        in_range & (pmean > pmax + power_slack),
        "mean_power_w",
        lambda i: (
            f"mean_power_w = {float(pmean[i])!r} W exceeds max_power_w = {float(pmax[i])!r} W "
            f"(method {chunks.method[i].value!r} averages the power samples)"
        ),
    )
    problems.first_in(
        (cols["gap_s"] > 0) & (gap_count == 0),
        "gap_count",
        lambda i: f"gap_count is 0 but gap_s = {float(cols['gap_s'][i])!r} s",
    )
    problems.first_in(
        counts > n,
        "reset_count",
        lambda i: (
            f"reset_count + wrap_count = {counts[i]} exceeds n = {n[i]} (at most one per interval)"
        ),
    )
    for i, key in enumerate(chunks.device_key):
        if key not in device_keys:
            problems.add(i, f"chunks[{i}].device_key", f"{key!r} is not in devices")
    return cols


@dataclass(frozen=True, slots=True)
class _Samples:
    """Every chunk's samples concatenated; chunk k's are ``[offsets[k], offsets[k+1])``.

    ``binary[k]``: chunk k's columns arrived base64-encoded, so pydantic has not checked
    their values (`_check_decoded` does).
    """

    offsets: npt.NDArray[np.int64]
    t_s: npt.NDArray[np.float64]
    power_w: npt.NDArray[np.float64]
    energy_j: npt.NDArray[np.float64] | None
    has_energy: npt.NDArray[np.bool_]
    binary: npt.NDArray[np.bool_]


def _concatenate(columns: Sequence[Sequence[float]], total: int) -> npt.NDArray[np.float64]:
    """One float64 array of the columns: JSON lists in one pass, decoded arrays without copying
    them twice."""
    if not any(isinstance(column, array) for column in columns):
        return np.fromiter(itertools.chain.from_iterable(columns), np.float64, total)
    if not columns:
        return np.zeros(0)
    return np.concatenate(
        [
            np.frombuffer(column, np.float64)
            if isinstance(column, array)
            else np.asarray(column, np.float64)
            for column in columns
        ]
    )


def _gather_samples(
    chunks: Sequence[ChunkIn], max_samples: int, problems: _Problems
) -> _Samples | None:
    lengths = np.zeros(len(chunks), np.int64)
    has_energy = np.zeros(len(chunks), np.bool_)
    binary = np.zeros(len(chunks), np.bool_)
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
            binary[i] = s.binary
    if problems.found:
        return None
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    with_samples = [c.samples for c in chunks if c.samples is not None]
    t_s = _concatenate([s.t_s for s in with_samples], total)
    power_w = _concatenate([s.power_w for s in with_samples], total)
    energy_j = None
    if with_samples and has_energy.sum() == len(with_samples):
        energy_j = _concatenate([s.energy_j for s in with_samples if s.energy_j is not None], total)
    elif has_energy.any():
        # Chunks without a counter column get NaN placeholders; they are never read.
        energy_j = np.full(total, np.nan)
        for position in np.flatnonzero(has_energy).tolist():
            samples = chunks[position].samples
            assert samples is not None
            assert samples.energy_j is not None
            energy_j[offsets[position] : offsets[position + 1]] = samples.energy_j
    return _Samples(offsets, t_s, power_w, energy_j, has_energy, binary)


def _check_decoded(samples: _Samples, problems: _Problems) -> None:
    """What pydantic checks for JSON columns, for base64 ones: finite times; finite power and
    counter readings in ``[0, FINITE_MAX]``."""
    if not samples.binary.any():
        return
    lengths = np.diff(samples.offsets)
    owner = np.repeat(np.arange(lengths.size), lengths)
    decoded = np.repeat(samples.binary, lengths)
    columns: list[tuple[str, npt.NDArray[np.float64], bool]] = [
        ("t_s", samples.t_s, False),
        ("power_w", samples.power_w, True),
    ]
    if samples.energy_j is not None:
        columns.append(("energy_j", samples.energy_j, True))
    for name, values, bounded in columns:
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values)
            if bounded:
                bad |= (values < 0) | (values > FINITE_MAX)
        if name == "energy_j":
            bad &= np.repeat(samples.has_energy, lengths)
        hits = np.flatnonzero(bad & decoded)
        if hits.size:
            g = int(hits[0])
            k = int(owner[g])
            rule = f"a finite number in [0, {FINITE_MAX:g}]" if bounded else "a finite number"
            problems.add(
                k,
                f"chunks[{k}].samples.{name}[{g - int(samples.offsets[k])}]",
                f"{float(values[g])!r} is not {rule}",
            )


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
            f"{float(t[g])!r} s is not after t_s[{j - 1}] = {float(t[g - 1])!r} s "
            "(time must strictly increase)"
        ),
    )
    t0 = summaries["t0_s"][owner]
    t1 = summaries["t1_s"][owner]
    report(
        (t < t0 - TIME_TOLERANCE_S) | (t > t1 + TIME_TOLERANCE_S),
        "t_s",
        lambda g, k, j: (
            f"{float(t[g])!r} s is outside the chunk's [t0_s, t1_s] = [{t0[g]!r}, {t1[g]!r}] s"
        ),
    )
    pmin = summaries["min_power_w"][owner]
    pmax = summaries["max_power_w"][owner]
    slack = _slack(p)
    report(
        (p < pmin - slack) | (p > pmax + slack),
        "power_w",
        lambda g, k, j: (
            f"{float(p[g])!r} W is outside the chunk's [min_power_w, max_power_w] = "
            f"[{float(pmin[g])!r}, {float(pmax[g])!r}] W"
        ),
    )


def prepare_batch(
    batch: IngestBatchIn,
    *,
    max_chunks: int,
    max_samples_per_chunk: int,
    compress_samples: bool = False,
    time_range: TimeRange | None = None,
) -> PreparedBatch:
    """Validate a parsed JSON batch and turn it into `db.chunks.ingest_chunks`' inputs.

    Args:
        batch: The parsed body.
        max_chunks: Most chunks accepted in one batch.
        max_samples_per_chunk: Most samples accepted in one chunk.
        compress_samples: Encode the sample blobs compressed (`db.samples`; the server's
            ``compress_samples`` setting, off by default as there).
        time_range: Where chunk times may lie; default: the request's
            (`service.timebounds.current`, the server's ``earliest_time``/``latest_time``).

    Returns:
        Device specs and chunk rows (with content hashes, sample columns and their encoded
        blobs to store).

    Raises:
        InvalidInput: Every problem found (up to 20), each naming its field path.
    """
    if len(batch.chunks) > max_chunks:
        raise InvalidInput.one(
            "chunks", f"{len(batch.chunks)} chunks; at most {max_chunks} per batch"
        )
    problems = _Problems()
    chunks = _Chunks.of_objects(batch.chunks)
    devices = _check_devices(batch.devices, problems)
    summaries = _check_summaries(
        chunks, {d.key for d in devices}, time_range or timebounds.current(), problems
    )
    samples = _gather_samples(batch.chunks, max_samples_per_chunk, problems)
    return _prepared(devices, chunks, summaries, samples, problems, compress_samples)


def prepare_binary_batch(
    body: bytes,
    *,
    max_chunks: int,
    max_samples_per_chunk: int,
    compress_samples: bool = False,
    time_range: TimeRange | None = None,
) -> PreparedBatch:
    """Validate a binary batch (`meters.wire.BATCH_BINARY`) and turn it into the inputs of
    `db.chunks.ingest_chunks`: the same checks, the same field paths (``chunks[3].t1_s`` is
    entry 3 of the ``t1_s`` column) and the same content hashes as the JSON form of the same
    batch.

    Raises:
        InvalidInput: A malformed body, or every problem found (up to 20).
        pydantic.ValidationError: A header that does not match `BinaryBatchHeaderIn`.
    """
    try:
        text, blocks = split_binary_batch(body)
    except ValueError as e:
        raise InvalidInput.one("body", str(e)) from e
    header = BinaryBatchHeaderIn.model_validate_json(text)
    columns = header.chunks
    count = len(columns.device_key)
    if count > max_chunks:
        raise InvalidInput.one("chunks", f"{count} chunks; at most {max_chunks} per batch")
    ragged = [
        FieldProblem(f"chunks.{name}", f"has {len(values)} entries, chunks.device_key {count}")
        for name, values in columns
        if values is not None and len(values) != count
    ]
    if ragged:
        raise InvalidInput(ragged)
    problems = _Problems()
    chunks = _Chunks.of_columns(columns)
    devices = _check_devices(header.devices, problems)
    summaries = _check_summaries(
        chunks, {d.key for d in devices}, time_range or timebounds.current(), problems
    )
    samples = _unpack_blocks(columns, summaries["n"], blocks, max_samples_per_chunk, problems)
    return _prepared(devices, chunks, summaries, samples, problems, compress_samples)


def _unpack_blocks(
    columns: ChunkColumnsIn,
    n: npt.NDArray[np.int64],
    blocks: memoryview,
    max_samples: int,
    problems: _Problems,
) -> _Samples | None:
    """The sample columns of a binary batch as views of the body (no copy), once the header's
    sizes are checked against each other and against the bytes that follow it."""
    sampled = np.asarray(columns.sampled, np.bool_)
    counter = np.asarray(columns.counter, np.bool_)
    problems.first_in(
        counter & ~sampled, "counter", lambda i: "is set but the chunk carries no samples"
    )
    problems.first_in(
        sampled & (n > max_samples),
        "n",
        lambda i: f"{n[i]} samples; at most {max_samples} per chunk",
    )
    if problems.found:
        return None
    lengths = np.where(sampled, n, 0)
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    with_counter = int(lengths[counter].sum())
    expected = 8 * (2 * total + with_counter)
    if blocks.nbytes != expected:
        problems.add(
            -1,
            "body",
            f"the sample blocks hold {blocks.nbytes} bytes; the header's n, sampled and counter "
            f"columns call for {expected} (8 bytes per value: t_s and power_w of "
            f"{total} samples, energy_j of {with_counter})",
        )
        return None
    values = np.frombuffer(blocks, "<f8")
    t_s, power_w = values[:total], values[total : 2 * total]
    energy_j: npt.NDArray[np.float64] | None = None
    if with_counter and with_counter == total:
        energy_j = values[2 * total :]
    elif with_counter:
        # Chunks without a counter column get NaN placeholders; they are never read.
        energy_j = np.full(total, np.nan)
        energy_j[np.repeat(counter, lengths)] = values[2 * total :]
    return _Samples(offsets, t_s, power_w, energy_j, counter & sampled, sampled)


def _prepared(
    devices: tuple[DeviceSpec, ...],
    chunks: _Chunks,
    summaries: dict[str, npt.NDArray[Any]],
    samples: _Samples | None,
    problems: _Problems,
    compress_samples: bool,
) -> PreparedBatch:
    problems.raise_if_any()
    assert samples is not None  # no problems: gathered
    _check_decoded(samples, problems)
    problems.raise_if_any()
    _check_samples(samples, summaries, problems)
    problems.raise_if_any()
    rows = _rows(chunks, samples, summaries, compress_samples=compress_samples)
    return PreparedBatch(devices=devices, chunks=tuple(rows))


@dataclass(frozen=True, slots=True)
class _Group:
    """Chunks alike in what their content hash and sample blob are made of: one method, and
    either no samples or ``n`` samples each, with or without the counter column."""

    members: npt.NDArray[np.intp]
    method: EnergyMethod
    sampled: bool
    n: int
    has_energy: bool
    has_busy: bool = False

    def gather(self, samples: _Samples, column: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The members' stretches of a concatenated sample column, one row per member."""
        starts = samples.offsets[self.members]
        rows: npt.NDArray[Any] = column[starts[:, None] + np.arange(self.n)]
        return rows


def _groups(chunks: _Chunks, samples: _Samples) -> list[_Group]:
    """The batch's chunks in `_Group`s (a meter's batch is usually one or two groups)."""
    lengths = np.diff(samples.offsets).tolist()
    has_energy = samples.has_energy.tolist()
    has_busy = (~np.isnan(chunks.mem_busy_frac)).tolist()
    keys: dict[tuple[EnergyMethod, bool, int, bool, bool], list[int]] = {}
    for i, (method, sampled) in enumerate(zip(chunks.method, chunks.sampled, strict=True)):
        key = (method, sampled, lengths[i], sampled and has_energy[i], has_busy[i])
        keys.setdefault(key, []).append(i)
    return [
        _Group(np.asarray(members, np.intp), method, sampled, n, energy, busy)
        for (method, sampled, n, energy, busy), members in keys.items()
    ]


def _content_hashes(
    groups: Sequence[_Group],
    samples: _Samples,
    summaries: dict[str, npt.NDArray[Any]],
    count: int,
    mem_busy_frac: npt.NDArray[np.float64],
) -> list[str]:
    """`chunk_content_hash` of every chunk, a group at a time: each member's hashed bytes are
    assembled as one row of a byte matrix (SHA-256 of the concatenation is the digest of the
    parts fed in turn), so the only per-chunk work is the digest itself."""
    tag, _ = HASH_LAYOUT
    table = summaries["table"]
    out = [""] * count
    for group in groups:
        rows = len(group.members)
        parts: list[bytes | npt.NDArray[Any]] = [
            tag + group.method.encode("ascii") + b"\0",
            table[group.members],
        ]
        if group.has_busy:
            parts.append(MEM_BUSY_TAG)
            parts.append(mem_busy_frac[group.members].astype("<f8"))
        if group.sampled:
            size = struct.pack("<q", group.n)
            columns = [("t_s", samples.t_s), ("power_w", samples.power_w)]
            if group.has_energy:
                assert samples.energy_j is not None
                columns.append(("energy_j", samples.energy_j))
            for name, values in columns:
                parts.append(name.encode("ascii") + size)
                parts.append(group.gather(samples, values).astype("<f8", copy=False))
        for i, message in zip(group.members.tolist(), concat_rows(parts, rows), strict=True):
            out[i] = hashlib.sha256(message).hexdigest()
    return out


def _rows(
    chunks: _Chunks,
    samples: _Samples,
    summaries: dict[str, npt.NDArray[Any]],
    *,
    compress_samples: bool,
) -> list[ChunkRow]:
    # Clip into order: the checks allowed float-rounding slack that the table's CHECKs do not.
    mean = np.where(
        summaries["mean_in_range"],
        np.clip(summaries["mean_power_w"], summaries["min_power_w"], summaries["max_power_w"]),
        summaries["mean_power_w"],
    ).tolist()
    t_rel = (samples.t_s - np.repeat(summaries["t0_s"], np.diff(samples.offsets))).astype(
        np.float32
    )
    power32 = samples.power_w.astype(np.float32)
    groups = _groups(chunks, samples)
    hashes = _content_hashes(groups, samples, summaries, len(chunks), chunks.mem_busy_frac)
    blobs: list[bytes | None] = [None] * len(chunks)
    for group in groups:
        if not group.sampled:
            continue
        stored = {
            "t_s": group.gather(samples, t_rel),
            "power_w": group.gather(samples, power32),
        }
        if group.has_energy:
            assert samples.energy_j is not None
            stored["energy_j"] = group.gather(samples, samples.energy_j)
        encoded = encode_sample_rows(stored, compress=compress_samples)
        for i, blob in zip(group.members.tolist(), encoded, strict=True):
            blobs[i] = blob
    field = {name: summaries[name].tolist() for name, _ in _SUMMARY_FIELDS}
    count = len(chunks)
    # Positional, column by column (`ChunkRow`'s field order): a keyword call per chunk costs
    # more than everything else here together, and even the positional call runs a Python
    # frame per chunk (a named tuple's ``__new__``), which `_new_chunk_row` does not.
    rows = list(
        map(
            _new_chunk_row,
            zip(
                range(count),
                chunks.device_key,
                chunks.seq,
                field["t0_s"],
                field["t1_s"],
                field["n"],
                field["energy_j"],
                field["sensor_uncertainty_j"],
                field["bound_below_j"],
                field["bound_above_j"],
                field["min_power_w"],
                mean,
                field["max_power_w"],
                chunks.method,
                field["gap_s"],
                field["gap_count"],
                field["reset_count"],
                field["wrap_count"],
                hashes,
                itertools.repeat(None, count),  # samples: their blobs carry them
                blobs,
                [None if b != b else b for b in chunks.mem_busy_frac.tolist()],
                strict=True,
            ),
        )
    )
    # `_new_chunk_row` checks no arity: a field added to `ChunkRow` must be added above.
    assert not rows or len(rows[0]) == len(ChunkRow._fields)
    return rows


#: ``ChunkRow`` from a tuple of its fields in order, without a Python call per row.
_new_chunk_row = cast(
    "Callable[[tuple[Any, ...]], ChunkRow]", functools.partial(tuple.__new__, ChunkRow)
)
