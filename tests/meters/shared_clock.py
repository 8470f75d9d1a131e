"""A manual clock that several threads share: a sampler's threads, run event by event.

`meters.testing.ManualClock` moves when ``advance`` is called, which models one thread spending
the time: right for a sampler driven by hand, wrong for threads that run side by side. A fake
NVML call that takes 0.3 s on one sampler thread must not move time 0.3 s under the other
thread's feet, since that thread goes on meanwhile. Here:

- ``advance`` on a **participant** thread (any thread but the driver: the sampler's threads, and
  the fake driver's slow calls made on them) waits until the driver has moved time that far;
- the **driver** (the thread that built the clock) moves time only once every participant thread
  waits on the clock, to the earliest wake-up, and releases that one thread (ties in the order
  they started waiting); ``advance`` on the driver runs time forward that way.

One participant runs at a time (save a thread just started beside the one starting it), so a
run interleaves as real time would and comes out the same every time, with no real sleeping.
A participant must not block on anything a waiting participant holds; the sampler holds no
lock the others wait for while it sleeps or calls a device.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from thermoledger.meters.testing import ManualClock

T = TypeVar("T")

_POLL_S = 0.005  # how often the driver looks again for threads that ended (they do not notify)


class SharedClock(ManualClock):
    """A `ManualClock` whose time its driver thread moves for participant threads.

    Args:
        participants: Which threads the driver waits for before it moves time (e.g. the
            sampler's, by name); a participant that never waits again must end.
        settle_s: Real seconds the driver waits for the participants before it gives up
            (`AssertionError`): a participant blocked elsewhere is a bug in the code under test.
        monotonic_s: Initial monotonic time, s.
        wall_s: Initial unix time, s.
    """

    def __init__(
        self,
        participants: Callable[[threading.Thread], bool],
        *,
        settle_s: float = 60.0,
        monotonic_s: float = 1000.0,
        wall_s: float = 1_700_000_000.0,
    ) -> None:
        super().__init__(monotonic_s, wall_s)
        self._participants = participants
        self._settle_s = settle_s
        self._driver = threading.current_thread()
        self._cond = threading.Condition()
        self._waiting: dict[threading.Thread, tuple[float, int]] = {}  # wake-up time, order
        self._order = itertools.count()
        self._closed = False

    def advance(self, dt_s: float) -> None:
        """Driver: run time ``dt_s`` seconds forward; any other thread: wait that long.

        Raises:
            ValueError: ``dt_s`` is negative.
            AssertionError: (driver) the participants did not come back to the clock.
        """
        if dt_s < 0:
            raise ValueError(f"a monotonic clock cannot go back (dt_s={dt_s})")
        me = threading.current_thread()
        if me is self._driver:
            self._drive(self.monotonic_s() + dt_s)
            return
        with self._cond:
            if self._closed:
                return
            self._waiting[me] = (self.monotonic_s() + dt_s, next(self._order))
            self._cond.notify_all()
            while me in self._waiting and not self._closed:
                self._cond.wait()

    def run_during(self, call: Callable[[], T]) -> T:
        """Run ``call`` on a helper thread while time goes on for the participants.

        For a call that waits for the participants, such as `meters.sampler.Sampler.stop`,
        which joins the sampler's threads: they must wake up to see the stop.

        Returns:
            What ``call`` returned.

        Raises:
            AssertionError: ``call`` did not return within ``settle_s`` real seconds.
        """
        result: list[T] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                result.append(call())
            except BaseException as e:
                errors.append(e)

        helper = threading.Thread(target=target, name="shared-clock-helper", daemon=True)
        helper.start()
        self._drive(math.inf, until=lambda: not helper.is_alive())
        helper.join()
        if errors:
            raise errors[0]
        return result[0]

    def close(self) -> None:
        """Release every waiting thread; from now on ``advance`` no longer waits.

        Time then stands still for the participants: stop them (a sampler ticking on would
        find every deadline ahead and spin).
        """
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify_all()

    def __enter__(self) -> SharedClock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the driver ---------------------------------------------------------------------------

    def _drive(self, end_s: float, until: Callable[[], bool] | None = None) -> None:
        """Release waiting threads in time order up to ``end_s`` (or until ``until()``)."""
        give_up_s = time.monotonic() + self._settle_s
        with self._cond:
            while True:
                self._settle()
                if until is not None and until():
                    return
                if self._waiting:
                    thread, (wake_s, _) = min(self._waiting.items(), key=lambda item: item[1])
                    if wake_s <= end_s:
                        self._move_to(wake_s)
                        del self._waiting[thread]
                        self._cond.notify_all()
                        continue
                if math.isfinite(end_s):
                    self._move_to(end_s)
                    return
                if time.monotonic() > give_up_s:
                    raise AssertionError(f"nothing ended within {self._settle_s} s of real time")
                self._cond.wait(_POLL_S)  # no one waits on the clock: real time goes on

    def _settle(self) -> None:
        """Wait (real time) until every participant thread waits on the clock or has ended."""
        deadline_s = time.monotonic() + self._settle_s
        while True:
            running = [
                t.name
                for t in threading.enumerate()
                if t is not self._driver and self._participants(t) and t not in self._waiting
            ]
            if not running:
                return
            left_s = deadline_s - time.monotonic()
            if left_s <= 0:
                raise AssertionError(
                    f"threads {running} did not come back to the clock within {self._settle_s} s"
                )
            self._cond.wait(min(left_s, _POLL_S))

    def _move_to(self, t_s: float) -> None:
        now_s = self.monotonic_s()
        if t_s > now_s:
            super().advance(t_s - now_s)
