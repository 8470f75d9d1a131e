"""Per-device chunking: samples in, sealed wire chunks out, tiled by the left-sample rule.

A `DeviceChunker` holds the samples of one device's open chunk (time, power, raw counter) in
Python lists, since at 10 Hz an append costs less than a store into a numpy array, and hands out
a `SealJob` when a chunk is complete. `seal` turns the jobs of a tick, across devices, into wire
chunks with `accounting.integrate.summarize_chunks`, the same kernel the service uses, so meter
and service compute a chunk's figures by the same rules. The kernel costs a few hundred
microseconds per call and little per sample, so the chunks due together (every device's, once
per chunk period) go through one call per group of devices with the same `PowerModel`, as
segments: 8 GPUs seal for about the cost of one.

Chunk boundaries
    Samples fall into time bins of ``chunk_s`` seconds aligned to the sampler's start. Following
    the kernel's left-sample rule, chunk k ends at the first sample of chunk k+1 (its last
    interval bridges the two), so chunk k is sealed when that **bridge** sample arrives: the
    sealed chunk spans ``[t0_s, t1_s]`` with ``t1_s`` the bridge's time, and the bridge opens
    chunk k+1. Consecutive chunks therefore tile time with no hole and no overlap, and the
    energy of the interval between them is counted once, in chunk k.

    Two seals happen without a bridge: `DeviceChunker.flush` (stop, SIGTERM, an explicit flush)
    and `DeviceChunker.seal_stale` (the device sent nothing for a whole chunk period, e.g. it
    fell off the bus: its samples are made durable instead of waiting in memory). Such a chunk
    ends at its own last sample, and that sample is **carried** to open the next chunk, so
    tiling still holds: if the device comes back, the next chunk's first interval spans the
    outage and the kernel reports it as a gap (and, for a counter, still counts the energy the
    counter integrated through it).

Wire samples
    A chunk's ``samples`` are its own ``n`` samples (``n == len(t_s)``, as the service checks);
    a bridged chunk's ``t1_s`` is the first sample of the next chunk, so re-deriving its last
    interval needs that sample too. A carried sample belongs to both chunks it joins (counted in
    both ``n``). Times on the wire are unix seconds: the monotonic time since the sampler's
    start plus the unix time of that start (a wall-clock step never makes time go back inside a
    run). The kernel integrates the run-relative seconds, which keep full float64 resolution;
    unix seconds near 1.7e9 resolve only 0.24 µs, enough to push a steady counter chunk's mean
    power 1e-8 outside its sampled range.

Which energy figure
    A chunk uses the counter (method ``counter``) when the device has one and every sample of
    the chunk, bridge included, carries a counter value; otherwise the power trace with the
    device's power method. A device with a counter but no power reading (RAPL) gets its power
    samples from counter differences (mean power over the preceding interval; the very first
    sample takes the rate of the interval after it), since the wire format needs a power column.

Memory activity
    Where the backend reports how busy a device's memory was (`base.ActivityReader`, read about
    once a second by the sampler, not every tick), the readings go to `DeviceChunker.add_activity`
    and each sealed chunk carries their **time-weighted mean** as ``mem_busy_frac`` (absent when
    the chunk has none). A reading covers the driver's last sample period, i.e. the time *before*
    it: each one stands for the interval back to the previous reading (at most
    `ACTIVITY_HOLD_S`, so a reading after a long outage does not speak for all of it), clipped
    to the chunk's span; a failed reading (NaN) leaves its interval unobserved. The part of a
    chunk after its last reading is left to the next reading, which belongs to the next chunk.

Uncertainty
    The band comes from the kernel. Sensor errors are the backend's `UncertaintyHint` when it
    states one, else the kernel's defaults (NVML's ±5 % or ±5 W). The power limit, when known,
    is the ceiling of every bound (``max_power_w``). What a reading represents in time comes
    from the hint's ``power_window_s`` (`reading_model`):

    * ``power_avg`` with a known window w: the kernel corrects the w/2 lag of the moving
      average and adds its residual ((ceiling − floor) × w/8 per chunk edge) to the band. The
      chunk keeps its sample times as ``t0_s``/``t1_s``: the correction estimates the energy
      of exactly that window, so chunks of any method tile the same time line. An averaged
      reading of unknown window is integrated as is (no backend reports one today).
    * ``power_instant``: the reading covers w of every interval Δ, so the coverage fraction
      is min(1, w/Δ); w = 0 (a point sample, as the simulated backend states) gives coverage
      0. An **unknown** window (NVML's instantaneous readings, GA100, pre-Ampere GPUs) is
      treated as a point sample too: pulses shorter than Δ alias into a point-sampled trace
      by tens of percent (70 ms pulses every 100 ms: +8.5 % over a whole run; a 0.25 s square
      wave: ±25 % per chunk). The unseen part of each interval is bounded by the range of the
      chunk's own readings, widened by a tenth of it (the kernel's "Unseen power": it holds
      whenever every level the load visits in the chunk shows in one of its readings, and is
      nil on a steady load). Prefer the counter where the device has one (the chunk then uses
      it and this band does not apply), else the driver's average (NVML's default here).
    * ``estimate``: taken as it is (coverage 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import numpy as np

from thermoledger.accounting.integrate import (
    SENSOR_ABS_ERROR_W,
    SENSOR_REL_ERROR,
    ChunkSummaries,
    InvalidArgument,
    PowerMethod,
    PowerModel,
    covered_by,
    summarize_chunks,
)

from .backends.base import DeviceInfo, FloatArray, Method
from .wire import ChunkPayload, DevicePayload, SamplesPayload
from .wire import Method as WireMethod

_LOG = logging.getLogger(__name__)

__all__ = [
    "ACTIVITY_HOLD_S",
    "DeviceChunker",
    "DeviceSummary",
    "SealJob",
    "chunk_payload",
    "counted_devices",
    "device_payload",
    "reading_model",
    "seal",
]

_WIRE_METHODS: Final[dict[str, WireMethod]] = {
    "counter": "counter",
    "power_avg": "power_avg",
    "power_instant": "power_instant",
    "estimate": "estimate",
}
# A sample exactly on a bin edge must land in the later bin despite float rounding of t - start.
_BIN_EPS: Final = 1e-9
ACTIVITY_HOLD_S: Final = 2.0
"""The longest interval one memory-activity reading stands for, s: the driver's sample period
is at most 1 s, so a reading speaks for its period and, at most, one missed reading before it."""
_ACTIVITY_KEEP: Final = 1024  # readings held for the open chunk at most (17 min at 1/s)


def device_payload(info: DeviceInfo, *, host: str) -> DevicePayload:
    """The wire description of a device, keyed ``host/uid`` (unique within a run).

    Args:
        info: The backend's description of the device.
        host: Host name the meter runs on.

    Returns:
        The `DevicePayload`; ``power_method`` is ``"counter"`` for a counter-only device (its
        power samples are derived from the counter) and ``"none"`` for one that offers nothing
        (such a device has no chunks, and the sampler keeps it out of the spool). ``kind``
        follows the device's scope; ``covers`` is sent only when the device covers a kind.
    """
    if info.power_method != Method.NONE:
        power_method = info.power_method.label
    else:
        power_method = "counter" if info.has_energy_counter else "none"
    payload: DevicePayload = {
        "key": f"{host}/{info.uid}",
        "host": host,
        "kind": info.kind,
        "index": info.index,
        "uid": info.uid,
        "name": info.name,
        "power_limit_w": info.power_limit_w,
        "has_energy_counter": info.has_energy_counter,
        "power_method": power_method,
        "simulated": info.simulated,
        "mig": info.mig,
    }
    if info.covers:
        payload["covers"] = list(info.covers)
    return payload


def reading_model(info: DeviceInfo, *, interval_s: float) -> tuple[float, float]:
    """How much of the time a device's power readings represent, for the kernel's band.

    Args:
        info: The device (its power method and `UncertaintyHint.power_window_s`).
        interval_s: The sampler's nominal interval, s.

    Returns:
        ``(coverage_fraction, averaging_window_s)``: the fraction of each interval the
        readings cover (in [0, 1]) and the moving-average window to correct for, s (0: none).
        See the module docstring for the rules and why an unknown instantaneous window
        counts as a point sample.
    """
    window_s = info.uncertainty.power_window_s
    if info.power_method == Method.POWER_AVG:
        return 1.0, window_s if window_s is not None and window_s > 0 else 0.0
    if info.power_method == Method.POWER_INSTANT:
        if window_s is None or not window_s > 0:
            return 0.0, 0.0
        return min(1.0, window_s / interval_s), 0.0
    return 1.0, 0.0


def chunk_payload(
    s: ChunkSummaries,
    k: int,
    *,
    device_key: str,
    seq: int,
    samples: SamplesPayload | None,
    origin_s: float = 0.0,
) -> ChunkPayload:
    """The wire chunk whose figures are entry ``k`` of the kernel's summaries ``s``.

    Args:
        s: `accounting.integrate.summarize_chunks` output (times relative to ``origin_s``).
        k: Which chunk of ``s``.
        device_key: The device's wire key.
        seq: The chunk's number for that device.
        samples: Its raw samples, or None to send the summary only.
        origin_s: Added to ``s``'s times to make them unix seconds.
    """
    payload: ChunkPayload = {
        "device_key": device_key,
        "seq": seq,
        "t0_s": float(s.t0_s[k]) + origin_s,
        "t1_s": float(s.t1_s[k]) + origin_s,
        "n": int(s.n[k]),
        "method": _WIRE_METHODS[str(s.method[k])],
        "energy_j": float(s.energy_j[k]),
        "energy_low_j": float(s.energy_low_j[k]),
        "energy_high_j": float(s.energy_high_j[k]),
        "sensor_uncertainty_j": float(s.sensor_uncertainty_j[k]),
        "bound_below_j": float(s.bound_below_j[k]),
        "bound_above_j": float(s.bound_above_j[k]),
        "min_power_w": float(s.min_power_w[k]),
        "mean_power_w": float(s.mean_power_w[k]),
        "max_power_w": float(s.max_power_w[k]),
        "gap_s": float(s.gap_s[k]),
        "gap_count": int(s.gap_count[k]),
        "reset_count": int(s.reset_count[k]),
        "wrap_count": int(s.wrap_count[k]),
    }
    if samples is not None:
        payload["samples"] = samples
    return payload


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """One device's figures so far: sealed chunks plus the open chunk integrated on the fly.

    Attributes:
        key: Device key (``host/uid``).
        uid: The device's stable identifier.
        name: The device's name.
        method: ``counter``, ``power_avg``, ``power_instant``, ``mixed`` (chunks differ), or
            ``none`` (no energy yet).
        energy_j: Best estimate, J.
        energy_low_j: Lower end of the band, J.
        energy_high_j: Upper end of the band, J (+inf when a counter reset is unbounded).
        sensor_uncertainty_j: Symmetric sensor part of the band, J.
        bound_below_j: One-sided worst-case width below, J.
        bound_above_j: One-sided worst-case width above, J.
        duration_s: Time covered by the samples, s (gaps included).
        mean_power_w: energy_j / duration_s, W (NaN before two samples).
        min_power_w: Lowest power sample, W (NaN before any sample).
        peak_power_w: Highest power sample, W (NaN before any sample).
        samples: Readings kept as samples.
        chunks_sealed: Chunks sealed so far.
        gap_count: Gaps the kernel found (intervals longer than 3 nominal intervals).
        gap_s: Total length of those gaps, s.
        reset_count: Counter resets seen.
        wrap_count: Counter wraps seen.
        missed: Readings that were not samples, by reason: a `DeviceStatus` label (``lost``,
            ``error``, ``not_supported``, ``denied``), ``exception`` (the read raised),
            ``slow`` (a tick went on without the device: its previous read was still running),
            ``no_power`` / ``no_counter`` (the figure a sample needs is absent with no status)
            or ``repeat`` (time did not advance).
        status: Status label of the latest reading (``slow`` while the sampler waits for a
            read that outlasted a tick).
        message: The latest non-empty status message.
        kind: ``gpu``, ``cpu`` or ``dram`` (`meters.backends.base.DeviceInfo.kind`).
        covers: Other kinds on the host whose energy this device's figures include; the
            devices it covers are left out of totals (`accounting.integrate.covered_by`).
    """

    key: str
    uid: str
    name: str
    method: str
    energy_j: float
    energy_low_j: float
    energy_high_j: float
    sensor_uncertainty_j: float
    bound_below_j: float
    bound_above_j: float
    duration_s: float
    mean_power_w: float
    min_power_w: float
    peak_power_w: float
    samples: int
    chunks_sealed: int
    gap_count: int
    gap_s: float
    reset_count: int
    wrap_count: int
    missed: dict[str, int]
    status: str
    message: str
    kind: str = "gpu"
    covers: tuple[str, ...] = ()


def counted_devices(devices: Sequence[DeviceSummary], *, host: str) -> list[DeviceSummary]:
    """The devices of one host that a total adds: all but those another device covers.

    A device listed in another's ``covers`` kinds (the CPU inside a GH200-class module's
    figure) keeps its own line in every table but is never added to a total a second time
    (`accounting.integrate.covered_by`).
    """
    flags = covered_by(
        [host] * len(devices), [d.kind for d in devices], [d.covers for d in devices]
    )
    return [d for d, by in zip(devices, flags, strict=True) if by is None]


@dataclass(slots=True)
class _Totals:
    """Running sums over sealed chunks (one device)."""

    chunks: int = 0
    energy_j: float = 0.0
    sensor_j: float = 0.0
    below_j: float = 0.0
    above_j: float = 0.0
    duration_s: float = 0.0
    gap_count: int = 0
    gap_s: float = 0.0
    reset_count: int = 0
    wrap_count: int = 0
    methods: set[str] = field(default_factory=set)

    def add(self, s: ChunkSummaries, i: int) -> None:
        self.chunks += 1
        self.energy_j += float(s.energy_j[i])
        self.sensor_j += float(s.sensor_uncertainty_j[i])
        self.below_j += float(s.bound_below_j[i])
        self.above_j += float(s.bound_above_j[i])
        self.duration_s += float(s.t1_s[i] - s.t0_s[i])
        self.gap_count += int(s.gap_count[i])
        self.gap_s += float(s.gap_s[i])
        self.reset_count += int(s.reset_count[i])
        self.wrap_count += int(s.wrap_count[i])
        self.methods.add(str(s.method[i]))


@dataclass(slots=True, eq=False)
class SealJob:
    """A chunk waiting to be summarised: its samples, with the bridge last when ``bridged``.

    Made by `DeviceChunker.add` (a bridge arrived), `DeviceChunker.cut` (a window's edge),
    `DeviceChunker.flush` and `DeviceChunker.seal_stale`; turned into a wire chunk by `seal`.
    The chunker has already moved on (its open chunk starts with the bridge or the carried
    sample).

    Attributes:
        chunker: The device's chunker.
        t_s: Sample times, s since the sampler's start.
        power_w: Power samples, W.
        counter_j: Raw counter samples, J (NaN where absent).
        bridged: The last sample is the next chunk's first (not one of this chunk's own).
    """

    chunker: DeviceChunker
    t_s: list[float]
    power_w: list[float]
    counter_j: list[float]
    bridged: bool


class DeviceChunker:
    """Buffers one device's samples and hands out its chunks to seal (`SealJob`, `seal`).

    Not thread-safe: the sampler serialises calls under its lock.

    Args:
        info: The device.
        key: Its device key within the run.
        first_seq: Sequence number of the first chunk sealed (after a restart: one past the
            highest stored).
        interval_s: The sampler's nominal interval, s (gap detection).
        chunk_s: Chunk length, s.
        origin_mono_s: Monotonic time of bin 0's start, s.
        unix_offset_s: Unix time minus monotonic time, s (added to every sample time).
    """

    def __init__(
        self,
        info: DeviceInfo,
        *,
        key: str,
        first_seq: int,
        interval_s: float,
        chunk_s: float,
        origin_mono_s: float,
        unix_offset_s: float,
    ) -> None:
        self.info = info
        self.key = key
        self.next_seq = first_seq
        self._interval_s = interval_s
        self._chunk_s = chunk_s
        self._origin_mono_s = origin_mono_s
        self._origin_unix_s = origin_mono_s + unix_offset_s
        self._derive_power = info.power_method == Method.NONE and info.has_energy_counter
        method: PowerMethod = (
            "power_avg"
            if info.power_method == Method.POWER_AVG
            else "estimate"
            if info.power_method == Method.ESTIMATE
            else "power_instant"
        )
        hint = info.uncertainty
        stated = hint.power_rel > 0 or hint.power_abs_w > 0
        coverage, window_s = reading_model(info, interval_s=interval_s)
        model = partial(
            PowerModel,
            method=method,
            nominal_interval_s=interval_s,
            sensor_rel_error=hint.power_rel if stated else SENSOR_REL_ERROR,
            sensor_abs_error_w=hint.power_abs_w if stated else SENSOR_ABS_ERROR_W,
            coverage_fraction=coverage,
            averaging_window_s=window_s,
        )
        # Checked here, once. A power limit the model refuses (a driver reporting 0 W, say)
        # must not take the job down: the bounds fall back to the trace's own peak.
        try:
            self._model = model(max_power_w=info.power_limit_w)
        except InvalidArgument as e:
            _LOG.warning(
                "%s: unusable power limit (%s); its bounds use the measured peak instead", key, e
            )
            self._model = model(max_power_w=None)
        self._wrap_j = info.counter_wrap_j
        # The open chunk, in lists: an append costs less than a store into a numpy array, and
        # the arrays the kernel needs are built once per chunk. Times are seconds since the
        # origin (full float64 resolution).
        self._t: list[float] = []
        self._p: list[float] = []
        self._c: list[float] = []
        self._bin = 0
        self._patch_first_power = False
        self._last_t_s = -math.inf
        self._last_mono_s = -math.inf
        self._totals = _Totals()
        self._samples = 0
        self._min_w = math.inf
        self._max_w = -math.inf
        self.missed: dict[str, int] = {}
        self.status = "ok"
        self.message = ""
        # Memory-activity readings not yet given to a sealed chunk: (time since the origin, s;
        # fraction or NaN), and the time of the last reading given to one.
        self._activity: list[tuple[float, float]] = []
        self._activity_last_s = -math.inf

    # -- samples ------------------------------------------------------------------------------

    def add_activity(self, t_mono_s: float, busy_frac: float) -> None:
        """Take one memory-activity reading (module docstring, "Memory activity").

        Args:
            t_mono_s: Monotonic time of the reading, s.
            busy_frac: Fraction of the driver's last sample period memory was busy, in [0, 1];
                NaN: no reading (its interval stays unobserved).
        """
        activity = self._activity
        activity.append((t_mono_s - self._origin_mono_s, busy_frac))
        if len(activity) > _ACTIVITY_KEEP:  # a device that seals nothing (lost): keep the latest
            del activity[0]

    def add(
        self, t_mono_s: float, power_w: float, counter_j: float, status: str = "ok"
    ) -> SealJob | None:
        """Take one reading; returns the chunk it completed as a bridge, to `seal`.

        Args:
            t_mono_s: Monotonic time of the reading, s.
            power_w: Power, W (NaN: none).
            counter_j: Raw counter, J (NaN: none).
            status: The reading's `DeviceStatus` label, the reason counted when the reading is
                not a sample.

        Returns:
            The chunk to seal when this sample is the first of a new bin, else None. A reading
            that is not a sample (no power; for a counter-only device no counter; or time not
            advancing) is counted in `missed` and returns None.
        """
        t_rel_s = t_mono_s - self._origin_mono_s
        t_s = t_rel_s + self._origin_unix_s
        # x != x: NaN (no call per device and tick)
        if self._derive_power:
            if counter_j != counter_j:
                self.miss(status if status != "ok" else "no_counter")
                return None
        elif power_w != power_w:
            self.miss(status if status != "ok" else "no_power")
            return None
        if not t_s > self._last_t_s:
            self.miss("repeat")
            return None
        if self._derive_power:
            power_w = self._derived_power_w(t_mono_s, counter_j)
        self._last_t_s = t_s
        self._last_mono_s = t_mono_s
        self._samples += 1
        if power_w < self._min_w:
            self._min_w = power_w
        if power_w > self._max_w:
            self._max_w = power_w
        bin_ = math.floor(t_rel_s / self._chunk_s + _BIN_EPS)
        job = None
        t = self._t
        if t and bin_ > self._bin:
            t.append(t_rel_s)
            self._p.append(power_w)
            self._c.append(counter_j)
            job = SealJob(self, t, self._p, self._c, bridged=True)
            self._t, self._p, self._c = [t_rel_s], [power_w], [counter_j]
        else:
            t.append(t_rel_s)
            self._p.append(power_w)
            self._c.append(counter_j)
        self._bin = bin_
        return job

    def take(
        self, t_mono_s: Sequence[float], power_w: Sequence[float], counter_j: Sequence[float]
    ) -> None:
        """Take plain readings in a row, as `add` would one by one: the sampler's fast path.

        Plain means: the chunker is `steady`, every power is a number (every counter, where power
        is `derived <derives_power>` from it), every time is later than the one before it (and
        than the last sample, by more than the rounding of unix times) and lies in the open
        chunk's bin. The caller checks that; nothing here does.
        """
        origin_s = self._origin_mono_s
        t_rel_s = [t - origin_s for t in t_mono_s]
        if self._derive_power:  # a counter-only device: the power of each interval, as `add`
            wrap_j = self.info.counter_wrap_j
            before_s, before_j = self._last_mono_s, self._c[-1]
            power_w = []
            for t, c in zip(t_mono_s, counter_j, strict=True):
                power_w.append(_interval_power_w(c - before_j, c, t - before_s, wrap_j))
                before_s, before_j = t, c
        self._t.extend(t_rel_s)
        self._p.extend(power_w)
        self._c.extend(counter_j)
        self._samples += len(t_rel_s)
        low_w, high_w = min(power_w), max(power_w)
        if low_w < self._min_w:
            self._min_w = low_w
        if high_w > self._max_w:
            self._max_w = high_w
        self._last_t_s = t_rel_s[-1] + self._origin_unix_s
        self._last_mono_s = t_mono_s[-1]

    @property
    def steady(self) -> bool:
        """Whether `take` may be used: an open chunk whose first power is known, readings OK."""
        return bool(self._t) and self.status == "ok" and not self._patch_first_power

    @property
    def derives_power(self) -> bool:
        """Whether power comes from the counter's differences (a counter-only device)."""
        return self._derive_power

    @property
    def last_mono_s(self) -> float:
        """Monotonic time of the last sample, s (-inf before any)."""
        return self._last_mono_s

    @property
    def last_counter_j(self) -> float:
        """The raw counter of the last sample, J (NaN: none, or no sample held)."""
        return self._c[-1] if self._c else math.nan

    @property
    def bin_end_mono_s(self) -> float:
        """Monotonic time where the open chunk's bin ends, s."""
        return self._origin_mono_s + (self._bin + 1) * self._chunk_s

    def drop_open_chunk(self, reason: str) -> None:
        """Forget the open chunk's samples, counting them as missed for ``reason``.

        The next sample starts afresh (the chunks tile no more across the drop).
        """
        if self._t:
            self.missed[reason] = self.missed.get(reason, 0) + len(self._t)
        self._t, self._p, self._c = [], [], []
        self._patch_first_power = False

    def miss(self, reason: str) -> None:
        """Count a reading that was not a sample, by reason."""
        self.missed[reason] = self.missed.get(reason, 0) + 1

    def seal_stale(self, t_mono_s: float) -> SealJob | None:
        """Hand out the open chunk without a bridge if a whole chunk period passed with no sample.

        Args:
            t_mono_s: Monotonic time now, s.

        Returns:
            The chunk to seal, or None.
        """
        if self.stale_bin(t_mono_s) >= self._bin + 2:
            return self.flush()
        return None

    def stale_bin(self, t_mono_s: float) -> int:
        """The bin of time ``t_mono_s``: `seal_stale` can only act when this moves on."""
        return math.floor((t_mono_s - self._origin_mono_s) / self._chunk_s + _BIN_EPS)

    def cut(self) -> SealJob | None:
        """End the open chunk at its last sample, which opens the next one (a window's edge).

        The sample just added (a synchronous reading at a run's or a phase's edge) becomes the
        bridge of the open chunk, exactly as the first sample of a new time bin does: the chunk
        sealed spans ``[t0_s, edge]`` and the next one starts at the edge, so a window whose
        edge is that sample's time covers whole chunks only, and its energy is the counter's
        difference at its edges. The time bins are not moved: the new chunk ends at the bin's
        end as usual.

        Returns:
            The chunk to seal, or None when the open chunk holds only the edge sample.
        """
        t = self._t
        if len(t) < 2:
            return None
        job = SealJob(self, t, self._p, self._c, bridged=True)
        self._t, self._p, self._c = [t[-1]], [self._p[-1]], [self._c[-1]]
        return job

    def flush(self) -> SealJob | None:
        """Hand out the open chunk without a bridge (stop, SIGTERM); its last sample is carried.

        Returns:
            The chunk to seal, or None when the open chunk holds fewer than two samples (a lone
            sample is already the end of the previous chunk, or the whole run is one instant).
        """
        t = self._t
        if len(t) < 2:
            return None
        job = SealJob(self, t, self._p, self._c, bridged=False)
        self._t, self._p, self._c = [t[-1]], [self._p[-1]], [self._c[-1]]
        return job

    # -- figures ------------------------------------------------------------------------------

    def summary(self) -> DeviceSummary:
        """Figures so far: sealed chunks plus the open chunk integrated now."""
        tot = self._totals
        energy, sensor, below, above = tot.energy_j, tot.sensor_j, tot.below_j, tot.above_j
        duration, gap_count, gap_s = tot.duration_s, tot.gap_count, tot.gap_s
        resets, wraps = tot.reset_count, tot.wrap_count
        methods = set(tot.methods)
        if len(self._t) >= 2 and not (self._derive_power and self._patch_first_power):
            tail = self._summarize(self._t, self._p, self._c, bridged=False)
            energy += float(tail.energy_j[0])
            sensor += float(tail.sensor_uncertainty_j[0])
            below += float(tail.bound_below_j[0])
            above += float(tail.bound_above_j[0])
            duration += float(tail.t1_s[0] - tail.t0_s[0])
            gap_count += int(tail.gap_count[0])
            gap_s += float(tail.gap_s[0])
            resets += int(tail.reset_count[0])
            wraps += int(tail.wrap_count[0])
            methods.add(str(tail.method[0]))
        method = methods.pop() if len(methods) == 1 else "mixed" if methods else "none"
        return DeviceSummary(
            key=self.key,
            uid=self.info.uid,
            name=self.info.name,
            method=method,
            energy_j=energy,
            energy_low_j=max(0.0, energy - sensor - below),
            energy_high_j=energy + sensor + above,
            sensor_uncertainty_j=sensor,
            bound_below_j=below,
            bound_above_j=above,
            duration_s=duration,
            mean_power_w=energy / duration if duration > 0 else math.nan,
            min_power_w=self._min_w if self._samples else math.nan,
            peak_power_w=self._max_w if self._samples else math.nan,
            samples=self._samples,
            chunks_sealed=tot.chunks,
            gap_count=gap_count,
            gap_s=gap_s,
            reset_count=resets,
            wrap_count=wraps,
            missed=dict(self.missed),
            status=self.status,
            message=self.message,
            kind=self.info.kind,
            covers=self.info.covers,
        )

    # -- sealing (through `seal`) -------------------------------------------------------------

    def finish(self, job: SealJob, s: ChunkSummaries, k: int) -> ChunkPayload:
        """The wire chunk of ``job``, whose figures are entry ``k`` of ``s``; numbers it."""
        self._totals.add(s, k)
        own = len(job.t_s) - 1 if job.bridged else len(job.t_s)
        origin_s = self._origin_unix_s
        # Python float addition is numpy's float64 addition: the same unix times either way.
        samples: SamplesPayload = {
            "t_s": [t + origin_s for t in job.t_s[:own]],
            "power_w": job.power_w[:own],
        }
        counter = job.counter_j[:own]
        if not any(c != c for c in counter):  # no NaN
            samples["energy_j"] = counter
        payload = chunk_payload(
            s, k, device_key=self.key, seq=self.next_seq, origin_s=origin_s, samples=samples
        )
        if self._activity:
            busy = self._mem_busy_frac(job.t_s[0], job.t_s[-1])
            if busy is not None:
                payload["mem_busy_frac"] = busy
        self.next_seq += 1
        return payload

    def _mem_busy_frac(self, t0_s: float, t1_s: float) -> float | None:
        """Time-weighted mean of the activity readings over ``[t0_s, t1_s]`` (times since the
        origin), consuming those up to ``t1_s``; None when no reading covers any of it."""
        pending = self._activity
        last_s = self._activity_last_s
        covered_s = busy_s = 0.0
        later: list[tuple[float, float]] = []
        for t_s, fraction in sorted(pending):
            if t_s > t1_s:
                later.append((t_s, fraction))
                continue
            start_s = max(last_s, t0_s, t_s - ACTIVITY_HOLD_S)
            if t_s > start_s and fraction == fraction:  # not NaN
                covered_s += t_s - start_s
                busy_s += (t_s - start_s) * min(max(fraction, 0.0), 1.0)
            last_s = max(last_s, t_s)
        self._activity = later
        self._activity_last_s = last_s
        return busy_s / covered_s if covered_s > 0 else None

    def abandon(self, job: SealJob) -> None:
        """The kernel refused ``job`` (a meter bug): its samples are missed (``internal``).

        The sample it carried or bridged into the open chunk goes too, so the next sample
        starts afresh, as `drop_open_chunk` leaves it.
        """
        own = len(job.t_s) - 1 if job.bridged else len(job.t_s)
        self.missed["internal"] = self.missed.get("internal", 0) + own
        self._t, self._p, self._c = [], [], []
        self._patch_first_power = False
        if self._activity:
            self._mem_busy_frac(job.t_s[0], job.t_s[-1])  # its readings go with it

    # -- internals ----------------------------------------------------------------------------

    def _derived_power_w(self, t_mono_s: float, counter_j: float) -> float:
        """Mean power over the interval ending at this sample, from the counter.

        The interval is taken on the monotonic clock: unix seconds near 1.7e9 resolve only
        0.24 µs, a 2e-6 relative error on a 0.1 s interval.
        """
        if not self._t:
            self._patch_first_power = True
            return math.nan
        power_w = _interval_power_w(
            counter_j - self._c[-1],
            counter_j,
            t_mono_s - self._last_mono_s,
            self.info.counter_wrap_j,
        )
        if self._patch_first_power:
            self._p[0] = power_w
            self._patch_first_power = False
            self._min_w = min(self._min_w, power_w)
            self._max_w = max(self._max_w, power_w)
        return power_w

    def _use_counter(self, counter_j: FloatArray) -> bool:
        return self.info.has_energy_counter and not bool(np.isnan(counter_j).any())

    def _summarize(
        self, t_s: list[float], power_w: list[float], counter_j: list[float], *, bridged: bool
    ) -> ChunkSummaries:
        """The kernel on one chunk's samples (the open chunk, or a job `seal` must isolate)."""
        m = len(t_s)
        c = np.array(counter_j, dtype=np.float64)
        return summarize_chunks(
            np.array(t_s, dtype=np.float64),
            np.array(power_w, dtype=np.float64),
            chunk_starts=[0, m - 1] if bridged else [0],
            counter_j=c if self._use_counter(c) else None,
            wrap_j=self._wrap_j,
            model=self._model,
        )


