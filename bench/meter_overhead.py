"""Benchmark: the meter's CPU cost beside a job, and the fastest sampling rate it sustains.

Setup: a whole node, as ``auto`` meters one: 8 GPUs through the shipped fake NVML
(``meters.testing.fake_pynvml``, H100 presets with steady, bursty and ramp loads, the driver's
averaged power and the energy counter in one field-values call each) and 2 CPU packages with
their DRAM through a fake powercap tree whose counters move with steady loads
(``meters.testing.fake_powercap``, `FakePowercap.drive`), read as one
`meters.backends.node.NodeBackend` by the real `meters.sampler.Sampler` threads into the real
durable spool (SQLite, WAL, fsync per sealed chunk) in a temporary directory; uploads offline
(no uploader thread), as in a run that pushes later.

Figures:
    * **overhead over whole runs**: process CPU seconds per wall second over the whole life of
      a run at 10 Hz, from the call of ``start()`` (startup, the opening edge and its counter
      checks) to the return of ``stop()`` (the closing edge, the final seal and spool), minus
      an idle baseline of the same process measured in the same run, as a percentage of one
      core; ``--repeats`` runs of ``--seconds`` each (median, min and max printed: other
      processes on the machine make the figure vary). **All-in** counts everything the process
      did, the fakes' emulated calls included; the **meter's own** share leaves those calls
      out (the fake NVML's and the fake powercap's, measured apart, below, times the reads the
      run made of each: the GPUs every tick, their memory activity
      (``nvmlDeviceGetUtilizationRates``) about once a second, as often as the fake counted
      it, the counter-only CPU zones every ``counter_interval_s`` and at the edges; a real
      driver and the kernel spend their own time instead).
      Targets: own <= 0.2 % and all-in <= 0.4 % of one core. The steady state between the
      edges and the one-off costs of start and stop are printed beside them. The fleet's
      counters move continuously (the fake's default); the one-off cost of the edges on
      counters that move every 100 ms, as real GPUs' do (`meters.edges`: paced waits for an
      update), is measured apart and printed with the run length over which it stays under
      a tenth of the own target.
    * **what the NVML calls cost**: the fake's own cost is in the overhead; it is measured apart
      (the calls the backend makes per read of 8 GPUs, replayed on the fake, at 10 Hz) because
      the real library's cost is a driver call instead. For scale, the real ``pynvml``
      binding's own Python layer for the same calls is timed too when ``pynvml`` is installed,
      with its C function replaced by a libc stub that returns NVML_SUCCESS (no driver, no
      GPU): the driver time comes on top of it on a real machine.
    * **highest rate that keeps up**: the interval is stepped down (0.1 s → 1 ms), a few seconds
      each, stopping at the first that overruns; a rate keeps up when the sampler skips no
      deadline (``MeterSummary.overruns == 0``) in one of two tries (a single stall of a shared
      host can skip one deadline at any rate).

Run: ``.venv/bin/python bench/meter_overhead.py [--seconds 30] [--repeats 3]
[--sweep-seconds 3]`` (default total about three minutes). The last line is machine-read:
``overhead: meter own X % of one core, all-in Y % of one core``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thermoledger.meters.backends import Bursty, Ramp, steady
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.base import PowerBackend
from thermoledger.meters.backends.node import NodeBackend
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.backends.rapl import RaplBackend
from thermoledger.meters.sampler import MeterSummary, Sampler
from thermoledger.meters.spool import Spool
from thermoledger.meters.testing.fake_powercap import FakePowercap
from thermoledger.meters.testing.fake_pynvml import FakeNvml, h100

TARGET_OWN_PERCENT = 0.2
TARGET_ALL_IN_PERCENT = 0.4
PACKAGES = 2
CHUNK_S = 10.0
WARMUP_S = 1.0
SWEEP_INTERVALS_S = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
# What the backend asks an H100 for on every read (its default: the driver's 1 s average).
FIELDS = [codes.NVML_FI_DEV_POWER_AVERAGE, codes.NVML_FI_DEV_ENERGY]
# What the sampler asks each GPU about once a second (memory activity).
ACTIVITY_CALL = "nvmlDeviceGetUtilizationRates"


def _fleet(n: int, *, counter_update_s: float = 0.0) -> FakeNvml:
    """``n`` H100s; their counters move continuously, or every ``counter_update_s`` seconds
    (phases spread over the period, as GPUs of a node update out of step)."""
    profiles = [
        steady(450.0),
        Bursty(150.0, 680.0, period_s=2.0, duty=0.6, phase_s=0.4),
        Ramp(120.0, 650.0, duration_s=30.0),
        steady(90.0),
    ]
    return FakeNvml(
        [
            h100(
                profile=profiles[i % len(profiles)],
                counter_update_s=counter_update_s,
                counter_update_phase_s=counter_update_s * ((0.37 * i) % 1.0),
            )
            for i in range(n)
        ]
    )


def _cpu_zones(root: Path) -> tuple[RaplBackend, Callable[[], None]]:
    """2 CPU packages and their DRAM, counters moving with steady loads (RAPL's 1 ms updates).

    Returns:
        The backend, and the fake tree's own work for one read of every zone (its emulated
        counter files: the profile's energy computed per read, where a real kernel's sysfs
        read is a ``pread`` of a kept descriptor).
    """
    tree = FakePowercap(root)
    for package in range(PACKAGES):
        zone = tree.add_package(package, core=False)
        tree.drive(zone, steady(180.0 + 20.0 * package))
        tree.drive(f"{zone}:0", steady(25.0))  # the package's DRAM subzone
    backend = RaplBackend(tree.root, read_text=tree.read_text)
    counters = [tree.zone_path(info.zone or info.uid) / "energy_uj" for info in backend.devices()]

    def emulated() -> None:
        for path in counters:
            tree.read_text(path)

    return backend, emulated


def _pread_s(root: Path, files: int) -> float:
    """CPU seconds of ``pread`` on ``files`` kept-open counter files at 10 Hz (for scale)."""
    root.mkdir(parents=True, exist_ok=True)
    fds = []
    for k in range(files):
        path = root / f"energy_uj{k}"
        path.write_text("123456789012\n")
        fds.append(os.open(path, os.O_RDONLY))
    try:
        return _per_read_s(
            lambda: [int(os.pread(fd, 32, 0)) for fd in fds], interval_s=0.1, reads=30
        )
    finally:
        for fd in fds:
            os.close(fd)


def _cpu_rate(seconds: float) -> float:
    """CPU seconds per wall second of this process while its main thread sleeps."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


