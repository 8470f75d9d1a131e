"""`meters.signals`: handlers installed for a block, the previous ones restored after it.

Real signals sent to this process (SIGUSR1/SIGUSR2, which pytest leaves alone): Python runs the
handler on the main thread before the next bytecode after `os.kill` returns.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from thermoledger.meters.signals import STOP_SIGNALS, Caught, handling

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def _before(signum: int, frame: FrameType | None) -> None:
    raise AssertionError(f"the handler from before the block ran for {signum}")


@pytest.fixture(autouse=True)
def _known_handlers() -> Iterator[None]:
    """A known handler on both signals before each test; the originals back after it."""
    saved = {sig: signal.signal(sig, _before) for sig in SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_handlers_are_installed_for_the_block_and_restored_after() -> None:
    seen: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    with handling(SIGNALS, record):
        assert all(signal.getsignal(sig) is record for sig in SIGNALS)
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR2, signal.SIGUSR1]
    assert all(signal.getsignal(sig) is _before for sig in SIGNALS)


def test_the_previous_handlers_come_back_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), handling(SIGNALS, signal.SIG_IGN):
        raise RuntimeError("boom")
    assert all(signal.getsignal(sig) is _before for sig in SIGNALS)


def test_blocks_nest_and_unwind_in_order() -> None:
    outer: list[int] = []
    inner: list[int] = []
    with handling(SIGNALS, lambda s, f: outer.append(s)):
        with handling((signal.SIGUSR1,), lambda s, f: inner.append(s)):
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
    assert inner == [signal.SIGUSR1]
    assert outer == [signal.SIGUSR2, signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) is _before


def test_an_ignored_signal_does_nothing_while_the_block_runs() -> None:
    with handling((signal.SIGUSR1,), signal.SIG_IGN):
        os.kill(os.getpid(), signal.SIGUSR1)  # `_before` would raise
    assert signal.getsignal(signal.SIGUSR1) is _before


def test_ignore_after_leaves_the_signals_ignored() -> None:
    with handling(SIGNALS, lambda s, f: None, ignore_after=True):
        pass
    assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in SIGNALS)
    os.kill(os.getpid(), signal.SIGUSR1)  # ignored: `_before` is not called


def test_off_the_main_thread_nothing_is_installed() -> None:
    raised: list[BaseException] = []

    def install() -> None:
        try:
            with handling(SIGNALS, signal.SIG_IGN):
                pass
        except ValueError as e:
            raised.append(e)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(raised) == 1
    assert all(signal.getsignal(sig) is _before for sig in SIGNALS)


def test_caught_records_the_signals_and_calls_then() -> None:
    then: list[int] = []
    with Caught(SIGNALS, then=then.append) as caught:
        assert not caught
        assert caught.first is None
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        caught.wait()  # returns at once: a signal was received
    assert caught
    assert caught.received == [signal.SIGUSR2, signal.SIGUSR1]
    assert caught.first == "SIGUSR2"
    assert then == caught.received
    assert all(signal.getsignal(sig) is _before for sig in SIGNALS)


def test_caught_wait_ends_when_stop_says_so() -> None:
    calls: list[None] = []

    def stop() -> bool:
        calls.append(None)
        return len(calls) == 3

    with Caught(SIGNALS) as caught:
        caught.wait(stop, poll_s=0.0)
    assert not caught
    assert len(calls) == 3


def test_caught_with_ignore_after_ignores_later_signals() -> None:
    with Caught(SIGNALS, ignore_after=True) as caught:
        os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert caught.received == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN


def test_the_stop_signals_are_sigterm_and_sigint() -> None:
    assert STOP_SIGNALS == (signal.SIGTERM, signal.SIGINT)
