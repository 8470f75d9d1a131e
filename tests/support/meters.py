"""Meter helpers shared by the meter tests: a sampler that counts its fast-path ticks, an
in-memory chunk sink, and a `NvmlBackend` over a fresh fake NVML on a manual clock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.spool import RunStatus
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_pynvml import FakeGpu, FakeNvml
from thermoledger.meters.wire import ChunkPayload, DevicePayload


class CountingPlain(Sampler):
    """Counts the ticks that took the fast path."""

    plain_ticks = 0

    def _plain(
        self, t_mono: list[float], power: list[float], counter: list[float], status: list[int]
    ) -> bool:
        plain = super()._plain(t_mono, power, counter, status)
        self.plain_ticks += plain
        return plain


def open_nvml(
    fleet: list[FakeGpu], clock: ManualClock | None = None, **kwargs: object
) -> tuple[NvmlBackend, FakeNvml, ManualClock]:
    """A backend over ``fleet`` on the fake NVML (``env={}`` unless given), and its clock."""
    clock = clock or ManualClock()
    fake = FakeNvml(fleet, clock=clock)
    kwargs.setdefault("env", {})
    backend = NvmlBackend(nvml=fake, clock=clock, **kwargs)  # type: ignore[arg-type]
    return backend, fake, clock


class ListSink:
    """An in-memory `meters.sampler.ChunkSink`: the sealed chunks in the order put."""

    def __init__(self) -> None:
        self.chunks: list[ChunkPayload] = []

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        pass

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        pass

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        batch = list(chunks)
        self.chunks.extend(batch)
        return len(batch)

    def next_seqs(self, run_id: str) -> dict[str, int]:
        return {}

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        pass
