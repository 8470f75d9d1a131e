"""The child of ``thermoledger run``: spawned, sent the wrapper's signals, its exit code returned.

The model is a shell's job control. The child runs in its own process group, given the
terminal's foreground when the wrapper has it, so Ctrl-C, ``input()`` and debuggers reach it as
without the wrapper. SIGINT, SIGTERM and SIGHUP sent to the wrapper are forwarded to that group
(`FORWARDED_SIGNALS`), including one that arrives before the child exists. The wrapper returns
the child's exit code, 128 + N when a signal N killed it, 127 when the command does not exist,
126 when it cannot be run.

After the child, the meter flushes and uploads (`finishing`): a signal then cuts the upload
short but not the flush, and once the work is done a late signal is ignored, so the exit status
stays the child's. Signal handlers are installed through `meters.signals` and follow its rules.

Secrets
    The job is code the wrapper does not trust with the API token: it may print its environment,
    send it to an experiment tracker, or be a third-party script. `job_environment` leaves out
    every thermoledger credential (`withheld`), and `guard_secrets` makes the wrapper itself
    non-dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``, as ``ssh-agent`` does), so that a job
    running as the same user can neither read the wrapper's ``/proc/<pid>/environ`` (where a
    ``THERMOLEDGER_TOKEN`` it was started with stays) nor attach to it and read its memory. The
    job itself stays dumpable and debuggable: the flag is reset when the child execs. What no
    process can hide is its command line: a ``--token`` there is in ``ps`` for every user.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Final

from .settings import ENV_PREFIX
from .signals import Caught, handling

__all__ = [
    "EXIT_NOT_EXECUTABLE",
    "EXIT_NOT_FOUND",
    "FORWARDED_SIGNALS",
    "Child",
    "finishing",
    "guard_secrets",
    "job_environment",
    "withheld",
]

FORWARDED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_NOT_FOUND: Final = 127
EXIT_NOT_EXECUTABLE: Final = 126
_WAIT_TICK_S: Final = 1.0
_PR_SET_DUMPABLE: Final = 4
# THERMOLEDGER_* variables the job never gets: the meter's token and token file, and any other
# credential of the project (the service's bootstrap and metrics tokens, a database URL that
# may hold a password), should a service's environment start a job. The server URL goes too:
# without a token a `Meter` in the job could not upload, and the wrapper sends what it records.
_WITHHELD_MARKERS: Final = ("TOKEN", "SECRET", "PASSWORD", "DATABASE_URL")
_WITHHELD_NAMES: Final = frozenset({ENV_PREFIX + "SERVER"})


def withheld(name: str) -> bool:
    """Whether ``thermoledger run`` keeps the environment variable ``name`` from its job."""
    if not name.startswith(ENV_PREFIX):
        return False
    return name in _WITHHELD_NAMES or any(m in name[len(ENV_PREFIX) :] for m in _WITHHELD_MARKERS)


def job_environment(env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: ``env`` without the `withheld` variables, plus ``extra``.

    Args:
        env: The wrapper's environment.
        extra: What the wrapper tells the job (run id, spool directory, node mark).
    """
    out = {name: value for name, value in env.items() if not withheld(name)}
    out.update(extra)
    return out


def guard_secrets() -> bool:
    """Make this process non-dumpable, so no process of the same user can read its secrets.

    Linux only (elsewhere nothing happens). Process-wide: call it only from the ``thermoledger``
    command itself, never from a caller's process. The cost: the wrapper cannot be traced or
    dump core without root; its job is unaffected (see the module docstring).

    Returns:
        Whether the process is now non-dumpable.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # no libc symbol to call: nothing to do
        return False


def _terminal_fd() -> int | None:
    """stdin's fd when this process owns the terminal's foreground (else None)."""
    try:
        fd = sys.stdin.fileno()
        if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _hand_terminal(fd: int | None, pgrp: int) -> None:
    """Make ``pgrp`` the terminal's foreground group (as a shell does for a job)."""
    if fd is None:
        return
    # From a background group, tcsetpgrp raises SIGTTOU (which stops the caller) unless ignored.
    with contextlib.suppress(OSError), handling((signal.SIGTTOU,), signal.SIG_IGN):
        os.tcsetpgrp(fd, pgrp)


class Child:
    """The wrapped command, with the wrapper's signals forwarded to its process group.

    A context manager: entering installs the forwarding handlers before the child exists, so a
    signal in between is neither lost nor kills the wrapper (it is forwarded as soon as the
    child is there); leaving gives the terminal back to the wrapper and restores the previous
    handlers. Enter it on the main thread (`meters.signals`).

    Attributes:
        process: The child, once `spawn` succeeded.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._early: list[int] = []
        self._terminal = _terminal_fd()
        self._handlers = contextlib.ExitStack()

    def __enter__(self) -> Child:
        self._handlers.enter_context(handling(FORWARDED_SIGNALS, self._handle))
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.process is not None:
                _hand_terminal(self._terminal, os.getpgrp())
        finally:
            self._handlers.close()

    def spawn(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        """Start ``command`` in its own process group; send it the signals received so far.

        Raises:
            OSError: It could not be started (FileNotFoundError: no such command).
        """
        child = subprocess.Popen(list(command), env=dict(env), process_group=0)
        if self._terminal is not None:
            _hand_terminal(self._terminal, child.pid)
            # Had the child read the terminal before it was its own, it stopped (SIGTTIN): go on.
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGCONT)
        self.process = child
        for signum in self._early:
            self._send(signum)

    def wait(self, tick: Callable[[], object]) -> int:
        """Wait for the child, calling ``tick`` about once a second meanwhile.

        Returns:
            Its shell-style exit code: 128 + N when a signal N killed it.
        """
        assert self.process is not None
        while True:
            try:
                code = self.process.wait(timeout=_WAIT_TICK_S)
                break
            except subprocess.TimeoutExpired:
                tick()
        return 128 - code if code < 0 else code

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.process is None:
            self._early.append(signum)
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


@contextlib.contextmanager
def finishing(
    abort_upload: Callable[[], object], log: logging.Logger, *, linger: bool = False
) -> Iterator[Caught]:
    """While the meter flushes and uploads at the end, a signal cuts the upload short.

    It does not kill the wrapper mid-flush: the partial chunk and the run's status reach the
    spool first; only the upload is abandoned (``thermoledger push`` finishes it later). Used by
    ``run`` after its child and by ``sidecar`` after its SIGTERM.

    Args:
        abort_upload: Called (in the signal handler) to abandon the upload.
        log: Where a warning goes when a signal came.
        linger: The process is the ``thermoledger`` command itself: a signal after the flush is
            ignored instead of restoring the previous handler, because the work is done and the
            exit status must stay the child's, not become the signal's while the summary is
            printed.
    """
    caught = Caught(FORWARDED_SIGNALS, then=lambda _: abort_upload(), ignore_after=linger)
    try:
        with caught:
            yield caught
    finally:
        if caught:
            log.warning(
                "signal %s while finishing: the upload was cut short; the spool keeps the rest",
                caught.first,
            )
