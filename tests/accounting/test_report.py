"""Run report assembly against hand-computed figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from thermoledger.accounting.carbon import EmissionFactor, default_emission_factor, default_pue
from thermoledger.accounting.catalog import get
from thermoledger.accounting.cost import Tariff
from thermoledger.accounting.integrate import integrate_power, summarize_chunks
from thermoledger.accounting.report import (
    DeclaredWork,
    DeviceUsage,
    PhaseUsage,
    ReportSettings,
    RunInfo,
    _energy,
    build_run_report,
    devices_from_chunks,
)

H100 = "nvidia-h100-sxm5-80gb"
T0 = 1_800_000_000.0


def _device(
    key: str, host: str, energy_j: float, *, duration_s: float = 100.0, **kw: object
) -> DeviceUsage:
    fields: dict[str, object] = {
        "key": key,
        "host": host,
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "method": "counter",
        "energy_j": energy_j,
        "sensor_uncertainty_j": 0.02 * energy_j,
        "bound_below_j": 0.0,
        "bound_above_j": 0.0,
        "t0_s": T0,
        "t1_s": T0 + duration_s,
        "peak_power_w": 700.0,
    }
    fields.update(kw)
    return DeviceUsage(**fields)  # type: ignore[arg-type]


IT_ONLY = ReportSettings(pue=default_pue("none"))


def test_totals_hosts_and_units() -> None:
    devices = [
        _device("a/0", "a", 30_000.0),
        _device("a/1", "a", 40_000.0),
        _device("b/0", "b", 2_000_000.0),
    ]
    report = build_run_report(run=RunInfo("r1", "t"), devices=devices, settings=IT_ONLY)
    assert report.total.energy_j == pytest.approx(2_070_000.0)
    assert report.hosts["a"].energy_j == pytest.approx(70_000.0)
    assert report.hosts["b"].energy_j == pytest.approx(2_000_000.0)
    data = report.to_dict()
    assert data["energy"]["total"]["energy_kwh"] == pytest.approx(2_070_000.0 / 3.6e6)
    # independent sensor errors combine root-sum-square across devices
    rss = math.sqrt(600.0**2 + 800.0**2 + 40_000.0**2)
    assert report.total.energy_high_j == pytest.approx(2_070_000.0 + rss)
    assert data["duration_s"] == pytest.approx(100.0)
    assert data["energy"]["mean_power_w"] == pytest.approx(20_700.0)


def test_flops_from_model_size_mfu_and_per_token() -> None:
    n_params, tokens = 1.0e9, 1.0e8  # 6·N·D = 6e17 FLOP
    devices = [_device(f"h/{i}", "h", 250_000.0, index=i, catalog_id=H100) for i in range(2)]
    report = build_run_report(
        run=RunInfo("r2", "t", "training"),
        devices=devices,
        work=DeclaredWork(dtype="bf16", tokens=tokens, model_params=n_params),
        settings=IT_ONLY,
    )
    assert report.flops == pytest.approx(6e17)
    assert report.flops_source == "estimated: 6·N·D"
    assert report.flop_per_j == pytest.approx(6e17 / 500_000.0)
    assert report.j_per_token == pytest.approx(500_000.0 / 1e8)
    peak = get(H100).peak("bf16")
    assert report.mfu == pytest.approx(6e17 / (100.0 * 2 * peak))
    assert report.bounds is not None
    landauer_orders = report.bounds.landauer.orders_of_magnitude
    assert landauer_orders is not None
    assert landauer_orders > 5
    json.dumps(report.to_dict(), allow_nan=False)


def test_inference_flops_are_two_n_per_token() -> None:
    report = build_run_report(
        run=RunInfo("r3", "serve", "inference"),
        devices=[_device("h/0", "h", 1000.0, catalog_id=H100)],
        work=DeclaredWork(tokens=1000.0, model_params=7e9),
        settings=IT_ONLY,
    )
    assert report.flops == pytest.approx(2 * 7e9 * 1000.0)


def test_unknown_device_is_named_and_skips_bounds() -> None:
    report = build_run_report(
        run=RunInfo("r4", "t"),
        devices=[_device("h/0", "h", 1000.0, name="Mystery Accelerator 9000")],
        work=DeclaredWork(flops=1e15),
        settings=IT_ONLY,
    )
    assert report.bounds is None
    assert any("Mystery Accelerator 9000" in note for note in report.notes)
    assert report.to_dict()["energy"]["by_device"][0]["catalog_id"] is None


def test_no_flops_means_no_bounds_with_a_reason() -> None:
    report = build_run_report(
        run=RunInfo("r5", "t"), devices=[_device("h/0", "h", 1.0, catalog_id=H100)]
    )
    assert report.flops is None
    assert report.bounds is None
    assert any("no FLOPs declared" in note for note in report.notes)


def test_cost_and_carbon_side_by_side() -> None:
    settings = ReportSettings(
        pue=default_pue("hyperscale"),
        location_factor=default_emission_factor("WORLD"),
        tariff=Tariff(0.12, source="test"),
    )
    report = build_run_report(
        run=RunInfo("r6", "t"), devices=[_device("h/0", "h", 3.6e6)], settings=settings
    )
    pue = default_pue("hyperscale").value
    assert report.carbon.location_co2e_g == pytest.approx(481.0 * pue)
    assert report.carbon.market_co2e_g is None  # never silently equal to location-based
    assert report.cost.energy_usd == pytest.approx(0.12 * pue)


def test_without_a_location_factor_the_figure_is_not_available_with_its_reason() -> None:
    reason = "no region is configured"
    settings = ReportSettings(
        pue=default_pue("hyperscale"),
        location_unavailable_reason=reason,
        market_factor=EmissionFactor(
            region="X", intensity_g_per_kwh=100.0, kind="market", source="supplier"
        ),
    )
    report = build_run_report(
        run=RunInfo("r9", "t"), devices=[_device("h/0", "h", 3.6e6)], settings=settings
    )
    data = report.to_dict()
    location = data["carbon"]["location_based"]
    assert location == {"status": "not_available", "co2e_g": None, "factor": None, "reason": reason}
    assert math.isnan(report.carbon.location_co2e_g)  # never a number from a default
    assert data["carbon"]["market_based"]["co2e_g"] == pytest.approx(100.0 * 1.1)
    assert data["sci"] is None
    assert any(reason in note for note in data["notes"])
    assert f"location-based not available ({reason})" in report.render_text()
    with_factor = build_run_report(
        run=RunInfo("r9", "t"), devices=[_device("h/0", "h", 3.6e6)], settings=IT_ONLY
    )
    assert with_factor.to_dict()["carbon"]["location_based"]["status"] == "available"


def test_unbounded_band_serialises_as_null() -> None:
    device = _device("h/0", "h", 1000.0, bound_above_j=math.inf, reset_count=1)
    report = build_run_report(run=RunInfo("r7", "t"), devices=[device], settings=IT_ONLY)
    data = report.to_dict()
    assert data["energy"]["total"]["energy_high_j"] is None
    assert data["energy"]["by_device"][0]["energy_high_j"] is None
    json.dumps(data, allow_nan=False)
    assert "unbounded" in report.render_text()


def test_simulated_is_labelled_everywhere() -> None:
    report = build_run_report(
        run=RunInfo("r8", "t"),
        devices=[_device("h/0", "h", 1000.0, simulated=True)],
        settings=IT_ONLY,
    )
    assert report.to_dict()["run"]["simulated"] is True
    assert "SIMULATED" in report.render_text()


def test_devices_from_chunks_preserves_totals() -> None:
    t = np.arange(0.0, 95.0, 0.1)
    traces = [300.0 + 100.0 * np.sin(t / 7.0), np.full(t.size, 250.0)]
    summaries = summarize_chunks(
        np.concatenate([t, t]),
        np.concatenate(traces),
        offsets=[0, t.size, 2 * t.size],
        chunk_s=10.0,
    )
    devices = devices_from_chunks(
        summaries, keys=["h/0", "h/1"], hosts=["h", "h"], indexes=[0, 1], names=["x", "y"]
    )
    assert [d.key for d in devices] == ["h/0", "h/1"]
    for device, trace in zip(devices, traces, strict=True):
        assert device.energy_j == pytest.approx(integrate_power(t, trace).energy_j, rel=1e-12)
        assert device.t0_s == 0.0
        assert device.t1_s == pytest.approx(t[-1])
        assert device.samples == t.size
    assert devices[1].mean_power_w == pytest.approx(250.0)


def test_phases_appear_in_order() -> None:
    phases = [
        PhaseUsage("warmup", T0, T0 + 10, 100.0, 90.0, 110.0),
        PhaseUsage("train", T0 + 10, T0 + 100, 900.0, 880.0, 920.0, flops=9e15),
    ]
    report = build_run_report(
        run=RunInfo("r9", "t"), devices=[_device("h/0", "h", 1000.0)], phases=phases
    )
    by_phase = report.to_dict()["energy"]["by_phase"]
    assert [p["name"] for p in by_phase] == ["warmup", "train"]
    assert by_phase[1]["flop_per_j"] == pytest.approx(1e13)


def test_needs_a_device() -> None:
    with pytest.raises(ValueError, match="at least one device"):
        build_run_report(run=RunInfo("r", "t"), devices=[])


def test_a_device_that_stopped_early_is_named() -> None:
    # 10 Hz for 100 s; the lost device's readings end 30 s early, the late one's 0.1 s early.
    devices = [
        _device("h/0", "h", 30_000.0, samples=1000),
        _device("h/1", "h", 21_000.0, duration_s=70.0, samples=700, index=1),
        _device("h/2", "h", 29_970.0, duration_s=99.9, samples=999, index=2),
    ]
    report = build_run_report(run=RunInfo("r1", "t"), devices=devices, settings=IT_ONLY)
    stopped = [n for n in report.notes if "stopped answering" in n]
    assert stopped == [
        "h/1: no readings in the last 30.0 s of the run (the device was lost or stopped "
        "answering); its energy covers 70.0 s only"
    ]


def test_a_whole_node_gets_kind_subtotals_and_bounds_over_its_gpus() -> None:
    devices = [
        _device("n/g0", "n", 250_000.0, catalog_id=H100),
        _device("n/g1", "n", 250_000.0, index=1, catalog_id=H100),
        _device("n/p0", "n", 40_000.0, name="package-0", kind="cpu"),
        _device("n/d0", "n", 6_000.0, name="dram", kind="dram"),
    ]
    report = build_run_report(
        run=RunInfo("r", "t"),
        devices=devices,
        work=DeclaredWork(flops=1e18, dtype="bf16"),
        settings=IT_ONLY,
    )
    assert report.total.energy_j == pytest.approx(546_000.0)
    assert {k: v.energy_j for k, v in report.by_kind.items()} == pytest.approx(
        {"gpu": 500_000.0, "cpu": 40_000.0, "dram": 6_000.0}
    )
    assert list(report.by_kind) == ["gpu", "cpu", "dram"]
    (node,) = report.nodes
    assert [(k.kind, k.devices, k.counted) for k in node.kinds] == [
        ("gpu", 2, True),
        ("cpu", 1, True),
        ("dram", 1, True),
    ]
    assert node.total == report.hosts["n"] == report.total
    # the bounds concern the GPUs: their energy, their catalog entries; no catalog noise
    assert report.bounds is not None
    assert report.bounds.hardware_roofline is not None
    assert report.bounds.hardware_roofline.measured_j == pytest.approx(500_000.0)
    assert not any("hardware catalog" in n for n in report.notes)
    assert any("the bounds compare the GPUs' energy" in n for n in report.notes)
    assert report.flop_per_j == pytest.approx(1e18 / 546_000.0)  # the run's, whole node
    assert report.device_catalog["n/p0"] is None
    text = report.render_text()
    assert "node n:" in text
    assert "GPU 0.1389" in text


def test_a_device_covering_the_cpu_keeps_the_cpu_out_of_every_total() -> None:
    devices = [
        _device("gh/m0", "gh", 900_000.0, catalog_id=H100, covers=("cpu",)),
        _device("gh/c0", "gh", 150_000.0, name="grace", kind="cpu"),
        _device("gh/d0", "gh", 20_000.0, name="lpddr", kind="dram"),
        _device("x/c0", "x", 70_000.0, name="package-0", kind="cpu"),  # another host: counted
    ]
    report = build_run_report(run=RunInfo("r", "t"), devices=devices, settings=IT_ONLY)
    assert report.total.energy_j == pytest.approx(990_000.0)
    assert report.covered == {"gh/c0": "gh/m0"}
    assert report.by_kind["cpu"].energy_j == pytest.approx(70_000.0)
    gh, x = report.nodes
    cpu = next(k for k in gh.kinds if k.kind == "cpu")
    assert (cpu.counted, cpu.covered_by, cpu.line.energy_j) == (False, ("gpu",), 150_000.0)
    assert gh.total.energy_j == pytest.approx(920_000.0)
    assert x.total.energy_j == pytest.approx(70_000.0)
    data = report.to_dict()["energy"]
    (c0,) = [d for d in data["by_device"] if d["key"] == "gh/c0"]
    assert (c0["counted"], c0["covered_by"], c0["kind"]) == (False, "gh/m0", "cpu")
    assert data["by_node"][0]["by_kind"]["cpu"]["counted"] is False
    json.dumps(report.to_dict(), allow_nan=False)
    assert "gh/c0 is inside gh/m0's figure" in report.render_text()


@pytest.mark.parametrize(
    ("joules", "text"),
    [
        (699.0, "699 J"),
        (12_345.0, "12.35 kJ"),
        (3.6e6, "3.6 MJ"),
        (4.2198e12, "4.22 TJ"),
        (math.inf, "unbounded"),
    ],
)
def test_the_text_report_prints_energy_in_a_unit_that_fits(joules: float, text: str) -> None:
    assert _energy(joules) == text
