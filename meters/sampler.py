"""The sampler: two threads take turns reading every device on a drift-free schedule.

Schedule
    Tick k is due at ``start + k·interval_s`` (monotonic), never "interval after the last tick
    finished", so the per-tick work does not accumulate into drift. Two threads take turns
    (`TickSchedule.claim`): a thread that finishes a tick claims the first deadline no thread has
    claimed yet, so the two alternate and each sleeps two intervals, for the same wake-ups per
    second as one thread. Only when no thread is free at a deadline is it skipped (counted in
    `MeterSummary.overruns`); the sampler resumes on the grid and never bursts to catch up. The
    same `Sampler.step` drives the sampler by hand on the caller's thread in tests, which pass a
    `meters.testing.ManualClock` and its ``advance`` as the sleep function, so they run
    thousands of ticks without sleeping.

Slow devices
    A driver call can take far longer than a tick (a GPU falling off the bus can hang NVML for
    seconds), and one thread reading devices one after another would hold every device up
    behind it. With a backend that reads one device at a time
    (`meters.backends.base.DeviceReader`, NVML), a tick reads each device under that device's
    own lock, taken without waiting: a device whose read is still running on another thread is
    skipped for that tick, a missed reading labelled ``slow``, and read after the others from
    then on. A tick still reading when the next one starts is **overtaken**: it stops after the
    call in progress, the next tick delivers the readings it had finished (they are older than
    its own), and it delivers the slow device's reading itself when the call returns. Its
    thread is out of the rotation meanwhile, so a spare thread joins whenever fewer than two
    would be free; a thread back from a slow read stays as a spare, up to three free ones
    (idle threads cost no wake-ups: the free ones share the ticks), and the threads never
    outnumber the devices plus two. The other devices keep their schedule; the slow one is
    sampled when it answers, timed at its own calls, its energy counter spanning the gaps. Only
    where a device turns slow does a tick lose the readings of the devices it had not reached
    (one tick each: no gap). A backend read as a whole (replay, for one) is one unit: while its
    read hangs, every device is ``slow``.

Samples and chunks
    Each device's readings go to a `meters.chunker.DeviceChunker`, which seals a chunk per
    device every ``chunk_s`` seconds (bins aligned to the sampler's start) under the left-sample
    rule of `accounting.integrate`: a reading without the figure a sample needs (NaN power: the
    device was lost, unsupported, refused or failed this tick) is not a sample, and the kernel
    reports the hole it leaves as a gap; the reason is counted per device (`DeviceSummary.missed`).
    The chunks due in one tick (every device's, once per chunk period) are sealed together,
    one kernel call for all of them (`meters.chunker.seal`).

Counter-only devices
    A device whose power is derived from its energy counter (RAPL, hwmon energy channels:
    `DeviceChunker.derives_power`) gets its energy exactly from the counter's difference across
    any interval, however rarely it is read, so its samples are taken every
    ``counter_interval_s`` (default 1 s, on the tick grid: every round(counter_interval_s /
    interval_s)-th tick, at most one per chunk period) instead of every tick; the ticks between
    read the other devices only. Its skipped ticks are no readings at all (nothing missed,
    nothing slow), and its chunks take that interval as their nominal one, so the kernel's gaps
    (and the run's coverage, `meters.quality`) are measured against it. Every edge (the run's
    opening and closing readings, `mark`) still reads every device, so windows stay exact.

Memory activity
    Where the backend reports memory activity (`meters.backends.base.ActivityReader`: NVML's
    ``utilization.memory``, AMD SMI's ``umc_activity``), the GPUs' readings are taken every
    ``activity_interval_s`` (default 1 s: every round(activity_interval_s / interval_s)-th
    scheduled tick, half a period off the counter-only devices' ticks), never at the edges,
    each under its device's lock like a power read (a device still being read is skipped that
    time). The counter covers the driver's last sample period (1/6 s to 1 s by product), so
    reading it more often would add calls, not information. The readings go to the chunkers,
    which seal each chunk with their time-weighted mean (`meters.chunker`, ``mem_busy_frac``).

Cost
    The meter's budget is 0.5 % of one core at 10 Hz × 8 GPUs (``bench/meter_overhead.py``),
    where a tick runs on cold caches after 100 ms of sleep, so every step per device counts.
    The tick takes the readings as plain lists (`meters.backends.base.FlatBuffer`, or
    `meters.backends.base.FlatReader` for a backend read as a whole). A tick whose readings are
    all plain (every device OK with a power reading, time moving on, no chunk due, no other tick
    in flight) is kept as one row of those lists and handed to the chunkers in one go later
    (`Sampler._plain`, `Sampler._fold`): a few list operations instead of a call per device,
    with the same samples, in the same order, as feeding the chunkers one reading at a time
    would give. What reading around slow devices adds to such a tick is a lock taken and
    released per device and one more short critical section (the claim). The threads sleep in
    one timed lock acquire per tick, which `Sampler.stop` cuts short.

Never disturb the job
    Everything the meter can get wrong stays inside its threads: an exception from a read
    becomes a missed reading (reason ``exception``) for the devices it covers, a spool that
    cannot be written keeps the sealed chunks in memory and retries on the next tick (a tick
    finding the spool busy with the other thread's write leaves its chunks to the next one), a
    call that never returns costs one thread and that device's readings, and each kind of
    trouble is logged once, with no logging per tick.

Durability
    Sealed chunks are committed to the `ChunkSink` (the `meters.spool.Spool`) from the sampler
    threads, before anything else can see them. `Sampler.flush` seals the partial chunks (stop,
    SIGTERM); a restarted meter with the same spool and run id resumes each device's numbering
    after the highest stored seq. `sample_until_signalled` is the process-level loop: it meters
    until SIGTERM/SIGINT, flushes and marks the run finished.
"""

