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

At the opening edge a second update is awaited too, to learn the update period (reported with
the run). Waiting costs at most one period (two at the opening), reading the device in a loop
on the caller's thread: for counters that move continuously, nothing. Readings between the
edges are not moved: a tick's value may be up to one period old, which shifts energy between
neighbouring chunks (and phases) by at most what flows in one period, never out of the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_WAIT_S",
    "TIGHT_S",
    "Reading",
    "Update",
    "await_updates",
    "continuous",
    "edge",
    "period_s",
    "tight",
]

#: The longest wait for a counter to move, s: above NVML's 100 ms update period with margin.
MAX_WAIT_S: Final = 0.3
#: An update is taken as an edge only when the reads around it are at most this far apart, s:
#: a thread held up between two reads (a busy machine) widens them, and the next update is
#: waited for instead (until `MAX_WAIT_S`; then the narrowest seen).
TIGHT_S: Final = 2e-4


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
    tight_s: float = TIGHT_S,
    timeout_s: float = MAX_WAIT_S,
    monotonic_s: Callable[[], float] = time.monotonic,
) -> dict[int, list[Update]]:
    """Read devices in turn until each counter has moved ``updates`` times (or time is up).

    A device is done once it has ``updates`` updates of which one is `tight` (`edge` picks
    it), so that one stall between two reads does not make the edge.

    Args:
        read: Reads one device by position.
        last: Per device position, the reading to compare with (the edge's own).
        updates: How many updates to see per device.
        tight_s: The widest gap between the reads around an update that makes an edge, s.
        timeout_s: Give up after this long, s (a counter that never moves: an idle device
            whose counter is coarse, or a broken one).
        monotonic_s: The readings' clock. Where it stands still over a round of reads (a
            manual clock in tests), nothing can move and the wait ends at once.

    Returns:
        Per device position, the updates seen (fewer than ``updates`` when time ran out, none
        for a device whose reads failed).
    """
    previous = {i: r for i, r in last.items() if _counts(r)}
    seen: dict[int, list[Update]] = {i: [] for i in previous}
    waiting = set(previous)
    deadline_s = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline_s:
        round_s = monotonic_s()
        for i in sorted(waiting):
            now = read(i)
            if not _counts(now):
                waiting.discard(i)  # failed or lost: this device's edge stays its reading
                continue
            before = previous[i]
            if now.energy_j != before.energy_j:
                seen[i].append(Update(before.t_mono_s, now))
                mine = seen[i]
                if len(mine) >= updates and any(tight(u, tight_s) for u in mine):
                    waiting.discard(i)
            previous[i] = now
        if monotonic_s() == round_s:
            break  # time stands still: no counter can move
    return seen


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
    """The update period seen between two consecutive updates, s (None: fewer than two)."""
    if len(updates) < 2:
        return None
    return updates[1].at_s - updates[0].at_s


def _counts(reading: Reading) -> bool:
    return reading.status == 0 and not math.isnan(reading.energy_j)
