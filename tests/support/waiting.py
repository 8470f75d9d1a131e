"""Waiting for something another thread or process does, with a deadline instead of a sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Default deadline. Generous on purpose: it bounds a hang, it is not a performance target.
WAIT_S = 30.0


def wait_until(
    predicate: Callable[[], bool], what: str, *, timeout_s: float = WAIT_S, poll_s: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout_s`` seconds.

    Args:
        predicate: The condition; called once per poll, so it should be cheap.
        what: Said in the failure message ("timed out waiting for <what>").
        timeout_s: Deadline in seconds from the call.
        poll_s: Pause between polls in seconds.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)