def seal(jobs: Sequence[SealJob]) -> tuple[list[ChunkPayload], list[tuple[SealJob, Exception]]]:
    """Seal chunks of any devices, one kernel call per group of devices with the same options.

    The kernel's cost is mostly per call (a few hundred µs), not per sample, so the sampler
    seals every chunk due in a tick together: the chunks are concatenated as segments of one
    `summarize_chunks` call per group (same `PowerModel`, counter modulus and counter use), each
    segment chunked at its bridge exactly as a lone call would chunk it. Segments never interact
    in the kernel, so each chunk's figures are those of a call of its own, up to float rounding
    (energies integrated from power may differ in the last bits, summed in another order).
    When a group's call fails, its chunks are sealed one by one, so only the chunk at fault is
    lost (`DeviceChunker.abandon`).

    Args:
        jobs: Chunks to seal; one device's in the order they were handed out.

    Returns:
        ``(payloads, failures)``: the wire chunks, numbered, in the order of ``jobs``; and the
        jobs the kernel refused, each with its exception.
    """
    groups: dict[tuple[PowerModel, float | None, bool], list[int]] = {}
    arrays: list[tuple[FloatArray, FloatArray, FloatArray]] = []
    for index, job in enumerate(jobs):
        c = np.array(job.counter_j, dtype=np.float64)
        arrays.append(
            (np.array(job.t_s, dtype=np.float64), np.array(job.power_w, dtype=np.float64), c)
        )
        key = (job.chunker._model, job.chunker._wrap_j, job.chunker._use_counter(c))
        groups.setdefault(key, []).append(index)
    results: list[tuple[ChunkSummaries, int] | Exception] = [
        RuntimeError("not sealed") for _ in jobs
    ]
    for (model, wrap_j, use_counter), members in groups.items():
        try:
            s = _summarize_group(
                [jobs[i] for i in members],
                [arrays[i] for i in members],
                model,
                wrap_j=wrap_j,
                use_counter=use_counter,
            )
        except Exception:
            for i in members:  # find the chunk at fault
                job = jobs[i]
                try:
                    results[i] = (
                        job.chunker._summarize(
                            job.t_s, job.power_w, job.counter_j, bridged=job.bridged
                        ),
                        0,
                    )
                except Exception as e:
                    results[i] = e
            continue
        k = 0
        for i in members:
            results[i] = (s, k)
            k += 2 if jobs[i].bridged else 1
    payloads: list[ChunkPayload] = []
    failures: list[tuple[SealJob, Exception]] = []
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, Exception):
            job.chunker.abandon(job)
            failures.append((job, result))
        else:
            payloads.append(job.chunker.finish(job, *result))
    return payloads, failures


