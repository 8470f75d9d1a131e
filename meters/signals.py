"""Signal handlers for a block of code: installed on entry, the previous ones restored on exit.

The one place in the meter that calls `signal.signal`. The ``thermoledger`` commands (and
`meters.sampler.sample_until_signalled`) use it to forward signals to a child, to record a
SIGTERM that ends metering, to cut a final upload short, and to ignore SIGTTOU while taking the
terminal back.

Rules of use, which Python's signal model imposes:

* Enter and leave the block on the **main thread** of the main interpreter: `signal.signal`
  raises ValueError anywhere else. Blocks nest (last in, first out); two threads cannot share
  this, but only the main thread may use it anyway.
* A callback runs **on the main thread, between two bytecodes** of whatever it was doing, which
  may hold a lock (an Event's, a logging handler's). So a callback only records the signal or
  sets a flag (`list.append` and attribute stores are atomic), or sends a signal on
  (`os.killpg`); it never takes a lock, logs or waits. The main loop looks at what was recorded.
* ``ignore_after`` leaves the signals ignored after the block instead of restoring the previous
  handlers: for a process whose work is done, where a late SIGTERM must not turn its exit status
  into the signal's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import Any, Final

__all__ = ["STOP_SIGNALS", "Caught", "Handler", "handling"]

#: What ends a sidecar, a relay or `sample_until_signalled` (a pod's stop, Ctrl-C).
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
#: How often a loop waiting for a recorded signal looks (s): signals interrupt `time.sleep`
#: and Python runs the handler at once, so this only bounds the wait for ``stop``.
_POLL_S: Final = 0.2

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers
"""A Python callable ``(signum, frame)``, or `signal.SIG_IGN` / `signal.SIG_DFL`."""


@contextmanager
def handling(
    signals: Iterable[signal.Signals], handler: Handler, *, ignore_after: bool = False
) -> Iterator[None]:
    """Install ``handler`` for ``signals`` while the block runs; restore the previous ones after.

    Args:
        signals: The signals to handle.
        handler: A callable ``(signum, frame)`` (see the module's rules), or `signal.SIG_IGN`.
        ignore_after: On exit, set `signal.SIG_IGN` instead of restoring the previous handlers.

    Raises:
        ValueError: Not on the main thread.
    """
    previous: dict[signal.Signals, Handler | None] = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
        yield
    finally:
        for sig, old in reversed(previous.items()):
            # None: the handler was not set from Python, so it cannot be put back; default.
            after = signal.SIG_IGN if ignore_after else (signal.SIG_DFL if old is None else old)
            signal.signal(sig, after)


class Caught:
    """Records the signals received while its block runs (a context manager over `handling`).

    Args:
        signals: The signals to catch (default: SIGTERM and SIGINT).
        then: Also called with the signal's number, in the handler: it must be as light as
            the handler itself (set a flag, send a signal on).
        ignore_after: See `handling`.

    Attributes:
        received: The signals received, in order.
    """

    def __init__(
        self,
        signals: Iterable[signal.Signals] = STOP_SIGNALS,
        *,
        then: Callable[[int], object] | None = None,
        ignore_after: bool = False,
    ) -> None:
        self.signals = tuple(signals)
        self.received: list[int] = []
        self._then = then
        self._ignore_after = ignore_after
        self._installed = ExitStack()

    def __enter__(self) -> Caught:
        self._installed.enter_context(
            handling(self.signals, self._handle, ignore_after=self._ignore_after)
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._installed.close()

    def __bool__(self) -> bool:
        return bool(self.received)

    @property
    def first(self) -> str | None:
        """The name of the first signal received (``SIGTERM``), or None."""
        return signal.Signals(self.received[0]).name if self.received else None

    def wait(self, stop: Callable[[], bool] | None = None, *, poll_s: float = _POLL_S) -> None:
        """Sleep until a signal is received (or ``stop()`` is true)."""
        while not self.received and not (stop is not None and stop()):
            time.sleep(poll_s)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._then is not None:
            self._then(signum)
