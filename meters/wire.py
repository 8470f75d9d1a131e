"""The wire schema between meters and the service: the only code of ours both sides share.

Standard library only (the service imports it too; the meter must stay light). A meter sends an
**ingest batch** as JSON to ``POST /api/v1/runs/{run_id}/chunks``::

    {
      "schema": 1,
      "devices": [DevicePayload, ...],   # every device the chunks refer to (idempotent upsert)
      "chunks":  [ChunkPayload, ...]     # sealed chunks, any order, any devices
    }

A chunk is identified by ``(run_id, device_key, seq)``: that key is the idempotency key. The
service acknowledges a repeat of a stored chunk with identical content (same `content_hash`)
as ``duplicate`` and stores nothing; a repeat with different content is a conflict (409).

Samples travel columnar: ``t_s`` (unix seconds), ``power_w`` (NaN-free; absent readings are
dropped before sealing, which the summary's gap fields account for) and optionally
``energy_j`` (the raw counter in joules, as read, so the service can re-derive and audit).
Every number's unit is in its name.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict

SCHEMA_VERSION = 1
METHODS = ("counter", "power_avg", "power_instant", "estimate", "mixed")
DEVICE_KINDS = ("gpu", "cpu", "dram", "other")

Method = Literal["counter", "power_avg", "power_instant", "estimate", "mixed"]


class DevicePayload(TypedDict):
    """A device as the meter saw it. ``key`` is unique within the run (e.g. ``host/GPU-uuid``)."""

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


class SamplesPayload(TypedDict):
    """Raw samples of one chunk, columnar, equal lengths."""

    t_s: list[float]
    power_w: list[float]
    energy_j: NotRequired[list[float] | None]


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
    samples: NotRequired[SamplesPayload]


class IngestBatch(TypedDict):
    """What a meter POSTs."""

    schema: int
    devices: list[DevicePayload]
    chunks: list[ChunkPayload]


def content_hash(chunk: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a chunk's canonical JSON, excluding nothing: summary and samples.

    Both sides compute it the same way, so a repeated chunk is recognised as identical or
    conflicting without comparing columns one by one. Floats are serialised with ``repr``
    precision by `json`; infinities (an unbounded ``energy_high_j``) are written as strings.
    """
    canonical = json.dumps(_json_safe(chunk), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dumps_batch(devices: Sequence[DevicePayload], chunks: Sequence[ChunkPayload]) -> bytes:
    """Serialise a batch (infinities as ``"inf"`` strings, since JSON has none)."""
    batch = {"schema": SCHEMA_VERSION, "devices": list(devices), "chunks": list(chunks)}
    return json.dumps(_json_safe(batch), separators=(",", ":"), allow_nan=False).encode("utf-8")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
