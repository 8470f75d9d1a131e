"""Meter helpers shared by the meter tests: a sampler that counts its fast-path ticks, and a
`NvmlBackend` over a fresh fake NVML on a manual clock."""

from __future__ import annotations

from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_pynvml import FakeGpu, FakeNvml


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
