"""Energy integration against analytic answers, and the properties the model promises."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from typing import get_args

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoledger.accounting import integrate
from thermoledger.accounting.errors import AccountingError, InvalidSamples
from thermoledger.accounting.integrate import (
    GAP_POLICIES,
    METHODS,
    POWER_METHODS,
    GapPolicy,
    InvalidArgument,
    Method,
    PowerEnergyBatch,
    PowerMethod,
    PowerModel,
    aggregate_energy,
    counter_energy_curve,
    integrate_counter,
    integrate_power,
    integrate_power_rows,
    integrate_power_segments,
    power_energy_curve,
    segments_from_list,
    segments_from_rows,
    summarize_chunks,
    window_energy,
)

FloatArray = npt.NDArray[np.float64]
REL = 1e-12


def _traces(seed: int, count: int, *, gaps: bool = True) -> list[tuple[FloatArray, FloatArray]]:
    """Irregular traces of assorted lengths (1 to 400 samples), some with gaps and low power."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(1, 400))
        dt = rng.uniform(0.05, 0.15, max(n - 1, 0))
        if gaps and n > 10:
            dt[rng.integers(0, n - 1, 2)] = rng.uniform(1.0, 5.0, 2)
        t = 1.7e9 + np.concatenate(([0.0], np.cumsum(dt)))
        p = rng.uniform(20.0, 650.0, n)
        out.append((t, p))
    return out


# --------------------------------------------------------------------------- analytic answers


@pytest.mark.parametrize("n", [2, 3, 11, 101, 1001, 100_001])
def test_constant_300_w_for_10_s_is_3000_j(n: int) -> None:
    result = integrate_power(np.linspace(0.0, 10.0, n), np.full(n, 300.0))
    assert result.energy_j == pytest.approx(3000.0, rel=REL)
    assert result.duration_s == pytest.approx(10.0, rel=REL)
    assert result.n_samples == n
    assert result.gap_count == 0
    # ±5 % of 300 W (larger than ±5 W) over 10 s, nothing else in the band.
    assert result.sensor_uncertainty_j == pytest.approx(150.0, rel=REL)
    assert (result.energy_low_j, result.energy_high_j) == pytest.approx((2850.0, 3150.0), rel=REL)
    assert result.bound_below_j == 0.0
    assert result.bound_above_j == 0.0


def test_constant_power_with_irregular_sampling() -> None:
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0.0, 10.0, 500))
    t[0], t[-1] = 0.0, 10.0
    # Random instants leave some intervals over 3 × the median: not gaps here.
    result = integrate_power(t, np.full(t.size, 300.0), model=PowerModel(gap_factor=math.inf))
    assert result.energy_j == pytest.approx(3000.0, rel=REL)
    assert integrate_power(t, np.full(t.size, 300.0)).gap_count > 0


def test_low_power_uses_the_5_w_floor() -> None:
    result = integrate_power([0.0, 10.0], [60.0, 60.0])
    assert result.energy_j == pytest.approx(600.0)
    assert result.sensor_uncertainty_j == pytest.approx(50.0)  # 5 W × 10 s, not 5 % × 600 J


@pytest.mark.parametrize("per_second", [1, 2, 10, 50])
def test_square_wave_is_exact_over_whole_periods_when_edges_are_sampled(per_second: int) -> None:
    # 100 W on [2k, 2k+1), 400 W on [2k+1, 2k+2): 500 J per 2 s period, 12 periods.
    t = np.arange(0, 24 * per_second + 1) / per_second
    p = np.where(np.floor(t) % 2 == 0, 100.0, 400.0)
    assert integrate_power(t, p).energy_j == pytest.approx(12 * 500.0, rel=REL)


def test_linear_ramp_window_is_exact() -> None:
    # 0 → 100 W over 10 s: ∫_0^5 10 t dt = 125 J, though only the ends are sampled.
    curve = power_energy_curve([0.0, 10.0], [0.0, 100.0])
    windows = window_energy(curve, [0.0, 5.0, 2.5], [5.0, 10.0, 7.5])
    np.testing.assert_allclose(windows.energy_j, [125.0, 375.0, 250.0], rtol=REL)


def test_single_sample_is_zero_energy() -> None:
    result = integrate_power([5.0], [300.0])
    assert (result.energy_j, result.duration_s, result.n_samples) == (0.0, 0.0, 1)
    assert math.isnan(result.nominal_interval_s)


# --------------------------------------------------------------------------- gaps


def _gapped() -> tuple[FloatArray, FloatArray]:
    """200 W for 10 s at 10 Hz, no samples for 10 s, then 400 W for 10 s."""
    before = np.arange(0, 101) / 10
    after = 20.0 + np.arange(0, 101) / 10
    return np.concatenate([before, after]), np.concatenate(
        [np.full(101, 200.0), np.full(101, 400.0)]
    )


@pytest.mark.parametrize(
    ("policy", "fill_j"), [("exclude", 0.0), ("bridge", 3000.0), ("hold", 2000.0)]
)
def test_gap_under_each_policy(policy: GapPolicy, fill_j: float) -> None:
    t, p = _gapped()
    result = integrate_power(t, p, model=PowerModel(gap_policy=policy))
    measured = 200.0 * 10 + 400.0 * 10
    assert result.gap_policy == policy
    assert result.gap_count == 1
    assert result.gap_s == pytest.approx(10.0)
    assert result.nominal_interval_s == pytest.approx(0.1)
    assert result.gap_energy_bridge_j == pytest.approx(3000.0)
    assert result.gap_fill_j == pytest.approx(fill_j)
    assert result.energy_j == pytest.approx(measured + fill_j)
    gaps = result.gaps
    assert len(gaps) == 1
    assert (int(gaps.index[0]), float(gaps.start_s[0]), float(gaps.end_s[0])) == (100, 10.0, 20.0)
    # Whatever the policy, the gap held between 0 W and the trace's peak (400 W) times 10 s.
    assert result.ceiling_power_w == 400.0
    sensor = 0.05 * measured
    assert result.energy_low_j == pytest.approx(measured - sensor)
    assert result.energy_high_j == pytest.approx(measured + sensor + 400.0 * 10)
    assert result.energy_low_j <= result.energy_j <= result.energy_high_j


def test_gap_bound_uses_the_device_limit_when_given() -> None:
    t, p = _gapped()
    result = integrate_power(t, p, model=PowerModel(max_power_w=700.0, min_power_w=50.0))
    assert result.ceiling_power_w == 700.0
    assert result.bound_above_j == pytest.approx(700.0 * 10)
    assert result.bound_below_j == 0.0  # exclude counted nothing, the floor cannot go lower
    assert result.energy_low_j == pytest.approx(0.95 * 6000.0)  # floor × gap is not claimed
    bridged = integrate_power(
        t, p, model=PowerModel(max_power_w=700.0, min_power_w=50.0, gap_policy="bridge")
    )
    assert bridged.bound_below_j == pytest.approx(3000.0 - 50.0 * 10)
    assert bridged.bound_above_j == pytest.approx(7000.0 - 3000.0)
    assert bridged.energy_low_j == pytest.approx(result.energy_low_j + 50.0 * 10)


def test_gap_threshold_follows_factor_and_nominal_interval() -> None:
    t = np.array([0.0, 1.0, 2.0, 4.5, 5.5])
    p = np.full(5, 100.0)
    assert integrate_power(t, p).gap_count == 0  # 2.5 s ≤ 3 × 1 s
    assert integrate_power(t, p, model=PowerModel(gap_factor=2.0)).gap_count == 1
    assert integrate_power(t, p, model=PowerModel(nominal_interval_s=0.5)).gap_count == 1
    assert integrate_power(t, p, model=PowerModel(gap_factor=math.inf)).gap_threshold_s == math.inf


def test_nominal_interval_of_a_long_trace_comes_from_runs() -> None:
    n = 300_000
    t = np.arange(n) * 0.1
    t[1000:] += 50.0  # one gap; the median ignores it
    result = integrate_power(t, np.full(n, 250.0))
    assert result.nominal_interval_s == pytest.approx(0.1)
    assert result.gap_count == 1
    assert int(result.gaps.index[0]) == 999
    assert result.energy_j == pytest.approx(250.0 * 0.1 * (n - 2))


# --------------------------------------------------------------------------- counters


def test_counter_plain_difference() -> None:
    t = np.arange(11.0)
    result = integrate_counter(t, 1000.0 + 300.0 * t)
    assert result.energy_j == pytest.approx(3000.0)
    assert result.method == "counter"
    assert (result.reset_count, result.wrap_count) == (0, 0)
    assert result.sensor_uncertainty_j == pytest.approx(0.02 * 3000.0)
    assert result.energy_high_j == pytest.approx(3060.0)


