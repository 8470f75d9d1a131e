"""``thermoledger`` over a faulty fake NVML: ``python -m tests.faults.nvml_meter run ... -- job``.

The real client CLI (`meters.cli.main`) in its own process, with
`meters.testing.fake_pynvml.FakeNvml` standing where the ``pynvml`` module would be — the
process-level equivalent of a fake ``libnvidia-ml.so``, so the wrapper, its child, its signals
and its upload are all real and only the driver is scripted. The fake driver loads (t = 0)
when this process starts; the faults of `FLEET` happen on the real clock while the job runs:

====  ========  =====================================================================
GPU   power     fault (t in seconds since the fake driver loaded)
====  ========  =====================================================================
0     300 W     none: the control
1     350 W     every call NotSupported for 1.0 <= t < 1.6 (a transient refusal)
2     400 W     falls off the bus at t = 1.5 (GPU_IS_LOST from then on)
3     450 W     driver reload at t = 1.5: the energy counter restarts from 0
4     250 W     every call takes 0.3 s longer for 1.0 <= t < 2.0 (a sluggish driver)
====  ========  =====================================================================
"""

from __future__ import annotations

import sys
from typing import Final

from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.simulated import steady
from thermoledger.meters.testing.fake_pynvml import FakeGpu, FakeNvml, Fault, SlowCall, h100

CONTROL, REFUSING, LOST, RELOADED, SLOW = range(5)
FAULT_START_S: Final = 1.0
LOST_AT_S: Final = 1.5
SLOW_CALL_S: Final = 0.3
FLEET: Final[tuple[FakeGpu, ...]] = (
    h100(profile=steady(300.0)),
    h100(
        profile=steady(350.0),
        faults=(Fault(codes.NVML_ERROR_NOT_SUPPORTED, FAULT_START_S, FAULT_START_S + 0.6),),
    ),
    h100(profile=steady(400.0), lost_at_s=LOST_AT_S),
    h100(profile=steady(450.0), reloads_at_s=(LOST_AT_S,)),
    h100(
        profile=steady(250.0),
        slow_calls=(SlowCall(SLOW_CALL_S, FAULT_START_S, FAULT_START_S + 1.0),),
    ),
)


def main(argv: list[str]) -> int:
    """Run ``thermoledger <argv>`` with `FLEET` as the NVML driver."""
    sys.modules["pynvml"] = FakeNvml(FLEET)  # type: ignore[assignment]
    from thermoledger.meters import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
