"""Power envelopes for charts: per device, min / mean / max power in a bounded number of buckets.

A 30-day run sampled at 10 Hz holds 2.6·10⁷ samples per GPU; a chart about 1000 px wide shows
about 1000 time buckets. Averaging into buckets would hide exactly what an operator looks for
(a power spike, a GPU dropping to idle), so each bucket keeps its **minimum and maximum** as well
as its mean: drawn as a band, a single-sample spike stays visible however long the run.

Two sources, chosen per run so the cost stays bounded whatever the run's length:

* **summaries** (long runs): one ``GROUP BY device, bucket`` over the chunk summary columns —
  ``MIN(min_power_w)``, ``MAX(max_power_w)`` and the duration-weighted mean of
  ``mean_power_w``. No sample blob is read, and the database returns at most
  ``buckets × devices`` rows. A chunk falls in the bucket of its start; since every chunk's
  min/max cover all its samples, a spike inside a chunk is in its bucket's max.
* **samples** (short runs): when the chunks are coarser than the buckets (fewer chunks per
  device than buckets) and the run holds at most `MAX_DECODE_SAMPLES` samples, the blobs are
  decoded (`db.samples`) and the buckets are cut from the samples themselves. A chunk whose
  samples were never sent, have expired or cannot be decoded contributes its summary instead.

Bucket width is the run's span over ``buckets``, but never finer than the sampling interval
(samples mode) or a chunk (summaries mode): a bucket narrower than the data would be empty
every other time, and an empty bucket reads as a gap. Buckets without data are left out, so a
real sampling gap shows as missing buckets.

The mean of a ``counter`` chunk comes from the energy counter while its min/max come from the
power sensor (`db.models.MEAN_IN_RANGE_METHODS`), so the mean may sit slightly outside the band.

Tenancy: `power_envelope` goes through `db.totals.run_usage`, which filters by project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast
from uuid import UUID

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.orm import Session

from .errors import InvalidInput, SampleCodecError
from .models import Chunk
from .records import DeviceAggregate, RunUsage
from .samples import decode_samples
from .totals import run_usage

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_BUCKETS",
    "MAX_DECODE_SAMPLES",
    "DeviceEnvelope",
    "PowerEnvelope",
    "envelope_of",
    "power_envelope",
]

#: Buckets per device when the caller does not say (about one per pixel of a wide chart).
DEFAULT_BUCKETS = 1000
#: Most buckets a caller may ask for.
MAX_BUCKETS = 5000
#: Most samples the samples mode decodes for one envelope; beyond it, summaries are used.
MAX_DECODE_SAMPLES = 2_000_000

_CHUNK_T = cast(sa.Table, Chunk.__table__)
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DeviceEnvelope:
    """One device's buckets (only those holding data), in time order.

    Attributes:
        device_id: The device's row id.
        key: The device key the run report uses (`db.records.DeviceAggregate.key`).
        host: Host name.
        index: Device index on its host.
        name: Device name as reported.
        bucket: Bucket numbers (0 … buckets − 1), ascending.
        min_power_w: Lowest power in each bucket, W.
        mean_power_w: Mean power in each bucket, W (sample mean, or chunk means weighted by
            duration).
        max_power_w: Highest power in each bucket, W.
    """

    device_id: int
    key: str
    host: str
    index: int
    name: str
    bucket: IntArray
    min_power_w: FloatArray
    mean_power_w: FloatArray
    max_power_w: FloatArray

    def __len__(self) -> int:
        return int(self.bucket.size)


@dataclass(frozen=True, slots=True)
class PowerEnvelope:
    """A run's power envelope: every device on one time grid.

    Attributes:
        t0_s: Start of bucket 0, unix s (the run's first sample).
        t1_s: End of the run's measurements, unix s.
        bucket_s: Bucket width, s.
        buckets: Number of buckets on the grid.
        source: ``samples`` (decoded raw samples) or ``summaries`` (chunk summary columns).
        devices: One envelope per device with measurements, in report order.
    """

    t0_s: float
    t1_s: float
    bucket_s: float
    buckets: int
    source: Literal["samples", "summaries"]
    devices: tuple[DeviceEnvelope, ...]

    def start_s(self, device: DeviceEnvelope) -> FloatArray:
        """Start of each of ``device``'s buckets, unix s."""
        starts: FloatArray = self.t0_s + device.bucket.astype(np.float64) * self.bucket_s
        return starts

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: per device, parallel lists (bucket start relative to ``t0_s``)."""
        return {
            "t0_s": self.t0_s,
            "t1_s": self.t1_s,
            "bucket_s": self.bucket_s,
            "buckets": self.buckets,
            "source": self.source,
            "devices": [
                {
                    "key": d.key,
                    "host": d.host,
                    "index": d.index,
                    "name": d.name,
                    "offset_s": (d.bucket.astype(np.float64) * self.bucket_s).tolist(),
                    "min_power_w": d.min_power_w.tolist(),
                    "mean_power_w": d.mean_power_w.tolist(),
                    "max_power_w": d.max_power_w.tolist(),
                }
                for d in self.devices
            ],
        }


def power_envelope(
    session: Session,
    *,
    project_id: int,
    run_id: UUID,
    buckets: int = DEFAULT_BUCKETS,
    max_decode_samples: int = MAX_DECODE_SAMPLES,
) -> PowerEnvelope:
    """The run's power envelope with at most ``buckets`` buckets per device.

    Args:
        session: The caller's session.
        project_id: The project (a run of another project is not found).
        run_id: The run.
        buckets: Grid size, 1 … `MAX_BUCKETS`.
        max_decode_samples: Most samples to decode before falling back to summaries.

    Raises:
        NotFound: No such run in the project.
        InvalidInput: ``buckets`` out of range.
    """
    usage = run_usage(session, project_id=project_id, run_id=run_id)
    return envelope_of(session, usage=usage, buckets=buckets, max_decode_samples=max_decode_samples)


def envelope_of(
    session: Session,
    *,
    usage: RunUsage,
    buckets: int = DEFAULT_BUCKETS,
    max_decode_samples: int = MAX_DECODE_SAMPLES,
) -> PowerEnvelope:
    """`power_envelope` for a run already read with `db.totals.run_usage`.

    Raises:
        InvalidInput: ``buckets`` out of range.
    """
    if not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidInput.one("buckets", f"{buckets} is outside [1, {MAX_BUCKETS}]")
    devices = usage.devices
    if not devices:
        return PowerEnvelope(0.0, 0.0, 1.0, 0, "summaries", ())
    t0_s = min(d.t0_s for d in devices)
    t1_s = max(d.t1_s for d in devices)
    span_s = max(t1_s - t0_s, 0.0)
    use_samples = (
        max(d.chunks for d in devices) < buckets
        and sum(d.samples for d in devices) <= max_decode_samples
    )
    finest_s = max(_resolution_s(d, samples=use_samples) for d in devices)
    bucket_s = max(span_s / buckets, finest_s)
    if not bucket_s > 0:
        bucket_s = 1.0  # a single instant: one bucket of nominal width
    count = max(1, min(buckets, math.ceil(span_s / bucket_s)))
    grid = _Grid(t0_s=t0_s, bucket_s=bucket_s, count=count)
    key = usage.run.key
    if use_samples:
        per_device = _from_samples(session, key, grid)
    else:
        per_device = _from_summaries(session, key, grid)
    empty = np.empty(0)
    out = []
    for d in devices:
        b, lo, mean, hi = per_device.get(d.id, (np.empty(0, np.int64), empty, empty, empty))
        out.append(DeviceEnvelope(d.id, d.key, d.host, d.index, d.name, b, lo, mean, hi))
    return PowerEnvelope(
        t0_s=t0_s,
        t1_s=t1_s,
        bucket_s=bucket_s,
        buckets=count,
        source="samples" if use_samples else "summaries",
        devices=tuple(out),
    )


@dataclass(frozen=True, slots=True)
class _Grid:
    t0_s: float
    bucket_s: float
    count: int

    def index(self, t_s: FloatArray) -> IntArray:
        raw = np.floor((t_s - self.t0_s) / self.bucket_s)
        clipped: IntArray = np.clip(raw, 0, self.count - 1).astype(np.int64)
        return clipped


_Buckets = tuple[IntArray, FloatArray, FloatArray, FloatArray]


def _resolution_s(device: DeviceAggregate, *, samples: bool) -> float:
    """Finest meaningful bucket for a device: its mean sample interval, or its mean chunk."""
    span_s = max(device.t1_s - device.t0_s, 0.0)
    pieces = device.samples - 1 if samples else device.chunks
    return span_s / pieces if pieces > 0 else 0.0


def _bucket_expression(dialect: str, offset: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    # floor() of a non-negative offset; SQLite's CAST truncates toward zero (= floor here) and
    # has no floor() unless built with the math functions; PostgreSQL's CAST rounds instead.
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(offset), sa.BigInteger)
    return sa.cast(offset, sa.BigInteger)


def _from_summaries(session: Session, run_id: UUID, grid: _Grid) -> dict[int, _Buckets]:
    c = _CHUNK_T.c
    dialect = session.get_bind().dialect.name
    bucket = _bucket_expression(
        dialect, (c.t0_s - sa.literal(grid.t0_s)) / sa.literal(grid.bucket_s)
    ).label("bucket")
    duration = c.t1_s - c.t0_s
    rows = session.execute(
        sa.select(
            c.device_id,
            bucket,
            sa.func.min(c.min_power_w),
            sa.func.max(c.max_power_w),
            sa.func.sum(c.mean_power_w * duration),
            sa.func.sum(duration),
            sa.func.avg(c.mean_power_w),
        )
        .where(c.run_id == run_id)
        .group_by(c.device_id, bucket)
        .order_by(c.device_id, bucket)
    ).all()
    if not rows:
        return {}
    table = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    device = table[:, 0].astype(np.int64)
    index = np.clip(table[:, 1], 0, grid.count - 1).astype(np.int64)
    weighted, seconds, plain = table[:, 4], table[:, 5], table[:, 6]
    mean = np.where(seconds > 0, weighted / np.where(seconds > 0, seconds, 1.0), plain)
    out: dict[int, _Buckets] = {}
    for dev in np.unique(device):
        rows_of = device == dev
        # The clip can fold the last bucket's overflow into it: merge equal indexes again.
        b, first = np.unique(index[rows_of], return_index=True)
        lo = np.minimum.reduceat(table[rows_of, 2], first)
        hi = np.maximum.reduceat(table[rows_of, 3], first)
        w = seconds[rows_of]
        total_w = np.add.reduceat(w, first)
        mean_sum = np.add.reduceat(mean[rows_of] * w, first)
        plain_mean = np.add.reduceat(mean[rows_of], first) / np.diff(
            np.append(first, rows_of.sum())
        )
        m = np.where(total_w > 0, mean_sum / np.where(total_w > 0, total_w, 1.0), plain_mean)
        out[int(dev)] = (b, lo, m, hi)
    return out


def _decoded(blob: bytes | None) -> dict[str, npt.NDArray[Any]] | None:
    """The chunk's sample columns; None when it has none or they cannot be read (a damaged
    blob must not take the chart down: the chunk's summary stands in, as for expired ones)."""
    if blob is None:
        return None
    try:
        return decode_samples(blob)
    except SampleCodecError:
        return None


def _from_samples(session: Session, run_id: UUID, grid: _Grid) -> dict[int, _Buckets]:
    c = _CHUNK_T.c
    rows = session.execute(
        sa.select(c.device_id, c.t0_s, c.min_power_w, c.mean_power_w, c.max_power_w, c.samples)
        .where(c.run_id == run_id)
        .order_by(c.device_id, c.t0_s)
    ).all()
    times: dict[int, list[FloatArray]] = {}
    lows: dict[int, list[FloatArray]] = {}
    means: dict[int, list[FloatArray]] = {}
    highs: dict[int, list[FloatArray]] = {}
    for device_id, t0_s, min_w, mean_w, max_w, blob in rows:
        columns = _decoded(blob)
        if columns is not None and "t_s" in columns and "power_w" in columns:
            t = float(t0_s) + columns["t_s"].astype(np.float64)
            p = columns["power_w"].astype(np.float64)
            keep = np.isfinite(t) & np.isfinite(p)
            t, p = t[keep], p[keep]
            lo = hi = mean = p
        else:  # no raw samples: the chunk's summary stands for it, at its start
            t = np.array([float(t0_s)])
            lo, mean, hi = (
                np.array([float(min_w)]),
                np.array([float(mean_w)]),
                np.array([float(max_w)]),
            )
        times.setdefault(device_id, []).append(t)
        lows.setdefault(device_id, []).append(lo)
        means.setdefault(device_id, []).append(mean)
        highs.setdefault(device_id, []).append(hi)
    out: dict[int, _Buckets] = {}
    for device_id, parts in times.items():
        t = np.concatenate(parts)
        if t.size == 0:
            continue
        order = np.argsort(t, kind="stable")
        index = grid.index(t[order])
        lo = np.concatenate(lows[device_id])[order]
        mean = np.concatenate(means[device_id])[order]
        hi = np.concatenate(highs[device_id])[order]
        b, first = np.unique(index, return_index=True)
        counts = np.diff(np.append(first, index.size))
        out[int(device_id)] = (
            b,
            np.minimum.reduceat(lo, first),
            np.add.reduceat(mean, first) / counts,
            np.maximum.reduceat(hi, first),
        )
    return out