from __future__ import annotations

import logging
import math
import operator
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from thermoledger.accounting.integrate import aggregate_energy

from .backends.base import (
    ActivityReader,
    Clock,
    DeviceInfo,
    DeviceReader,
    DeviceStatus,
    FlatBuffer,
    FlatReader,
    FlatReadings,
    Method,
    PowerBackend,
    SystemClock,
    flat_readings,
)
from .chunker import DeviceChunker, DeviceSummary, SealJob, counted_devices, device_payload, seal
from .edges import Reading, await_updates, continuous, edge, period_s
from .quality import DeviceFacts, RunQuality, grade_run
from .signals import STOP_SIGNALS, Caught
from .spool import RunStatus, SpoolConflict
from .wire import ChunkPayload, DevicePayload

__all__ = [
    "DEFAULT_ACTIVITY_INTERVAL_S",
    "DEFAULT_COUNTER_INTERVAL_S",
    "ChunkSink",
    "MeterSummary",
    "Sampler",
    "TickSchedule",
    "sample_until_signalled",
]

_LOG = logging.getLogger(__name__)
DEFAULT_COUNTER_INTERVAL_S: Final = 1.0
"""How often counter-only devices (RAPL, hwmon) are read by default, s."""
DEFAULT_ACTIVITY_INTERVAL_S: Final = 1.0
"""How often the GPUs' memory activity is read by default, s (the driver's sample period is
1/6 s to 1 s: reading faster adds calls, not information)."""
# Deadlines closer than this (in intervals) to "now" count as met: float rounding of
# start + k·interval must not turn an on-time tick into an overrun.
_DEADLINE_EPS: Final = 1e-9
_STATUS_LABELS: Final = {int(s): s.label for s in DeviceStatus}
# Free sampler threads (not held in a read a later tick went past): at least two, so that one
# covers for the other; up to three, so that a thread back from a slow read stays as a spare
# instead of being started again for the next one (an idle thread costs no wake-ups: the free
# threads share the ticks).
_FREE_MIN: Final = 2
_FREE_MAX: Final = 3
# In `Sampler._codes`, a device labelled slow (no `DeviceStatus` code: the sampler's own label).
_SLOW: Final = -1
_SLOW_MESSAGE: Final = (
    "a read of this device was still running when the next tick came; the ticks go on "
    "without it and take its readings when it answers"
)


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
    """Drift-free deadlines ``start_s + k·interval_s``, handed out to the threads that tick.

    Each tick is claimed once. A thread free at some moment takes the first deadline nobody has
    claimed, or, when that one has passed (every thread was busy), the first that has not: the
    deadlines in between are skipped, never caught up in a burst.

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
        """Index of the first tick not yet claimed."""

    def deadline_s(self, k: int) -> float:
        """Monotonic time tick ``k`` is due, s."""
        return self.start_s + k * self.interval_s

    def restart(self, now_s: float) -> None:
        """After tick 0 ran past tick 1's deadline: tick 1 is due just after ``now_s`` (a tenth
        of an interval: the threads claim it meanwhile), the following ones every interval after
        it, and nothing is skipped. A tick 0 in time changes nothing."""
        if self.k == 1 and now_s > self.deadline_s(1):
            self.start_s = now_s - 0.9 * self.interval_s

    def claim(self, now_s: float) -> tuple[int, int]:
        """The next tick for a thread free at ``now_s``, and how many deadlines it skips.

        Args:
            now_s: Monotonic time now, s.

        Returns:
            ``(k, skipped)``: the tick to run (due at `deadline_s` of ``k``, maybe already due),
            and the unclaimed deadlines before it that had passed.
        """
        due = self.k
        behind = math.ceil((now_s - self.start_s) / self.interval_s - _DEADLINE_EPS)
        k = max(due, behind)
        self.k = k + 1
        return k, k - due


@dataclass(frozen=True, slots=True)
class MeterSummary:
    """The meter's figures so far (any time, from any thread).

    Attributes:
        run_id: The run.
        devices: One summary per device, in backend order.
        energy_j: Total over devices, J (a device covered by another on its host, e.g. the CPU
            inside a GH200-class module's figure, is listed but not added).
        energy_low_j: Lower end of the total's band, J.
        energy_high_j: Upper end of the total's band, J (device sensor errors combined as
            independent, bounds added: `accounting.integrate.aggregate_energy`).
        ticks: Ticks run.
        overruns: Deadlines skipped because a tick ran past the next one.
        read_errors: Ticks whose ``backend.read()`` raised.
        spool_errors: Failed attempts to write sealed chunks to the spool.
        unspooled: Sealed chunks waiting in memory for the spool.
        dropped: Sealed chunks given up on (a conflicting chunk under the same key).
        cpu_s: CPU time the ticks took, s (thread time of the sampling threads).
        quality: The measurement's grade, what limits it and what would improve it
            (`meters.quality`; None for a summary of no sampler).
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
    quality: RunQuality | None = None


