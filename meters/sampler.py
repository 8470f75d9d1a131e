"""The sampler: one thread reads every device on a drift-free schedule and seals chunks.

Schedule
    Tick k is due at ``start + k·interval_s`` (monotonic), never "interval after the last tick
    finished", so the per-tick work does not accumulate into drift. A tick that overruns its
    slot makes the sampler skip the deadlines already past (counted in `MeterSummary.overruns`)
    and resume on the grid; it never bursts to catch up. The same `Sampler.step` drives the
    background thread and the tests, which pass a `meters.testing.ManualClock` and its
    ``advance`` as the sleep function, so they run thousands of ticks without sleeping.

Samples and chunks
    Each device's readings go to a `meters.chunker.DeviceChunker`, which seals a chunk per
    device every ``chunk_s`` seconds (bins aligned to the sampler's start) under the left-sample
    rule of `accounting.integrate`: a reading without the figure a sample needs (NaN power: the
    device was lost, unsupported, refused or failed this tick) is not a sample, and the kernel
    reports the hole it leaves as a gap; the reason is counted per device (`DeviceSummary.missed`).
    The chunks due in one tick (every device's, once per chunk period) are sealed together,
    one kernel call for all of them (`meters.chunker.seal`).

Cost
    The meter's budget is 0.5 % of one core at 10 Hz × 8 GPUs (``bench/meter_overhead.py``),
    where a tick runs on cold caches after 100 ms of sleep, so every step per device counts.
    The tick takes the readings as plain lists where the backend offers them
    (`meters.backends.base.FlatReader`). A tick whose readings are all plain (every device OK
    with a power reading, time moving on, no chunk due) is kept as one row of those lists and
    handed to the chunkers in one go later (`Sampler._plain`, `Sampler._fold`): a few list
    operations instead of a call per device, with the same samples, in the same order, as
    feeding the chunkers one reading at a time would give. The thread sleeps in one timed
    lock acquire per tick, which `Sampler.stop` cuts short.

Never disturb the job
    Everything the meter can get wrong stays inside the thread: an exception from
    ``backend.read()`` becomes a missed tick for every device (reason ``exception``), a spool that
    cannot be written keeps the sealed chunks in memory and retries on the next tick, and each
    kind of trouble is logged once, with no logging per tick.

Durability
    Sealed chunks are committed to the `ChunkSink` (the `meters.spool.Spool`) from the sampler
    thread, before anything else can see them. `Sampler.flush` seals the partial chunks (stop,
    SIGTERM); a restarted meter with the same spool and run id resumes each device's numbering
    after the highest stored seq. `sample_until_signalled` is the process-level loop: it meters
    until SIGTERM/SIGINT, flushes and marks the run finished.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, Protocol

from accounting.integrate import aggregate_energy
from meters.backends.base import (
    Clock,
    DeviceStatus,
    FlatReader,
    FlatReadings,
    Method,
    PowerBackend,
    SystemClock,
    flat_readings,
)
from meters.chunker import DeviceChunker, DeviceSummary, SealJob, device_payload, seal
from meters.spool import RunStatus, SpoolConflict
from meters.wire import ChunkPayload, DevicePayload

__all__ = [
    "ChunkSink",
    "MeterSummary",
    "Sampler",
    "TickSchedule",
    "sample_until_signalled",
]

_LOG = logging.getLogger(__name__)
# Deadlines closer than this (in intervals) to "now" count as met: float rounding of
# start + k·interval must not turn an on-time tick into an overrun.
_DEADLINE_EPS: Final = 1e-9
_SIGNAL_POLL_S: Final = 0.2  # how often the main thread looks for a stop request, s
_STATUS_LABELS: Final = {int(s): s.label for s in DeviceStatus}


class ChunkSink(Protocol):
    """Where sealed chunks go: `meters.spool.Spool` implements it."""

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Register the run as running."""
        ...

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        """Store the run's devices."""
        ...

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        """Store chunks durably (identical repeats are no-ops); returns how many were new."""
        ...

    def next_seqs(self, run_id: str) -> dict[str, int]:
        """Per device key, the next seq to use."""
        ...

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        """Record the run's status."""
        ...