def test_counter_reset_is_bounded_and_flagged() -> None:
    # 300 W throughout; the driver reloads at t = 4.4 s, between readings at 4 and 5 s.
    t = np.arange(11.0)
    true = 300.0 * t
    counter = np.where(t < 4.4, 5000.0 + true, 300.0 * (t - 4.4))
    result = integrate_counter(t, counter, max_power_w=700.0)
    assert result.reset_count == 1
    assert result.wrap_count == 0
    assert result.reset_index.tolist() == [4]
    # Counted: everything but the 0.4 s before the reload (the post-reset 180 J are kept).
    assert result.energy_j == pytest.approx(3000.0 - 120.0)
    assert result.reset_unknown_j.tolist() == pytest.approx([700.0 - 180.0])
    assert result.energy_j <= 3000.0 <= result.energy_high_j
    unbounded = integrate_counter(t, counter)
    assert unbounded.energy_j == pytest.approx(result.energy_j)
    assert unbounded.energy_high_j == math.inf
    assert unbounded.reset_unknown_j.tolist() == [math.inf]


def test_counter_wraps_are_not_resets() -> None:
    t = np.arange(0.0, 20.5, 0.5)
    counter = np.mod(300.0 * t, 1000.0)  # wraps at 1000 J (RAPL-style modulus)
    for limit in (None, 700.0):
        result = integrate_counter(t, counter, wrap_j=1000.0, max_power_w=limit)
        assert result.energy_j == pytest.approx(300.0 * 20.0)
        assert result.wrap_count == 6
        assert result.reset_count == 0


def test_counter_drop_inconsistent_with_a_wrap_is_a_reset() -> None:
    t = np.arange(6.0)
    counter = np.array([100.0, 400.0, 700.0, 50.0, 350.0, 650.0])  # 700 → 50 in 1 s
    # As a wrap (modulus 1000) that is 350 J in 1 s: plausible next to the trace's own 300 W
    # (at most twice that), not with a 320 W power limit.
    assert integrate_counter(t, counter, wrap_j=1000.0).wrap_count == 1
    result = integrate_counter(t, counter, wrap_j=1000.0, max_power_w=320.0)
    assert (result.wrap_count, result.reset_count) == (0, 1)
    assert result.energy_j == pytest.approx(300.0 * 4 + 50.0)
    far = np.array([100.0, 400.0, 700.0, 900.0, 150.0, 450.0])  # 900 → 150: 250 J, fine
    assert integrate_counter(t, far, wrap_j=1000.0).wrap_count == 1
    reload = np.array([600.0, 700.0, 800.0, 20.0, 120.0, 220.0])  # wrap would be 220 J/s at 100
    assert integrate_counter(t, reload, wrap_j=1000.0).reset_count == 1


def test_counter_curve_windows_and_unbounded_reset() -> None:
    t = np.arange(11.0)
    counter = np.where(t < 4.4, 300.0 * t, 300.0 * (t - 4.4))
    curve = counter_energy_curve(t, counter)
    w = window_energy(curve, [0.0, 2.0, 4.5, 6.0], [2.0, 4.0, 5.5, 10.0])
    # (4, 5) counts the 180 J after the reload, shared out evenly: 90 J + 150 J of (5, 6).
    np.testing.assert_allclose(w.energy_j, [600.0, 600.0, 240.0, 1200.0])
    assert w.bound_above_j.tolist()[:2] == [0.0, 0.0]
    assert w.bound_above_j[2] == math.inf  # overlaps the reset interval (4, 5)
    assert w.bound_above_j[3] == 0.0


def test_counter_in_chunks_sums_to_the_counter_total() -> None:
    t = np.arange(0.0, 60.0, 0.1)
    counter = np.mod(250.0 * t, 2000.0)
    power = np.full(t.size, 250.0)
    chunks = summarize_chunks(t, power, chunk_s=10.0, counter_j=counter, wrap_j=2000.0)
    total = integrate_counter(t, counter, wrap_j=2000.0)
    assert chunks.energy_j.sum() == pytest.approx(total.energy_j, rel=1e-12)
    assert int(chunks.wrap_count.sum()) == total.wrap_count
    assert set(chunks.method.tolist()) == {"counter"}
    np.testing.assert_allclose(chunks.mean_power_w, 250.0, rtol=1e-9)


# --------------------------------------------------------------------------- windows


def test_adjacent_windows_add_up_to_the_whole() -> None:
    t, p = _traces(7, 1)[0]
    for policy in GAP_POLICIES:
        curve = power_energy_curve(t, p, model=PowerModel(gap_policy=policy))
        cuts = np.linspace(t[0] - 1.0, t[-1] + 1.0, 37)
        w = window_energy(curve, cuts[:-1], cuts[1:])
        whole = integrate_power(t, p, model=PowerModel(gap_policy=policy))
        assert w.energy_j.sum() == pytest.approx(whole.energy_j, rel=1e-9)
        assert w.sensor_uncertainty_j.sum() == pytest.approx(whole.sensor_uncertainty_j, rel=1e-9)
        assert w.bound_above_j.sum() == pytest.approx(whole.bound_above_j, rel=1e-9)
        assert w.covered_s.sum() == pytest.approx(t[-1] - t[0])


def test_window_outside_the_trace_covers_nothing() -> None:
    curve = power_energy_curve([0.0, 10.0], [300.0, 300.0])
    w = window_energy(curve, [-5.0, 8.0, 20.0], [0.0, 15.0, 30.0])
    np.testing.assert_allclose(w.energy_j, [0.0, 600.0, 0.0])
    np.testing.assert_allclose(w.covered_s, [0.0, 2.0, 0.0])


def test_window_errors() -> None:
    curve = power_energy_curve([0.0, 10.0], [300.0, 300.0])
    with pytest.raises(InvalidArgument, match="window 1 ends"):
        window_energy(curve, [0.0, 5.0], [1.0, 4.0])
    with pytest.raises(InvalidArgument, match="finite"):
        window_energy(curve, [math.nan], [1.0])


# --------------------------------------------------------------------------- chunks


def test_chunks_tile_the_trace_by_the_left_sample_rule() -> None:
    t = np.arange(0.0, 35.0, 0.5)
    p = 100.0 + 10.0 * t
    chunks = summarize_chunks(t, p, chunk_s=10.0)
    assert chunks.chunk_index.tolist() == [0, 1, 2, 3]
    assert chunks.t0_s.tolist() == [0.0, 10.0, 20.0, 30.0]
    assert chunks.t1_s.tolist() == [10.0, 20.0, 30.0, 34.5]  # the last ends at its last sample
    assert chunks.n.tolist() == [20, 20, 20, 10]
    assert chunks.energy_j.sum() == pytest.approx(integrate_power(t, p).energy_j, rel=REL)
    # Linear power: each chunk's mean is the power at its middle; min/max at its ends.
    np.testing.assert_allclose(chunks.mean_power_w, 100.0 + 10.0 * (chunks.t0_s + chunks.t1_s) / 2)
    np.testing.assert_allclose(chunks.min_power_w, 100.0 + 10.0 * chunks.t0_s)
    np.testing.assert_allclose(chunks.max_power_w, 100.0 + 10.0 * chunks.t1_s)
    assert set(chunks.method.tolist()) == {"power_avg"}


def test_chunks_report_their_gaps_and_mean_over_measured_time() -> None:
    t, p = _gapped()
    chunks = summarize_chunks(t, p, chunk_s=5.0)
    # The sample at 10 s is alone in its bin and its interval is the gap; bin 3 is empty.
    assert chunks.chunk_index.tolist() == [0, 1, 2, 4, 5, 6]
    assert chunks.gap_count.tolist() == [0, 0, 1, 0, 0, 0]
    assert chunks.gap_s[2] == pytest.approx(10.0)
    assert chunks.energy_j[2] == 0.0
    assert chunks.mean_power_w[2] == pytest.approx(200.0)  # no measured time: sample mean
    assert chunks.mean_power_w[1] == pytest.approx(200.0)
    assert chunks.energy_j.sum() == pytest.approx(integrate_power(t, p).energy_j)
    assert chunks.bound_above_j.sum() == pytest.approx(400.0 * 10)


def test_single_sample_chunk() -> None:
    chunks = summarize_chunks([0.0, 1.0, 2.0], [100.0, 200.0, 300.0], chunk_starts=[0, 2])
    assert chunks.n.tolist() == [2, 1]
    # Left-sample rule: the interval 1 → 2 s belongs to the first chunk.
    assert chunks.energy_j.tolist() == pytest.approx([400.0, 0.0])
    assert chunks.t1_s.tolist() == [2.0, 2.0]
    assert chunks.mean_power_w.tolist() == pytest.approx([200.0, 300.0])


