"""The wire schema between meters and the service: the only code of ours both sides share.

Standard library only (the service imports it too; the meter must stay light). A meter sends an
**ingest batch** as JSON to ``POST /api/v1/runs/{run_id}/chunks``::

    {
      "schema": 1,
      "devices": [DevicePayload, ...],   # every device the chunks refer to (idempotent upsert)
      "chunks":  [ChunkPayload, ...]     # sealed chunks, any order, any devices
    }

A chunk is identified by ``(run_id, device_key, seq)``: that key is the idempotency key. The
service acknowledges a repeat of a stored chunk with identical content (the service's own
digest of the parsed values) as ``duplicate`` and stores nothing; a repeat with different
content is a conflict (409).

Samples travel columnar: ``t_s`` (unix seconds), ``power_w`` (NaN-free; absent readings are
dropped before sealing, which the summary's gap fields account for) and optionally
``energy_j`` (the raw counter in joules, as read, so the service can re-derive and audit).
Every number's unit is in its name.

A chunk's summary may carry ``mem_busy_frac``: the time-weighted mean, in [0, 1], of the
device's memory-activity readings over the chunk (NVML's ``utilization.memory``, AMD SMI's
``umc_activity``: the fraction of time memory was being read or written; `meters.chunker`).
It is optional: absent when the device has no such counter or every read failed (never 0 for
"unknown"), and a meter that predates it simply never sends it.

Two sample encodings, chosen per chunk by ``samples["encoding"]``:

* ``"json"`` (the default when absent): each column is a JSON list of numbers.
* ``"f64le-base64"`` (`SAMPLES_F64_BASE64`): each column is a string, the standard base64 of
  the values as little-endian IEEE 754 float64, 8 bytes each (`encode_column` /
  `decode_column`). Lossless like JSON (a float64 prints and parses back exactly), but half
  the bytes (32 B per sample for three columns against 45–60) and ~10× cheaper for the
  service to parse. ``dumps_batch(..., samples_encoding=SAMPLES_F64_BASE64)`` sends it.

The service reads both and treats the same values in either encoding as the same chunk.

A third form, ``"binary"`` (`BATCH_BINARY`, content type `BINARY_CONTENT_TYPE`), is the whole
batch columnar: what the service's ingest is fastest on, and the uploader's default. The body is

    b"TLB\x01" | u32le H | H bytes of JSON header | float64le blocks

The header is ``{"schema": 1, "devices": [...], "chunks": {column: [...]}}`` with one list per
summary field of `ChunkPayload` (same names, one entry per chunk, ``"inf"`` for an unbounded
band) plus ``"sampled"`` (the chunk carries its samples) and ``"counter"`` (and an ``energy_j``
sample column); its length H is padded with spaces to a multiple of 8. Then three blocks of
little-endian float64: ``t_s`` and ``power_w`` of every sampled chunk in chunk order (``n``
values each), and ``energy_j`` of every chunk with ``counter`` set. Nothing may follow. No
base64 and no per-chunk objects: the service validates every column with numpy, in one pass.
The optional summary field travels as its own column (`OPTIONAL_COLUMNS`), written only when
some chunk of the batch carries it, with null for the chunks that do not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import struct
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, NotRequired, TypedDict, cast

SCHEMA_VERSION = 1
SampleEncoding = Literal["json", "f64le-base64", "binary"]
SAMPLES_JSON: Final = "json"
SAMPLES_F64_BASE64: Final = "f64le-base64"
BATCH_BINARY: Final = "binary"
SAMPLE_ENCODINGS: Final[tuple[SampleEncoding, ...]] = (
    SAMPLES_JSON,
    SAMPLES_F64_BASE64,
    BATCH_BINARY,
)
JSON_CONTENT_TYPE: Final = "application/json"
BINARY_CONTENT_TYPE: Final = "application/vnd.thermoledger.batch"
BINARY_MAGIC: Final = b"TLB\x01"
#: `ChunkPayload`'s summary fields, in the order the binary header lists its columns.
SUMMARY_COLUMNS: Final = (
    "device_key",
    "seq",
    "t0_s",
    "t1_s",
    "n",
    "method",
    "energy_j",
    "energy_low_j",
    "energy_high_j",
    "sensor_uncertainty_j",
    "bound_below_j",
    "bound_above_j",
    "min_power_w",
    "mean_power_w",
    "max_power_w",
    "gap_s",
    "gap_count",
    "reset_count",
    "wrap_count",
)
#: Optional summary fields of `ChunkPayload`: a binary header lists one only when a chunk has it.
OPTIONAL_COLUMNS: Final = ("mem_busy_frac",)
_HEADER_LENGTH = struct.Struct("<I")
METHODS = ("counter", "power_avg", "power_instant", "estimate", "mixed")
DEVICE_KINDS = ("gpu", "cpu", "dram", "other")

Method = Literal["counter", "power_avg", "power_instant", "estimate", "mixed"]


class DevicePayload(TypedDict):
    """A device as the meter saw it. ``key`` is unique within the run (e.g. ``host/GPU-uuid``).

    ``kind`` is what the device is (``gpu``: a board or a GPU+CPU module; ``cpu``: a CPU
    package or socket; ``dram``). ``covers`` (absent: none) lists the other kinds on its host
    whose energy its figures already include (a GH200-class module: ``["cpu"]``); reports show
    the covered devices but never add them to a total again
    (`thermoledger.accounting.integrate.covered_by`).
    """

    key: str
    host: str
    kind: Literal["gpu", "cpu", "dram", "other"]
    index: int
    uid: str
    name: str
    power_limit_w: float | None
    has_energy_counter: bool
    power_method: str
    simulated: bool
    mig: NotRequired[bool]
    covers: NotRequired[list[Literal["gpu", "cpu", "dram", "other"]]]


class SamplesPayload(TypedDict):
    """Raw samples of one chunk, columnar, equal lengths.

    Columns are lists under ``encoding`` ``"json"`` (or no ``encoding``), base64 strings
    under ``"f64le-base64"`` (module docstring).
    """

    t_s: list[float] | str
    power_w: list[float] | str
    energy_j: NotRequired[list[float] | str | None]
    encoding: NotRequired[SampleEncoding]


class ChunkPayload(TypedDict):
    """One sealed chunk: its summary (from `accounting.integrate.summarize_chunks`) and samples."""

    device_key: str
    seq: int
    t0_s: float
    t1_s: float
    n: int
    method: Method
    energy_j: float
    energy_low_j: float
    energy_high_j: float
    sensor_uncertainty_j: float
    bound_below_j: float
    bound_above_j: float
    min_power_w: float
    mean_power_w: float
    max_power_w: float
    gap_s: float
    gap_count: int
    reset_count: int
    wrap_count: int
    mem_busy_frac: NotRequired[float]
    samples: NotRequired[SamplesPayload]


class IngestBatch(TypedDict):
    """What a meter POSTs."""

    schema: int
    devices: list[DevicePayload]
    chunks: list[ChunkPayload]


class MetricPayload(TypedDict):
    """One metric point (``POST /runs/{id}/metrics``): ``(name, step)`` identifies it.

    ``t_s`` is the meter's clock (unix s, the chunks' clock), which places the point on the
    run's cumulative energy; ``value`` is finite, in the metric's own unit.
    """

    name: str
    step: int
    value: float
    t_s: float


class MetricBatch(TypedDict):
    """What a meter POSTs to ``/runs/{id}/metrics``: stored whole or not at all."""

    points: list[MetricPayload]


def content_hash(chunk: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a chunk's canonical JSON, excluding nothing: summary and samples.

    The meter's spool uses it for its own idempotency: a chunk put again under a stored key is
    a harmless repeat when the hashes match and refused otherwise. It never travels to the
    service, which computes its own digest over the parsed values in a fixed binary layout
    (`service.ingest.chunk_content_hash`), so the two hashes differ and are never compared.
    Floats are serialised with ``repr`` precision by `json`; infinities (an unbounded
    ``energy_high_j``) are written as strings.
    """
    canonical = json.dumps(_json_safe(chunk), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dumps_batch(
    devices: Sequence[DevicePayload],
    chunks: Sequence[ChunkPayload],
    *,
    samples_encoding: SampleEncoding = "json",
) -> bytes:
    """Serialise a batch (infinities as ``"inf"`` strings, since JSON has none).

    Args:
        devices: Every device the chunks refer to.
        chunks: The chunks; their samples may be in either encoding.
        samples_encoding: Encoding of the samples on the wire: ``"json"`` sends them as
            given, ``"f64le-base64"`` re-encodes JSON-list samples as base64 float64 columns,
            ``"binary"`` writes the columnar binary batch (`dumps_binary_batch`; send it with
            `content_type` ``"binary"``).
    """
    if samples_encoding not in SAMPLE_ENCODINGS:
        raise ValueError(f"samples_encoding must be one of {SAMPLE_ENCODINGS}")
    if samples_encoding == BATCH_BINARY:
        return dumps_binary_batch(devices, chunks)
    if samples_encoding == SAMPLES_F64_BASE64:
        chunks = [_with_binary_samples(c) for c in chunks]
    batch = {"schema": SCHEMA_VERSION, "devices": list(devices), "chunks": list(chunks)}
    return json.dumps(_json_safe(batch), separators=(",", ":"), allow_nan=False).encode("utf-8")


def content_type(samples_encoding: SampleEncoding) -> str:
    """The ``Content-Type`` of a body `dumps_batch` wrote with ``samples_encoding``."""
    return BINARY_CONTENT_TYPE if samples_encoding == BATCH_BINARY else JSON_CONTENT_TYPE


def dumps_binary_batch(devices: Sequence[DevicePayload], chunks: Sequence[ChunkPayload]) -> bytes:
    """Serialise a batch in the columnar binary form (module docstring).

    Args:
        devices: Every device the chunks refer to.
        chunks: The chunks; their samples may be JSON lists or base64 columns.

    Returns:
        The body, to send with ``Content-Type:`` `BINARY_CONTENT_TYPE`.
    """
    columns: dict[str, list[Any]] = {name: [] for name in SUMMARY_COLUMNS}
    for optional in OPTIONAL_COLUMNS:
        if any(optional in chunk for chunk in chunks):
            columns[optional] = [cast("Mapping[str, Any]", c).get(optional) for c in chunks]
    sampled: list[bool] = []
    counter: list[bool] = []
    t_s, power_w, energy_j = array("d"), array("d"), array("d")
    for chunk in chunks:
        for name in SUMMARY_COLUMNS:
            columns[name].append(chunk[name])
        samples = chunk.get("samples")
        sampled.append(samples is not None)
        counter.append(samples is not None and samples.get("energy_j") is not None)
        if samples is None:
            continue
        binary = samples.get("encoding", SAMPLES_JSON) == SAMPLES_F64_BASE64
        for name, out in (("t_s", t_s), ("power_w", power_w), ("energy_j", energy_j)):
            column = samples.get(name)
            if column is None:
                continue
            if binary or isinstance(column, str):
                out.extend(decode_column(str(column)))
            else:
                out.extend(cast("list[float]", column))
    header = {
        "schema": SCHEMA_VERSION,
        "devices": list(devices),
        "chunks": {**columns, "sampled": sampled, "counter": counter},
    }
    text = json.dumps(_json_safe(header), separators=(",", ":"), allow_nan=False).encode()
    text += b" " * (-len(text) % 8)
    if sys.byteorder == "big":
        for block in (t_s, power_w, energy_j):
            block.byteswap()
    return b"".join(
        [
            BINARY_MAGIC,
            _HEADER_LENGTH.pack(len(text)),
            text,
            t_s.tobytes(),
            power_w.tobytes(),
            energy_j.tobytes(),
        ]
    )


def split_binary_batch(body: bytes) -> tuple[bytes, memoryview]:
    """The JSON header and the float64 blocks of a binary batch, without copying the blocks.

    Raises:
        ValueError: Not a binary batch (magic), or a header length past the body's end.
    """
    if body[:4] != BINARY_MAGIC:
        raise ValueError(f"a binary batch starts with {BINARY_MAGIC!r}, got {body[:4]!r}")
    if len(body) < 8:
        raise ValueError("the body ends before the header length")
    (length,) = _HEADER_LENGTH.unpack_from(body, 4)
    if 8 + length > len(body):
        raise ValueError(f"header length {length} runs past the body's {len(body)} bytes")
    return body[8 : 8 + length], memoryview(body)[8 + length :]


def loads_binary_batch(body: bytes) -> IngestBatch:
    """Inverse of `dumps_binary_batch`: the batch with JSON-list samples (for tools and tests;
    the service validates binary batches its own, vectorised way).

    Raises:
        ValueError: Not a well-formed binary batch.
    """
    text, blocks = split_binary_batch(body)
    header = json.loads(text)
    columns = header["chunks"]
    values = array("d")
    values.frombytes(blocks.tobytes())
    if sys.byteorder == "big":
        values.byteswap()
    sampled, counter = columns["sampled"], columns["counter"]
    total = sum(n for n, s in zip(columns["n"], sampled, strict=True) if s)
    cursor = {"t_s": 0, "power_w": total, "energy_j": 2 * total}
    chunks: list[ChunkPayload] = []
    for i in range(len(columns["device_key"])):
        chunk: dict[str, Any] = {name: columns[name][i] for name in SUMMARY_COLUMNS}
        for name in OPTIONAL_COLUMNS:
            if name in columns and columns[name][i] is not None:
                chunk[name] = columns[name][i]
        for name in ("energy_high_j", "bound_above_j"):
            if chunk[name] == "inf":
                chunk[name] = math.inf
        if sampled[i]:
            samples: dict[str, list[float]] = {}
            for name in ("t_s", "power_w", "energy_j") if counter[i] else ("t_s", "power_w"):
                start = cursor[name]
                samples[name] = values[start : start + chunk["n"]].tolist()
                cursor[name] = start + chunk["n"]
            chunk["samples"] = samples
        chunks.append(cast(ChunkPayload, chunk))
    if cursor["energy_j"] != len(values):
        raise ValueError(f"{len(values)} values in the blocks; the header accounts for {cursor}")
    return {"schema": header["schema"], "devices": header["devices"], "chunks": chunks}


def encode_column(values: Iterable[float]) -> str:
    """Base64 of ``values`` as little-endian float64 (the ``"f64le-base64"`` encoding).

    Args:
        values: The column (any iterable of floats; NaN and infinities are encoded as given).

    Returns:
        ASCII base64 text, 8 bytes per value before encoding.
    """
    packed = array("d", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def decode_column(text: str) -> array[float]:
    """Inverse of `encode_column`.

    Args:
        text: Standard base64 (no whitespace) of little-endian float64 values.

    Returns:
        The values as ``array('d')`` in native byte order (zero-copy for ``numpy.frombuffer``).

    Raises:
        ValueError: Not base64, or not a whole number of 8-byte values.
    """
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(f"not base64: {e}") from e
    if len(raw) % 8:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float64 values")
    values = array("d")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def _with_binary_samples(chunk: ChunkPayload) -> ChunkPayload:
    samples = chunk.get("samples")
    if samples is None or samples.get("encoding", SAMPLES_JSON) != SAMPLES_JSON:
        return chunk
    binary: SamplesPayload = {"encoding": SAMPLES_F64_BASE64, "t_s": "", "power_w": ""}
    for name in ("t_s", "power_w", "energy_j"):
        column = samples.get(name)
        if isinstance(column, list):
            binary[name] = encode_column(column)
    return {**chunk, "samples": binary}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # Sample columns are long lists of finite floats: one sum (finite exactly when every
        # element is finite, unless it overflows, which falls back) beats a call per element.
        if value and all(type(v) is float for v in value) and math.isfinite(sum(value)):
            return list(value)
        return [_json_safe(v) for v in value]
    return value