class _Wakeup:
    """The sampler's sleep, which `Sampler.stop` cuts short: one timed wait on a held lock.

    `threading.Event.wait` waits the same way underneath, but through a `threading.Condition`
    built per call in Python, which about doubles the CPU time a 10 Hz thread spends going to
    sleep and waking up (about 60 µs per tick instead of 40 µs here).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held until set(): a timed acquire is the sleep
        self._guard = threading.Lock()
        self._set = False

    def wait(self, timeout_s: float) -> bool:
        """Sleep ``timeout_s`` seconds or until `set`; True when set (then never sleeps again)."""
        if self._lock.acquire(True, timeout_s):
            self._lock.release()  # stays set for every later wait
            return True
        return False

    def set(self) -> None:
        """Wake the sleeper now and for good."""
        with self._guard:
            if not self._set:
                self._set = True
                self._lock.release()


class TickSchedule:
    """Drift-free deadlines ``start_s + k·interval_s`` that skip, never burst, after an overrun.

    Args:
        start_s: Monotonic time of tick 0, s.
        interval_s: Interval between ticks, s.
    """

    def __init__(self, start_s: float, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.start_s = start_s
        self.interval_s = interval_s
        self.k = 0
        """Index of the next tick."""

    def deadline_s(self) -> float:
        """Monotonic time the next tick is due, s."""
        return self.start_s + self.k * self.interval_s

    def advance(self, now_s: float) -> int:
        """Move to the next tick after one finished at ``now_s``; returns deadlines skipped.

        The next tick is the first deadline after the current one that is not yet past.
        """
        due = self.k + 1
        behind = math.ceil((now_s - self.start_s) / self.interval_s - _DEADLINE_EPS)
        self.k = max(due, behind)
        return self.k - due


@dataclass(frozen=True, slots=True)
class MeterSummary:
    """The meter's figures so far (any time, from any thread).

    Attributes:
        run_id: The run.
        devices: One summary per device, in backend order.
        energy_j: Total over devices, J.
        energy_low_j: Lower end of the total's band, J.
        energy_high_j: Upper end of the total's band, J (device sensor errors combined as
            independent, bounds added: `accounting.integrate.aggregate_energy`).
        ticks: Ticks run.
        overruns: Deadlines skipped because a tick ran past the next one.
        read_errors: Ticks whose ``backend.read()`` raised.
        spool_errors: Failed attempts to write sealed chunks to the spool.
        unspooled: Sealed chunks waiting in memory for the spool.
        dropped: Sealed chunks given up on (a conflicting chunk under the same key).
        cpu_s: CPU time the ticks took, s (thread time of the sampling thread).
    """

    run_id: str
    devices: tuple[DeviceSummary, ...]
    energy_j: float
    energy_low_j: float
    energy_high_j: float
    ticks: int
    overruns: int
    read_errors: int
    spool_errors: int
    unspooled: int
    dropped: int
    cpu_s: float


class Sampler:
    """Reads every device of one backend each ``interval_s`` and seals per-device chunks.

    Drive it either with `start` / `stop` (a daemon thread) or, in tests, with `step` /
    `run_ticks` on the caller's thread; both run the same code.

    Args:
        backend: The devices to read. Its clock must share the monotonic base of ``clock``.
        run_id: The run the chunks belong to.
        spool: Where sealed chunks are committed (None: nowhere; the summary still counts).
        interval_s: Sampling interval, s (default 0.1).
        chunk_s: Chunk length, s (default 10); at least ``interval_s``.
        clock: Time source for the schedule (default: the system clocks).
        sleep: Waits the given seconds (default: an interruptible wait that `stop` cuts
            short). Tests pass ``ManualClock.advance``.
        host: Host name in device keys (default: ``socket.gethostname()``).
        metadata: Extra facts stored with the run in the spool.
        logger: Where the once-per-kind warnings go.

    Raises:
        ValueError: Bad interval or chunk length, or two devices with the same key.
    """

    def __init__(
        self,
        backend: PowerBackend,
        *,
        run_id: str,
        spool: ChunkSink | None = None,
        interval_s: float = 0.1,
        chunk_s: float = 10.0,
        clock: Clock | None = None,
        sleep: Callable[[float], object] | None = None,
        host: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s must be a positive number of seconds: {interval_s!r}")
        if not (chunk_s >= interval_s and math.isfinite(chunk_s)):
            raise ValueError(f"chunk_s must be finite and >= interval_s: {chunk_s!r}")
        self.backend = backend
        # The lists the tick works on: straight from a backend that offers them (no numpy
        # round trip), else from its Readings.
        self._read: Callable[[], FlatReadings] = (
            backend.read_flat
            if isinstance(backend, FlatReader)
            else lambda: flat_readings(backend.read())
        )
        self.run_id = run_id
        self.interval_s = interval_s
        self.chunk_s = chunk_s
        self._spool = spool
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._monotonic_s: Callable[[], float] = (
            time.monotonic if type(self._clock) is SystemClock else self._clock.monotonic_s
        )
        self._stop_event = threading.Event()
        self._wakeup = _Wakeup()
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._wakeup.wait
        self.host = host if host is not None else socket.gethostname()
        self._infos = tuple(backend.devices())
        self.devices: tuple[DevicePayload, ...] = tuple(
            device_payload(info, host=self.host) for info in self._infos
        )
        keys = [d["key"] for d in self.devices]
        if len(set(keys)) != len(keys):
            raise ValueError(f"two devices share a key: {keys}")
        self._metadata = {
            "host": self.host,
            "interval_s": interval_s,
            "chunk_s": chunk_s,
            **dict(metadata or {}),
        }
        self._log = logger if logger is not None else _LOG
        self._lock = threading.Lock()  # device state and counters
        self._write_lock = threading.Lock()  # the outbox drain and spool writes
        self._warn_lock = threading.Lock()  # may be taken while holding the others
        self._thread: threading.Thread | None = None
        self._schedule: TickSchedule | None = None
        self._chunkers: tuple[DeviceChunker, ...] = ()
        self._codes: list[int] = []  # per device, the status code its label was last set from
        self._stale_bin: float = -math.inf  # the time bin of the last stale-chunk check
        self._stale_check_s = -math.inf  # no stale-chunk check before this monotonic time
        # The fast path (`_plain`): rows of plain readings not yet handed to the chunkers, and
        # the window of monotonic times (after, until) in which a reading is plain.
        self._rows: list[tuple[list[float], list[float], list[float]]] = []
        self._fast_after_s = math.inf
        self._fast_until_s = -math.inf
        self._time_slack_s = 0.0
        self._bin_slack_s = 0.0
        self._outbox: list[ChunkPayload] = []
        self._registered = False
        self._stopped = False
        self._warned: set[str] = set()
        self._ticks = 0
        self._overruns = 0
        self._read_errors = 0
        self._spool_errors = 0
        self._dropped = 0
        self._cpu_s = 0.0

    # -- driving ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (tick 0 is due at once).

        Raises:
            RuntimeError: Already started, or stopped.
        """
        if self._thread is not None or self._stopped:
            raise RuntimeError("a Sampler starts once")
        self._begin()
        self._thread = threading.Thread(
            target=self._run, name=f"thermoledger-sampler-{self.run_id}", daemon=True
        )
        self._thread.start()

    def step(self) -> None:
        """Wait for the next deadline, tick once, and schedule the next tick.

        Raises:
            RuntimeError: Called from another thread while the background thread runs.
        """
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            raise RuntimeError("the sampler thread is running: step() drives a sampler by hand")
        schedule = self._schedule if self._schedule is not None else self._begin()
        wait_s = schedule.deadline_s() - self._monotonic_s()
        if wait_s > 0:
            self._sleep(wait_s)
        if self._stop_event.is_set():
            return
        try:
            self._tick()
        finally:
            # Even after a failed tick (a meter bug): the next one waits for its deadline
            # instead of the thread spinning on a deadline already past.
            skipped = schedule.advance(self._monotonic_s())
            if skipped:
                with self._lock:
                    self._overruns += skipped

    def run_ticks(self, n: int) -> None:
        """Run ``n`` scheduled ticks on the caller's thread (`step` ``n`` times)."""
        for _ in range(n):
            self.step()

    def flush(self) -> list[ChunkPayload]:
        """Seal every device's partial chunk and commit everything sealed to the spool.

        Returns:
            The chunks this call sealed (earlier ones may have been committed with them).
        """
        self._begin()
        with self._lock:
            self._fold()
            before = len(self._outbox)
            jobs: list[SealJob] = []
            for ch in self._chunkers:
                self._guarded(ch, ch.flush, jobs)
            self._seal(jobs)
            self._arm()
            sealed = self._outbox[before:]
        self._drain()
        return sealed

    def stop(
        self,
        *,
        status: RunStatus | None = None,
        exit_code: int | None = None,
        timeout_s: float = 10.0,
    ) -> MeterSummary:
        """Stop the thread, flush, optionally record the run's status; returns the final summary.

        Args:
            status: Record this run status in the spool (None: leave it).
            exit_code: The job's exit code, stored with the status.
            timeout_s: How long to wait for a tick in progress, s.
        """
        self._stop_event.set()
        self._wakeup.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._lock:
            # A tick still stuck in a read (join timed out) must not add after the flush.
            self._stopped = True
        self.flush()
        if status is not None and self._spool is not None:
            try:
                self._spool.set_run_status(self.run_id, status, exit_code)
            except Exception as e:
                self._count_spool_error(e)
        return self.summary()

    # -- figures ------------------------------------------------------------------------------

    def summary(self) -> MeterSummary:
        """Per-device energy so far (sealed chunks plus the open ones), thread-safe."""
        with self._lock:
            self._fold()
            devices = tuple(ch.summary() for ch in self._chunkers)
            counters = (
                self._ticks,
                self._overruns,
                self._read_errors,
                self._spool_errors,
                len(self._outbox),
                self._dropped,
                self._cpu_s,
            )
        if devices:
            totals = aggregate_energy(
                [d.energy_j for d in devices],
                [d.sensor_uncertainty_j for d in devices],
                [d.bound_below_j for d in devices],
                [d.bound_above_j for d in devices],
                device=[d.key for d in devices],
            )
            energy = float(totals.energy_j[0])
            low, high = float(totals.energy_low_j[0]), float(totals.energy_high_j[0])
        else:
            energy = low = high = 0.0
        ticks, overruns, read_errors, spool_errors, unspooled, dropped, cpu_s = counters
        return MeterSummary(
            run_id=self.run_id,
            devices=devices,
            energy_j=energy,
            energy_low_j=low,
            energy_high_j=high,
            ticks=int(ticks),
            overruns=int(overruns),
            read_errors=int(read_errors),
            spool_errors=int(spool_errors),
            unspooled=int(unspooled),
            dropped=int(dropped),
            cpu_s=float(cpu_s),
        )

    # -- internals ----------------------------------------------------------------------------

    def _begin(self) -> TickSchedule:
        """Fix the time origin and the seq numbering, and register the run (once)."""
        if self._schedule is not None:
            return self._schedule
        start_mono_s = self._clock.monotonic_s()
        unix_offset_s = self._clock.wall_s() - start_mono_s
        next_seqs: dict[str, int] = {}
        if self._spool is not None:
            try:
                next_seqs = self._spool.next_seqs(self.run_id)
            except Exception as e:
                # Starting at 0 is safe: the spool refuses a different chunk under a stored key.
                self._count_spool_error(e)
        self._chunkers = tuple(
            DeviceChunker(
                info,
                key=payload["key"],
                first_seq=next_seqs.get(payload["key"], 0),
                interval_s=self.interval_s,
                chunk_s=self.chunk_s,
                origin_mono_s=start_mono_s,
                unix_offset_s=unix_offset_s,
            )
            for info, payload in zip(self._infos, self.devices, strict=True)
        )
        self._codes = [int(DeviceStatus.OK)] * len(self._chunkers)
        # A reading this much later than the last is later in unix seconds too (their rounding
        # near 1.7e9 is 0.24 µs); one this much before a bin's end is in that bin (the bin
        # rule's 1e-9 of a chunk included).
        self._time_slack_s = max(1e-6, 16.0 * math.ulp(abs(start_mono_s + unix_offset_s)))
        self._bin_slack_s = self._time_slack_s + 1e-8 * self.chunk_s
        self._metadata.setdefault("started_at_s", start_mono_s + unix_offset_s)
        self._schedule = TickSchedule(start_mono_s, self.interval_s)
        self._register()
        return self._schedule

    def _register(self) -> bool:
        if self._registered or self._spool is None:
            return self._registered
        try:
            self._spool.open_run(self.run_id, self._metadata)
            # A device that offers neither power nor a counter never has a chunk; it stays in
            # the summary (labelled) but not on the wire, whose methods have no "none".
            self._spool.put_devices(
                self.run_id,
                [
                    payload
                    for info, payload in zip(self._infos, self.devices, strict=True)
                    if info.power_method != Method.NONE or info.has_energy_counter
                ],
            )
        except Exception as e:
            self._count_spool_error(e)
            return False
        self._registered = True
        return True

    def _run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.step()
            except Exception as e:
                # A bug in the meter must not end metering, let alone the job.
                self._warn_once(f"step:{type(e).__name__}", "sampler tick failed: %s", e)

    def _tick(self) -> None:
        cpu0_s = time.thread_time()
        try:
            t_mono, power, counter, status, messages = self._read()
            n = len(self._chunkers)
            if not len(t_mono) == len(power) == len(counter) == len(status) == len(messages) == n:
                raise RuntimeError(f"backend returned {len(messages)} readings for {n} devices")
        except Exception as e:
            self._on_read_error(e)
        else:
            codes = self._codes
            with self._lock:
                if self._stopped:
                    return
                self._ticks += 1
                jobs: list[SealJob] = []
                if self._plain(t_mono, power, status):
                    self._rows.append((t_mono, power, counter))
                    self._fast_after_s = max(t_mono) + self._time_slack_s
                else:
                    self._fold()
                    for i, ch in enumerate(self._chunkers):
                        code = status[i]
                        if code != codes[i]:
                            codes[i] = code
                            label = _STATUS_LABELS.get(code, "error")
                            if label != ch.status:
                                self._on_status_change(ch, label, messages[i])
                        # ch.status is this reading's label (the reason counted if no sample)
                        try:
                            job = ch.add(t_mono[i], power[i], counter[i], ch.status)
                        except Exception as e:
                            self._chunking_failed(ch, e)
                            continue
                        if job is not None:
                            jobs.append(job)
                    self._arm()
                self._seal_stale(jobs)
                self._seal(jobs)
        # Spool only when there is something: chunks sealed now or left by a failed write (read
        # without the lock: what flush() puts there meanwhile, flush() drains itself).
        if self._outbox:
            self._drain()
        with self._lock:
            self._cpu_s += time.thread_time() - cpu0_s

    def _on_read_error(self, error: Exception) -> None:
        self._warn_once(
            f"read:{type(error).__name__}",
            "reading the devices failed (%s: %s); the ticks it fails are labelled gaps",
            type(error).__name__,
            error,
        )
        with self._lock:
            if self._stopped:
                return
            self._ticks += 1
            self._read_errors += 1
            for ch in self._chunkers:
                ch.miss("exception")
            jobs: list[SealJob] = []
            self._seal_stale(jobs)
            self._seal(jobs)

    def _seal_stale(self, jobs: list[SealJob]) -> None:
        """Add the chunks of devices silent for a whole chunk period (caller holds the lock).

        Only when time enters a new bin: a device turns stale at a bin change, never between.
        """
        if not self._chunkers:
            return
        now_s = self._monotonic_s()
        if now_s < self._stale_check_s:  # surely in the bin already checked
            return
        now_bin = self._chunkers[0].stale_bin(now_s)  # every chunker has the same bins
        if now_bin <= self._stale_bin:
            return
        self._stale_bin = now_bin
        assert self._schedule is not None  # started: the chunkers exist
        bin_end_s = self._schedule.start_s + (now_bin + 1) * self.chunk_s
        self._stale_check_s = bin_end_s - self._bin_slack_s
        self._fold()
        for ch in self._chunkers:
            self._guarded(ch, ch.seal_stale, jobs, now_s)
        self._arm()

    def _guarded(
        self,
        ch: DeviceChunker,
        call: Callable[..., SealJob | None],
        jobs: list[SealJob],
        *args: Any,
    ) -> None:
        """Run one chunker call, collecting the chunk it hands out (caller holds the lock)."""
        try:
            job = call(*args)
        except Exception as e:
            self._chunking_failed(ch, e)
            return
        if job is not None:
            jobs.append(job)

    def _seal(self, jobs: list[SealJob]) -> None:
        """Seal the chunks handed out in one go and outbox them (caller holds the lock)."""
        if not jobs:
            return
        payloads, failures = seal(jobs)
        self._outbox.extend(payloads)
        for job, error in failures:
            self._warn_chunking(job.chunker, error)  # seal() dropped the chunk
        if failures:
            self._arm()

    def _plain(self, t_mono: list[float], power: list[float], status: list[int]) -> bool:
        """Whether a tick's readings are plain: the fast path may keep them as a row.

        Plain: the chunkers are steady (`_arm`), every reading is OK with a power, every time
        is after the last sample of any device (by more than unix seconds' rounding) and before
        the end of the open bins (no chunk to seal). What `DeviceChunker.add` would do with
        such readings is then known: append each, so they are kept as they came and handed
        over in one go (`_fold`), at the latest when a chunk is due. At 10 Hz that is a few
        list operations per tick instead of a call per device.
        """
        if self._fast_until_s == -math.inf or not t_mono:  # closed, or no device
            return False
        if not (self._fast_after_s < min(t_mono) and max(t_mono) < self._fast_until_s):
            return False
        if any(status):
            return False
        total_t, total_w = sum(t_mono), sum(power)
        return total_t == total_t and total_w == total_w  # no NaN

    def _fold(self) -> None:
        """Hand the rows of the fast path to the chunkers (caller holds the lock)."""
        rows = self._rows
        if not rows:
            return
        self._rows = []
        by_device = zip(
            zip(*[row[0] for row in rows], strict=True),
            zip(*[row[1] for row in rows], strict=True),
            zip(*[row[2] for row in rows], strict=True),
            strict=True,
        )
        for ch, (t_mono, power, counter) in zip(self._chunkers, by_device, strict=True):
            ch.take(t_mono, power, counter)

    def _arm(self) -> None:
        """Open or close the fast path for the chunkers as they are (caller holds the lock)."""
        chunkers = self._chunkers
        if chunkers and not any(self._codes) and all(ch.steady for ch in chunkers):
            self._fast_until_s = min(ch.bin_end_mono_s for ch in chunkers) - self._bin_slack_s
            self._fast_after_s = max(ch.last_mono_s for ch in chunkers) + self._time_slack_s
        else:
            self._fast_until_s = -math.inf

    def _chunking_failed(self, ch: DeviceChunker, error: Exception) -> None:
        """A chunker call raised (a meter bug): that device's open chunk is dropped.

        It is labelled ``internal``, logged once, and metering goes on (caller holds the lock).
        """
        ch.drop_open_chunk("internal")
        self._warn_chunking(ch, error)

    def _warn_chunking(self, ch: DeviceChunker, error: Exception) -> None:
        self._warn_once(
            f"chunk:{type(error).__name__}",
            "device %s: chunking failed, its open chunk is dropped (%s: %s)",
            ch.key,
            type(error).__name__,
            error,
        )

    def _on_status_change(self, ch: DeviceChunker, label: str, message: str) -> None:
        ch.status = label
        if message:
            ch.message = message
        if label != "ok":
            self._warn_once(
                f"device:{ch.key}:{label}", "device %s is %s: %s", ch.key, label, message
            )

    def _drain(self) -> None:
        """Commit the outbox to the spool; on failure keep it for the next tick."""
        with self._write_lock:
            with self._lock:
                if not self._outbox:
                    return
                batch, self._outbox = self._outbox, []
            if self._spool is None:
                return
            try:
                if not self._register():
                    raise RuntimeError("the run is not registered in the spool")
                self._spool.put_chunks(self.run_id, batch)
            except SpoolConflict:
                self._put_one_by_one(batch)
            except Exception as e:
                self._count_spool_error(e)
                with self._lock:
                    self._outbox[:0] = batch

    def _put_one_by_one(self, batch: Sequence[ChunkPayload]) -> None:
        """After a conflict: store what can be stored, drop what conflicts (logged)."""
        assert self._spool is not None
        retry: list[ChunkPayload] = []
        for chunk in batch:
            try:
                self._spool.put_chunks(self.run_id, [chunk])
            except SpoolConflict as e:
                self._warn_once("spool:conflict", "dropping a chunk that conflicts: %s", e)
                with self._lock:
                    self._dropped += 1
            except Exception as e:
                self._count_spool_error(e)
                retry.append(chunk)
        with self._lock:
            self._outbox[:0] = retry

    def _count_spool_error(self, error: Exception) -> None:
        with self._lock:
            self._spool_errors += 1
        self._warn_once(
            f"spool:{type(error).__name__}",
            "spool write failed (%s: %s); sealed chunks stay in memory and are retried",
            type(error).__name__,
            error,
        )

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        with self._warn_lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        self._log.warning(message, *args)


def sample_until_signalled(
    sampler: Sampler,
    *,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    stop: threading.Event | None = None,
    on_started: Callable[[], object] | None = None,
) -> MeterSummary:
    """Meter until one of ``signals`` arrives (or ``stop`` is set), then flush and finish.

    On the signal the partial chunks are sealed and committed, and the run is marked
    ``finished`` in the spool, before this returns. Must run on the main thread (Python
    delivers signals there); the previous handlers are restored on return.

    Args:
        sampler: A sampler not yet started.
        signals: Signals that end metering.
        stop: Another way to end metering (e.g. the wrapped job exited).
        on_started: Called once the handlers are installed and the thread runs.

    Returns:
        The final summary.
    """
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        # Only record it: a handler runs between two bytecodes of the main thread, which may
        # hold a lock (e.g. an Event's) that anything fancier would try to take again.
        received.append(signum)

    previous = {sig: signal.signal(sig, handle) for sig in signals}
    try:
        sampler.start()
        if on_started is not None:
            on_started()
        while not received and not (stop is not None and stop.is_set()):
            time.sleep(_SIGNAL_POLL_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return sampler.stop(status="finished")