def test_chunk_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        summarize_chunks([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(InvalidArgument, match="strictly increasing"):
        summarize_chunks([0.0, 1.0], [1.0, 1.0], chunk_starts=[1, 0])


# --------------------------------------------------------------------------- many at once


def test_segments_and_rows_equal_per_trace_results() -> None:
    traces = _traces(3, 12)
    traces.insert(4, (np.zeros(0), np.zeros(0)))  # an empty trace in the middle
    t, p, offsets = segments_from_list([a for a, _ in traces], [b for _, b in traces])
    batch = integrate_power_segments(t, p, offsets, model=PowerModel(coverage_fraction=0.5))
    assert len(batch) == len(traces)
    for k, (tk, pk) in enumerate(traces):
        if tk.size == 0:
            assert batch.energy_j[k] == 0.0
            assert batch.n_samples[k] == 0
            continue
        one = integrate_power(tk, pk, model=PowerModel(coverage_fraction=0.5))
        got = batch.trace(k)
        for name in (
            "energy_j",
            "energy_low_j",
            "energy_high_j",
            "sensor_uncertainty_j",
            "bound_below_j",
            "bound_above_j",
            "duration_s",
            "gap_s",
            "gap_energy_bridge_j",
        ):
            assert getattr(got, name) == pytest.approx(getattr(one, name), rel=1e-12), name
        assert got.gap_count == one.gap_count
        np.testing.assert_array_equal(got.gaps.index, one.gaps.index)
        assert got.nominal_interval_s == pytest.approx(one.nominal_interval_s, nan_ok=True)

    rows = np.stack([pk[:50] for tk, pk in traces if tk.size >= 50][:3])
    t_rows = np.arange(50) * 0.1
    batch2 = integrate_power_rows(t_rows, rows)
    for k in range(rows.shape[0]):
        assert batch2.energy_j[k] == pytest.approx(integrate_power(t_rows, rows[k]).energy_j)
    t_flat, p_flat, off = segments_from_rows(np.tile(t_rows, (3, 1)), rows)
    assert off.tolist() == [0, 50, 100, 150]
    assert integrate_power_segments(t_flat, p_flat, off).energy_j == pytest.approx(batch2.energy_j)


def test_chunk_summaries_on_segments_equal_per_trace_summaries() -> None:
    traces = _traces(11, 6)
    t, p, offsets = segments_from_list([a for a, _ in traces], [b for _, b in traces])
    batch = summarize_chunks(t, p, chunk_s=7.0, origin_s=1.7e9, offsets=offsets)
    for k, (tk, pk) in enumerate(traces):
        one = summarize_chunks(tk, pk, chunk_s=7.0, origin_s=1.7e9)
        mine = batch.segment == k
        for name in ("energy_j", "energy_high_j", "min_power_w", "max_power_w", "mean_power_w"):
            np.testing.assert_allclose(getattr(batch, name)[mine], getattr(one, name), rtol=1e-12)
        np.testing.assert_array_equal(batch.chunk_index[mine], one.chunk_index)
        np.testing.assert_array_equal(batch.first_index[mine] - offsets[k], one.first_index)


@pytest.mark.parametrize("margin", [0.1, math.inf])
@pytest.mark.parametrize("block", [5, 64, 1000])
def test_block_boundaries_do_not_change_results(
    monkeypatch: pytest.MonkeyPatch, block: int, margin: float
) -> None:
    """The kernel walks blocks; tiny blocks put boundaries everywhere: same answers."""
    traces = _traces(5, 8)
    t, p, offsets = segments_from_list([a for a, _ in traces], [b for _, b in traces])
    p[::17] = 60.0  # readings below 100 W: the sensor term's correction paths

    model = PowerModel(
        coverage_fraction=0.25, min_power_w=80.0, max_power_w=600.0, unseen_margin=margin
    )

    def run() -> tuple[integrate.PowerEnergyBatch, integrate.ChunkSummaries]:
        return (
            integrate_power_segments(t, p, offsets, model=model),
            summarize_chunks(t, p, chunk_s=3.0, offsets=offsets, model=model),
        )

    reference, chunks_ref = run()
    monkeypatch.setattr(integrate._kernel, "_BLOCK_SAMPLES", block)
    small, chunks = run()
    for name in ("energy_j", "sensor_uncertainty_j", "bound_below_j", "bound_above_j"):
        np.testing.assert_allclose(getattr(small, name), getattr(reference, name), rtol=1e-12)
        np.testing.assert_allclose(getattr(chunks, name), getattr(chunks_ref, name), rtol=1e-9)
    np.testing.assert_array_equal(small.gap_count, reference.gap_count)
    np.testing.assert_allclose(chunks.max_power_w, chunks_ref.max_power_w)


@pytest.mark.parametrize("scale", [1.0, 0.15, 0.3])
def test_kernel_matches_the_per_interval_model_on_a_long_trace(scale: float) -> None:
    """The streaming kernel (several blocks, gaps, low readings) against the curve's
    independent per-interval arithmetic, for every band term."""
    rng = np.random.default_rng(2)
    n = 400_000
    t = np.cumsum(rng.uniform(0.09, 0.11, n))
    t[150_000:] += 7.0
    p = scale * (400.0 + 200.0 * np.sin(np.arange(n) / 50.0) + 20.0 * rng.standard_normal(n))
    for coverage, floor_w, limit_w, margin in (
        (1.0, 0.0, None, 0.1),
        (0.25, 30.0, 500.0, 0.1),
        (0.25, 30.0, 500.0, math.inf),  # the worst case: the kernel's per-interval terms
    ):
        model = PowerModel(
            coverage_fraction=coverage,
            min_power_w=floor_w,
            max_power_w=limit_w,
            unseen_margin=margin,
        )
        whole = integrate_power(t, p, model=model)
        curve = power_energy_curve(t, p, model=model)
        assert whole.energy_j == pytest.approx(curve.energy_j[-1], rel=1e-10)
        assert whole.sensor_uncertainty_j == pytest.approx(curve.sensor_j[-1], rel=1e-10)
        assert whole.bound_below_j == pytest.approx(curve.bound_below_j[-1], rel=1e-10)
        assert whole.bound_above_j == pytest.approx(curve.bound_above_j[-1], rel=1e-10)
        assert whole.gap_count == 1


# --------------------------------------------------------------------------- properties


_DT = st.floats(min_value=1e-3, max_value=10.0, allow_nan=False)
_POWER = st.floats(min_value=0.0, max_value=2000.0, allow_nan=False)


@st.composite
def _trace(draw: st.DrawFn) -> tuple[FloatArray, FloatArray]:
    n = draw(st.integers(min_value=2, max_value=40))
    dts = draw(st.lists(_DT, min_size=n - 1, max_size=n - 1))
    powers = draw(st.lists(_POWER, min_size=n, max_size=n))
    t = draw(st.floats(min_value=-1e4, max_value=1e9)) + np.concatenate(([0.0], np.cumsum(dts)))
    return t, np.array(powers)


@settings(max_examples=60, deadline=None)
@given(
    trace=_trace(),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=12),
    policy=st.sampled_from(GAP_POLICIES),
)
def test_random_windows_sum_to_the_total(
    trace: tuple[FloatArray, FloatArray], cuts: list[float], policy: GapPolicy
) -> None:
    t, p = trace
    if np.any(np.diff(t) <= 0):  # a tiny step can vanish in a large offset
        return
    edges = np.sort(np.concatenate(([t[0]], t[0] + np.array(cuts) * (t[-1] - t[0]), [t[-1]])))
    curve = power_energy_curve(t, p, model=PowerModel(gap_policy=policy))
    windows = window_energy(curve, edges[:-1], edges[1:])
    total = integrate_power(t, p, model=PowerModel(gap_policy=policy)).energy_j
    assert windows.energy_j.sum() == pytest.approx(total, rel=1e-9, abs=1e-9 * (1.0 + total))
    assert np.all(windows.energy_low_j <= windows.energy_j + 1e-9)


@settings(max_examples=60, deadline=None)
@given(trace=_trace(), starts=st.sets(st.integers(1, 39), max_size=8))
def test_random_chunks_sum_to_the_total(
    trace: tuple[FloatArray, FloatArray], starts: set[int]
) -> None:
    t, p = trace
    if np.any(np.diff(t) <= 0):
        return
    chunk_starts = sorted({0} | {s for s in starts if s < t.size})
    chunks = summarize_chunks(t, p, chunk_starts=chunk_starts)
    whole = integrate_power(t, p)
    assert len(chunks) == len(chunk_starts)
    scale = 1.0 + whole.energy_j
    assert chunks.energy_j.sum() == pytest.approx(whole.energy_j, rel=1e-12, abs=1e-12 * scale)
    assert chunks.sensor_uncertainty_j.sum() == pytest.approx(
        whole.sensor_uncertainty_j, rel=1e-12, abs=1e-12 * scale
    )
    assert chunks.gap_s.sum() == pytest.approx(whole.gap_s, abs=1e-9)
    assert np.all(chunks.t1_s[:-1] == chunks.t0_s[1:])
    assert np.all(chunks.min_power_w <= chunks.mean_power_w * (1 + 1e-12) + 1e-9)
    assert np.all(chunks.mean_power_w <= chunks.max_power_w * (1 + 1e-12) + 1e-9)


@settings(max_examples=60, deadline=None)
@given(a=_trace(), b=_trace(), pause=_DT)
def test_concatenated_traces_add_up(
    a: tuple[FloatArray, FloatArray], b: tuple[FloatArray, FloatArray], pause: float
) -> None:
    (ta, pa), (tb, pb) = a, b
    tb = tb - tb[0] + ta[-1] + pause
    t, p = np.concatenate([ta, tb]), np.concatenate([pa, pb])
    if np.any(np.diff(t) <= 0):
        return
    joined = integrate_power(t, p, model=PowerModel(gap_factor=math.inf)).energy_j
    parts = integrate_power(ta, pa, model=PowerModel(gap_factor=math.inf)).energy_j
    parts += integrate_power(tb, pb, model=PowerModel(gap_factor=math.inf)).energy_j
    parts += 0.5 * (tb[0] - ta[-1]) * (pa[-1] + pb[0])  # the interval that joins them
    assert joined == pytest.approx(parts, rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------- uncertainty


def test_band_covers_the_true_energy_of_a_known_profile() -> None:
    # True power 300 + 200 sin(2πt/7) W for 60 s; a sensor reading 4 % high (inside ±5 %).
    t = np.arange(0.0, 60.0001, 0.1)
    period = 7.0
    true_j = 300.0 * 60.0 + 200.0 * period / (2 * np.pi) * (1 - np.cos(2 * np.pi * 60.0 / period))
    reading = 1.04 * (300.0 + 200.0 * np.sin(2 * np.pi * t / period))
    result = integrate_power(t, reading)
    assert abs(result.energy_j - true_j) > 0.03 * true_j  # the error is real ...
    assert result.energy_low_j <= true_j <= result.energy_high_j  # ... and covered


def test_coverage_term_covers_aliased_instant_readings() -> None:
    # The range of the readings in isolation: the rare-level term (its own test) left out.
    # A 25 ms burst of 500 W every 100 ms over a 100 W floor; instantaneous readings every
    # 100 ms always land between bursts (the A100/H100 failure mode): they see only 100 W.
    t = np.arange(0.0, 60.0001, 0.1)
    readings = np.full(t.size, 100.0)
    true_j = (100.0 + 0.25 * 400.0) * 60.0
    blind = integrate_power(
        t, readings, model=PowerModel(rare_level_readings=0.0, method="power_instant")
    )
    assert not blind.energy_low_j <= true_j <= blind.energy_high_j  # why coverage matters
    # The worst case (unseen_margin = inf): the unseen 75 % may hold 0 … 700 W. (Before the
    # observed-range rule this was the only coverage band; the assertions are the old ones.)
    covered = integrate_power(
        t,
        readings,
        model=PowerModel(
            rare_level_readings=0.0,
            method="power_instant",
            coverage_fraction=0.25,
            max_power_w=700.0,
            unseen_margin=math.inf,
        ),
    )
    assert covered.method == "power_instant"
    assert covered.energy_low_j <= true_j <= covered.energy_high_j
    # Below 0.75 × 6 kJ, above 0.75 × (42 − 6) kJ.
    assert covered.bound_below_j == pytest.approx(0.75 * 6000.0)
    assert covered.bound_above_j == pytest.approx(0.75 * (700.0 * 60.0 - 6000.0))
    # The default bounds the unseen part by the range the readings show: bursts that no reading
    # ever sees lie outside it, and the band says nothing about them (the rule's stated
    # assumption fails; only readings that see all of the time, the driver's average, help).
    observed = integrate_power(
        t,
        readings,
        model=PowerModel(rare_level_readings=0.0, method="power_instant", coverage_fraction=0.25),
    )
    assert observed.bound_below_j == pytest.approx(0.0, abs=1e-9)
    assert observed.bound_above_j == pytest.approx(0.0, abs=1e-9)
    assert not observed.energy_low_j <= true_j <= observed.energy_high_j


def test_aggregation_combines_devices_and_keeps_one_device_linear() -> None:
    totals = aggregate_energy(
        [100.0, 200.0, 50.0, 50.0],
        [3.0, 4.0, 2.0, 2.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 2.0, 0.0, math.inf],
        device=["gpu0", "gpu1", "gpu0", "gpu0"],
        group=["run-a", "run-a", "run-b", "run-b"],
    )
    assert totals.key.tolist() == ["run-a", "run-b"]
    assert totals.energy_j.tolist() == [300.0, 100.0]
    # run-a: two devices, independent → √(3² + 4²); run-b: one device's rows add linearly.
    assert totals.sensor_uncertainty_j.tolist() == pytest.approx([5.0, 4.0])
    assert totals.n_devices.tolist() == [2, 1]
    assert totals.n_rows.tolist() == [2, 2]
    assert totals.bound_above_j.tolist() == [3.0, math.inf]
    assert totals.energy_low_j.tolist() == pytest.approx([295.0, 95.0])
    linear = aggregate_energy(
        [100.0, 200.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0], device=["a", "b"], combine="linear"
    )
    assert linear.sensor_uncertainty_j.tolist() == [7.0]
    with pytest.raises(InvalidArgument, match="combine"):
        aggregate_energy([1.0], [0.0], [0.0], [0.0], device=["a"], combine="max")  # type: ignore[arg-type]


def test_chunk_totals_aggregate_to_the_trace_band() -> None:
    t, p = _gapped()
    chunks = summarize_chunks(t, p, chunk_s=3.0)
    totals = aggregate_energy(
        chunks.energy_j,
        chunks.sensor_uncertainty_j,
        chunks.bound_below_j,
        chunks.bound_above_j,
        device=np.zeros(len(chunks), dtype=np.int64),
    )
    whole = integrate_power(t, p)
    assert totals.energy_low_j[0] == pytest.approx(whole.energy_low_j)
    assert totals.energy_high_j[0] == pytest.approx(whole.energy_high_j)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("t", "p", "pattern"),
    [
        ([0.0, 1.0, 2.0, 3.0], [1.0, 1.0, math.nan, 1.0], r"power_w\[2\] is nan"),
        ([0.0, 1.0, math.nan, 3.0], [1.0, 1.0, 1.0, 1.0], r"t_s\[2\] is nan"),
        ([0.0, 1.0, 2.0, 3.0], [1.0, math.inf, 1.0, 1.0], r"power_w\[1\] is inf"),
        ([0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, -2.0], r"power_w\[3\] = -2.0 W is negative"),
        ([0.0, 1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0], r"t_s\[2\] = 0.5 s is not after t_s\[1\]"),
        ([0.0, 1.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0], r"t_s\[2\] = 1.0 s is not after"),
        ([0.0, 1.0, 2.0], [1.0, 1.0], r"mismatched lengths: t_s has 3 samples, power_w has 2"),
        ([math.inf], [1.0], r"t_s\[0\] is inf"),
        ([0.0], [math.inf], r"power_w\[0\] is inf"),
        ([], [], r"no samples"),
    ],
)
def test_invalid_samples_name_the_problem_and_index(
    t: list[float], p: list[float], pattern: str
) -> None:
    with pytest.raises(InvalidSamples, match=pattern) as caught:
        integrate_power(t, p)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, AccountingError)