class _Read:
    """One tick's reading of the devices, as a later tick sees it while it is in flight.

    (A plain class: built once per tick, and a dataclass's default factories cost more.)

    Attributes:
        thread: `threading.get_ident` of the thread reading.
        flat: The readings, by device position (a slot is final once its position is in
            ``done``).
        done: Positions read, in the order they were read.
        busy: Positions skipped: their previous read was still running.
        failed: Positions whose read raised, and ``error`` what it raised.
        error: The last exception a read raised.
        overtaken: A later tick started (or delivered) before this one finished reading; it
            stops after the call in progress.
        adopted: How many of ``done`` a later tick has delivered already.
        rows: The tick reads exactly the devices of the fast path's rows (every device, or,
            where counter-only devices are read less often, every other one).
        activity: Memory-activity readings the tick took: (position, monotonic s, fraction or
            NaN), or None.
    """

    __slots__ = (
        "activity",
        "adopted",
        "busy",
        "done",
        "error",
        "failed",
        "flat",
        "overtaken",
        "rows",
        "thread",
    )

    def __init__(self, thread: int, *, rows: bool = True) -> None:
        self.thread = thread
        self.rows = rows
        self.flat: FlatBuffer | FlatReadings | None = None
        self.done: list[int] = []
        self.busy: list[int] = []
        self.failed: list[int] = []
        self.error: Exception | None = None
        self.overtaken = False
        self.adopted = 0
        self.activity: list[tuple[int, float, float]] | None = None


