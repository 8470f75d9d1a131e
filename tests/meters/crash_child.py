"""A meter process for the crash and signal tests: ``python -m tests.meters.crash_child ...``.

It meters two simulated GPUs (one with a counter, one power-only with a 1 s average) on the
system clock into a spool until SIGTERM/SIGINT, then prints its final summary as one JSON line.
The tests kill it with SIGKILL or stop it with SIGTERM and inspect the spool.
"""

from __future__ import annotations

import argparse
import json
import sys

from thermoledger.meters.backends import Bursty, SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.sampler import Sampler, sample_until_signalled
from thermoledger.meters.spool import Spool

HOST = "crash-test"


def fleet() -> list[SimulatedDevice]:
    """The devices the child meters (the restarted meter in the test uses the same)."""
    return [
        SimulatedDevice(steady(300.0)),
        SimulatedDevice(
            Bursty(100.0, 600.0, period_s=0.5, duty=0.5), has_counter=False, reading="average"
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Meter until signalled; print the summary's per-device energy as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("spool")
    parser.add_argument("run_id")
    parser.add_argument("--interval-s", type=float, default=0.01)
    parser.add_argument("--chunk-s", type=float, default=0.2)
    args = parser.parse_args(argv)
    with SimulatedBackend(fleet()) as backend, Spool(args.spool) as spool:
        sampler = Sampler(
            backend,
            run_id=args.run_id,
            spool=spool,
            interval_s=args.interval_s,
            chunk_s=args.chunk_s,
            host=HOST,
        )
        summary = sample_until_signalled(sampler)
    energies = {d.key: d.energy_j for d in summary.devices}
    print(json.dumps({"energy_j": energies, "unspooled": summary.unspooled}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