def test_the_first_bad_index_is_reported() -> None:
    p = np.ones(10)
    p[7] = math.nan
    p[3] = -1.0
    with pytest.raises(InvalidSamples, match=r"power_w\[3\]"):
        integrate_power(np.arange(10.0), p)


def test_invalid_sample_far_into_a_long_trace() -> None:
    n = 300_000  # several kernel blocks
    t = np.arange(n) * 0.1
    p = np.full(n, 200.0)
    p[250_001] = -1.0
    with pytest.raises(InvalidSamples, match=r"power_w\[250001\] = -1.0 W is negative"):
        integrate_power(t, p)
    t[200_000] = t[199_998]
    with pytest.raises(InvalidSamples, match=r"t_s\[200000\] = .* is not after t_s\[199999\]"):
        integrate_power(t, np.full(n, 200.0))


def test_invalid_samples_in_segments_name_the_trace() -> None:
    t = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 10.5])  # trace 1 goes back in time
    with pytest.raises(InvalidSamples, match=r"t_s\[5\].*\(trace 1, sample 2\)"):
        integrate_power_segments(t, np.ones(6), [0, 3, 6])
    # Going back between traces is fine: each trace has its own clock.
    t_ok = np.array([10.0, 11.0, 12.0, 0.0, 1.0, 2.0])
    assert integrate_power_segments(t_ok, np.ones(6), [0, 3, 6]).energy_j.tolist() == [2.0, 2.0]
    single = np.array([0.0, 1.0, math.nan, 3.0, 4.0])  # a one-sample trace with a NaN time
    with pytest.raises(InvalidSamples, match=r"t_s\[2\] is nan.*\(trace 1, sample 0\)"):
        integrate_power_segments(single, np.ones(5), [0, 2, 3, 5])


