"""The three bounds against hand-computed answers and the reference tables."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoledger.accounting import bounds
from thermoledger.accounting.bounds import (
    K_B_J_PER_K,
    BoundError,
    BoundUnavailable,
    EnergyRooflineBound,
    HardwareRooflineBound,
    LandauerBound,
    attainable_flop_per_s,
    compare_run,
    energy_roofline,
    energy_roofline_j,
    hardware_roofline,
    landauer_bound,
    landauer_floor_j,
    landauer_j_per_bit,
    resolve_bits_per_flop,
)
from thermoledger.accounting.catalog import (
    Catalog,
    CatalogEntry,
    UnsupportedDtype,
    builtin_catalog,
    load_catalog,
)
from thermoledger.accounting.errors import AccountingError

H100_BF16_FLOP_PER_S = 989.5e12


@pytest.fixture
def h100() -> CatalogEntry:
    return builtin_catalog().entry("nvidia-h100-sxm5-80gb")


@pytest.fixture
def a100() -> CatalogEntry:
    return builtin_catalog().entry("nvidia-a100-sxm4-80gb")


@pytest.fixture
def lab_catalog() -> Catalog:
    """A made-up device with round explicit Choi constants, for hand-checkable energies."""
    return load_catalog(
        {
            "device": [
                {
                    "id": "lab-gpu",
                    "vendor": "lab",
                    "name": "Lab GPU",
                    "family": "labgpu",
                    "match": ["labgpu"],
                    "memory_gb": 80,
                    "memory_type": "HBM3",
                    "memory_bandwidth_tb_s": 2.0,
                    "tdp_w": 500,
                    "tdp_kind": "max_tdp",
                    "nvml_power": "unknown",
                    "confidence": "M",
                    "sources": ["test fixture"],
                    "peak_tflops": {"bf16": 1000.0},
                    "provenance": {
                        "peak": "assumed",
                        "memory_bandwidth": "assumed",
                        "memory": "assumed",
                        "tdp": "assumed",
                    },
                    "energy_roofline": {
                        "eps_flop_pj": {"bf16": 1.0},
                        "eps_mem_pj_per_byte": 100.0,
                        "pi0_w": 100.0,
                        "provenance": "round numbers for a hand example",
                    },
                }
            ]
        }
    )


# ---------------------------------------------------------------------------------------------
# Landauer
# ---------------------------------------------------------------------------------------------


def test_landauer_per_bit_at_300_k() -> None:
    assert landauer_j_per_bit() == pytest.approx(2.871e-21, rel=1e-3)
    assert landauer_j_per_bit(300.0) == pytest.approx(2.871e-21, rel=1e-3)
    assert K_B_J_PER_K == 1.380649e-23


@pytest.mark.parametrize(("temperature_k", "j_per_bit"), [(293.15, 2.805e-21), (350.0, 3.35e-21)])
def test_landauer_reference_temperatures(temperature_k: float, j_per_bit: float) -> None:
    assert landauer_j_per_bit(temperature_k) == pytest.approx(j_per_bit, rel=2e-3)


@settings(max_examples=50, deadline=None)
@given(
    temperature_k=st.floats(min_value=1.0, max_value=1e4),
    factor=st.floats(min_value=0.01, max_value=100.0),
)
def test_landauer_is_linear_in_temperature(temperature_k: float, factor: float) -> None:
    assert landauer_j_per_bit(temperature_k * factor) == pytest.approx(
        factor * landauer_j_per_bit(temperature_k), rel=1e-12
    )


def test_landauer_bound_uses_measured_temperature() -> None:
    cold = landauer_bound(flops=1e15, dtype="bf16")
    hot = landauer_bound(flops=1e15, dtype="bf16", temperature_k=350.0)
    assert cold.temperature_k == 300.0
    assert cold.assumptions["temperature_source"].startswith("default")  # type: ignore[union-attr]
    assert hot.temperature_k == 350.0
    assert hot.assumptions["temperature_source"] == "measured"
    assert hot.bound_j / cold.bound_j == pytest.approx(350.0 / 300.0)


@pytest.mark.parametrize(
    ("dtype", "bits"),
    [("bf16", 16), ("fp16", 16), ("fp32", 32), ("tf32", 19), ("fp64", 64), ("fp8", 8), ("fp4", 4)],
)
def test_word_model_uses_operand_width(dtype: str, bits: int) -> None:
    result = landauer_bound(flops=1.0, dtype=dtype)
    assert result.bits_per_flop == bits
    assert result.bound_j_per_flop == pytest.approx(bits * landauer_j_per_bit(300.0))
    assert result.assumptions["model"] == "word"


def test_word_model_bf16_is_16_times_one_bit() -> None:
    word = landauer_bound(flops=1e18, dtype="bfloat16")
    one_bit = landauer_bound(flops=1e18, dtype="bf16", bits_model="1bit")
    assert word.bound_j == pytest.approx(16 * one_bit.bound_j)
    assert word.bound_j_per_flop == pytest.approx(4.6e-20, rel=2e-3)  # reference §1.2
    assert one_bit.bound_flop_per_j == pytest.approx(3.5e20, rel=0.01)


def test_custom_bits_model() -> None:
    result = landauer_bound(flops=10.0, dtype="fp32", bits_model=1000)
    assert result.assumptions["model"] == "custom"
    assert result.bits_per_flop == 1000.0
    assert resolve_bits_per_flop(2.5, "bf16") == ("custom", 2.5)
    for bad in ("2bit", 0, -1.0, math.nan, True):
        with pytest.raises(BoundError):
            resolve_bits_per_flop(bad, "bf16")  # type: ignore[arg-type]


def test_landauer_floor_vectorised() -> None:
    flops = np.array([0.0, 1e12, 1e15, 1e18])
    floor = landauer_floor_j(flops, bits_per_flop=16)
    assert isinstance(floor, np.ndarray)
    assert floor.shape == flops.shape
    expected = [landauer_floor_j(float(f), bits_per_flop=16) for f in flops]
    np.testing.assert_allclose(floor, expected, rtol=1e-12)
    assert isinstance(landauer_floor_j(1e15, bits_per_flop=1), float)
    with pytest.raises(BoundError):
        landauer_floor_j(np.array([1.0, -1.0]), bits_per_flop=1)


def test_landauer_orders_of_magnitude() -> None:
    per_bit = landauer_j_per_bit(300.0)
    result = landauer_bound(
        flops=1e6, dtype="bf16", bits_model="1bit", energy_j=1e6 * per_bit * 1e8
    )
    assert result.measured_j == pytest.approx(1e6 * per_bit * 1e8)
    assert result.orders_of_magnitude == pytest.approx(8.0)
    assert landauer_bound(flops=1e6, dtype="bf16").orders_of_magnitude is None


# ---------------------------------------------------------------------------------------------
# Reference table §1.4: H100 SXM5 BF16
# ---------------------------------------------------------------------------------------------


def test_h100_bf16_at_tdp_against_the_landauer_floor(h100: CatalogEntry) -> None:
    flops = 1e18
    at_tdp_j = flops * 700.0 / H100_BF16_FLOP_PER_S
    run = compare_run(
        energy_j=at_tdp_j,
        flops=flops,
        dtype="bf16",
        duration_s=flops / H100_BF16_FLOP_PER_S,
        devices=h100,
        bits_model="1bit",
    )
    assert run.hardware_roofline is not None
    assert run.hardware_roofline.bound_j_per_flop == pytest.approx(7.1e-13, rel=0.005)
    assert run.hardware_roofline.orders_of_magnitude == pytest.approx(0.0, abs=1e-12)
    assert run.hardware_roofline.mfu == pytest.approx(1.0)
    # 7.07e-13 / 2.871e-21 = 2.5e8, i.e. 8.4 orders above the 1-bit floor
    assert run.landauer.orders_of_magnitude is not None
    assert run.landauer.orders_of_magnitude == pytest.approx(8.4, abs=0.02)
    assert 10**run.landauer.orders_of_magnitude == pytest.approx(2.5e8, rel=0.02)
    word = landauer_bound(flops=flops, dtype="bf16", energy_j=at_tdp_j)
    assert word.orders_of_magnitude is not None
    assert 10**word.orders_of_magnitude == pytest.approx(1.5e7, rel=0.04)  # table: 1.5e7 (16 b)


# ---------------------------------------------------------------------------------------------
# Hardware roofline
# ---------------------------------------------------------------------------------------------


def test_mfu_and_efficiency_hand_example(h100: CatalogEntry) -> None:
    # 1e17 FLOP in 1000 s on one H100: 1e14 FLOP/s of 989.5e12 peak; 1e5 J measured.
    result = hardware_roofline(
        flops=1e17, duration_s=1000.0, dtype="bf16", devices=h100, energy_j=1e5
    )
    assert result.achieved_flop_per_s == pytest.approx(1e14)
    assert result.mfu == pytest.approx(1e14 / 989.5e12)
    assert result.attainable_flop_per_s == H100_BF16_FLOP_PER_S
    assert result.peak_flop_per_j == pytest.approx(989.5e12 / 700.0)
    assert result.measured_flop_per_j == pytest.approx(1e12)
    assert result.efficiency_ratio == pytest.approx(1e12 / (989.5e12 / 700.0))
    assert result.bound_j == pytest.approx(1e17 * 700.0 / 989.5e12)
    assert result.orders_of_magnitude == pytest.approx(math.log10(1e5 / 70743.8), abs=1e-5)
    assert result.assumptions["intensity"].startswith("not given")  # type: ignore[union-attr]


def test_mfu_scales_with_device_count(h100: CatalogEntry) -> None:
    one = hardware_roofline(flops=1e18, duration_s=1000.0, dtype="bf16", devices=h100)
    eight = hardware_roofline(flops=1e18, duration_s=1000.0, dtype="bf16", devices={h100: 8})
    listed = hardware_roofline(flops=1e18, duration_s=1000.0, dtype="bf16", devices=[h100] * 8)
    assert eight.mfu == pytest.approx(one.mfu / 8)
    assert listed == eight
    assert eight.peak_flop_per_s == pytest.approx(8 * 989.5e12)
    # FLOP/J at TDP does not depend on how many identical boards there are
    assert eight.peak_flop_per_j == pytest.approx(one.peak_flop_per_j)


def test_attainable_roofline_hand_example(h100: CatalogEntry) -> None:
    memory_bound = hardware_roofline(
        flops=1e17, duration_s=1000.0, dtype="bf16", devices=h100, intensity_flop_per_byte=100.0
    )
    assert memory_bound.attainable_flop_per_s == pytest.approx(3.35e12 * 100.0)
    assert memory_bound.fraction_of_attainable == pytest.approx(1e14 / 3.35e14)
    assert memory_bound.ridge_point_flop_per_byte == pytest.approx(989.5 / 3.35)
    compute_bound = hardware_roofline(
        flops=1e17, duration_s=1000.0, dtype="bf16", devices=h100, intensity_flop_per_byte=1000.0
    )
    assert compute_bound.attainable_flop_per_s == H100_BF16_FLOP_PER_S


def test_attainable_vectorised() -> None:
    intensity = np.array([1.0, 100.0, 295.0, 1000.0])
    ceiling = attainable_flop_per_s(989.5e12, 3.35e12, intensity)
    np.testing.assert_allclose(ceiling, [3.35e12, 3.35e14, 3.35e12 * 295.0, 989.5e12])


def test_heterogeneous_pool(h100: CatalogEntry, a100: CatalogEntry) -> None:
    result = hardware_roofline(
        flops=1e18, duration_s=1000.0, dtype="bf16", devices={h100: 2, a100: 1}, energy_j=1e6
    )
    assert result.peak_flop_per_s == pytest.approx(2 * 989.5e12 + 312e12)
    assert result.peak_flop_per_j == pytest.approx((2 * 989.5e12 + 312e12) / (2 * 700 + 400))
    assert result.assumptions["devices"] == {
        "nvidia-a100-sxm4-80gb": 1.0,
        "nvidia-h100-sxm5-80gb": 2.0,
    }


def test_mfu_above_one_is_flagged(h100: CatalogEntry) -> None:
    result = hardware_roofline(flops=2e15, duration_s=1.0, dtype="bf16", devices=h100)
    assert result.mfu > 1
    assert "exceeds the dense peak" in str(result.assumptions["warning"])


def test_device_without_tdp_has_no_flop_per_j() -> None:
    v5e = builtin_catalog().entry("google-tpu-v5e")
    result = hardware_roofline(flops=1e15, duration_s=10.0, dtype="bf16", devices=v5e, energy_j=5e3)
    assert result.mfu == pytest.approx(1e14 / 197e12)
    assert result.peak_flop_per_j is None
    assert result.bound_j is None
    assert result.orders_of_magnitude is None
    assert "google-tpu-v5e" in str(result.assumptions["tdp_unavailable"])


def test_dtype_missing_on_device_is_unavailable() -> None:
    v100 = builtin_catalog().entry("nvidia-v100-sxm2-32gb")
    with pytest.raises(BoundUnavailable, match="bf16"):
        hardware_roofline(flops=1e15, duration_s=10.0, dtype="bf16", devices=v100)


# ---------------------------------------------------------------------------------------------
# Energy roofline
# ---------------------------------------------------------------------------------------------


def test_energy_roofline_hand_example(lab_catalog: Catalog) -> None:
    lab = lab_catalog.entry("lab-gpu")
    # W = 1e15 FLOP, Q = 1e12 B: T = max(1e15/1e15, 1e12/2e12) = 1 s
    # E = 1e15 * 1e-12 + 1e12 * 1e-10 + 100 W * 1 s = 1000 + 100 + 100 = 1200 J
    result = energy_roofline(flops=1e15, dtype="bf16", devices=lab, bytes_moved=1e12, energy_j=12e3)
    assert result.time_s == pytest.approx(1.0)
    assert result.flop_energy_j == pytest.approx(1000.0)
    assert result.memory_energy_j == pytest.approx(100.0)
    assert result.static_energy_j == pytest.approx(100.0)
    assert result.bound_j == pytest.approx(1200.0)
    assert result.bound_flop_per_j == pytest.approx(1e15 / 1200.0)
    assert result.orders_of_magnitude == pytest.approx(1.0)
    assert result.assumptions["bytes_moved"] == "given"


def test_energy_roofline_memory_bound_and_unknown_q(lab_catalog: Catalog) -> None:
    lab = lab_catalog.entry("lab-gpu")
    # Q = 4e12 B: T = max(1, 2) = 2 s → 1000 + 400 + 200
    memory_bound = energy_roofline(flops=1e15, dtype="bf16", devices=lab, bytes_moved=4e12)
    assert memory_bound.time_s == pytest.approx(2.0)
    assert memory_bound.bound_j == pytest.approx(1600.0)
    # Q unknown → 0: compute-only minimum, and the result says so
    compute_only = energy_roofline(flops=1e15, dtype="bf16", devices=lab)
    assert compute_only.bytes_moved == 0.0
    assert compute_only.bound_j == pytest.approx(1100.0)
    assert "Q = 0" in str(compute_only.assumptions["bytes_moved"])


def test_energy_roofline_vectorised_kernel_agrees(lab_catalog: Catalog) -> None:
    q = np.array([0.0, 1e12, 4e12])
    energy = energy_roofline_j(
        1e15,
        q,
        eps_flop_j=1e-12,
        eps_mem_j_per_byte=1e-10,
        pi0_w=100.0,
        peak_flop_per_s=1e15,
        bandwidth_bytes_per_s=2e12,
    )
    np.testing.assert_allclose(energy, [1100.0, 1200.0, 1600.0])


def test_energy_roofline_with_catalog_defaults_equals_tdp_bound(h100: CatalogEntry) -> None:
    # Default constants (π0 = 0, ε = TDP/peak) with Q = 0: E = TDP × W/peak.
    result = energy_roofline(flops=1e15, dtype="bf16", devices=h100)
    hardware = hardware_roofline(flops=1e15, duration_s=10.0, dtype="bf16", devices=h100)
    assert result.bound_j == pytest.approx(700.0 * 1e15 / 989.5e12)
    assert result.bound_j == pytest.approx(hardware.bound_j)
    data: Any = result.to_dict()
    h100_constants = data["assumptions"]["constants"]["nvidia-h100-sxm5-80gb"]
    assert h100_constants["pi0_provenance"]["kind"] == "assumed"
    assert h100_constants["eps_flop_provenance"]["kind"] == "derived"
    assert h100_constants["eps_flop_j"] == pytest.approx(700.0 / 989.5e12)


def test_energy_roofline_caveat_with_traffic_and_derived_eps(h100: CatalogEntry) -> None:
    result = energy_roofline(flops=1e15, dtype="bf16", devices=h100, bytes_moved=1e12)
    assert "not a strict floor" in str(result.assumptions["caveat"])


def test_energy_roofline_heterogeneous_split(lab_catalog: Catalog) -> None:
    lab = lab_catalog.entry("lab-gpu")
    h100 = lab_catalog.entry("nvidia-h100-sxm5-80gb")
    result = energy_roofline(flops=1e16, dtype="bf16", devices={lab: 1, h100: 1})
    peak = 1e15 + 989.5e12
    expected_eps = (1e15 * 1e-12 + 989.5e12 * 700.0 / 989.5e12) / peak
    assert result.eps_flop_j == pytest.approx(expected_eps)
    assert result.pi0_w == pytest.approx(100.0)
    assert result.bound_j == pytest.approx(1e16 * expected_eps + 100.0 * 1e16 / peak)


def test_energy_roofline_unavailable_without_constants() -> None:
    v5e = builtin_catalog().entry("google-tpu-v5e")
    with pytest.raises(BoundUnavailable, match="no energy-roofline constants"):
        energy_roofline(flops=1e15, dtype="bf16", devices=v5e)


# ---------------------------------------------------------------------------------------------
# Side by side
# ---------------------------------------------------------------------------------------------

REQUIRED_ASSUMPTIONS: dict[type[Any], set[str]] = {
    LandauerBound: {"model", "bits_per_flop", "temperature_k", "temperature_source", "dtype"},
    HardwareRooflineBound: {
        "dtype",
        "devices",
        "peak_flop_per_s",
        "peak_provenance",
        "tdp_w",
        "tdp_kind",
        "intensity",
    },
    EnergyRooflineBound: {
        "model",
        "dtype",
        "devices",
        "peak_flop_per_s",
        "constants",
        "bytes_moved",
        "work_split",
    },
}


def _assert_plain_json(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            _assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain_json(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)


def test_compare_run_side_by_side(h100: CatalogEntry) -> None:
    run = compare_run(
        energy_j=3.6e6,
        flops=1e18,
        dtype="bf16",
        duration_s=3600.0,
        devices={h100: 8},
        bytes_moved=1e15,
        temperature_k=340.0,
    )
    assert run.unavailable == {}
    assert run.landauer.temperature_k == 340.0
    assert run.hardware_roofline is not None
    assert run.energy_roofline is not None
    assert run.hardware_roofline.intensity_flop_per_byte == pytest.approx(1000.0)
    for result in (run.landauer, run.hardware_roofline, run.energy_roofline):
        assert REQUIRED_ASSUMPTIONS[type(result)] <= set(result.assumptions)
        assert result.measured_j == 3.6e6
        assert result.orders_of_magnitude is not None
        bound_j = result.bound_j
        assert bound_j is not None
        assert result.orders_of_magnitude == pytest.approx(math.log10(3.6e6 / bound_j))
    # the floors are ordered: Landauer far below both rooflines
    assert run.landauer.bound_j < run.hardware_roofline.bound_j  # type: ignore[operator]
    assert run.measured_flop_per_j == pytest.approx(1e18 / 3.6e6)

    data = run.to_dict()
    _assert_plain_json(data)
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["landauer"]["assumptions"]["model"] == "word"
    assert data["inputs"] == {
        "energy_j": 3.6e6,
        "flops": 1e18,
        "dtype": "bf16",
        "duration_s": 3600.0,
        "devices": {"nvidia-h100-sxm5-80gb": 8.0},
        "bytes_moved": 1e15,
        "temperature_k": 340.0,
    }
    summary = run.summary()
    assert "landauer" in summary
    assert "energy_roofline" in summary
    assert "MFU" in summary


def test_compare_run_intensity_gives_bytes(h100: CatalogEntry) -> None:
    run = compare_run(
        energy_j=1e6,
        flops=1e18,
        dtype="bf16",
        duration_s=3600.0,
        devices=h100,
        intensity_flop_per_byte=500.0,
    )
    assert run.bytes_moved == pytest.approx(2e15)
    assert run.energy_roofline is not None
    assert run.energy_roofline.bytes_moved == pytest.approx(2e15)
    with pytest.raises(BoundError, match="not both"):
        compare_run(
            energy_j=1e6,
            flops=1e18,
            dtype="bf16",
            duration_s=3600.0,
            devices=h100,
            bytes_moved=1e15,
            intensity_flop_per_byte=500.0,
        )


@pytest.mark.parametrize(
    ("entry_id", "unavailable"),
    [
        ("google-tpu-v5e", {"hardware_roofline.flop_per_j", "energy_roofline"}),
        ("nvidia-v100-sxm2-32gb", {"hardware_roofline", "energy_roofline"}),
    ],
)
def test_compare_run_reports_what_is_unavailable(entry_id: str, unavailable: set[str]) -> None:
    run = compare_run(
        energy_j=1e6,
        flops=1e18,
        dtype="bf16",
        duration_s=3600.0,
        devices=builtin_catalog().entry(entry_id),
    )
    assert set(run.unavailable) == unavailable
    assert run.energy_roofline is None
    assert run.landauer.bound_j > 0  # the physical floor is always there
    json.dumps(run.to_dict(), allow_nan=False)
    assert "unavailable" in run.summary()


def test_results_are_immutable(h100: CatalogEntry) -> None:
    result = landauer_bound(flops=1e15, dtype="bf16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.bound_j = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.assumptions["model"] = "1bit"  # type: ignore[index]
    run = compare_run(energy_j=1e3, flops=1e15, dtype="bf16", duration_s=10.0, devices=h100)
    with pytest.raises(TypeError):
        run.unavailable["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(
    "changes",
    [
        {"energy_j": -1.0},
        {"energy_j": 0.0},
        {"flops": 0.0},
        {"flops": math.inf},
        {"duration_s": math.nan},
        {"temperature_k": -3.0},
        {"bytes_moved": 0.0},
        {"devices": []},
        {"devices": {}},
        {"bits_model": "2bit"},
    ],
)
def test_invalid_inputs_raise(h100: CatalogEntry, changes: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {
        "energy_j": 1e6,
        "flops": 1e18,
        "dtype": "bf16",
        "duration_s": 3600.0,
        "devices": h100,
    }
    kwargs.update(changes)
    with pytest.raises(BoundError) as raised:
        compare_run(**kwargs)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, AccountingError)


def test_unknown_dtype_raises(h100: CatalogEntry) -> None:
    with pytest.raises(UnsupportedDtype):
        compare_run(energy_j=1e6, flops=1e18, dtype="int4", duration_s=1.0, devices=h100)


def test_public_names_exist() -> None:
    for name in bounds.__all__:
        assert hasattr(bounds, name), name
