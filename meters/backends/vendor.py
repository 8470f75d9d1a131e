"""What the backends over a vendor GPU library (NVML, AMD SMI) share, written once.

Both open a vendor library, describe their GPUs once, and read them GPU by GPU through
``read_device(buffer, i)`` (`meters.backends.base.DeviceReader`), so their ``read``,
``read_flat``, ``close`` and context manager are the same code: `VendorBackend`. A subclass
supplies ``read_device``, ``_call`` (one library call, its error translated) and ``_shut_down``;
the per-tick loop binds ``read_device`` once and calls it per GPU, as a backend's own loop would.

Errors: each library translates its return codes in one place, through an `ErrorTable` (code →
name and `MeterError` class, hints, the fix for a permission error). Per GPU and tick, a
`TRANSIENT` error costs that figure for that tick (`status_of` gives its status); `DeviceLost`
is handled apart, for good.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from ..errors import (
    DeviceLost,
    DeviceUnavailable,
    MeterError,
    NotSupported,
    PermissionDenied,
    ReadError,
)
from .base import Clock, DeviceInfo, DeviceStatus, FlatBuffer, FlatReadings, Readings, SystemClock

# Per-GPU failures that cost a figure for one tick (DeviceLost is handled apart: for good).
TRANSIENT = (ReadError, NotSupported, DeviceUnavailable, PermissionDenied)

T = TypeVar("T")


def status_of(error: MeterError) -> DeviceStatus:
    """The status of a figure lost to a `TRANSIENT` error: `DeviceStatus.DENIED` or ``ERROR``."""
    return DeviceStatus.DENIED if isinstance(error, PermissionDenied) else DeviceStatus.ERROR


@dataclass(frozen=True, slots=True)
class ErrorTable:
    """A vendor library's return codes, as the meter's error tree.

    Attributes:
        errors: Return code -> (the vendor's description, the `MeterError` class to raise).
            Codes not listed are `ReadError`.
        hints: Return code -> a sentence on what it means here, added to the message.
        permission_fix: What to do about a `PermissionDenied` (its ``fix``).
        unknown: The description of an unlisted code, with ``{code}`` in it.
    """

    errors: Mapping[int, tuple[str, type[MeterError]]]
    hints: Mapping[int, str]
    permission_fix: str
    unknown: str

    def translate(self, code: int, *, call: str, device: str | None) -> MeterError:
        """The `MeterError` for return ``code`` of ``call`` on ``device`` (module docstring)."""
        name, cls = self.errors.get(code) or (self.unknown.format(code=code), ReadError)
        where = f" for {device}" if device else ""
        hint = f" ({self.hints[code]})" if code in self.hints else ""
        message = f"{call}{where} failed: {name}{hint}"
        if cls is PermissionDenied:
            return PermissionDenied(message, fix=self.permission_fix)
        return cls(message)


class Described(Protocol):
    """A backend's state of one GPU: at least its `DeviceInfo`."""

    @property
    def info(self) -> DeviceInfo: ...


G = TypeVar("G", bound=Described)


class VendorBackend(ABC, Generic[G]):
    """The `PowerBackend`, `FlatReader` and context manager of a GPU-by-GPU vendor backend.

    A subclass sets ``_gpus`` (one state per selected GPU, in array order) and ``_open`` (True
    once the library is initialised, so that `close` shuts it down once), and implements
    `read_device`, ``_call`` and ``_shut_down``.

    Args:
        clock: Time source for the readings' timestamps (default: the system clocks, read
            through `time.monotonic` and `time.time` directly on the per-GPU path).
    """

    _gpus: tuple[G, ...]

    def __init__(self, clock: Clock | None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._monotonic_s: Callable[[], float] = (
            time.monotonic if type(self._clock) is SystemClock else self._clock.monotonic_s
        )
        self._open = False

    def devices(self) -> tuple[DeviceInfo, ...]:
        """The selected GPUs, in array order."""
        return tuple(gpu.info for gpu in self._gpus)

    def read(self) -> Readings:
        """Read power and counter of every selected GPU; per-GPU failures become statuses."""
        return self._read_all().freeze()

    def read_flat(self) -> FlatReadings:
        """`read` as plain lists (`meters.backends.base.FlatReader`)."""
        return self._read_all().flat()

    @abstractmethod
    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        """Read GPU ``i`` (array order) into slot ``i`` of ``buffer`` (`DeviceReader`)."""

    def close(self) -> None:
        """Shut the library down (once; later calls do nothing)."""
        if self._open:
            self._open = False
            # a shutdown that fails leaves nothing for us to release
            with contextlib.suppress(MeterError):
                self._shut_down()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- for the subclasses -------------------------------------------------------------------

    @abstractmethod
    def _call(self, fn: Callable[..., T], *args: Any, device: str | None = None) -> T:
        """``fn(*args)``, the library's error translated into a `MeterError` (``raise … from``)."""

    @abstractmethod
    def _shut_down(self) -> None:
        """Release the library (through ``_call``); `close` calls it once."""

    def _optional(self, fn: Callable[..., T], *args: Any, device: str) -> T | None:
        """A capability query: None when the GPU does not answer it (only a lost GPU raises)."""
        try:
            return self._call(fn, *args, device=device)
        except DeviceLost:
            raise
        except MeterError:
            return None

    def _read_all(self) -> FlatBuffer:
        """Every selected GPU, once, one after another, into a `FlatBuffer`."""
        system = type(self._clock) is SystemClock
        t_wall_s = time.time() if system else self._clock.wall_s()
        buffer = FlatBuffer(len(self._gpus), t_wall_s=t_wall_s, t_mono_s=self._monotonic_s())
        read_device = self.read_device
        for i in range(len(self._gpus)):
            read_device(buffer, i)
        return buffer