def test_invalid_counters_name_the_problem() -> None:
    with pytest.raises(InvalidSamples, match=r"counter_j\[1\] = -5.0 J is negative"):
        integrate_counter([0.0, 1.0], [0.0, -5.0])
    with pytest.raises(InvalidSamples, match=r"counter_j\[1\] = 1200.0 J exceeds wrap_j"):
        integrate_counter([0.0, 1.0], [0.0, 1200.0], wrap_j=1000.0)
    with pytest.raises(InvalidSamples, match="mismatched lengths"):
        integrate_counter([0.0, 1.0], [0.0])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"coverage_fraction": -0.1}, "coverage_fraction"),
        ({"averaging_window_s": -1.0}, "averaging_window_s"),
        ({"averaging_window_s": math.inf}, "averaging_window_s"),
        ({"coverage_fraction": 1.5}, "coverage_fraction"),
        ({"gap_factor": 0.5}, "gap_factor"),
        ({"nominal_interval_s": -1.0}, "nominal_interval_s"),
        ({"max_power_w": 50.0, "min_power_w": 80.0}, "max_power_w"),
        ({"sensor_rel_error": math.nan}, "sensor_rel_error"),
        ({"gap_policy": "interpolate"}, "gap_policy"),
        ({"method": "counter"}, "method"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(InvalidArgument, match=pattern):
        integrate_power([0.0, 1.0], [1.0, 1.0], model=PowerModel(**kwargs))  # type: ignore[arg-type]


def test_power_model_is_checked_once_stored_as_floats_and_hashable() -> None:
    model = PowerModel(gap_factor=3, max_power_w=np.float64(700.0), nominal_interval_s=1)
    same = PowerModel(max_power_w=700.0, nominal_interval_s=1.0)
    assert model == same
    assert hash(model) == hash(same)
    assert len({model, same, PowerModel()}) == 2  # the meter groups chunk work by model
    assert type(model.gap_factor) is float
    assert type(model.max_power_w) is float
    with pytest.raises(InvalidArgument, match="min_power_w"):
        dataclasses.replace(model, min_power_w=-1.0)  # a changed copy is checked again
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.gap_factor = 2.0  # type: ignore[misc]


def test_bad_offsets() -> None:
    with pytest.raises(InvalidArgument, match="offsets"):
        integrate_power_segments([0.0, 1.0], [1.0, 1.0], [0, 3])
    with pytest.raises(InvalidArgument, match="offsets"):
        integrate_power_segments([0.0, 1.0], [1.0, 1.0], [0.0, 2.0])


# --------------------------------------------------------------------------- the contract


def test_method_names() -> None:
    assert get_args(Method) == METHODS
    assert get_args(PowerMethod) == POWER_METHODS
    assert get_args(GapPolicy) == GAP_POLICIES


def test_importing_integrate_does_not_import_pint() -> None:
    code = "import sys, thermoledger.accounting.integrate; sys.exit('pint' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- averaged readings (lag correction) and point samples (coverage 0) -------------------------

_LOW_W, _HIGH_W, _STEP_S, _WINDOW_S, _LIMIT_W = 100.0, 550.0, 10.0, 1.0, 700.0


def _step_energy_j(t_s: FloatArray | float) -> FloatArray:
    """Primitive of a 100 W → 550 W step at 10 s, J."""
    t = np.asarray(t_s, dtype=np.float64)
    return _LOW_W * t + (_HIGH_W - _LOW_W) * np.clip(t - _STEP_S, 0.0, None)


def _averaged_step() -> tuple[FloatArray, FloatArray]:
    """The step read as a 1 s trailing moving average, every 0.1 s over [0, 30] s (exact)."""
    t = np.linspace(0.0, 30.0, 301)
    return t, (_step_energy_j(t) - _step_energy_j(t - _WINDOW_S)) / _WINDOW_S


def test_lag_correction_is_exact_where_power_is_linear_before_each_edge() -> None:
    t, r = _averaged_step()
    # Windows whose edges lie before the step or at least w after it: P is constant over the
    # second before each edge, so the corrected figure is exact (the raw one is not).
    for a, b in [(2.0, 9.0), (5.0, 11.0), (3.0, 20.0), (12.0, 29.0), (0.0, 30.0)]:
        keep = (t >= a - 1e-9) & (t <= b + 1e-9)
        true = float(_step_energy_j(b) - _step_energy_j(a))
        fixed = integrate_power(t[keep], r[keep], model=PowerModel(averaging_window_s=_WINDOW_S))
        raw = integrate_power(t[keep], r[keep])
        assert fixed.energy_j == pytest.approx(true, rel=1e-12, abs=1e-9)
        assert fixed.averaging_window_s == _WINDOW_S
        if a < _STEP_S < b:
            assert abs(raw.energy_j - true) > 0.1 * (_HIGH_W - _LOW_W)  # the lag is real
    curve = power_energy_curve(t, r, model=PowerModel(averaging_window_s=_WINDOW_S))
    starts, ends = np.array([1.05, 4.2, 11.3]), np.array([9.5, 17.77, 28.4])
    assert window_energy(curve, starts, ends).energy_j == pytest.approx(
        _step_energy_j(ends) - _step_energy_j(starts), rel=1e-12
    )


@pytest.mark.parametrize("edge_s", [9.8, 10.0, 10.2, 10.5, 10.7, 11.0])  # on the sample grid
def test_averaging_band_covers_windows_cut_at_the_step(edge_s: float) -> None:
    t, r = _averaged_step()
    keep = (t >= 4.0 - 1e-9) & (t <= edge_s + 1e-9)
    true = float(_step_energy_j(edge_s) - _step_energy_j(4.0))
    model = PowerModel(averaging_window_s=_WINDOW_S, max_power_w=_LIMIT_W, sensor_rel_error=0.0)
    res = integrate_power(t[keep], r[keep], model=model)
    # Worst error of a step cut inside its window: (high − low) × w/8 = 56.25 J, at w/2.
    assert abs(res.energy_j - true) <= (_HIGH_W - _LOW_W) * _WINDOW_S / 8 + 1e-9
    assert res.energy_low_j <= true <= res.energy_high_j
    # The block rule's band (whole windows from 4 s, on samples here; the remainder after
    # them), no wider on either side than the lag-corrected rule's residual of both edges,
    # (w/2)(r − floor)(ceiling − r)/(ceiling − floor) each, which this test pinned before
    # gap-free groups took whole windows.
    energy, below, above = _block_reference(t[keep], r[keep], _WINDOW_S, 0.0, _LIMIT_W)
    assert res.energy_j == pytest.approx(energy, rel=1e-12)
    assert res.bound_below_j == pytest.approx(below, rel=1e-9, abs=1e-9)
    assert res.bound_above_j == pytest.approx(above, rel=1e-9, abs=1e-9)
    u = np.array([r[keep][0], r[keep][-1]])
    residual = float(np.sum(0.5 * _WINDOW_S * u * (_LIMIT_W - u) / _LIMIT_W))
    assert res.bound_below_j <= residual + 1e-9
    assert res.bound_above_j <= residual + 1e-9
    # Chunks of whole windows are exact, and tile.
    chunks = summarize_chunks(t, r, chunk_s=5.0, model=PowerModel(averaging_window_s=_WINDOW_S))
    assert float(chunks.energy_j.sum()) == pytest.approx(float(_step_energy_j(30.0)), rel=1e-12)
    assert np.all(chunks.min_power_w <= chunks.mean_power_w)
    assert np.all(chunks.mean_power_w <= chunks.max_power_w)
    # A curve's windows keep the lag-corrected rule (they must add up exactly), and its band.
    # (This asserted the window's figure equal to integrate_power's, when both used that rule.)
    curve = power_energy_curve(t, r, model=model)
    win = window_energy(curve, [4.0], [edge_s])
    assert win.energy_j[0] == pytest.approx(_lag_corrected_j(t[keep], r[keep]), rel=1e-12)
    assert win.bound_above_j[0] == pytest.approx(residual, rel=1e-12)
    assert win.energy_low_j[0] <= true <= win.energy_high_j[0]


def test_averaging_window_zero_changes_nothing() -> None:
    t, p = _traces(7, 1)[0]
    plain = integrate_power(t, p, model=PowerModel(nominal_interval_s=0.1))
    zero = integrate_power(t, p, model=PowerModel(nominal_interval_s=0.1, averaging_window_s=0.0))
    for name in ("energy_j", "energy_low_j", "energy_high_j", "bound_below_j", "bound_above_j"):
        assert getattr(zero, name) == getattr(plain, name), name


# -- averaged readings: whole windows (the block rule) -----------------------------------------

_SQ_LOW_W, _SQ_HIGH_W = 110.0, 640.0  # the square waves of bench/accuracy.py
_PERIODS_S = (0.05, 0.13, 0.25, 0.7, 2.0)
_DUTIES = (0.1, 0.3, 0.5, 0.9)
_PHASES_S = (0.0, 0.037, 0.31, 0.77)
_SQUARES = [(pd, d, ph) for pd in _PERIODS_S for d in _DUTIES for ph in _PHASES_S]
_SWING_W = _LIMIT_W  # ceiling − floor of _EXACT: the 700 W limit, floor 0 W
_EXACT = PowerModel(
    averaging_window_s=_WINDOW_S,
    max_power_w=_LIMIT_W,
    nominal_interval_s=0.1,
    sensor_rel_error=0.0,
    sensor_abs_error_w=0.0,
)  # the averaging terms alone in the band


def _square_j(t_s: FloatArray, period_s: float, duty: float, phase_s: float) -> FloatArray:
    """Primitive F of a 110 W / 640 W square wave, high for ``duty`` of each period from −phase."""
    u = t_s + phase_s
    periods = np.floor(u / period_s)
    into_s = np.clip(u - periods * period_s, 0.0, period_s)
    high_s = periods * duty * period_s + np.minimum(into_s, duty * period_s)
    return _SQ_LOW_W * t_s + (_SQ_HIGH_W - _SQ_LOW_W) * high_s


def _square_case(
    length_s: float, square: tuple[float, float, float], *, jitter_s: float = 0.0, seed: int = 0
) -> tuple[FloatArray, FloatArray, float]:
    """Ticks every 0.1 s from 3 s (± jitter) and a closing edge at 3 s + length, as a meter.

    Returns the times, the exact 1 s trailing averages there, (F(t) − F(t − w))/w, and the
    true energy between the first and the last sample.
    """
    t = np.arange(0.0, length_s - 1e-9, 0.1)
    if jitter_s:
        t[1:] += np.random.default_rng(seed).uniform(-jitter_s, jitter_s, t.size - 1)
    t = np.append(t, length_s) + 3.0
    r = (_square_j(t, *square) - _square_j(t - _WINDOW_S, *square)) / _WINDOW_S
    return t, r, float(_square_j(t[-1:], *square)[0] - _square_j(t[:1], *square)[0])


def _lag_corrected_j(t: FloatArray, r: FloatArray) -> float:
    """The lag-corrected rule over a whole gap-free trace: ∫ r dt + (w/2)(r(b) − r(a))."""
    return float(np.trapezoid(r, t) + 0.5 * _WINDOW_S * (r[-1] - r[0]))


def _block_reference(
    t: FloatArray,
    r: FloatArray,
    w: float,
    floor_w: float,
    ceiling_w: float,
    *,
    residuals: bool = True,
) -> tuple[float, float, float]:
    """The block rule for one gap-free trace, one anchor at a time (package docstring).

    Returns ``(energy_j, below_j, above_j)``: the estimate and the averaging terms of its band
    (``residuals=False``: without the lag-corrected residual, the allowed range alone).
    """
    swing = ceiling_w - floor_w

    def at(x: float) -> tuple[float, int, float]:  # reading, sample before, reach (s)
        j = min(int(np.searchsorted(t, x, side="right")) - 1, t.size - 2)
        u, v = x - t[j], t[j + 1] - x
        return r[j] + (r[j + 1] - r[j]) * u / (u + v), j, 2.0 * u * v / (u + v)

    def residual(x: float) -> float:
        return 0.5 * w * (x - floor_w) * (ceiling_w - x) / swing

    a, b = float(t[0]), float(t[-1])
    m = math.floor((b - a) / w + 1e-9)
    rho = (b - a) - m * w
    blocks, reach = 0.0, 0.0
    r_c, j_c, reach_c = float(r[0]), 0, 0.0
    for k in range(1, m + 1):
        r_c, j_c, reach_c = at(a + k * w)
        blocks += w * r_c
        reach += reach_c
    c = a + m * w
    part = t[j_c + 1] - c
    d = t[j_c + 1] - t[j_c]
    integral = part * (r_c + r[j_c + 1]) / 2
    lin = min(d * d / 4, d * part / 2)
    for i in range(j_c + 1, t.size - 1):
        integral += (t[i + 1] - t[i]) * (r[i] + r[i + 1]) / 2
        lin += (t[i + 1] - t[i]) ** 2 / 4
    r_b = float(r[-1])
    lagged = integral + w / 2 * (r_b - r_c)
    big_r = swing / w * lin + residual(r_c) + residual(r_b) if residuals else math.inf
    slack = swing * reach_c
    low = max(
        floor_w * rho, w * r_b - ceiling_w * (w - rho), w * (r_b - r_c) + floor_w * rho - slack
    )
    high = min(
        ceiling_w * rho, w * r_b - floor_w * (w - rho), w * (r_b - r_c) + ceiling_w * rho + slack
    )
    x = min(max(lagged, low), high)
    anchors = swing * (reach + reach_c)
    return blocks + x, anchors + min(big_r, x - low), anchors + min(big_r, high - x)


def _segments(cases: list[tuple[FloatArray, FloatArray, float]]) -> PowerEnergyBatch:
    """All cases in one call, as segments (the anchors of every trace in one search)."""
    offsets = np.concatenate(([0], np.cumsum([t.size for t, _, _ in cases])))
    t = np.concatenate([t for t, _, _ in cases])
    r = np.concatenate([r for _, r, _ in cases])
    return integrate_power_segments(t, r, offsets, model=_EXACT)


@pytest.mark.parametrize("windows", [1, 2, 10])
def test_whole_windows_of_averaged_readings_are_exact(windows: int) -> None:
    """k·w of square waves, read every 0.1 s: exact, where the lag-corrected rule errs."""
    cases = [_square_case(windows * _WINDOW_S, sq) for sq in _SQUARES]
    res = _segments(cases)
    truth = np.array([true for _, _, true in cases])
    assert np.all(np.abs(res.energy_j - truth) <= 1e-9 * truth)
    assert np.all(res.bound_below_j <= 1e-9 * truth)
    assert np.all(res.bound_above_j <= 1e-9 * truth)
    old = np.array([_lag_corrected_j(t, r) for t, r, _ in cases])
    assert np.max(np.abs(old - truth) / truth) > 0.005  # the old rule did miss them


@pytest.mark.parametrize("windows", [1, 2, 10])
@pytest.mark.parametrize("extra_s", [0.001, 0.004, -0.003])  # a meter's closing edge, late or early
def test_a_few_ms_off_whole_windows_the_band_is_a_few_joules(windows: int, extra_s: float) -> None:
    """k·w ± a few ms: the remainder's range is at most (ceiling − floor) × |extra| wide.

    Late, the remainder is ρ = extra long; early, it is w − |extra| long and the reading at
    its end leaves only |extra| of its window unknown. Either way the band shrinks with it.
    """
    cases = [_square_case(windows * _WINDOW_S + extra_s, sq) for sq in _SQUARES]
    res = _segments(cases)
    truth = np.array([true for _, _, true in cases])
    limit_j = _SWING_W * abs(extra_s) + 1e-9
    assert np.all(res.bound_below_j + res.bound_above_j <= limit_j)
    assert np.all(res.energy_low_j <= truth * (1 + 1e-12))
    assert np.all(truth <= res.energy_high_j * (1 + 1e-12))
    assert np.all(np.abs(res.energy_j - truth) <= limit_j)
    for k, (t, r, _) in enumerate(cases[::7]):
        energy, below, above = _block_reference(t, r, _WINDOW_S, 0.0, _LIMIT_W)
        got = res.trace(7 * k)
        assert got.energy_j == pytest.approx(energy, rel=1e-12)
        assert (got.bound_below_j, got.bound_above_j) == pytest.approx((below, above), abs=1e-9)


def test_the_block_band_covers_averaged_square_waves_of_any_length() -> None:
    """Lengths m·w + ρ: the band covers every case; the error beats the lag-corrected rule's.

    Below w (m = 0) the estimate is the lag-corrected one clipped into a range that holds the
    truth, so it is never worse, case by case. With whole windows it is not, case by case:
    both rules err by the residual at b less one at an earlier edge (a for the old rule,
    c = a + m·w for the new), and which pair nearly cancels depends on where the load's
    period puts a, c and b; so per m the mean and the worst |error| over the grid are compared.
    """
    lengths = [m + rho for m in (0, 1, 2, 5) for rho in (0.15, 0.35, 0.5, 0.65, 0.85)]
    cases = [_square_case(length, sq) for length in lengths for sq in _SQUARES]
    res = _segments(cases)
    truth = np.array([true for _, _, true in cases])
    assert np.all(res.energy_low_j <= truth * (1 + 1e-12))
    assert np.all(truth <= res.energy_high_j * (1 + 1e-12))
    new = np.abs(res.energy_j - truth) / truth
    old = np.abs(np.array([_lag_corrected_j(t, r) for t, r, _ in cases]) - truth) / truth
    m = np.repeat(np.floor(lengths), len(_SQUARES))
    short = m == 0
    assert np.all(new[short] <= old[short] + 1e-12)
    for whole in (1, 2, 5):
        sel = m == whole
        assert new[sel].mean() <= old[sel].mean()
        assert new[sel].max() <= old[sel].max()
    # The vectorised rule is the scalar one, the lag-corrected residual (with what linear
    # interpolation of r may miss) narrowing the allowed range on some cases.
    narrowed = 0
    for k, (t, r, _) in enumerate(cases):
        energy, below, above = _block_reference(t, r, _WINDOW_S, 0.0, _LIMIT_W)
        assert res.energy_j[k] == pytest.approx(energy, rel=1e-12)
        assert res.bound_below_j[k] == pytest.approx(below, rel=1e-9, abs=1e-9)
        assert res.bound_above_j[k] == pytest.approx(above, rel=1e-9, abs=1e-9)
        _, wide_below, wide_above = _block_reference(
            t, r, _WINDOW_S, 0.0, _LIMIT_W, residuals=False
        )
        narrowed += below + above < wide_below + wide_above - 1e-6
    assert narrowed > 0


@pytest.mark.parametrize("length_s", [2.0, 2.003, 10.0, 9.998, 3.5])
def test_anchors_between_jittered_ticks_are_interpolated_and_bounded(length_s: float) -> None:
    """Ticks ±2 ms off the 0.1 s grid: anchors fall between samples, each adds ≤ 2 × 2 ms.

    An anchor u after one sample and v before the next errs by at most (ceiling − floor) ×
    2uv/(u + v) J, under twice its distance to the nearer sample.
    """
    cases = [_square_case(length_s, sq, jitter_s=0.002, seed=i) for i, sq in enumerate(_SQUARES)]
    res = _segments(cases)
    truth = np.array([true for _, _, true in cases])
    assert np.all(res.energy_low_j <= truth * (1 + 1e-12))
    assert np.all(truth <= res.energy_high_j * (1 + 1e-12))
    windows = math.floor(length_s + 1e-9)
    rho = length_s - windows
    if min(rho, 1.0 - rho) < 0.01:  # near whole windows: a few joules
        anchors_j = _SWING_W * 2 * 0.002 * (windows + 1)
        limit_j = anchors_j + _SWING_W * min(rho, 1.0 - rho) + 1e-9
        assert np.all(res.bound_below_j <= limit_j)
        assert np.all(res.bound_above_j <= limit_j)
        assert np.all(np.abs(res.energy_j - truth) <= limit_j)
    for k in range(0, len(cases), 9):
        t, r, _ = cases[k]
        assert not np.any(np.isin(t[0] + np.arange(1, windows + 1) * _WINDOW_S, t[1:-1]))
        energy, below, above = _block_reference(t, r, _WINDOW_S, 0.0, _LIMIT_W)
        assert res.energy_j[k] == pytest.approx(energy, rel=1e-12)
        assert res.bound_below_j[k] == pytest.approx(below, rel=1e-9, abs=1e-9)
        assert res.bound_above_j[k] == pytest.approx(above, rel=1e-9, abs=1e-9)


def test_block_rule_over_unix_times_chunks_and_segments_agrees() -> None:
    """Chunks of 10 w from the run's start are exact and add up; unix times change nothing.

    A minute of a 2 s square wave read every 1/8 s (exact in binary at 1.7e9 s), cut into 10 s
    chunks: each chunk is 10 whole windows, so each is exact, and so is their sum. The same
    trace in one call, alone or among other traces, gives the same figures.
    """
    square = (2.0, 0.3, 0.31)
    t_rel = np.arange(0.0, 60.0 + 1e-9, 0.125)
    r = (_square_j(t_rel, *square) - _square_j(t_rel - _WINDOW_S, *square)) / _WINDOW_S
    truth = float(_square_j(t_rel[-1:], *square)[0] - _square_j(t_rel[:1], *square)[0])
    t = 1.7e9 + t_rel
    chunks = summarize_chunks(t, r, chunk_s=10.0, origin_s=1.7e9, model=_EXACT)
    assert chunks.n.size == 7  # six of 10 s and the last sample
    edges = _square_j(np.arange(0.0, 61.0, 10.0), *square)
    assert chunks.energy_j[:6] == pytest.approx(np.diff(edges), rel=1e-9)
    assert float(chunks.energy_j.sum()) == pytest.approx(truth, rel=1e-9)
    assert np.all(chunks.bound_above_j <= 1e-9 * truth)
    whole = integrate_power(t, r, model=_EXACT)
    assert whole.energy_j == pytest.approx(truth, rel=1e-9)
    others = [_square_case(1.0 + 0.43 * i, sq) for i, sq in enumerate(_SQUARES[:12])]
    pieces = [(t, r, truth)] + [(1.7e9 + 1e4 * i + u, v, x) for i, (u, v, x) in enumerate(others)]
    batch = _segments(pieces)
    for k, (tk, rk, _) in enumerate(pieces):
        alone = integrate_power(tk, rk, model=_EXACT)
        assert batch.energy_j[k] == pytest.approx(alone.energy_j, rel=1e-12)
        assert batch.bound_below_j[k] == pytest.approx(alone.bound_below_j, rel=1e-9, abs=1e-9)
        assert batch.bound_above_j[k] == pytest.approx(alone.bound_above_j, rel=1e-9, abs=1e-9)


def test_a_group_with_a_gap_keeps_the_lag_corrected_rule() -> None:
    """No block may straddle a gap (r was not read there): such a trace is the curve's figure.

    The curve's windows keep the lag-corrected rule, gaps and all, so over the whole trace
    they agree with `integrate_power` only where it kept that rule too.
    """
    t, r, _ = _square_case(12.0, (0.7, 0.3, 0.31))
    keep = (t < 6.0) | (t > 7.05)  # a 1.1 s gap: more than 3 ticks
    res = integrate_power(t[keep], r[keep], model=_EXACT)
    assert res.gap_count == 1
    curve = power_energy_curve(t[keep], r[keep], model=_EXACT)
    win = window_energy(curve, [t[0]], [t[-1]])
    assert res.energy_j == pytest.approx(win.energy_j[0], rel=1e-12)
    assert res.bound_below_j == pytest.approx(win.bound_below_j[0], rel=1e-12)
    assert res.bound_above_j == pytest.approx(win.bound_above_j[0], rel=1e-12)
    gapless = integrate_power(t, r, model=_EXACT)  # 12 whole windows: exact
    assert gapless.bound_above_j < 1e-9 < res.bound_above_j


def test_point_samples_get_the_observed_range_band() -> None:
    """Coverage 0: 70 ms pulses sampled every 100 ms alias, and the band still covers them.

    The samples see both levels, 80 W and 700 W; the unseen part of every interval is bounded
    by that range widened by a tenth of it (80 − 62 = 18 W), clipped at the 700 W limit.
    (This asserted the old 0 W … limit band; that band is still there with unseen_margin=inf.)
    """
    # The range of the readings in isolation: the rare-level term (its own test) left out.
    t = np.arange(0.0, 10.0001, 0.1)
    p = np.where((t % 0.35) < 0.07, 700.0, 80.0)  # what the point samples happen to see
    true_j = 10.0 * (80.0 + 620.0 * 0.2)  # 20 % duty over 10 s
    model = PowerModel(
        rare_level_readings=0.0,
        coverage_fraction=0.0,
        max_power_w=_LIMIT_W,
        sensor_rel_error=0.0,
        sensor_abs_error_w=0.0,
    )
    res = integrate_power(t, p, model=model)
    assert res.energy_low_j == pytest.approx((80.0 - 0.1 * 620.0) * 10.0, rel=1e-12)
    assert res.energy_high_j == pytest.approx(_LIMIT_W * 10.0, rel=1e-12)
    assert res.energy_low_j <= true_j <= res.energy_high_j
    worst = integrate_power(t, p, model=dataclasses.replace(model, unseen_margin=math.inf))
    assert worst.energy_low_j == pytest.approx(0.0, abs=1e-9)
    assert worst.energy_high_j == pytest.approx(_LIMIT_W * 10.0, rel=1e-12)
    tight = integrate_power(t, p, model=dataclasses.replace(model, unseen_margin=0.0))
    assert tight.energy_low_j == pytest.approx(80.0 * 10.0, rel=1e-12)
    assert tight.energy_high_j == pytest.approx(700.0 * 10.0, rel=1e-12)


# -- the unseen part of point samples: bounded by the range the readings show -------------------


def test_a_steady_load_gets_a_band_far_narrower_than_floor_to_limit() -> None:
    # The range of the readings in isolation: the rare-level term (its own test) left out.
    t = np.arange(0.0, 10.0001, 0.1)
    p = np.full(t.size, 300.0)
    point = PowerModel(
        rare_level_readings=0.0, method="power_instant", coverage_fraction=0.0, max_power_w=_LIMIT_W
    )
    res = integrate_power(t, p, model=point)
    assert res.energy_j == pytest.approx(3000.0)
    assert res.bound_below_j == pytest.approx(0.0, abs=1e-9)  # no spread: nothing unseen beyond
    assert res.bound_above_j == pytest.approx(0.0, abs=1e-9)
    assert res.energy_high_j - res.energy_low_j == pytest.approx(2 * 0.05 * 3000.0)  # sensor
    worst = integrate_power(t, p, model=dataclasses.replace(point, unseen_margin=math.inf))
    assert worst.energy_high_j - worst.energy_low_j == pytest.approx(_LIMIT_W * 10.0 + 150.0)
    assert res.energy_high_j - res.energy_low_j < 0.05 * (worst.energy_high_j - worst.energy_low_j)


def test_a_level_rare_enough_to_hide_between_the_readings_is_in_the_band() -> None:
    """20 point samples at random phases all see 110 W; the load held 640 W for 10 % of the
    time, which 20 readings miss with probability 0.9**20 = 12 %. The range of the readings
    says nothing about it; the rare-level term (3/n of the time, out to the ceiling) does."""
    t = np.round(np.arange(0.0, 2.0001, 0.1), 9)
    p = np.full(t.size, 110.0)
    true_j = 2.0 * (110.0 + 0.1 * 530.0)
    model = PowerModel(method="power_instant", coverage_fraction=0.0, max_power_w=700.0)
    res = integrate_power(t, p, model=model)
    assert res.energy_low_j <= true_j <= res.energy_high_j
    share = 3.0 / t.size
    assert res.bound_above_j == pytest.approx(share * (700.0 - 110.0) * 2.0)
    assert res.bound_below_j == pytest.approx(share * 110.0 * 2.0)
    # 100 readings: the same hidden share would be seen (0.9**100 < 1e-4), and the term shrinks
    t100 = np.round(np.arange(0.0, 10.0001, 0.1), 9)
    res100 = integrate_power(t100, np.full(t100.size, 110.0), model=model)
    assert res100.bound_above_j / (590.0 * 10.0) == pytest.approx(3.0 / t100.size)
    without = integrate_power(t, p, model=dataclasses.replace(model, rare_level_readings=0.0))
    assert without.bound_above_j == pytest.approx(0.0, abs=1e-9)
    assert not without.energy_low_j <= true_j <= without.energy_high_j


def test_chunks_bound_the_unseen_by_the_samples_their_intervals_touch() -> None:
    # The range of the readings in isolation: the rare-level term (its own test) left out.
    # 100 W for 1 s, then 400 W: chunks of 0.5 s. The chunk before the step ends at the step's
    # first sample (left-sample rule), so its range is 100 … 400 W; the others see one level.
    t = np.round(np.arange(0.0, 1.95, 0.1), 9)
    p = np.where(t < 1.0 - 1e-9, 100.0, 400.0)
    model = PowerModel(
        rare_level_readings=0.0,
        method="power_instant",
        coverage_fraction=0.0,
        max_power_w=_LIMIT_W,
        sensor_rel_error=0.0,
        sensor_abs_error_w=0.0,
    )
    chunks = summarize_chunks(t, p, chunk_s=0.5, origin_s=-1e-9, model=model)
    assert chunks.t0_s.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.5])
    # chunk 1 spans 0.5 … 1.0 s: the unseen may lie in [100 − 30, 400 + 30] W
    assert chunks.energy_j.tolist() == pytest.approx([50.0, 65.0, 200.0, 160.0])
    assert chunks.bound_below_j.tolist() == pytest.approx([0.0, 65.0 - 70.0 * 0.5, 0.0, 0.0])
    assert chunks.bound_above_j.tolist() == pytest.approx([0.0, 430.0 * 0.5 - 65.0, 0.0, 0.0])
    whole = integrate_power(t, p, model=model)  # one group: the range of the whole trace
    assert whole.bound_above_j == pytest.approx(430.0 * 1.9 - 475.0)
    assert float(chunks.bound_above_j.sum()) < whole.bound_above_j


