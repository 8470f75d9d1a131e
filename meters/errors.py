"""The meter's error tree.

Every error a backend raises is a `MeterError`, and each also subclasses the stdlib class a
generic caller would expect, so both `except MeterError` (the sampler's boundary) and
`except PermissionError` / `except RuntimeError` (generic code) work::

    MeterError
    ├── DeviceUnavailable (RuntimeError)   no driver / library, no such device, bad selection
    │   └── NothingMeasurable               ``auto`` found no domain it can read on this node
    ├── DeviceLost        (RuntimeError)   a device that was there fell off the bus mid-run
    ├── NotSupported      (RuntimeError)   the device or driver cannot answer this query
    ├── PermissionDenied  (PermissionError) the OS refuses the read (e.g. RAPL energy_uj)
    ├── ReadError         (RuntimeError)   one read failed (timeout, busy); the next may succeed
    └── TraceFormatError  (ValueError)     a replay trace file is malformed

Vendor errors (NVML return codes, OSError from sysfs) are translated into this tree in exactly one
place per backend, always with ``raise … from e`` so the vendor's error stays in the traceback.
"""

from __future__ import annotations

from pathlib import Path


class MeterError(Exception):
    """Base class of every error raised by `meters`."""


class DeviceUnavailable(RuntimeError, MeterError):
    """The backend cannot be opened, or a requested device does not exist.

    Raised when the vendor library or driver is missing, no device matches a selection, or a
    power-capping tree is absent. A sampler treats it as "meter nothing from this backend".
    """


class NothingMeasurable(DeviceUnavailable):
    """``auto`` found nothing it can read on this node: no GPU, no readable CPU counter.

    The message says what was looked for and why each domain is absent (and the fix where a
    permission is missing). The job runs unmetered; nothing is recorded (never simulated
    devices in its place). With a CPU TDP configured, an estimate is metered instead.

    Attributes:
        reasons: One line per domain looked for, e.g. ``"nvml: no NVIDIA GPU (…)"``.
    """

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__(
            "nothing measurable on this node ("
            + "; ".join(reasons)
            + "): the job runs unmetered and no energy is recorded (--cpu-tdp-w W / "
            "THERMOLEDGER_CPU_TDP_W meters a labelled estimate instead)"
        )


class DeviceLost(RuntimeError, MeterError):
    """A device that was present stopped answering (NVML: GPU is lost / reset required).

    Backends catch this per device and mark the device ``lost`` from then on; the other devices
    continue.
    """


class NotSupported(RuntimeError, MeterError):
    """The device or driver does not offer this query (e.g. no energy counter before Volta)."""


class PermissionDenied(PermissionError, MeterError):
    """The operating system refuses a read; the message names the file (or call) and the fix.

    Attributes:
        path: The file that could not be read, when the refusal concerns a file.
        fix: One sentence telling the operator how to grant access.
    """

    def __init__(self, message: str, *, path: Path | None = None, fix: str = "") -> None:
        self.path = path
        self.fix = fix
        text = message if not fix else f"{message}. Fix: {fix}"
        super().__init__(text)

    def __str__(self) -> str:
        return str(self.args[0])


class ReadError(RuntimeError, MeterError):
    """One read of one device failed transiently (timeout, busy, no data yet)."""


class TraceFormatError(ValueError, MeterError):
    """A replay trace is malformed: wrong header, non-numeric field, non-finite time."""
