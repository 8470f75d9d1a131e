"""The real NVML for the tests marked ``gpu``: the module, or a skip that says why.

A test that needs a real NVIDIA GPU calls `real_nvml` first. Where pynvml is missing, NVML does
not start (no driver) or it sees no GPU, the test is skipped, quickly (the answer is found once
per session), so the default run on a machine without a GPU never fails on these tests. With
``THERMOLEDGER_TEST_REQUIRE_GPU=1`` (`.ci/gpu`, the lane on a machine lent a GPU) the same
cases fail instead: a lane that skipped everything would pass having checked nothing.
"""

from __future__ import annotations

import functools
import os

import pytest

from thermoledger.meters.backends.nvml import NvmlBackend, NvmlModule
from thermoledger.meters.errors import MeterError

__all__ = ["REQUIRE_GPU_ENV", "real_nvml"]

#: Set to 1 to fail, not skip, where no GPU can be read.
REQUIRE_GPU_ENV = "THERMOLEDGER_TEST_REQUIRE_GPU"


@functools.cache
def _probe() -> tuple[NvmlModule | None, str]:
    try:
        import pynvml
    except ImportError:
        return None, "pynvml is not installed (pip install 'thermoledger[nvml]')"
    module: NvmlModule = pynvml
    try:
        backend = NvmlBackend(nvml=module, env={})
    except MeterError as e:
        return None, f"no NVML here: {e}"
    with backend:
        if not backend.devices():
            return None, "NVML sees no GPU"
    return module, ""


def real_nvml() -> NvmlModule:
    """The ``pynvml`` module, where NVML sees a GPU; else skip (or fail, when required)."""
    module, why = _probe()
    if module is None:
        if os.environ.get(REQUIRE_GPU_ENV, "") not in ("", "0"):
            pytest.fail(f"{REQUIRE_GPU_ENV} is set, but {why}")
        pytest.skip(why)
    return module