@pytest.mark.parametrize("phase_s", np.linspace(0.0, 0.25, 50, endpoint=False).tolist())
def test_the_observed_band_covers_a_square_wave_aliased_against_the_tick(phase_s: float) -> None:
    """Duty 0.3, period 0.25 s, read every 0.1 s: the samples see 1 or 2 of the 5 phases they
    land on high (20 or 40 % against 30 %), so each 10 s chunk is off by ±25 % here; the band of
    the range they show covers it, and is narrower than 0 W … limit."""
    low_w, high_w, period_s, duty = 60.0, 600.0, 0.25, 0.3

    def energy_j(t_s: FloatArray) -> FloatArray:  # primitive: time high since u = 0, exact
        u = t_s + phase_s
        periods = np.floor(u / period_s)
        high_s = periods * duty * period_s + np.minimum(u - periods * period_s, duty * period_s)
        return low_w * t_s + (high_w - low_w) * high_s

    t = np.round(np.arange(0.0, 59.95, 0.1), 9)  # six chunks of 10 s
    p = np.where(np.mod(t + phase_s, period_s) < duty * period_s, high_w, low_w)
    model = PowerModel(method="power_instant", coverage_fraction=0.0, max_power_w=_LIMIT_W)
    chunks = summarize_chunks(t, p, chunk_s=10.0, origin_s=-1e-9, model=model)
    true_j = energy_j(chunks.t1_s) - energy_j(chunks.t0_s)
    error = np.abs(chunks.energy_j - true_j) / true_j
    assert error.max() > 0.2  # the aliasing is real
    assert np.all(chunks.energy_low_j <= true_j)
    assert np.all(true_j <= chunks.energy_high_j)
    worst = dataclasses.replace(model, unseen_margin=math.inf)
    old = summarize_chunks(t, p, chunk_s=10.0, origin_s=-1e-9, model=worst)
    assert np.all(chunks.energy_high_j - chunks.energy_low_j < old.energy_high_j - old.energy_low_j)


