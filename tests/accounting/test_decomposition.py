"""The energy decomposition (`accounting.decomposition`) against analytic answers.

A run at a known constant power P on catalogued boards: its quietest sustained chunk is P, so the
constant part is P·T, the whole measured energy. With W FLOPs and a known memory-busy time, the
compute part is W·(TDP − P)/peak and the memory part busy_s·(TDP − P), exactly (ε re-derived
with the measured π0).
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from thermoledger.accounting.bounds import compare_run, energy_roofline
from thermoledger.accounting.catalog import builtin_catalog, get, load_catalog
from thermoledger.accounting.decomposition import (
    SUSTAINED_WINDOW_S,
    DeviceActivity,
    constant_power,
    decompose_energy,
    lowest_sustained_power,
    memory_traffic,
)
from thermoledger.accounting.report import DeclaredWork, DeviceUsage, RunInfo, build_run_report

H100 = "nvidia-h100-sxm5-80gb"


def _chunks(
    power_w: list[float],
    *,
    length_s: float = 10.0,
    busy: list[float] | None = None,
    gaps: list[int] | None = None,
) -> dict[str, Any]:
    n = len(power_w)
    t0 = np.arange(n) * length_s
    energy = np.asarray(power_w) * length_s
    return {
        "t0_s": t0,
        "t1_s": t0 + length_s,
        "energy_j": energy,
        "sensor_uncertainty_j": 0.02 * energy,
        "bound_above_j": np.zeros(n),
        "gap_count": np.asarray(gaps if gaps is not None else [0] * n),
        "reset_count": np.zeros(n, dtype=np.int64),
        "estimated": np.zeros(n, dtype=np.bool_),
        "mem_busy_frac": np.asarray(busy if busy is not None else [math.nan] * n),
    }


# --------------------------------------------------------------------------- the chunk kernel


def test_the_quietest_sustained_chunk_and_the_busy_time() -> None:
    c = _chunks([500.0, 320.0, 410.0, 100.0], busy=[0.5, math.nan, 0.25, 1.0], gaps=[0, 0, 0, 1])
    found = lowest_sustained_power(device=np.zeros(4, dtype=np.int64), n_devices=1, **c)
    # the 100 W chunk has a gap: not sustained; the quietest is 320 W, its top 2 % higher
    assert found.quiet_power_w[0] == pytest.approx(320.0)
    assert found.quiet_power_high_w[0] == pytest.approx(320.0 * 1.02)
    # busy time: 0.5·10 + 0.25·10 + 1.0·10 s over the 30 s that carry the counter
    assert found.mem_busy_s[0] == pytest.approx(17.5)
    assert found.mem_observed_s[0] == pytest.approx(30.0)


def test_short_reset_estimated_and_unbounded_chunks_do_not_qualify() -> None:
    c = _chunks([100.0, 90.0, 80.0, 70.0, 300.0])
    c["t1_s"] = c["t1_s"].copy()
    c["t1_s"][0] = c["t0_s"][0] + SUSTAINED_WINDOW_S * 0.99  # too short
    c["reset_count"] = np.asarray([0, 1, 0, 0, 0])  # a driver reload: energy a lower bound
    c["estimated"] = np.asarray([False, False, True, False, False])
    c["bound_above_j"] = np.asarray([0.0, 0.0, 0.0, 1e300, 0.0])  # unbounded above
    found = lowest_sustained_power(device=np.zeros(5, dtype=np.int64), n_devices=2, **c)
    assert found.quiet_power_w[0] == pytest.approx(300.0)
    assert math.isnan(found.quiet_power_w[1])  # no chunk at all: none
    assert found.mem_observed_s[1] == 0.0


def test_ties_and_order_do_not_change_the_answer() -> None:
    c = _chunks([200.0, 200.0, 250.0, 200.0])
    c["sensor_uncertainty_j"] = np.asarray([50.0, 10.0, 0.0, 30.0])
    device = np.asarray([0, 0, 0, 0])
    first = lowest_sustained_power(device=device, n_devices=1, **c)
    assert first.quiet_power_high_w[0] == pytest.approx(201.0)  # the tie with the lowest top
    order = list(range(4))
    random.Random(7).shuffle(order)
    shuffled = {k: v[order] for k, v in c.items()}
    again = lowest_sustained_power(device=device[order], n_devices=1, **shuffled)
    assert again.quiet_power_w[0] == first.quiet_power_w[0]
    assert again.quiet_power_high_w[0] == first.quiet_power_high_w[0]


# --------------------------------------------------------------------------- π0 and Q


def _device(entry_id: str | None = H100, **values: float) -> DeviceActivity:
    entry = None if entry_id is None else get(entry_id)
    span = values.pop("span_s", 100.0)
    energy = values.pop("energy_j", 300.0 * span)
    return DeviceActivity(
        key="node/gpu0",
        entry=entry,
        span_s=span,
        energy_j=energy,
        energy_high_j=values.pop("energy_high_j", energy * 1.02),
        **values,
    )


def test_pi0_is_the_lowest_sustained_power_an_upper_bound() -> None:
    pi0 = constant_power(_device(quiet_power_w=85.0, quiet_power_high_w=87.0))
    assert pi0.provenance == "measured_lowest_sustained"
    assert (pi0.pi0_w, pi0.low_w, pi0.high_w) == (85.0, 0.0, 87.0)
    assert "upper bound" in pi0.basis


def test_pi0_from_the_catalogs_idle_figure_then_the_default() -> None:
    catalog = load_catalog({"device": [{"id": H100, "idle_power_w": 70.0}]})
    entry = catalog.get(H100)
    idle = DeviceActivity("k", entry, span_s=10.0, energy_j=3000.0, energy_high_j=3060.0)
    pi0 = constant_power(idle)
    assert (pi0.provenance, pi0.pi0_w, pi0.low_w, pi0.high_w) == ("catalog_idle", 70.0, 70.0, 306.0)
    # with a measured reading above it, the idle figure is the band's bottom
    measured = constant_power(
        DeviceActivity(
            "k", entry, 10.0, 3000.0, 3060.0, quiet_power_w=95.0, quiet_power_high_w=97.0
        )
    )
    assert (measured.provenance, measured.low_w) == ("measured_lowest_sustained", 70.0)
    default = constant_power(_device())
    assert default.provenance == "assumed_default"
    assert (default.pi0_w, default.low_w) == (builtin_catalog().default_pi0_w, 0.0)
    assert default.high_w == pytest.approx(300.0 * 1.02)  # the device's mean power, top


def test_q_is_busy_time_at_peak_bandwidth_with_the_unobserved_time_in_its_band() -> None:
    bandwidth = get(H100).memory_bandwidth_bytes_per_s
    full = memory_traffic(_device(mem_busy_s=30.0, mem_observed_s=100.0))
    assert full is not None
    assert full.bytes_moved == pytest.approx(30.0 * bandwidth)
    assert full.low_bytes == 0.0
    assert full.high_bytes == pytest.approx(30.0 * bandwidth)
    half = memory_traffic(_device(mem_busy_s=15.0, mem_observed_s=50.0))
    assert half is not None
    assert half.coverage == pytest.approx(0.5)
    assert half.bytes_moved == pytest.approx(30.0 * bandwidth)  # 30 % extended over the rest
    assert half.high_bytes == pytest.approx((15.0 + 50.0) * bandwidth)  # unseen: busy throughout
    assert memory_traffic(_device(mem_busy_s=0.0, mem_observed_s=0.0)) is None
    assert memory_traffic(_device(None, mem_busy_s=1.0, mem_observed_s=10.0)) is None


# --------------------------------------------------------------------------- the decomposition


def _decompose(
    devices: list[DeviceActivity], flops: float | None, measured_j: float
) -> dict[str, dict[str, Any]]:
    result = decompose_energy(
        measured_j=measured_j,
        measured_low_j=0.98 * measured_j,
        measured_high_j=1.02 * measured_j,
        devices=devices,
        flops=flops,
        dtype="bf16",
    )
    out: dict[str, dict[str, Any]] = result.to_dict()["components"]
    return out


def test_a_run_at_constant_power_is_all_constant() -> None:
    entry = get(H100)
    power_w, span_s = 420.0, 600.0
    devices = [
        DeviceActivity(
            f"node/gpu{i}",
            entry,
            span_s,
            power_w * span_s,
            1.02 * power_w * span_s,
            power_w,
            power_w * 1.02,
        )
        for i in range(4)
    ]
    parts = _decompose(devices, None, 4 * power_w * span_s)
    assert parts["constant"]["energy_j"] == pytest.approx(4 * power_w * span_s, rel=1e-12)
    assert parts["constant"]["share"] == pytest.approx(1.0)
    assert parts["compute"]["energy_j"] is None
    assert parts["compute"]["reason"] == "no FLOPs declared"
    assert parts["memory"]["energy_j"] is None  # no counter readings
    assert parts["unexplained"]["energy_j"] is None
    assert "compute" in str(parts["unexplained"]["reason"])


def test_known_work_and_traffic_give_compute_and_memory_exactly() -> None:
    entry = get(H100)
    assert entry.tdp_w is not None
    pi0_w, span_s, busy_s, flops = 120.0, 200.0, 50.0, 3.0e16
    devices = [
        DeviceActivity(
            f"node/gpu{i}",
            entry,
            span_s,
            500.0 * span_s,
            510.0 * span_s,
            pi0_w,
            pi0_w + 2.0,
            busy_s,
            span_s,
        )
        for i in range(2)
    ]
    measured = 2 * 500.0 * span_s
    result = decompose_energy(
        measured_j=measured,
        measured_low_j=0.99 * measured,
        measured_high_j=1.01 * measured,
        devices=devices,
        flops=flops,
        dtype="bf16",
    )
    dynamic_w = entry.tdp_w - pi0_w
    compute = flops * dynamic_w / entry.peak("bf16")  # each board: half the work, half the peak
    memory = 2 * busy_s * dynamic_w  # Q = busy·β, ε_mem = (TDP − π0)/β
    constant = 2 * pi0_w * span_s
    assert result.compute.energy_j == pytest.approx(compute, rel=1e-12)
    assert result.memory.energy_j == pytest.approx(memory, rel=1e-12)
    assert result.constant.energy_j == pytest.approx(constant, rel=1e-12)
    assert result.unexplained.energy_j == pytest.approx(measured - compute - memory - constant)
    # the bands: compute and memory from 0 to their tops with π0 at the band's bottom (0 W)
    assert result.compute.low_j == 0.0
    assert result.compute.high_j == pytest.approx(flops * entry.tdp_w / entry.peak("bf16"))
    assert result.memory.high_j == pytest.approx(2 * busy_s * entry.tdp_w)
    unexplained = result.unexplained
    assert unexplained.low_j is not None
    assert unexplained.high_j is not None
    assert unexplained.low_j <= (unexplained.energy_j or 0.0) <= unexplained.high_j
    assert [t.constant_power.provenance for t in result.devices] == [
        "measured_lowest_sustained"
    ] * 2
    assert result.bytes_moved == pytest.approx(2 * busy_s * entry.memory_bandwidth_bytes_per_s)


def test_over_explained_energy_is_negative_and_said() -> None:
    entry = get(H100)
    # a board busy and at 300 W: TDP-derived ε charge 700 W to FLOPs and again to bytes
    device = DeviceActivity(
        "node/gpu0", entry, 100.0, 30_000.0, 30_600.0, 280.0, 286.0, 90.0, 100.0
    )
    result = decompose_energy(
        measured_j=30_000.0,
        measured_low_j=29_400.0,
        measured_high_j=30_600.0,
        devices=[device],
        flops=0.5 * entry.peak("bf16") * 100.0,  # 50 % MFU
        dtype="bf16",
    )
    assert result.unexplained.energy_j is not None
    assert result.unexplained.energy_j < 0
    assert any("over-explain" in note for note in result.notes)


def test_an_uncatalogued_device_has_no_compute_or_memory_part() -> None:
    device = DeviceActivity("node/x", None, 10.0, 1000.0, 1020.0, 100.0, 102.0, 5.0, 10.0)
    result = decompose_energy(
        measured_j=1000.0,
        measured_low_j=980.0,
        measured_high_j=1020.0,
        devices=[device],
        flops=1e12,
        dtype="bf16",
    )
    assert result.constant.energy_j == pytest.approx(1000.0)
    assert result.compute.energy_j is None
    assert "catalog" in str(result.compute.reason)
    assert result.memory.energy_j is None
    assert "catalog" in str(result.memory.reason)
    assert result.unexplained.energy_j is None


# --------------------------------------------------------------------------- the bounds


def test_the_roofline_with_pi0_is_unchanged_without_traffic_and_moves_with_it() -> None:
    entry = get(H100)
    assert entry.tdp_w is not None
    flops = 1e18
    plain = energy_roofline(flops=flops, dtype="bf16", devices=[entry])
    with_pi0 = energy_roofline(
        flops=flops, dtype="bf16", devices=[entry], pi0_w_by_id={H100: 90.0}, pi0_basis="measured"
    )
    # ε re-derived with π0: W·(TDP − π0)/peak + π0·W/peak = W·TDP/peak, whatever π0
    assert with_pi0.bound_j == pytest.approx(plain.bound_j, rel=1e-12)
    assert with_pi0.pi0_w == 90.0
    constants: Any = with_pi0.assumptions["constants"]
    assert constants[H100]["pi0_provenance"]["kind"] == "override"
    bytes_moved = 2e15
    with_q = energy_roofline(
        flops=flops,
        dtype="bf16",
        devices=[entry],
        bytes_moved=bytes_moved,
        pi0_w_by_id={H100: 90.0},
        bytes_basis="memory-activity counters",
    )
    memory = bytes_moved * (entry.tdp_w - 90.0) / entry.memory_bandwidth_bytes_per_s
    assert with_q.memory_energy_j == pytest.approx(memory, rel=1e-12)
    assert with_q.assumptions["bytes_moved"] == "memory-activity counters"


def test_counter_bytes_reach_the_energy_roofline_only() -> None:
    entry = get(H100)
    bounds = compare_run(
        energy_j=5e5,
        flops=1e17,
        dtype="bf16",
        duration_s=1000.0,
        devices=[entry],
        counter_bytes_moved=1e15,
        counter_bytes_basis="counters",
    )
    assert bounds.energy_roofline is not None
    assert bounds.hardware_roofline is not None
    assert bounds.energy_roofline.bytes_moved == 1e15
    assert bounds.hardware_roofline.intensity_flop_per_byte is None  # not fed the counters'
    assert bounds.bytes_moved is None


# --------------------------------------------------------------------------- the report


def test_the_report_carries_the_decomposition_and_the_roofline_uses_it() -> None:
    power_w, span_s = 400.0, 1000.0
    devices = [
        DeviceUsage(
            key=f"node/gpu{i}",
            host="node",
            index=i,
            name="NVIDIA H100 80GB HBM3",
            method="counter",
            energy_j=power_w * span_s,
            sensor_uncertainty_j=0.02 * power_w * span_s,
            bound_below_j=0.0,
            bound_above_j=0.0,
            t0_s=0.0,
            t1_s=span_s,
            peak_power_w=power_w,
            quiet_power_w=power_w,
            quiet_power_high_w=power_w * 1.02,
            mem_busy_s=0.4 * span_s,
            mem_observed_s=span_s,
        )
        for i in range(2)
    ]
    report = build_run_report(
        run=RunInfo("r", "steady"), devices=devices, work=DeclaredWork(flops=1e18)
    )
    out = report.to_dict()
    decomposition = out["energy_decomposition"]
    assert decomposition["components"]["constant"]["energy_j"] == pytest.approx(
        2 * power_w * span_s
    )
    assert decomposition["components"]["memory"]["status"] == "available"
    assert {d["pi0_provenance"] for d in decomposition["devices"]} == {"measured_lowest_sustained"}
    roofline = out["bounds"]["energy_roofline"]
    assert roofline["pi0_w"] == pytest.approx(2 * power_w)
    assert roofline["bytes_moved"] == pytest.approx(decomposition["bytes_moved"])
    assert "Energy decomposition" in report.render_text()
