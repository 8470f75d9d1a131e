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
from meters.backends.base import Clock, DeviceStatus, Method, PowerBackend, SystemClock
from meters.chunker import DeviceChunker, DeviceSummary, device_payload
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
        self.run_id = run_id
        self.interval_s = interval_s
        self.chunk_s = chunk_s
        self._spool = spool
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._stop_event = threading.Event()
        self._sleep: Callable[[float], object] = (
            sleep if sleep is not None else self._stop_event.wait
        )
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
        schedule = self._begin()
        wait_s = schedule.deadline_s() - self._clock.monotonic_s()
        if wait_s > 0:
            self._sleep(wait_s)
        if self._stop_event.is_set():
            return
        self._tick()
        skipped = schedule.advance(self._clock.monotonic_s())
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
            before = len(self._outbox)
            for ch in self._chunkers:
                self._guarded(ch, ch.flush)
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
            readings = self.backend.read()
            if len(readings) != len(self._chunkers):
                raise RuntimeError(
                    f"backend returned {len(readings)} readings for {len(self._chunkers)} devices"
                )
        except Exception as e:
            self._on_read_error(e)
        else:
            t_mono = readings.t_mono_s.tolist()
            power = readings.power_w.tolist()
            counter = readings.energy_j.tolist()
            status = readings.status.tolist()
            with self._lock:
                if self._stopped:
                    return
                self._ticks += 1
                for i, ch in enumerate(self._chunkers):
                    label = _STATUS_LABELS.get(status[i], "error")
                    if label != ch.status:
                        self._on_status_change(ch, label, readings.messages[i])
                    self._guarded(ch, ch.add, t_mono[i], power[i], counter[i], label)
                self._seal_stale()
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
            self._seal_stale()

    def _seal_stale(self) -> None:
        """Seal the chunks of devices silent for a whole chunk period (caller holds the lock)."""
        now_s = self._clock.monotonic_s()
        for ch in self._chunkers:
            self._guarded(ch, ch.seal_stale, now_s)

    def _guarded(
        self, ch: DeviceChunker, call: Callable[..., ChunkPayload | None], *args: Any
    ) -> None:
        """Run one chunker call, outboxing what it seals (caller holds the lock).

        A failure here is a meter bug (the kernel refusing samples the chunker built): that
        device's open chunk is dropped, labelled ``internal`` and logged once, and metering
        goes on.
        """
        try:
            sealed = call(*args)
        except Exception as e:
            ch.drop_open_chunk("internal")
            self._warn_once(
                f"chunk:{type(e).__name__}",
                "device %s: chunking failed, its open chunk is dropped (%s: %s)",
                ch.key,
                type(e).__name__,
                e,
            )
            return
        if sealed is not None:
            self._outbox.append(sealed)

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
                batch, self._outbox = self._outbox, []
            if not batch or self._spool is None:
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