@settings(max_examples=80, deadline=None)
@given(trace=_trace(), margin=st.floats(0.0, 3.0), coverage=st.floats(0.0, 0.99))
def test_the_observed_band_holds_the_estimate_and_never_exceeds_the_worst_case(
    trace: tuple[FloatArray, FloatArray], margin: float, coverage: float
) -> None:
    t, p = trace
    model = PowerModel(coverage_fraction=coverage, max_power_w=2000.0, unseen_margin=margin)
    observed = integrate_power(t, p, model=model)
    worst = integrate_power(t, p, model=dataclasses.replace(model, unseen_margin=math.inf))
    assert observed.energy_j == worst.energy_j
    assert 0.0 <= observed.bound_below_j <= worst.bound_below_j * (1 + 1e-12) + 1e-9
    assert 0.0 <= observed.bound_above_j <= worst.bound_above_j * (1 + 1e-12) + 1e-9
    # and the curve, cut at the trace's ends, says the same
    curve = power_energy_curve(t, p, model=model)
    assert curve.bound_below_j[-1] == pytest.approx(observed.bound_below_j, rel=1e-9, abs=1e-9)
    assert curve.bound_above_j[-1] == pytest.approx(observed.bound_above_j, rel=1e-9, abs=1e-9)


# -- a counter that reads 0 for one tick and recovers ---------------------------------------------


