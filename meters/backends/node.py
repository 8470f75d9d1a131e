"""One backend over several: a node's GPUs, CPU packages and DRAM metered in one run.

`NodeBackend` is a `PowerBackend` whose devices are its parts' devices concatenated in the order
the parts are given (`meters.discovery.open_backend` gives GPUs first, NVIDIA then AMD, then the CPU
packages and DRAM, then an estimate), fixed for its life. Device ``i`` of the node is device
``j`` of part ``p``; `NodeBackend.part_of` says which.

Reads
    Every part must be a `base.DeviceReader`, and so is the node: ``read_device(buffer, i)``
    reads device ``i`` through its own part's ``read_device``, so the sampler's per-device
    isolation of a slow device holds across parts (an NVML call that hangs holds up neither the
    other GPUs nor the RAPL zones). A part's ``read_device`` fills a slot of a buffer sized for
    that part: the node keeps one scratch `base.FlatBuffer` per part, clears the slot, lets the
    part fill it, and copies it into the caller's slot ``i`` (`FlatBuffer.copy_slot`: figures,
    methods, status, message and the device's own timestamp). The caller never reads one device
    on two threads at once, so no two threads share a scratch slot. ``read()`` and
    ``read_flat()`` read every device the same way into fresh buffers: one `FlatBuffer` for the
    whole node per tick, never a buffer shared with the sampler's reads.

Time
    Timestamps stay per device, each taken by its part around its own calls. The parts' clocks
    and the node's (which stamps a tick in ``read()``) must share one monotonic base, as the
    sampler requires of any backend: in production all are the system clocks; tests pass one
    `meters.testing.ManualClock` to every part.

Keys and closing
    Device keys are ``host/uid`` (`meters.chunker.device_payload`), so the parts' uids must
    differ (GPU UUIDs, RAPL zones, hwmon channels and ``SIM-n`` do); the node refuses two equal
    ones. ``close()`` closes every part once, even when one of them fails to close.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .base import (
    ActivityReader,
    Clock,
    DeviceInfo,
    DeviceReader,
    FlatBuffer,
    FlatReadings,
    PowerBackend,
    Readings,
    SlotReader,
    SystemClock,
)

__all__ = ["NodeBackend"]


class NodeBackend:
    """A `PowerBackend` over several backends (parts), read device by device.

    Args:
        parts: The backends, in the order their devices are to appear; each must also be a
            `base.DeviceReader`. The node owns them: `close` closes them.
        clock: Stamps the tick of ``read()`` / ``read_flat()`` (default: the system clocks);
            must share the parts' monotonic base.

    Raises:
        TypeError: A part does not read device by device.
        ValueError: Two devices share a uid (their keys would collide).
    """

    def __init__(self, parts: Sequence[PowerBackend], *, clock: Clock | None = None) -> None:
        self._parts = tuple(parts)
        self._clock: Clock = clock if clock is not None else SystemClock()
        readers: list[Callable[[FlatBuffer, int], None]] = []
        infos: list[DeviceInfo] = []
        where: list[tuple[int, int]] = []
        sizes: list[int] = []
        for p, part in enumerate(self._parts):
            if not isinstance(part, DeviceReader):
                raise TypeError(
                    f"{type(part).__name__} cannot be part of a node: it does not read its "
                    "devices one at a time (read_device)"
                )
            devices = tuple(part.devices())
            readers.append(part.read_device)
            infos.extend(devices)
            where.extend((p, j) for j in range(len(devices)))
            sizes.append(len(devices))
        uids = [info.uid for info in infos]
        repeated = sorted({uid for uid in uids if uids.count(uid) > 1})
        if repeated:
            raise ValueError(f"two devices of the node share a uid: {repeated}")
        self._readers = tuple(readers)
        # Parts that fill any slot are read straight into the caller's buffer (no copy).
        self._direct = tuple(
            part.read_device_at if isinstance(part, SlotReader) else None for part in self._parts
        )
        self._activity = tuple(
            part.memory_busy_frac if isinstance(part, ActivityReader) else None
            for part in self._parts
        )
        self._infos = tuple(infos)
        self._where = tuple(where)
        self._sizes = tuple(sizes)
        # One scratch buffer per part for `read_device` (slot j belongs to one device).
        self._scratch = tuple(FlatBuffer(n, t_wall_s=math.nan, t_mono_s=math.nan) for n in sizes)
        self._closed = False

    @property
    def parts(self) -> tuple[PowerBackend, ...]:
        """The backends, in device order."""
        return self._parts

    def part_of(self, i: int) -> tuple[PowerBackend, int]:
        """The part that owns device ``i`` and the device's position in that part."""
        p, j = self._where[i]
        return self._parts[p], j

    def devices(self) -> tuple[DeviceInfo, ...]:
        """Every part's devices, concatenated in part order."""
        return self._infos

    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        """Read device ``i`` into slot ``i`` of ``buffer`` through its part (`DeviceReader`)."""
        p, j = self._where[i]
        direct = self._direct[p]
        if direct is not None:
            direct(buffer, i, j)
        else:
            self._read_into(buffer, i, self._scratch[p], p, j)

    def memory_busy_frac(self, i: int) -> float:
        """Device ``i``'s memory-busy fraction through its part (`base.ActivityReader`); NaN
        where the part reports none."""
        p, j = self._where[i]
        activity = self._activity[p]
        return math.nan if activity is None else activity(j)

    def read_flat(self) -> FlatReadings:
        """Every device once, part after part, as lists (`base.FlatReader`)."""
        return self._read_all().flat()

    def read(self) -> Readings:
        """Every device once, part after part."""
        return self._read_all().freeze()

    def close(self) -> None:
        """Close every part once (the others too when one fails; the first error is raised)."""
        if self._closed:
            return
        self._closed = True
        failure: Exception | None = None
        for part in self._parts:
            try:
                part.close()
            except Exception as e:
                failure = failure or e
        if failure is not None:
            raise failure

    def __enter__(self) -> NodeBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _read_all(self) -> FlatBuffer:
        clock = self._clock
        buffer = FlatBuffer(len(self._infos), t_wall_s=clock.wall_s(), t_mono_s=clock.monotonic_s())
        scratch = tuple(
            FlatBuffer(n, t_wall_s=math.nan, t_mono_s=math.nan) for n in self._sizes
        )  # fresh: never the slots `read_device` uses on the sampler's threads
        for i, (p, j) in enumerate(self._where):
            direct = self._direct[p]
            if direct is not None:
                direct(buffer, i, j)
            else:
                self._read_into(buffer, i, scratch[p], p, j)
        return buffer

    def _read_into(self, buffer: FlatBuffer, i: int, scratch: FlatBuffer, p: int, j: int) -> None:
        scratch.clear(j)
        scratch.t_mono_s[j] = buffer.t_mono_s[i]  # a part that stamps nothing keeps the tick's
        self._readers[p](scratch, j)
        buffer.copy_slot(i, scratch, j)
