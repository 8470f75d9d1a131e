"""`meters.edges.await_updates` on a virtual clock: the edge is a tight update, found cheaply.

The counters here move on a grid as real ones do; reading one costs ``READ_S`` and a sleep
overshoots by ``OVERSHOOT_S`` (as Linux's do), all on a clock that only these move.
"""

from __future__ import annotations

import math

import pytest

from thermoledger.meters.edges import (
    MAX_WAIT_S,
    POLL_S,
    TIGHT_S,
    Reading,
    Update,
    await_updates,
    continuous,
    edge,
    period_s,
    tight,
)

READ_S = 25e-6
OVERSHOOT_S = 60e-6


class Grid:
    """Counters on a virtual clock: device i moves every ``periods[i]`` s, from ``phases[i]``."""

    def __init__(self, periods: list[float], phases: list[float]) -> None:
        self.periods = periods
        self.phases = phases
        self.now_s = 10.0
        self.reads = [0] * len(periods)

    def clock(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += max(0.0, seconds) + OVERSHOOT_S

    def counter_j(self, i: int, t_s: float) -> float:
        period = self.periods[i]
        if period == 0:
            return 300.0 * t_s  # continuous
        return 300.0 * period * math.floor((t_s - self.phases[i]) / period)

    def read(self, i: int) -> Reading:
        self.reads[i] += 1
        self.now_s += READ_S
        t_s = self.now_s - 0.5 * READ_S
        return Reading(t_s, 300.0, self.counter_j(i, t_s), 0)

    def wait(
        self, updates: int, periods: dict[int, float | None] | None = None
    ) -> dict[int, list[Update]]:
        last = {i: self.read(i) for i in range(len(self.periods))}
        return await_updates(
            self.read,
            last,
            updates=updates,
            periods=periods,
            monotonic_s=self.clock,
            clock_s=self.clock,
            sleep=self.sleep,
        )


@pytest.mark.parametrize("period_s_", [0.02, 0.05, 0.1])
def test_the_opening_finds_a_tight_update_and_the_period_reading_a_few_hundred_times(
    period_s_: float,
) -> None:
    phases = [period_s_ * k / 8 for k in range(8)]
    grid = Grid([period_s_] * 8, phases)
    start_s = grid.now_s
    seen = grid.wait(updates=2)
    for i, updates in seen.items():
        assert len(updates) >= 2
        first = edge(updates)
        assert first is not None
        assert tight(first)
        # the update really is where it is said to be, to its half width
        true_s = phases[i] + period_s_ * round((first.at_s - phases[i]) / period_s_)
        assert abs(first.at_s - true_s) <= first.half_width_s + 1e-9
        assert period_s(updates) == pytest.approx(period_s_, abs=2 * POLL_S / len(updates))
        assert not continuous(updates, Reading(start_s, 0, 0, 0))
    # three periods at most, and paced: reading without pause would take thousands of reads
    assert grid.now_s - start_s <= 3 * period_s_ + 0.01
    assert max(grid.reads) <= 3 * period_s_ / POLL_S + 160


def test_the_closing_uses_the_known_period_one_update_then_a_tight_one() -> None:
    grid = Grid([0.1, 0.1], [0.013, 0.071])
    start_s = grid.now_s
    seen = grid.wait(updates=1, periods={0: 0.1, 1: 0.1})
    for updates in seen.values():
        found = edge(updates)
        assert found is not None
        assert tight(found)
    assert grid.now_s - start_s <= 2 * 0.1 + 0.01
    assert max(grid.reads) <= 2 * 0.1 / POLL_S + 160


def test_a_continuous_counter_is_done_after_two_reads() -> None:
    grid = Grid([0.0, 0.0], [0.0, 0.0])
    seen = grid.wait(updates=2)
    assert grid.reads == [3, 3]  # the edge's own read and two more
    for updates in seen.values():
        assert len(updates) == 2
        assert all(tight(u) for u in updates)


def test_a_fine_grid_is_read_back_to_back_until_two_updates_tell_its_period() -> None:
    grid = Grid([0.001], [0.0004])  # RAPL: about every millisecond
    seen = grid.wait(updates=2)
    found = edge(seen[0])
    assert found is not None
    assert tight(found)
    assert period_s(seen[0]) == pytest.approx(0.001, abs=TIGHT_S)  # from two tight updates
    assert grid.reads[0] < 200  # a few milliseconds of reads


def test_a_counter_that_never_moves_gives_up_at_the_timeout() -> None:
    grid = Grid([1e9], [0.0])
    start_s = grid.now_s
    seen = grid.wait(updates=2)
    assert seen == {0: []}
    assert grid.now_s - start_s == pytest.approx(MAX_WAIT_S, abs=POLL_S + 1e-3)
    assert grid.reads[0] <= MAX_WAIT_S / POLL_S + 5


def test_an_update_earlier_than_predicted_is_found_again() -> None:
    """A grid whose period changes after it was learnt: the edge is still tight."""
    grid = Grid([0.1], [0.0])
    seen = grid.wait(updates=1, periods={0: 0.08})  # learnt wrong (or drifted)
    found = edge(seen[0])
    assert found is not None
    assert tight(found)
    assert 2 * found.half_width_s - 1e-12 < TIGHT_S
