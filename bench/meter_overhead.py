"""Benchmark: the meter's CPU cost beside a job, and the fastest sampling rate it sustains.

Setup: 8 GPUs through the shipped fake NVML (``meters.testing.fake_pynvml``, H100 presets with
steady, bursty and ramp loads) read by the real `meters.backends.nvml.NvmlBackend`, sampled by
the real `meters.sampler.Sampler` thread into the real durable spool (SQLite, WAL, fsync per
sealed chunk) in a temporary directory; uploads offline (no uploader thread), as in a run that
pushes later.

Figures:
    * **overhead**: process CPU seconds per wall second while the meter runs at 10 Hz
      (``time.process_time``, every thread of the process, spool writes included), minus an idle
      baseline of the same process measured in the same run, as a percentage of one core.
      Reference: the target of at most 0.5 % of one core (ratio printed). The fake NVML's own
      cost is in the figure; it is measured separately (µs per read of 8 GPUs) because the real
      library's cost is a driver call instead.
    * **highest rate that keeps up**: the interval is stepped down (0.1 s → 1 ms), a few seconds
      each, stopping at the first that overruns; a rate keeps up when the sampler skips no
      deadline (``MeterSummary.overruns == 0``).

Run: ``.venv/bin/python bench/meter_overhead.py [--seconds 24] [--sweep-seconds 3]``
(default total about a minute).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from meters.backends import Bursty, Ramp, steady
from meters.backends.nvml import NvmlBackend
from meters.sampler import MeterSummary, Sampler
from meters.spool import Spool
from meters.testing.fake_pynvml import FakeNvml, h100

TARGET_PERCENT = 0.5
SWEEP_INTERVALS_S = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)


def _fleet(n: int) -> FakeNvml:
    profiles = [
        steady(450.0),
        Bursty(150.0, 680.0, period_s=2.0, duty=0.6, phase_s=0.4),
        Ramp(120.0, 650.0, duration_s=30.0),
        steady(90.0),
    ]
    return FakeNvml([h100(profile=profiles[i % len(profiles)]) for i in range(n)])


def _cpu_rate(seconds: float) -> float:
    """CPU seconds per wall second of this process while its main thread sleeps."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def _metered(
    backend: NvmlBackend, spool_dir: Path, *, interval_s: float, seconds: float
) -> tuple[float, float, MeterSummary]:
    """Run a sampler for ``seconds``; returns (process CPU s per wall s, wall s, summary)."""
    with Spool.in_directory(spool_dir) as spool:
        sampler = Sampler(
            backend,
            run_id=str(uuid.uuid4()),
            spool=spool,
            interval_s=interval_s,
            chunk_s=10.0,
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        sampler.start()
        time.sleep(seconds)
        summary = sampler.stop()
        wall_s = time.perf_counter() - wall0
        cpu_s = time.process_time() - cpu0
    return cpu_s / wall_s, wall_s, summary


def _read_cost_s(backend: NvmlBackend, reads: int = 2000) -> float:
    """CPU seconds of one read of every device, back to back (warm caches)."""
    start = time.thread_time()
    for _ in range(reads):
        backend.read()
    return (time.thread_time() - start) / reads


def _cold_read_cost_s(backend: NvmlBackend, interval_s: float, reads: int) -> float:
    """CPU seconds of one read at the sampling rate (caches cold, as in the sampler thread)."""
    total_s = 0.0
    for _ in range(reads):
        time.sleep(interval_s)
        start = time.thread_time()
        backend.read()
        total_s += time.thread_time() - start
    return total_s / reads


def main() -> None:
    """Measure and print the overhead and the sustainable rate."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=24.0, help="metered window at 10 Hz, s")
    parser.add_argument(
        "--baseline-seconds", type=float, default=8.0, help="idle baseline window, s"
    )
    parser.add_argument(
        "--sweep-seconds", type=float, default=3.0, help="time per interval in the sweep, s"
    )
    parser.add_argument("--devices", type=int, default=8, help="fake GPUs (default 8)")
    args = parser.parse_args()

    backend = NvmlBackend(nvml=_fleet(args.devices), gpus=list(range(args.devices)))
    read_s = _read_cost_s(backend)
    cold_s = _cold_read_cost_s(backend, 0.1, reads=30)
    print(f"devices: {args.devices} fake H100 (NVML field values + energy counter)")
    print(
        f"one read of every device (the fake NVML in Python): {read_s * 1e6:.0f} µs back to "
        f"back, {cold_s * 1e6:.0f} µs at 10 Hz"
    )

    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        baseline = _cpu_rate(args.baseline_seconds)
        rate, wall_s, summary = _metered(backend, Path(tmp), interval_s=0.1, seconds=args.seconds)
        percent = 100.0 * (rate - baseline)
        ticks = summary.ticks
        print(
            f"\noverhead at 10 Hz over {wall_s:.1f} s ({ticks} ticks, {summary.overruns} overruns)"
        )
        print(f"  idle baseline:            {100.0 * baseline:.3f} % of one core")
        print(f"  process while metering:   {100.0 * rate:.3f} % of one core")
        print(
            f"  meter (difference):       {percent:.3f} % of one core "
            f"= {percent / TARGET_PERCENT:.2f} × the {TARGET_PERCENT} % target"
        )
        print(
            f"  sampler thread CPU:       {100.0 * summary.cpu_s / wall_s:.3f} % "
            f"({1e6 * summary.cpu_s / max(ticks, 1):.0f} µs per tick, of which the fake's read "
            f"about {cold_s * 1e6:.0f} µs)"
        )
        own = percent - 100.0 * cold_s * ticks / wall_s
        print(
            f"  meter without the fake's emulated NVML calls: {own:.3f} % of one core "
            f"= {own / TARGET_PERCENT:.2f} × the target (real NVML calls cost driver time instead)"
        )

        print(f"\nsweep: {args.sweep_seconds:g} s per interval, {args.devices} devices, spool on")
        print(f"  {'interval s':>10} {'rate Hz':>8} {'ticks':>7} {'overruns':>8} {'CPU %':>7}")
        best_hz = None
        for interval_s in SWEEP_INTERVALS_S:
            rate, wall_s, summary = _metered(
                backend, Path(tmp), interval_s=interval_s, seconds=args.sweep_seconds
            )
            print(
                f"  {interval_s:>10g} {1.0 / interval_s:>8g} {summary.ticks:>7} "
                f"{summary.overruns:>8} {100.0 * (rate - baseline):>7.2f}"
            )
            if summary.overruns:
                break  # faster rates only overrun more
            best_hz = 1.0 / interval_s
        backend.close()
    if best_hz is None:
        print("\nhighest rate that keeps up: none of the tried rates (every one overran)")
    else:
        print(f"\nhighest rate that keeps up (no overruns): {best_hz:g} Hz, {args.devices} devices")


if __name__ == "__main__":
    main()
