"""Benchmark: whole-trace power integration against a memory-bandwidth reference.

Integrates N samples (default 5e7; float64 ``t`` and ``power``, 800 MB for the default) with
`accounting.integrate.integrate_power`, the library's own path: validation, median-interval
estimate, gap detection and the uncertainty band included. The reference, measured in the same
run on the same arrays, is ``np.sum`` over both arrays: reading the same bytes once is the least
any integration must do, so ``reference time / integration time`` is the fraction of memory
bandwidth reached (target >= 0.5). Each figure is the best of ``--repeats`` runs. Peak extra
memory is measured with tracemalloc (numpy reports its allocations to it) in a separate run.

Run: ``.venv/bin/python bench/integrate.py [--samples N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from accounting.integrate import integrate_power


def _best_s(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _trace(n: int, interval_s: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A training-like trace: 0.1 s sampling with jitter, power swinging 150-650 W with noise,
    one idle dip below 100 W (exercises the sensor floor path) and a few gaps."""
    rng = np.random.default_rng(seed)
    t = np.empty(n)
    t[0] = 1.7e9  # epoch seconds, as a meter records them
    steps = interval_s * (1.0 + 0.01 * rng.standard_normal(n - 1))
    np.cumsum(steps, out=t[1:])
    t[1:] += t[0]
    for k in (n // 5, n // 2, 4 * n // 5):  # three meter stalls of 30 intervals each
        t[k:] += 30 * interval_s
    phase = np.arange(n, dtype=np.float64)
    phase *= 2.0 * np.pi / 600.0
    power = np.sin(phase)
    power *= 250.0
    power += 400.0 + 20.0 * rng.standard_normal(n)
    dip = slice(n // 3, n // 3 + min(n // 100, 100_000))
    power[dip] = 70.0  # idle: below the 100 W where ±5 W outweighs ±5 %
    return t, power


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=float, default=5e7, help="samples per array (5e7)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats, best is kept (5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = int(args.samples)
    t, power = _trace(n, 0.1, args.seed)
    nbytes = t.nbytes + power.nbytes

    def reference() -> float:
        return float(np.sum(t)) + float(np.sum(power))

    def integrate() -> float:
        return integrate_power(t, power).energy_j

    integrate()  # warm-up: page in both arrays, load BLAS
    ref_s = _best_s(reference, args.repeats)
    int_s = _best_s(integrate, args.repeats)

    tracemalloc.start()
    result = integrate_power(t, power)
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print(f"samples                 {n:,} (t and power float64: {nbytes / 1e6:,.0f} MB)")
    print(
        f"energy                  {result.energy_j:.6e} J "
        f"[{result.energy_low_j:.6e}, {result.energy_high_j:.6e}]"
    )
    print(
        f"gaps                    {result.gap_count} ({result.gap_s:.1f} s, policy "
        f"{result.gap_policy})"
    )
    print(
        f"integrate_power         {int_s * 1e3:8.1f} ms  {n / int_s / 1e6:8.1f} M samples/s  "
        f"{nbytes / int_s / 1e9:6.2f} GB/s"
    )
    print(
        f"np.sum(t) + np.sum(p)   {ref_s * 1e3:8.1f} ms  {n / ref_s / 1e6:8.1f} M samples/s  "
        f"{nbytes / ref_s / 1e9:6.2f} GB/s"
    )
    print(f"ratio (reference / integrate) {ref_s / int_s:.2f}   (target >= 0.5)")
    print(f"peak extra memory       {peak_bytes / 1e6:.1f} MB (tracemalloc)")


if __name__ == "__main__":
    main()