def _summarize_group(
    jobs: Sequence[SealJob],
    arrays: Sequence[tuple[FloatArray, FloatArray, FloatArray]],
    model: PowerModel,
    *,
    wrap_j: float | None,
    use_counter: bool,
) -> ChunkSummaries:
    """One kernel call over several chunks, each a segment cut at its bridge."""
    sizes = [t.size for t, _, _ in arrays]
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    starts: list[int] = []
    for job, first, size in zip(jobs, offsets.tolist(), sizes, strict=False):
        starts.append(first)
        if job.bridged:
            starts.append(first + size - 1)
    return summarize_chunks(
        np.concatenate([t for t, _, _ in arrays]),
        np.concatenate([p for _, p, _ in arrays]),
        offsets=offsets,
        chunk_starts=starts,
        counter_j=np.concatenate([c for _, _, c in arrays]) if use_counter else None,
        wrap_j=wrap_j,
        model=model,
    )


def _interval_power_w(delta_j: float, counter_j: float, dt_s: float, wrap_j: float | None) -> float:
    """Mean power over an interval from a counter's difference across it (``counter_j``: its end).

    A decrease is a wrap (add the modulus) or a reset (the post-reset value is a lower bound of
    the interval's energy), as the kernel reads it.
    """
    if delta_j < 0:
        delta_j = delta_j + wrap_j if wrap_j is not None else counter_j
    return max(0.0, delta_j / dt_s)
