"""The GPU lane's fixture: each check runs against the shipped fake NVML and, marked ``gpu``,
against the real one (skipped where NVML sees no GPU: `tests.support.gpu`)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.gpu import real_nvml
from thermoledger.meters.backends import Bursty, steady
from thermoledger.meters.backends.nvml import NvmlBackend, NvmlModule
from thermoledger.meters.testing.fake_pynvml import FakeNvml, a100, h100


@dataclass(frozen=True)
class Nvml:
    """An NVML module under test, and whether it is the real one."""

    module: NvmlModule
    real: bool

    def open(self, **kwargs: object) -> NvmlBackend:
        """Every GPU it shows (``CUDA_VISIBLE_DEVICES`` ignored), NVML's defaults otherwise."""
        return NvmlBackend(nvml=self.module, env={}, **kwargs)  # type: ignore[arg-type]

    @property
    def idle_window_s(self) -> float:
        """How long the averaged-power check meters (on the fake: long enough, and quick)."""
        return 5.0 if self.real else 1.5


def fake_fleet() -> FakeNvml:
    """Idle-like GPUs on NVML's counter grid (each its own period and phase), real time.

    Two H100s (the 1 s averaged power: one steady, one drifting slowly as an idle GPU's does)
    and an A100 (GA100: no average, instantaneous readings).
    """
    return FakeNvml(
        [
            h100(profile=steady(70.0), counter_update_s=0.05, counter_update_phase_s=0.013),
            h100(
                profile=Bursty(66.0, 78.0, period_s=3.0, duty=0.5, phase_s=0.4),
                counter_update_s=0.1,
                counter_update_phase_s=0.041,
            ),
            a100(profile=steady(55.0), counter_update_s=0.02, counter_update_phase_s=0.007),
        ]
    )


@pytest.fixture(scope="module", params=["fake", pytest.param("real", marks=pytest.mark.gpu)])
def nvml(request: pytest.FixtureRequest) -> Nvml:
    """The fake NVML (unmarked), then the real one (marked ``gpu``; skipped without a GPU)."""
    if request.param == "fake":
        return Nvml(fake_fleet(), real=False)
    return Nvml(real_nvml(), real=True)