@dataclass(frozen=True)
class Metered:
    """One metered run: steady-state window, one-off costs, the whole run.

    Attributes:
        steady_rate: Process CPU s per wall s over the steady window.
        window_s: Length of the steady window, s.
        ticks: Ticks in the window.
        thread_cpu_s: CPU time of the ticks in the window (the sampler's own count), s.
        start_cpu_s: CPU time from ``start()`` to the end of the warm-up, s.
        stop_cpu_s: CPU time of ``stop()`` (final seal and spool), s.
        whole_rate: Process CPU s per wall s from ``start()`` to the end of ``stop()``.
        summary: The final summary.
        counter_interval_s: How often the sampler read the counter-only devices, s.
    """

    steady_rate: float
    window_s: float
    ticks: int
    thread_cpu_s: float
    start_cpu_s: float
    stop_cpu_s: float
    whole_rate: float
    summary: MeterSummary
    counter_interval_s: float


def _metered(
    backend: PowerBackend, spool_dir: Path, *, interval_s: float, seconds: float
) -> Metered:
    """Run a sampler: warm-up, a steady window of ``seconds``, stop."""
    with Spool.in_directory(spool_dir) as spool:
        sampler = Sampler(
            backend,
            run_id=str(uuid.uuid4()),
            spool=spool,
            interval_s=interval_s,
            chunk_s=CHUNK_S,
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        sampler.start()
        time.sleep(WARMUP_S)
        cpu1 = time.process_time()
        before = sampler.summary()  # the benchmark's own work: kept out of every figure
        cpu2, wall2 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        cpu3, wall3 = time.process_time(), time.perf_counter()
        after = sampler.summary()
        cpu4 = time.process_time()
        summary = sampler.stop()
        cpu5, wall5 = time.process_time(), time.perf_counter()
    own_cpu_s = (cpu2 - cpu1) + (cpu4 - cpu3)
    return Metered(
        steady_rate=(cpu3 - cpu2) / (wall3 - wall2),
        window_s=wall3 - wall2,
        ticks=after.ticks - before.ticks,
        thread_cpu_s=after.cpu_s - before.cpu_s,
        start_cpu_s=cpu1 - cpu0,
        stop_cpu_s=cpu5 - cpu4,
        whole_rate=(cpu5 - cpu0 - own_cpu_s) / (wall5 - wall0),
        summary=summary,
        counter_interval_s=sampler.counter_interval_s,
    )


def _zone_reads(summary: MeterSummary) -> int:
    """How many times the CPU zones were read (together) in a run: a zone's samples."""
    return max((d.samples for d in summary.devices if d.kind != "gpu"), default=0)


def _per_read_s(read: Callable[[], object], *, interval_s: float, reads: int) -> float:
    """CPU seconds of one ``read()`` at the sampling rate (caches cold, as in the sampler)."""
    total_s = 0.0
    for _ in range(reads):
        time.sleep(interval_s)
        start = time.thread_time()
        read()
        total_s += time.thread_time() - start
    return total_s / reads


def _back_to_back_s(read: Callable[[], object], reads: int = 2000) -> float:
    """CPU seconds of one ``read()``, back to back (warm caches)."""
    start = time.thread_time()
    for _ in range(reads):
        read()
    return (time.thread_time() - start) / reads


@contextmanager
def _pynvml_without_driver() -> Iterator[Any | None]:
    """The real ``pynvml`` module with its C functions stubbed, or None where not installed.

    Every NVML function becomes libc's ``abs``, which returns 0 (NVML_SUCCESS) for the NULL
    device handle used here: what is left is the binding's own Python and ctypes work.
    """
    try:
        import pynvml
    except ImportError:
        yield None
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        yield None
        return
    stub = ctypes.CDLL(libc_name).abs
    real = pynvml._nvmlGetFunctionPointer
    pynvml._nvmlGetFunctionPointer = lambda name: stub
    try:
        yield pynvml
    finally:
        pynvml._nvmlGetFunctionPointer = real


def _percent(rate: float, baseline: float) -> float:
    return 100.0 * (rate - baseline)


def main() -> None:
    """Measure and print the overhead and the sustainable rate."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help=f"each run's window at 10 Hz, s (rounded to whole {CHUNK_S:g} s chunk periods)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="steady windows (fresh samplers)")
    parser.add_argument(
        "--baseline-seconds", type=float, default=8.0, help="idle baseline window, s"
    )
    parser.add_argument(
        "--sweep-seconds", type=float, default=3.0, help="time per interval in the sweep, s"
    )
    parser.add_argument("--devices", type=int, default=8, help="fake GPUs (default 8)")
    args = parser.parse_args()
    window_s = CHUNK_S * max(1, round(args.seconds / CHUNK_S))

    fake = _fleet(args.devices)
    gpus = NvmlBackend(nvml=fake, gpus=list(range(args.devices)))
    assert all(gpus.energy_in_field), "the bench fleet reads power and energy in one call"
    assert all(d.uncertainty.power_window_s == 1.0 for d in gpus.devices()), "reads FIELDS"
    handles = [fake.nvmlDeviceGetHandleByIndex(i) for i in range(args.devices)]

    def nvml_calls() -> None:  # the NVML calls of one read, on the fake
        for handle in handles:
            fake.nvmlDeviceGetFieldValues(handle, FIELDS)

    def activity_calls() -> None:  # one memory-activity read of every GPU, on the fake
        for handle in handles:
            fake.nvmlDeviceGetUtilizationRates(handle)

    def activity_reads() -> int:  # memory-activity calls the fake has answered so far
        return sum(n for (call, _), n in fake.calls.items() if call == ACTIVITY_CALL)

    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        zones, powercap_calls = _cpu_zones(Path(tmp) / "powercap")
        backend = NodeBackend([gpus, zones])
        n = len(backend.devices())
        read_s = _back_to_back_s(backend.read_flat)
        cold_s = _per_read_s(backend.read_flat, interval_s=0.1, reads=30)
        nvml_s = _per_read_s(nvml_calls, interval_s=0.1, reads=30)
        activity_call_s = _per_read_s(activity_calls, interval_s=1.0, reads=5) / args.devices
        powercap_s = _per_read_s(powercap_calls, interval_s=0.1, reads=30)
        print(
            f"devices: {n}: {args.devices} fake H100 (NVML averaged power + energy counter, one "
            f"call each) and {PACKAGES} CPU packages + {PACKAGES} DRAM (fake powercap files)"
        )
        print(
            f"one read of every device (NodeBackend.read_flat, as a tick reads): "
            f"{read_s * 1e6:.0f} µs back to back, {cold_s * 1e6:.0f} µs at 10 Hz"
        )
        print(f"  of which the fake NVML's calls:          {nvml_s * 1e6:.0f} µs at 10 Hz")
        print(
            f"  memory activity, about once a second:    {activity_call_s * 1e6:.0f} µs per "
            "GPU for the fake's nvmlDeviceGetUtilizationRates"
        )
        print(
            f"  and the fake powercap's emulated files:  {powercap_s * 1e6:.0f} µs at 10 Hz "
            f"(for scale, pread of {2 * PACKAGES} real files: "
            f"{_pread_s(Path(tmp) / 'files', 2 * PACKAGES) * 1e6:.0f} µs)"
        )
        with _pynvml_without_driver() as pynvml:
            if pynvml is not None:
                null = pynvml.c_nvmlDevice_t()

                def binding_calls() -> None:  # the same calls through the real binding
                    for _ in handles:
                        pynvml.nvmlDeviceGetFieldValues(null, FIELDS)

                binding_s = _per_read_s(binding_calls, interval_s=0.1, reads=30)
                print(
                    f"  for scale, real pynvml's Python layer:  {binding_s * 1e6:.0f} µs at "
                    "10 Hz (C call stubbed; a real driver's time comes on top)"
                )

        spool_dir = Path(tmp) / "spool"
        baseline = _cpu_rate(args.baseline_seconds)
        runs = []
        activity = []  # memory-activity calls of each run
        for _ in range(max(1, args.repeats)):
            calls0 = activity_reads()
            runs.append(_metered(backend, spool_dir, interval_s=0.1, seconds=window_s))
            activity.append(activity_reads() - calls0)
        all_in = [_percent(r.whole_rate, baseline) for r in runs]
        # the fakes' emulated calls: the GPUs read every tick (edges included), their memory
        # activity as often as the fake counted, the CPU zones as often as their samples say
        # (every counter interval, and at the edges)
        own = [
            pct
            - 100.0
            * (
                nvml_s * r.summary.ticks
                + activity_call_s * calls
                + powercap_s * _zone_reads(r.summary)
            )
            / (r.window_s + WARMUP_S)
            for pct, r, calls in zip(all_in, runs, activity, strict=True)
        ]
        steady_pct = [_percent(r.steady_rate, baseline) for r in runs]
        ticks = sum(r.ticks for r in runs)
        overruns = sum(r.summary.overruns for r in runs)
        print(
            f"\noverhead at 10 Hz over whole runs (start to stop): {len(runs)} × "
            f"{window_s + WARMUP_S:g} s ({overruns} overruns); CPU zones read every "
            f"{runs[0].counter_interval_s:g} s ({_zone_reads(runs[0].summary)} reads of "
            f"{runs[0].summary.ticks} ticks); GPU memory activity read "
            f"{activity[0] // args.devices} times per GPU"
        )
        print(f"  idle baseline:            {100.0 * baseline:.3f} % of one core")
        print(
            f"  all-in, each run:         {', '.join(f'{p:.3f}' for p in all_in)} % of one core; "
            f"median {statistics.median(all_in):.3f} % = "
            f"{statistics.median(all_in) / TARGET_ALL_IN_PERCENT:.2f} × the "
            f"{TARGET_ALL_IN_PERCENT} % target"
        )
        print(
            f"  meter's own, each run:    {', '.join(f'{p:.3f}' for p in own)} % of one core; "
            f"median {statistics.median(own):.3f} % = "
            f"{statistics.median(own) / TARGET_OWN_PERCENT:.2f} × the {TARGET_OWN_PERCENT} % "
            "target (without the fakes' emulated calls)"
        )
        print(
            f"  steady state between the edges: {', '.join(f'{p:.3f}' for p in steady_pct)} % "
            f"({ticks} ticks in the windows)"
        )
        print(
            f"  one-off: start {1e3 * statistics.median(r.start_cpu_s for r in runs):.1f} ms "
            f"(incl. the {WARMUP_S:g} s warm-up), "
            f"stop {1e3 * statistics.median(r.stop_cpu_s for r in runs):.1f} ms "
            "(closing edge, final seal and spool)"
        )

        gridded = NvmlBackend(
            nvml=_fleet(args.devices, counter_update_s=0.1), gpus=list(range(args.devices))
        )
        edge_runs = [
            _metered(
                NodeBackend([gridded, _cpu_zones(Path(tmp) / f"powercap-{k}")[0]]),
                Path(tmp) / "spool-gridded",
                interval_s=0.1,
                seconds=0.5,
            )
            for k in range(3)
        ]
        edges_ms = 1e3 * (
            statistics.median(r.start_cpu_s + r.stop_cpu_s for r in edge_runs)
            - statistics.median(r.start_cpu_s + r.stop_cpu_s for r in runs)
        )
        print(
            f"  edges on counters that move every 100 ms (the same fleet, phases spread): "
            f"{edges_ms:.1f} ms more CPU per run for start + stop than on continuous counters "
            f"(medians of {len(edge_runs)}); under a tenth of the own target (0.02 %) for runs "
            f"over "
            f"{edges_ms / 1e3 / (TARGET_OWN_PERCENT / 1000.0) / 60.0:.0f} min"
        )

        print(f"\nsweep: {args.sweep_seconds:g} s per interval, {args.devices} devices, spool on")
        print(f"  {'interval s':>10} {'rate Hz':>8} {'ticks':>7} {'overruns':>8} {'CPU %':>7}")
        best_hz = None
        for interval_s in SWEEP_INTERVALS_S:
            for attempt in range(2):  # once more after an overrun: one stall of the host
                run = _metered(
                    backend, Path(tmp), interval_s=interval_s, seconds=args.sweep_seconds
                )
                print(
                    f"  {interval_s:>10g} {1.0 / interval_s:>8g} {run.summary.ticks:>7} "
                    f"{run.summary.overruns:>8} {_percent(run.whole_rate, baseline):>7.2f}"
                    + (" (again)" if attempt else "")
                )
                if not run.summary.overruns:
                    break
            if run.summary.overruns:
                break  # faster rates only overrun more
            best_hz = 1.0 / interval_s
        backend.close()
    if best_hz is None:
        print("\nhighest rate that keeps up: none of the tried rates (every one overran)")
    else:
        print(f"\nhighest rate that keeps up (no overruns): {best_hz:g} Hz, {n} devices")
    print(
        f"overhead: meter own {statistics.median(own):.3f} % of one core, "
        f"all-in {statistics.median(all_in):.3f} % of one core"
    )


if __name__ == "__main__":
    main()
