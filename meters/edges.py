"""A run's edges on energy counters that move on a grid.

An energy counter read at an edge is exact only if its value belongs to that instant. Many do
not: NVML's total-energy counter moves every 20-100 ms on recent GPUs, RAPL's about every
millisecond, AMD's every few. A value read at time t then holds the energy up to the counter's
last update u <= t, and a window opened or closed on it is short by up to one update period, at
either edge: with power swinging by hundreds of watts, tens of joules, far more than the
counter's millijoules.

The fix used at a run's two edges (`meters.sampler.Sampler.start` / ``stop``): read the counter
again at once. A value that has already moved is a counter that moves continuously (within the
read's own time): the reading stands. A value that has not is on a grid: keep reading until it
moves, and take that **update** as the edge, timed at the middle between the last read that
showed the old value and the first that showed the new one, its value exact at that instant.
So the window opens at an update (just before `start` returns) and closes at one (just after
`stop` was called): it holds the whole job, and its energy is the difference of two exact
values. What is left is where between those two reads the update happened: half the time
between them, a few tens of µs per GPU read in turn.

At the opening edge the updates seen on the way tell the update period too (reported with the
run, and used to find the closing edge sooner). Waiting costs at most about three periods at
the opening and two at the closing, on the caller's thread, with paced reads (`await_updates`):
a few hundred reads per device on NVML's 100 ms grid, a few tens of milliseconds of CPU for
eight GPUs; for counters that move continuously, two reads. Readings between the edges are not
moved: a tick's value may be up to one period old, which shifts energy between neighbouring
chunks (and phases) by at most what flows in one period, never out of the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_WAIT_S",
    "POLL_S",
    "TIGHT_S",
    "Reading",
    "Update",
    "await_updates",
    "continuous",
    "edge",
    "period_s",
    "tight",
]

#: The longest wait for a run's edge, s: the opening one paces its reads over up to three of
#: NVML's 100 ms update periods (`await_updates`), with margin.
MAX_WAIT_S: Final = 0.5
#: An update is taken as an edge only when the reads around it are at most this far apart, s:
#: a thread held up between two reads (a busy machine) widens them, and the next update is
#: waited for instead (until `MAX_WAIT_S`; then the narrowest seen).
TIGHT_S: Final = 2e-4
#: The pause between reads while a counter's grid is being found, s.
POLL_S: Final = 2e-3


@dataclass(frozen=True, slots=True)
class Reading:
    """One read of one device: time, power, raw counter and status (as in a `FlatBuffer` slot).

    Attributes:
        t_mono_s: Monotonic time of the read (the middle of its calls), s.
        power_w: Power, W (NaN: none).
        energy_j: Raw counter, J (NaN: none).
        status: `DeviceStatus` code.
    """

    t_mono_s: float
    power_w: float
    energy_j: float
    status: int


@dataclass(frozen=True, slots=True)
class Update:
    """A counter seen to move between two reads of its device.

    Attributes:
        before_s: Monotonic time of the last read that showed the old value, s.
        reading: The first read that showed the new value.
    """

    before_s: float
    reading: Reading

    @property
    def at_s(self) -> float:
        """When the counter moved: the middle of the two reads, s (±`half_width_s`)."""
        return 0.5 * (self.before_s + self.reading.t_mono_s)

    @property
    def half_width_s(self) -> float:
        """How far the update may lie from `at_s`, s."""
        return 0.5 * (self.reading.t_mono_s - self.before_s)


def await_updates(
    read: Callable[[int], Reading],
    last: Mapping[int, Reading],
    *,
    updates: int = 1,
    periods: Mapping[int, float | None] | None = None,
    tight_s: float = TIGHT_S,
    timeout_s: float = MAX_WAIT_S,
    poll_s: float = POLL_S,
    monotonic_s: Callable[[], float] = time.monotonic,
    clock_s: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    between: dict[int, list[Reading]] | None = None,
    sample_every_s: float = 0.0,
) -> dict[int, list[Update]]:
    """Read devices until each counter has moved ``updates`` times, one of them `tight`.

    Reading without pause until a counter moves would cost a core for up to a period per
    device (100 ms on NVML's grid), so the reads are paced, per device (`_Watch`):

    1. it is read twice at once: a continuous counter moves at both (`continuous`), done;
    2. then once every ``poll_s`` until its counter has moved twice (once where its period is
       known from ``periods``): the period, and where the grid lies to about ``poll_s``;
    3. then it sleeps until shortly before its next update is due, and is read every
       ``tight_s`` / 4 or so until the counter moves: a tight update (`edge` takes the first).

    A counter that moves more often than ``4 poll_s`` (RAPL: every millisecond) is read
    without pause until it moves. Reads due at once (the first two; a fine grid's) are made
    back to back on that device, so the gap around an update is one read, whatever the number
    of devices; the pauses are `sleep`'s.

    Args:
        read: Reads one device by position.
        last: Per device position, the reading to compare with (the edge's own).
        updates: How many updates to see per device (one of them tight).
        periods: Per device position, its update period where already known, s.
        tight_s: The widest gap between the reads around an update that makes an edge, s.
        timeout_s: Give up after this long, s (a counter that never moves: an idle device
            whose counter is coarse, or a broken one).
        poll_s: The pause between reads while a grid is being found, s.
        monotonic_s: The readings' clock. Where it stands still over a round of reads (a
            manual clock in tests), nothing can move and the wait ends at once.
        clock_s: The clock the reads are paced by and the timeout runs on, s.
        sleep: Pauses the calling thread, s (on ``clock_s``).
        between: Where to put, per device, the readings taken after its own wait ended while
            others still wait (every ``sample_every_s``): the samples a tick would have taken,
            so that a long wait leaves no hole after an early edge.
        sample_every_s: How often a device done waiting is read meanwhile, s (0: not at all).

    Returns:
        Per device position, the updates seen (fewer than ``updates``, or none tight, when time
        ran out; none for a device whose reads failed).
    """
    known = periods or {}
    waiting = {
        i: _Watch(r, known.get(i), clock_s(), updates=updates, tight_s=tight_s, poll_s=poll_s)
        for i, r in last.items()
        if _counts(r)
    }
    seen = {i: w.updates for i, w in waiting.items()}
    # Devices done while others still wait: read every ``sample_every_s`` (into ``between``).
    sampled: dict[int, float] = {}
    deadline_s = clock_s() + timeout_s
    while waiting:
        now_s = clock_s()
        if now_s >= deadline_s:
            break
        due = [i for i, w in waiting.items() if w.wake_s <= now_s]
        samples_due = [i for i, wake_s in sampled.items() if wake_s <= now_s]
        if not due and not samples_due:
            wakes = [w.wake_s for w in waiting.values()] + list(sampled.values())
            sleep(min(min(wakes), deadline_s) - now_s)
            continue
        round_s = monotonic_s()
        for i in samples_due:
            now = read(i)
            if between is not None and _counts(now):
                between.setdefault(i, []).append(now)
            sampled[i] = now_s + sample_every_s if _counts(now) else math.inf
        for i in due:
            watch = waiting[i]
            while True:  # a device whose next read is due at once is read again before the next
                now = read(i)
                if not _counts(now):
                    del waiting[i]  # failed or lost: this device's edge stays its reading
                    break
                if watch.saw(now, clock_s()):
                    del waiting[i]
                    if between is not None and sample_every_s > 0:
                        sampled[i] = clock_s() + sample_every_s
                    break
                if watch.wake_s > clock_s() or monotonic_s() == round_s:
                    break
        if monotonic_s() == round_s:
            break  # time stands still: no counter can move
    return seen


class _Watch:
    """One device's wait in `await_updates`: its last reading, its updates, when to read next.

    ``wake_s`` is on the pacing clock; the readings' own clock may differ (a fake's), so a
    reading's time is carried over by the offset seen when the latest one came in.
    """

    __slots__ = (
        "burst",
        "needed",
        "period_s",
        "poll_s",
        "previous",
        "tight_s",
        "tight_seen",
        "updates",
        "wake_s",
    )

    def __init__(
        self,
        reading: Reading,
        period: float | None,
        now_s: float,
        *,
        updates: int,
        tight_s: float,
        poll_s: float,
    ) -> None:
        self.previous = reading
        self.updates: list[Update] = []
        self.tight_seen = False
        self.needed = updates
        self.period_s = period if period is not None and period > 0 else None
        self.tight_s = tight_s
        self.poll_s = poll_s
        self.burst = 2  # reads left without pause (the check for a continuous counter)
        self.wake_s = now_s

    def saw(self, now: Reading, clock_s: float) -> bool:
        """Take a new reading (read by ``clock_s``) and plan the next read.

        Returns:
            Whether this device is done.
        """
        before = self.previous
        self.previous = now
        if now.energy_j != before.energy_j:
            mine = self.updates
            update = Update(before.t_mono_s, now)
            mine.append(update)
            self.tight_seen = self.tight_seen or tight(update, self.tight_s)
            if self.tight_seen and len(mine) >= self.needed and self._period_seen():
                return True
        if self.burst > 0:
            self.burst -= 1
            if self.burst > 0:
                self.wake_s = clock_s  # the check for a continuous counter: read again at once
                return False
        self.wake_s = self._next_read_s(clock_s)
        return False

    def _period_seen(self) -> bool:
        """Whether the period is known as well as it can be: where two updates are awaited
        and the grid is too fine to pace, only two tight updates in a row tell it."""
        mine = self.updates
        if self.needed < 2 or len(mine) < 2:
            return True
        period = period_s(mine)
        if period is None or period > 4.0 * self.poll_s:
            return True
        return tight(mine[-2], self.tight_s) and tight(mine[-1], self.tight_s)

    def _next_read_s(self, clock_s: float) -> float:
        """When to read next: paced while the grid is unknown, then in a window around the
        next update due (tightly paced inside it)."""
        mine = self.updates
        tight_pace_s = 0.25 * self.tight_s  # a sleep overshoots by tens of µs
        period = period_s(mine) if len(mine) >= 2 else self.period_s
        if not mine or period is None:
            return clock_s + self.poll_s  # where is the grid?
        if period <= 4.0 * self.poll_s:
            return clock_s  # too fine to pace (RAPL's 1 ms): read on at once, for about a period
        # The next update is due a whole number of periods after the best-timed one seen; the
        # window around it allows for that update's width and the period's uncertainty.
        anchor = min(reversed(mine), key=lambda u: u.half_width_s)
        offset_s = self.previous.t_mono_s - clock_s  # the readings' clock minus ours
        cycles = round((mine[-1].at_s - anchor.at_s) / period) + 1  # the one after the last
        if len(mine) >= 2:
            spanned = max(1, round((mine[-1].at_s - mine[0].at_s) / period))
            period_error_s = (mine[0].half_width_s + mine[-1].half_width_s) / spanned
        else:
            period_error_s = 0.01 * period  # a period learnt earlier (to about this)
        guard_s = 1.5 * (anchor.half_width_s + cycles * period_error_s) + self.tight_s
        due_s = anchor.at_s + cycles * period - offset_s
        if clock_s < due_s - guard_s:
            return due_s - guard_s
        if clock_s < due_s + guard_s:
            return clock_s + tight_pace_s  # inside the window: tightly paced
        return clock_s + self.poll_s  # past the window without an update: find the grid again


def tight(update: Update, tight_s: float = TIGHT_S) -> bool:
    """Whether the reads around ``update`` are close enough for it to make an edge."""
    return 2.0 * update.half_width_s <= tight_s


def edge(updates: list[Update], tight_s: float = TIGHT_S) -> Update | None:
    """The update to take as an edge: the first tight one, else the narrowest (None: none)."""
    for update in updates:
        if tight(update, tight_s):
            return update
    return min(updates, key=lambda u: u.half_width_s, default=None)


def continuous(updates: list[Update], edge: Reading) -> bool:
    """Whether the counter moved at each of the first two reads after the edge: it runs on.

    Such a counter's reading is exact at its own time, and the edge stays where it was read.
    """
    return (
        len(updates) >= 2
        and updates[0].before_s == edge.t_mono_s
        and updates[1].before_s == updates[0].reading.t_mono_s
    )


def period_s(updates: list[Update]) -> float | None:
    """The update period seen, s (None: fewer than two updates).

    Two tight updates in a row give it at once. Else the first two give it roughly and the
    span to the last one (a whole number of periods, some maybe not seen) refines it.
    """
    if len(updates) < 2:
        return None
    last, before = updates[-1], updates[-2]
    if tight(last) and tight(before):  # two updates in a row, each known to within TIGHT_S
        return last.at_s - before.at_s
    first_s = updates[1].at_s - updates[0].at_s
    span_s = updates[-1].at_s - updates[0].at_s
    if first_s <= 0:
        return first_s
    return span_s / max(1, round(span_s / first_s))


def _counts(reading: Reading) -> bool:
    return reading.status == 0 and not math.isnan(reading.energy_j)