class Sampler:
    """Reads every device of one backend each ``interval_s`` and seals per-device chunks.

    Drive it either with `start` / `stop` (daemon threads taking turns) or, in tests, with
    `step` / `run_ticks` on the caller's thread; both run the same code (by hand, a tick that
    hangs in a read holds the caller: no other thread covers for it).

    Args:
        backend: The devices to read. Its clock must share the monotonic base of ``clock``.
        run_id: The run the chunks belong to.
        spool: Where sealed chunks are committed (None: nowhere; the summary still counts).
        interval_s: Sampling interval, s (default 0.1).
        chunk_s: Chunk length, s (default 10); at least ``interval_s``.
        counter_interval_s: How often counter-only devices are read, s (default 1; rounded
            down to whole ticks, at most ``chunk_s``; 0 or up to ``interval_s``: every tick).
            Only with a backend read device by device; edges read every device regardless.
        activity_interval_s: How often the GPUs' memory activity is read, s (default 1;
            rounded to whole ticks, at least one; 0: never), where the backend reports it
            (`meters.backends.base.ActivityReader`).
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
        counter_interval_s: float = DEFAULT_COUNTER_INTERVAL_S,
        activity_interval_s: float = DEFAULT_ACTIVITY_INTERVAL_S,
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
        if not (counter_interval_s >= 0 and math.isfinite(counter_interval_s)):
            raise ValueError(
                "counter_interval_s must be a finite number of seconds >= 0: "
                f"{counter_interval_s!r}"
            )
        self.backend = backend
        # A backend read device by device gets a lock per device, else one for the whole read.
        # The lists the tick works on: straight from a backend that offers them (no numpy
        # round trip), else from its Readings.
        self._read_device: Callable[[FlatBuffer, int], None] | None = (
            backend.read_device if isinstance(backend, DeviceReader) else None
        )
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
        system = type(self._clock) is SystemClock
        self._monotonic_s: Callable[[], float] = (
            time.monotonic if system else self._clock.monotonic_s
        )
        self._wall_s: Callable[[], float] = time.time if system else self._clock.wall_s
        self._stop_event = threading.Event()
        self._wakeup = _Wakeup()
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._wakeup.wait
        self.host = host if host is not None else socket.gethostname()
        self._infos = tuple(backend.devices())
        # Counter-only devices read every `_counter_ticks` ticks (1: every tick); the rest always.
        sparse = tuple(
            i
            for i, info in enumerate(self._infos)
            if info.power_method == Method.NONE and info.has_energy_counter
        )
        ticks = math.floor(min(counter_interval_s, chunk_s) / interval_s + 1e-9)
        if ticks <= 1 or not sparse or self._read_device is None:
            ticks, sparse = 1, ()
        self._counter_ticks = ticks
        self.counter_interval_s = ticks * interval_s
        """How often counter-only devices are read, s (the interval itself: every tick)."""
        self._sparse = frozenset(sparse)
        self._counter_next_k = 0  # the first scheduled tick that reads the counter-only devices
        if not (activity_interval_s >= 0 and math.isfinite(activity_interval_s)):
            raise ValueError(
                "activity_interval_s must be a finite number of seconds >= 0: "
                f"{activity_interval_s!r}"
            )
        # Memory activity: the GPUs, on every `_activity_ticks`-th tick, half a period after the
        # counter-only devices' ticks (multiples of `_counter_ticks`), so the two spread out.
        self._activity: Callable[[int], float] | None = (
            backend.memory_busy_frac
            if isinstance(backend, ActivityReader) and activity_interval_s > 0
            else None
        )
        self._activity_ticks = max(1, round(activity_interval_s / interval_s))
        self._activity_phase = self._activity_ticks // 2
        self._activity_devices = tuple(
            i for i, info in enumerate(self._infos) if info.kind == "gpu"
        )
        if not self._activity_devices:
            self._activity = None
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
            **({"counter_interval_s": self.counter_interval_s} if sparse else {}),
            **dict(metadata or {}),
        }
        self._log = logger if logger is not None else _LOG
        self._lock = threading.Lock()  # device state, counters, threads, reads in flight
        self._write_lock = threading.Lock()  # the outbox drain and spool writes
        self._warn_lock = threading.Lock()  # may be taken while holding the others
        # Reading: one lock per unit (a device, or the whole backend), taken without waiting:
        # held, its read is still running on another thread. Units in the order a tick reads
        # them (those found busy go last).
        units = len(self._infos) if self._read_device is not None else 1
        self._unit_locks = tuple(threading.Lock() for _ in range(units))
        self._order: tuple[int, ...] = tuple(range(len(self._infos)))
        self._order_every = self._every_of(self._order)  # `_order` less the counter-only ones
        self._reading: list[_Read] = []  # the ticks reading now, oldest first
        self._thread: threading.Thread | None = None  # the first sampler thread, once started
        self._threads: list[threading.Thread] = []
        self._workers = 0  # sampler threads in the rotation (those overtaken included)
        self._stuck = 0  # of which, overtaken: still in a read that a later tick went past
        self._max_workers = units + _FREE_MIN
        self._step_k: int | None = None  # by hand: the tick `step` runs next
        self._schedule: TickSchedule | None = None
        self._origin_mono_s = 0.0
        self._between: dict[int, list[Reading]] = {}  # see `_add_between`
        self._chunkers: tuple[DeviceChunker, ...] = ()
        # The fast path's rows hold the devices read on every tick (all, where none is read
        # less often), in this order; `_pick` takes them out of a tick's lists.
        self._row_devices: tuple[int, ...] = tuple(
            i for i in range(len(self._infos)) if i not in self._sparse
        )
        self._pick: Callable[[list[Any]], list[Any]] = _picker(self._row_devices, len(self._infos))
        self._row_chunkers: tuple[DeviceChunker, ...] = ()
        self._read_power: list[int] = []  # positions in a row
        self._counter_only: list[int] = []
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
        self._unix_offset_s = 0.0  # unix time minus monotonic time, fixed at the start
        self._edge_s = math.nan  # unix time of the last reading delivered
        self.opened_at_s = math.nan
        """Unix time of the opening edge: the synchronous reading `start` takes (NaN before)."""
        self.closed_at_s = math.nan
        """Unix time of the closing edge: the synchronous reading `stop` takes (NaN before)."""
        self.counter_update_s: dict[int, float | None] = {}
        """Per device position with a counter on a grid (by its backend's hint): the update
        period seen at the opening edge, s (0: it moved continuously; None: not seen)."""
        self._gridded: set[int] = set()  # counters whose opening edge was an update
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
        """Read the opening edge on the caller's thread, then start the sampler threads.

        Tick 0 is the opening edge: every device read synchronously before this returns
        (`opened_at_s`), so the run's first sample precedes whatever the caller does next.

        Raises:
            RuntimeError: Already started, or stopped.
        """
        if self._thread is not None or self._stopped:
            raise RuntimeError("a Sampler starts once")
        schedule = self._begin()
        with self._lock:
            self._step_k = None
            schedule.claim(schedule.start_s)  # tick 0: the opening edge, read here and now
        self._tick(k=0, refine=self._open_counters)
        self.opened_at_s = self._edge_s
        self._add_between()
        with self._lock:
            # The opening edge may have waited for counters to move (up to about three update
            # periods): the next tick comes at once after it and the schedule runs on from
            # there, so that wait is neither a hole in the samples nor a skipped deadline.
            schedule.restart(self._monotonic_s())
            for _ in range(_FREE_MIN):
                self._spawn(self._claim())

    def step(self) -> None:
        """Wait for the next deadline, tick once, and schedule the next tick.

        Raises:
            RuntimeError: Called while the sampler threads run (from another thread).
        """
        if self._thread is not None and threading.current_thread() not in self._threads:
            raise RuntimeError("the sampler threads are running: step() drives a sampler by hand")
        schedule = self._schedule if self._schedule is not None else self._begin()
        if self._step_k is None:
            with self._lock:
                self._step_k = self._claim()
        wait_s = schedule.deadline_s(self._step_k) - self._monotonic_s()
        if wait_s > 0:
            self._sleep(wait_s)
        if self._stop_event.is_set():
            return
        try:
            self._tick(k=self._step_k)
        finally:
            # Even after a failed tick (a meter bug): the next one waits for its deadline
            # instead of the thread spinning on a deadline already past.
            with self._lock:
                self._step_k = self._claim()

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

    def mark(self, *, cut: bool = True) -> float:
        """Read every device now, on the caller's thread: the edge of a window.

        The readings become samples like a tick's, taken synchronously, so a window that starts
        or ends here (a phase, `Meter.summary`) is measured to this instant, not to the last
        tick: with an energy counter its energy is the counter's difference at its edges,
        whatever the sampling interval. A device whose read is still running on a sampler
        thread is not waited for (it is read when it answers, and labelled ``slow``).

        Args:
            cut: End every device's open chunk at this reading (`DeviceChunker.cut`), so that
                a window with this edge covers whole chunks (phases). False: a reading only.

        Returns:
            The edge's unix time (the mean time of the devices' reads), s. Before `start` or
            after `stop`: the time now, and nothing is read.
        """
        if self._schedule is None or self._stopped:
            return self._wall_s()
        self._tick(cut=cut)
        return self._edge_s

    def stop(
        self,
        *,
        status: RunStatus | None = None,
        exit_code: int | None = None,
        timeout_s: float = 10.0,
    ) -> MeterSummary:
        """Stop the threads, read the closing edge, flush, record the run's status if given.

        The closing edge is one more synchronous reading of every device, taken at once
        (`closed_at_s`): the run's last sample, so its energy reaches this instant.

        Returns:
            The final summary.

        Args:
            status: Record this run status in the spool (None: leave it).
            exit_code: The job's exit code, stored with the status.
            timeout_s: How long to wait for the ticks in progress, s (a read that hangs is left
                behind: its thread adds nothing once this returns).
        """
        self._stop_event.set()
        self._wakeup.set()
        deadline_s = time.monotonic() + timeout_s
        if self._thread is not None and not self._stopped:
            # The closing edge, read at once, before the threads are waited for: every device
            # read once more after the job's work (unless no time has passed since the last
            # reading, which is then the edge). A tick still reading is overtaken and delivered
            # first, as for any tick. A sampler driven by hand (`step`) has no edges: its ticks
            # are the samples.
            with self._lock:
                self._fold()  # the fast path's rows hold the latest samples
                last_s = max((ch.last_mono_s for ch in self._chunkers), default=-math.inf)
            if self._monotonic_s() > last_s:
                try:
                    self._tick()
                    self._close_counters()
                except Exception as e:
                    self._warn_once(f"step:{type(e).__name__}", "closing reading failed: %s", e)
            self.closed_at_s = self._edge_s
        with self._lock:
            stuck = {read.thread for read in self._reading if read.overtaken}
            threads = sorted(self._threads, key=lambda t: t.ident in stuck)  # the free ones first
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline_s - time.monotonic()))
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

    @property
    def infos(self) -> tuple[DeviceInfo, ...]:
        """The backend's description of each device, in `devices` order."""
        return self._infos

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
        counted = counted_devices(devices, host=self.host)  # covered ones are listed only
        if counted:
            totals = aggregate_energy(
                [d.energy_j for d in counted],
                [d.sensor_uncertainty_j for d in counted],
                [d.bound_below_j for d in counted],
                [d.bound_above_j for d in counted],
                device=[d.key for d in counted],
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
            quality=self._quality(devices) if len(devices) == len(self._infos) else None,
        )

    def _quality(self, devices: Sequence[DeviceSummary]) -> RunQuality:
        """The run's grade from what the sampler saw of each device (`meters.quality`)."""
        opened = math.isfinite(self.opened_at_s)
        edges = opened and (math.isfinite(self.closed_at_s) or not self._stopped)
        facts = []
        for i, (info, d) in enumerate(zip(self._infos, devices, strict=True)):
            declared = info.uncertainty.counter_update_s
            period = self.counter_update_s.get(i, 0.0 if declared == 0.0 else None)
            coverage = 1.0 - d.gap_s / d.duration_s if d.duration_s > 0 else None
            facts.append(
                DeviceFacts(
                    key=d.key,
                    method=d.method,
                    simulated=info.simulated,
                    counter_update_s=period if info.has_energy_counter else None,
                    power_window_s=info.uncertainty.power_window_s,
                    coverage=coverage,
                    edges=edges,
                    status=d.status,
                    slow_readings=d.missed.get("slow", 0),
                )
            )
        return grade_run(facts)

    # -- internals ----------------------------------------------------------------------------

    def _begin(self) -> TickSchedule:
        """Fix the time origin and the seq numbering, and register the run (once)."""
        if self._schedule is not None:
            return self._schedule
        start_mono_s = self._clock.monotonic_s()
        unix_offset_s = self._clock.wall_s() - start_mono_s
        self._unix_offset_s = unix_offset_s
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
                # A counter-only device read less often: its gaps are measured against that.
                interval_s=self.counter_interval_s if i in self._sparse else self.interval_s,
                chunk_s=self.chunk_s,
                origin_mono_s=start_mono_s,
                unix_offset_s=unix_offset_s,
            )
            for i, (info, payload) in enumerate(zip(self._infos, self.devices, strict=True))
        )
        self._row_chunkers = tuple(self._chunkers[i] for i in self._row_devices)
        self._codes = [int(DeviceStatus.OK)] * len(self._chunkers)
        # What the fast path checks for NaN: power where it is read, else the counter.
        self._read_power = [i for i, ch in enumerate(self._row_chunkers) if not ch.derives_power]
        self._counter_only = [i for i, ch in enumerate(self._row_chunkers) if ch.derives_power]
        # A reading this much later than the last is later in unix seconds too (their rounding
        # near 1.7e9 is 0.24 µs); one this much before a bin's end is in that bin (the bin
        # rule's 1e-9 of a chunk included).
        self._time_slack_s = max(1e-6, 16.0 * math.ulp(abs(start_mono_s + unix_offset_s)))
        self._bin_slack_s = self._time_slack_s + 1e-8 * self.chunk_s
        self._metadata.setdefault("started_at_s", start_mono_s + unix_offset_s)
        self._origin_mono_s = start_mono_s  # the chunks' bins count from here
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

    def _spawn(self, k: int | None) -> None:
        """Start a sampler thread that runs tick ``k`` first (None: claims one) (holds the lock)."""
        thread = threading.Thread(
            target=self._run, args=(k,), name=f"thermoledger-sampler-{self.run_id}", daemon=True
        )
        self._threads[:] = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        self._workers += 1
        if self._thread is None:
            self._thread = thread
        thread.start()

    def _claim(self) -> int:
        """Claim the calling thread's next tick; count the deadlines skipped (holds the lock)."""
        assert self._schedule is not None  # started
        k, skipped = self._schedule.claim(self._monotonic_s())
        self._overruns += skipped
        return k

    def _every_of(self, order: tuple[int, ...]) -> tuple[int, ...]:
        """The devices of ``order`` read on every tick (all but those read less often)."""
        sparse = self._sparse
        return tuple(i for i in order if i not in sparse) if sparse else order

    def _run(self, k: int | None) -> None:
        """One sampler thread: tick, claim the next deadline free, sleep until it; repeat."""
        schedule = self._schedule
        assert schedule is not None  # started
        while not self._stop_event.is_set():
            if k is None:
                with self._lock:
                    k = self._claim()
            wait_s = schedule.deadline_s(k) - self._monotonic_s()
            if wait_s > 0:
                self._sleep(wait_s)
            if self._stop_event.is_set():
                return
            try:
                self._tick(k=k)
            except Exception as e:
                # A bug in the meter must not end metering, let alone the job.
                self._warn_once(f"step:{type(e).__name__}", "sampler tick failed: %s", e)
            with self._lock:
                if self._workers - self._stuck > _FREE_MAX:
                    # Back from a read that a spare covered for: one spare too many.
                    self._workers -= 1
                    return
                k = self._claim()

    def _tick(
        self,
        *,
        k: int | None = None,
        cut: bool = False,
        refine: Callable[[_Read], None] | None = None,
    ) -> None:
        """Read the devices once and deliver the readings (a scheduled tick, or an edge).

        Args:
            k: The scheduled tick (counter-only devices are read on every `_counter_ticks`-th
                one); None: an edge, which reads every device.
            cut: An edge of a window (`mark`): each device's open chunk ends at this reading.
            refine: Adjusts the readings before they are delivered (the run's opening edge).
        """
        cpu0_s = time.thread_time()
        every = self._counter_ticks
        order = self._order
        if every == 1:
            read = _Read(threading.get_ident())
        elif k is not None and k < self._counter_next_k:  # the counter-only devices wait
            read = _Read(threading.get_ident())
            order = self._order_every
        else:
            read = _Read(threading.get_ident(), rows=False)
        reading = self._reading
        if reading:  # a tick still reading: it is overtaken (every read in flight is older)
            with self._lock:
                for other in reading:
                    self._overtake(other)
        reading.append(read)
        try:
            if self._read_device is not None:
                self._read_devices(read, self._read_device, order)
                if not read.rows and k is not None and not read.overtaken:
                    # Their turn is taken (a tick overtaken before it reached them leaves it
                    # to the next tick): next at the next multiple of `_counter_ticks`.
                    self._counter_next_k = max(self._counter_next_k, (k // every + 1) * every)
            else:
                self._read_whole(read)
            if (
                self._activity is not None
                and k is not None
                and k % self._activity_ticks == self._activity_phase
                and not read.overtaken
            ):
                self._read_activity(read, self._activity)
            if refine is not None:
                refine(read)
        finally:
            delivered = self._deliver(read, cut=cut)
        if not delivered:  # stopped meanwhile: a read that hung adds nothing after stop()
            return
        # Spool only when there is something: chunks sealed now or left by a failed write (read
        # without the lock: what flush() puts there meanwhile, flush() drains itself).
        if self._outbox:
            self._drain(wait=False)
        with self._lock:
            self._cpu_s += time.thread_time() - cpu0_s

    # -- the run's edges on counters that move on a grid (`meters.edges`) ----------------------

    def _read_one(self, i: int) -> Reading:
        """Device ``i`` read alone, under its lock (for the edges' waits on its counter)."""
        failed = Reading(self._monotonic_s(), math.nan, math.nan, int(DeviceStatus.ERROR))
        unit = i if self._read_device is not None else 0
        with self._unit_locks[unit]:
            try:
                if self._read_device is not None:
                    buffer = FlatBuffer(
                        len(self._infos), t_wall_s=self._wall_s(), t_mono_s=self._monotonic_s()
                    )
                    self._read_device(buffer, i)
                    flat: FlatBuffer | FlatReadings = buffer
                else:
                    flat = self._read()
            except Exception:
                return failed
        return Reading(flat.t_mono_s[i], flat.power_w[i], flat.energy_j[i], flat.status[i])

    def _counter_edges(self, read: _Read) -> dict[int, Reading]:
        """The readings of ``read`` whose counter a run's edge waits on: all but those whose
        backend declares them continuous (a counter update period of 0)."""
        flat = read.flat
        if flat is None:
            return {}
        return {
            i: Reading(flat.t_mono_s[i], flat.power_w[i], flat.energy_j[i], flat.status[i])
            for i in read.done
            if self._infos[i].has_energy_counter
            and self._infos[i].uncertainty.counter_update_s != 0.0  # declared continuous
        }

    def _open_counters(self, read: _Read) -> None:
        """The opening edge on counters that move on a grid: each waits for its next update.

        A counter seen moving at once is continuous and keeps its reading. One on a grid takes
        a tight update as its first sample (its value, timed between the reads around it); the
        updates seen on the way tell its period (`counter_update_s`).
        """
        readings = self._counter_edges(read)
        if not readings:
            return
        flat = read.flat
        assert flat is not None
        seen = await_updates(
            self._read_one,
            readings,
            updates=2,
            monotonic_s=self._monotonic_s,
            between=self._between,
            sample_every_s=self.interval_s,
        )
        for i, updates in seen.items():
            if continuous(updates, readings[i]):
                self.counter_update_s[i] = 0.0
                continue
            self.counter_update_s[i] = period_s(updates)
            first = edge(updates)
            if first is not None:
                self._gridded.add(i)
                flat.t_mono_s[i] = first.at_s
                flat.power_w[i] = first.reading.power_w
                flat.energy_j[i] = first.reading.energy_j

    def _add_between(self) -> None:
        """Samples of the devices whose opening edge came early, read while the others' edges
        were awaited (`await_updates`' ``between``): what the ticks would have read."""
        between, self._between = self._between, {}
        if not between:
            return
        jobs: list[SealJob] = []
        with self._lock:
            self._fold()
            for i, readings in sorted(between.items()):
                ch = self._chunkers[i]
                for r in readings:
                    self._guarded(ch, ch.add, jobs, r.t_mono_s, r.power_w, r.energy_j, ch.status)
            self._arm()
            self._seal(jobs)

    def _close_counters(self) -> None:
        """The closing edge on counters on a grid: their next update is the run's last sample."""
        if not self._gridded:
            return
        with self._lock:
            self._fold()
            last_readings = {
                i: Reading(ch.last_mono_s, math.nan, ch.last_counter_j, int(DeviceStatus.OK))
                for i, ch in enumerate(self._chunkers)
                if i in self._gridded
            }
        seen = await_updates(
            self._read_one,
            last_readings,
            updates=1,
            periods=self.counter_update_s,
            monotonic_s=self._monotonic_s,
        )
        read = _Read(threading.get_ident())
        buffer = FlatBuffer(len(self._infos), t_wall_s=self._wall_s(), t_mono_s=self._monotonic_s())
        for i, updates in sorted(seen.items()):
            last = edge(updates)
            if last is not None:
                buffer.stamp(i, last.at_s)
                reading = last.reading
                if reading.power_w == reading.power_w:
                    buffer.set_power(i, reading.power_w, self._infos[i].power_method)
                buffer.set_energy(i, reading.energy_j)
                read.done.append(i)
        if read.done:
            read.flat = buffer
            with self._lock:
                self._reading.append(read)
            self._deliver(read)

    def _read_devices(
        self,
        read: _Read,
        read_device: Callable[[FlatBuffer, int], None],
        order: Sequence[int],
    ) -> None:
        """Read the devices in ``order``, skipping those still being read by another tick."""
        buffer = FlatBuffer(len(self._infos), t_wall_s=self._wall_s(), t_mono_s=self._monotonic_s())
        read.flat = buffer
        done = read.done
        locks = self._unit_locks
        for i in order:
            lock = locks[i]
            if not lock.acquire(False):
                read.busy.append(i)
                continue
            try:
                read_device(buffer, i)
                done.append(i)  # listed while the lock is held: before any later read of it
            except Exception as e:
                read.failed.append(i)
                read.error = e
            finally:
                lock.release()
            if read.overtaken:
                return

    def _read_activity(self, read: _Read, busy_frac: Callable[[int], float]) -> None:
        """The GPUs' memory activity, each under its unit's lock (skipped while held)."""
        taken: list[tuple[int, float, float]] = []
        locks = self._unit_locks
        per_device = self._read_device is not None
        monotonic_s = self._monotonic_s
        for i in self._activity_devices:
            lock = locks[i if per_device else 0]
            if not lock.acquire(False):
                continue
            try:
                fraction = busy_frac(i)
            except Exception:  # a backend's bug must not cost the tick: no reading
                fraction = math.nan
            finally:
                lock.release()
            taken.append((i, monotonic_s(), fraction))
            if read.overtaken:
                break
        read.activity = taken

    def _read_whole(self, read: _Read) -> None:
        """Read every device in one backend call, unless the previous call is still running."""
        n = len(self._infos)
        lock = self._unit_locks[0]
        if not lock.acquire(False):
            read.busy.extend(range(n))
            return
        try:
            flat = self._read()
            if {len(column) for column in flat} != {n}:
                raise RuntimeError(
                    f"backend returned {len(flat.messages)} readings for {n} devices"
                )
            read.flat = flat
            read.done.extend(range(n))
        except Exception as e:
            read.failed.extend(range(n))
            read.error = e
        finally:
            lock.release()

    def _overtake(self, read: _Read) -> None:
        """Mark a read in flight as overtaken by a later tick (caller holds the lock).

        Its thread is out of the rotation until the call it is in returns: a spare thread
        joins when fewer than two would be left free (never by hand, never past the devices
        plus two).
        """
        if read.overtaken:
            return
        read.overtaken = True
        self._stuck += 1
        if (
            self._thread is not None
            and not self._stop_event.is_set()
            and self._workers - self._stuck < _FREE_MIN
            and self._workers < self._max_workers
        ):
            self._spawn(None)

    def _deliver(self, read: _Read, *, cut: bool = False) -> bool:
        """Hand a tick's readings to the chunkers, after what older ticks still in flight read.

        With ``cut`` (an edge), each device whose reading became a sample ends its open chunk
        there (`DeviceChunker.cut`). The edge's time is left in `_edge_s`.

        Returns:
            False when the sampler was stopped meanwhile (nothing is added then).
        """
        with self._lock:
            reading = self._reading
            position = reading.index(read)
            older = reading[:position]
            del reading[position]
            if read.overtaken:
                self._stuck -= 1
            if self._stopped:
                return False
            self._ticks += 1
            jobs: list[SealJob] = []
            if read.activity:
                chunkers = self._chunkers
                for i, t_mono_s, fraction in read.activity:
                    chunkers[i].add_activity(t_mono_s, fraction)
            flat = read.flat
            row = None
            if (
                flat is not None
                and read.rows
                and not (cut or older or read.overtaken or read.busy or read.failed)
            ):
                pick = self._pick
                row = (pick(flat.t_mono_s), pick(flat.power_w), pick(flat.energy_j))
                if not self._plain(*row, pick(flat.status)):
                    row = None
            if row is not None:
                self._rows.append(row)
                self._fast_after_s = max(row[0]) + self._time_slack_s
            else:
                self._fold()
                for other in older:  # their readings are older than this tick's
                    self._overtake(other)
                    self._take(other, jobs)
                self._take(read, jobs)
                if cut:
                    self._cut(read, jobs)
                if read.busy:
                    self._on_busy(read.busy)
                if read.failed:
                    self._on_read_error(read)
                self._arm()
            self._seal_stale(jobs)
            self._seal(jobs)
            self._edge_s = self._edge_time_s(read)
        return True

    def _cut(self, read: _Read, jobs: list[SealJob]) -> None:
        """End each device's open chunk at this read's sample, where it became one (lock held)."""
        flat = read.flat
        if flat is None:
            return
        t_mono = flat.t_mono_s
        for i in read.done:
            ch = self._chunkers[i]
            if ch.last_mono_s == t_mono[i]:  # the reading is the open chunk's last sample
                self._guarded(ch, ch.cut, jobs)

    def _edge_time_s(self, read: _Read) -> float:
        """Unix time of a read: the mean of its devices' read times (now, if none was read)."""
        flat = read.flat
        times = [flat.t_mono_s[i] for i in read.done] if flat is not None else []
        mono_s = math.fsum(times) / len(times) if times else self._monotonic_s()
        return mono_s + self._unix_offset_s

    def _take(self, read: _Read, jobs: list[SealJob]) -> None:
        """Add the readings of ``read`` not delivered yet, device by device (holds the lock)."""
        flat = read.flat
        done = read.done
        end = len(done)
        if flat is None or read.adopted >= end:
            return
        t_mono, power, counter, status, messages = (
            flat.t_mono_s,
            flat.power_w,
            flat.energy_j,
            flat.status,
            flat.messages,
        )
        codes = self._codes
        chunkers = self._chunkers
        for i in done[read.adopted : end]:
            ch = chunkers[i]
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
        read.adopted = end

    def _on_busy(self, busy: list[int]) -> None:
        """Devices skipped because their read was still running: labelled ``slow`` (holds the lock).

        They are read after the others from now on, so that a read that hangs holds up no
        device behind it on its thread.
        """
        codes = self._codes
        for i in busy:
            ch = self._chunkers[i]
            if codes[i] != _SLOW:
                codes[i] = _SLOW  # the next reading's own code will differ: the label follows it
                if ch.status != "slow":
                    self._on_status_change(ch, "slow", _SLOW_MESSAGE)
            ch.miss("slow")
        if self._read_device is not None:
            last = set(busy)
            self._order = tuple(i for i in self._order if i not in last) + tuple(
                i for i in self._order if i in last
            )
            self._order_every = self._every_of(self._order)

    def _on_read_error(self, read: _Read) -> None:
        """Reads that raised: missed (``exception``), counted once per tick (holds the lock)."""
        error = read.error
        assert error is not None
        self._warn_once(
            f"read:{type(error).__name__}",
            "reading the devices failed (%s: %s); the ticks it fails are labelled gaps",
            type(error).__name__,
            error,
        )
        self._read_errors += 1
        for i in read.failed:
            self._chunkers[i].miss("exception")

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
        bin_end_s = self._origin_mono_s + (now_bin + 1) * self.chunk_s
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

    def _plain(
        self, t_mono: list[float], power: list[float], counter: list[float], status: list[int]
    ) -> bool:
        """Whether a tick's readings are plain: the fast path may keep them as a row.

        Plain: the chunkers are steady (`_arm`), every reading is OK with a power (a counter,
        where power is derived from it), every time
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
        total = sum(t_mono) + sum(map(power.__getitem__, self._read_power))
        if self._counter_only:
            total += sum(map(counter.__getitem__, self._counter_only))
        return total == total  # no NaN

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
        for ch, (t_mono, power, counter) in zip(self._row_chunkers, by_device, strict=True):
            ch.take(t_mono, power, counter)

    def _arm(self) -> None:
        """Open or close the fast path for the chunkers as they are (caller holds the lock).

        Only the chunkers of the rows count: those of devices read less often get their
        readings through `DeviceChunker.add` only (every device's status counts all the same).
        """
        chunkers = self._row_chunkers
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

    def _drain(self, *, wait: bool = True) -> None:
        """Commit the outbox to the spool; on failure keep it for the next tick.

        Args:
            wait: Wait for a write in progress on another thread (False: leave the outbox to
                the next tick; a tick never waits behind the other thread's slow disk).
        """
        if not self._write_lock.acquire(wait):
            return
        try:
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
        finally:
            self._write_lock.release()

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


def _picker(positions: Sequence[int], n: int) -> Callable[[list[Any]], list[Any]]:
    """What takes the items at ``positions`` out of a tick's list of ``n``: the list itself
    where they are all of it, in order; else a new list (a slice where they are contiguous)."""
    positions = tuple(positions)
    if positions == tuple(range(n)):
        return lambda items: items
    if positions and positions == tuple(range(positions[0], positions[-1] + 1)):
        return operator.itemgetter(slice(positions[0], positions[-1] + 1))
    return lambda items: [items[i] for i in positions]


def sample_until_signalled(
    sampler: Sampler,
    *,
    signals: Sequence[signal.Signals] = STOP_SIGNALS,
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
        on_started: Called once the handlers are installed and the threads run.

    Returns:
        The final summary.
    """
    # Only record the signal (`Caught` does): a handler runs between two bytecodes of the main
    # thread, which may hold a lock (e.g. an Event's) that anything fancier would try to take.
    with Caught(signals) as caught:
        sampler.start()
        if on_started is not None:
            on_started()
        caught.wait(stop=None if stop is None else stop.is_set)
    return sampler.stop(status="finished")