def test_a_counter_that_reads_zero_for_one_tick_is_not_counted_twice() -> None:
    # 300 W, read every 0.1 s, from 1 MJ since the driver loaded; the fourth reading is 0
    t = np.arange(8) * 0.1
    c = 1e6 + 30.0 * np.arange(8)
    c[3] = 0.0
    got = integrate_counter(t, c, max_power_w=700.0)
    assert got.energy_j == pytest.approx(30.0 * 5)  # the two intervals around the 0 unknown
    assert got.energy_low_j <= 30.0 * 7 <= got.energy_high_j  # the truth stays in the band
    assert got.bound_above_j == pytest.approx(2 * 70.0)
    assert got.reset_count == 2  # the drop and the jump, both labelled
    assert got.reset_index.tolist() == [2, 3]


def test_a_one_tick_zero_on_a_chunk_boundary_is_bounded_in_both_chunks() -> None:
    t = np.arange(8) * 0.1
    c = 1e6 + 30.0 * np.arange(8)
    c[4] = 0.0  # the first sample of the second chunk (the bridge of the first)
    chunks = summarize_chunks(
        np.concatenate([t[:5], t[4:]]),
        np.full(9, 300.0),
        counter_j=np.concatenate([c[:5], c[4:]]),
        offsets=[0, 5, 9],
        chunk_starts=[0, 5],
        model=PowerModel(max_power_w=700.0),
    )
    assert chunks.reset_count.tolist() == [1, 1]
    assert chunks.energy_j.sum() == pytest.approx(30.0 * 5)
    assert chunks.energy_low_j.sum() <= 30.0 * 7
    assert chunks.energy_high_j.sum() >= 30.0 * 7


def test_increases_a_device_can_draw_are_counted_as_they_are() -> None:
    # a counter that updates every 100 ms, read every 50 ms at the power limit: steps of 70 J
    t = np.arange(20) * 0.05
    c = 70.0 * np.floor(t / 0.1 + 1e-9)
    got = integrate_counter(t, c, max_power_w=700.0)
    assert got.reset_count == 0
    assert got.energy_j == pytest.approx(c[-1])


def test_without_a_power_limit_no_increase_is_judged() -> None:
    t = np.arange(4) * 0.1
    got = integrate_counter(t, [1e6, 0.0, 1e6 + 30.0, 1e6 + 60.0])
    assert got.reset_count == 1
    assert got.energy_j == pytest.approx(1e6 + 60.0)
    assert got.energy_high_j == math.inf
