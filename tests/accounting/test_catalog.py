"""The hardware catalog: file validity, dense peaks, reported-name lookup, overrides."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from thermoledger.accounting import catalog
from thermoledger.accounting.catalog import (
    DTYPES,
    CatalogError,
    UnresolvedDevice,
    UnsupportedDtype,
    builtin_catalog,
    load_catalog,
    normalize_dtype,
    normalize_name,
)
from thermoledger.accounting.errors import AccountingError, UnknownDevice

# Names as NVML / rocm-smi / JAX report them, and the entry each must resolve to.
REPORTED_NAMES = {
    "NVIDIA H100 80GB HBM3": "nvidia-h100-sxm5-80gb",
    "NVIDIA H100 PCIe": "nvidia-h100-pcie-80gb",
    "NVIDIA A100-SXM4-80GB": "nvidia-a100-sxm4-80gb",
    "NVIDIA A100-SXM4-40GB": "nvidia-a100-sxm4-40gb",
    "NVIDIA A100-PCIE-40GB": "nvidia-a100-pcie-40gb",
    "NVIDIA A100 80GB PCIe": "nvidia-a100-pcie-80gb",
    "Tesla V100-SXM2-32GB": "nvidia-v100-sxm2-32gb",
    "Tesla V100-SXM2-16GB": "nvidia-v100-sxm2-16gb",
    "Tesla V100-PCIE-16GB": "nvidia-v100-pcie-16gb",
    "NVIDIA H200": "nvidia-h200-sxm-141gb",
    "NVIDIA H200 NVL": "nvidia-h200-nvl-141gb",
    "NVIDIA B200": "nvidia-b200-hgx-180gb",
    "NVIDIA GB200": "nvidia-b200-gb200-186gb",
    "NVIDIA L4": "nvidia-l4-24gb",
    "NVIDIA L40S": "nvidia-l40s-48gb",
    "NVIDIA GeForce RTX 4090": "nvidia-geforce-rtx-4090-24gb",
    "AMD Instinct MI300X": "amd-mi300x-192gb",
    "AMD Instinct MI250X": "amd-mi250x-128gb",
    "TPU v4": "google-tpu-v4",
    "TPU v5 lite": "google-tpu-v5e",
    "TPU v5e": "google-tpu-v5e",
    "v5e": "google-tpu-v5e",
}

# Dense peaks from physics_hardware.md §3.1/§3.2 (TFLOP/s). The sparse figure is twice these.
DENSE_TFLOPS = {
    ("nvidia-h100-sxm5-80gb", "bf16"): 989.5,
    ("nvidia-h100-sxm5-80gb", "fp8"): 1979.0,
    ("nvidia-h100-sxm5-80gb", "tf32"): 494.5,
    ("nvidia-h100-pcie-80gb", "bf16"): 756.5,
    ("nvidia-h100-pcie-80gb", "fp16"): 756.5,
    ("nvidia-h200-sxm-141gb", "bf16"): 989.5,
    ("nvidia-a100-sxm4-80gb", "bf16"): 312.0,
    ("nvidia-a100-sxm4-80gb", "tf32"): 156.0,
    ("nvidia-a100-pcie-40gb", "fp16"): 312.0,
    ("nvidia-v100-sxm2-32gb", "fp16"): 125.0,
    ("nvidia-v100-pcie-16gb", "fp16"): 112.0,
    ("nvidia-b200-hgx-180gb", "bf16"): 2250.0,
    ("nvidia-b200-hgx-180gb", "fp4"): 9000.0,
    ("nvidia-b200-gb200-186gb", "bf16"): 2500.0,
    ("nvidia-l4-24gb", "bf16"): 121.0,
    ("nvidia-l40s-48gb", "bf16"): 362.0,
    ("nvidia-geforce-rtx-4090-24gb", "bf16"): 165.2,
    ("amd-mi250x-128gb", "bf16"): 383.0,
    ("amd-mi300x-192gb", "bf16"): 1307.4,
    ("amd-mi300x-192gb", "fp8"): 2614.9,
    ("google-tpu-v4", "bf16"): 275.0,
    ("google-tpu-v5e", "bf16"): 197.0,
}

# physics_hardware.md §3.3: J/FLOP at TDP and dense peak (BF16; V100 FP16), two significant digits.
J_PER_FLOP_AT_TDP = {
    ("nvidia-v100-sxm2-32gb", "fp16"): 2.4e-12,
    ("nvidia-a100-sxm4-80gb", "bf16"): 1.28e-12,
    ("nvidia-a100-pcie-80gb", "bf16"): 9.6e-13,
    ("nvidia-h100-sxm5-80gb", "bf16"): 7.1e-13,
    ("nvidia-h100-pcie-80gb", "bf16"): 4.6e-13,
    ("nvidia-h200-sxm-141gb", "bf16"): 7.1e-13,
    ("nvidia-b200-hgx-180gb", "bf16"): 4.4e-13,
    ("nvidia-l4-24gb", "bf16"): 6.0e-13,
    ("nvidia-l40s-48gb", "bf16"): 9.7e-13,
    ("nvidia-geforce-rtx-4090-24gb", "bf16"): 2.7e-12,
    ("amd-mi250x-128gb", "bf16"): 1.46e-12,
    ("amd-mi300x-192gb", "bf16"): 5.7e-13,
    ("google-tpu-v4", "bf16"): 7.0e-13,
}

RIDGE_FLOP_PER_BYTE = {
    "nvidia-h100-sxm5-80gb": 295.0,
    "nvidia-a100-sxm4-80gb": 153.0,
    "amd-mi300x-192gb": 247.0,
    "nvidia-l4-24gb": 403.0,
}


# ---------------------------------------------------------------------------------------------
# The data file
# ---------------------------------------------------------------------------------------------


def test_catalog_has_the_required_devices() -> None:
    ids = set(builtin_catalog().ids)
    assert set(REPORTED_NAMES.values()) <= ids
    assert len(ids) == len(builtin_catalog())


@pytest.mark.parametrize("entry", list(builtin_catalog()), ids=lambda e: e.id)
def test_every_entry_is_complete_and_positive(entry: catalog.CatalogEntry) -> None:
    assert entry.vendor
    assert entry.name
    assert entry.family
    assert entry.memory_type
    assert entry.patterns, "every built-in entry must be reachable from a reported name"
    assert entry.peak_flop_per_s
    assert set(entry.peak_flop_per_s) <= set(DTYPES)
    for dtype, peak in entry.peak_flop_per_s.items():
        assert math.isfinite(peak), dtype
        assert peak > 0, dtype
        assert entry.peak_provenance[dtype] in {"datasheet", "derived"}
    assert entry.memory_bandwidth_bytes_per_s > 0
    assert entry.memory_bytes > 0
    assert entry.sources
    assert all(0 < len(s) <= 120 for s in entry.sources)
    assert entry.confidence in {"S", "S2", "M"}
    assert set(entry.provenance) >= {"memory_bandwidth", "memory"}
    if entry.tdp_kind == "unpublished":
        assert entry.tdp_w is None
    else:
        assert entry.tdp_w is not None
        assert entry.tdp_w > 0
        assert entry.provenance["tdp"] in {"datasheet", "measured"}
    # No idle power is known from a source we read: never guessed, so absent everywhere.
    assert entry.idle_power_w is None
    json.dumps(entry.to_dict(), allow_nan=False)


@pytest.mark.parametrize(("key", "tflops"), DENSE_TFLOPS.items(), ids=lambda v: str(v))
def test_peaks_are_dense_not_sparse(key: tuple[str, str], tflops: float) -> None:
    entry_id, dtype = key
    peak = builtin_catalog().entry(entry_id).peak(dtype)
    assert peak == pytest.approx(tflops * 1e12, rel=1e-9)
    assert peak != pytest.approx(2 * tflops * 1e12, rel=1e-3)


def test_sparsity_relation_between_formats() -> None:
    # With sparsity halved everywhere, FP8 is twice BF16 and TF32 half of it on every chip that
    # has them; a sparse number stored by mistake breaks the ratio.
    for entry in builtin_catalog():
        peaks = entry.peak_flop_per_s
        if "fp8" in peaks and "bf16" in peaks:
            assert peaks["fp8"] / peaks["bf16"] == pytest.approx(2.0, rel=0.02), entry.id
        if "tf32" in peaks and "bf16" in peaks:
            assert peaks["tf32"] / peaks["bf16"] == pytest.approx(0.5, rel=0.03), entry.id


def test_h100_sxm_bf16_is_989_5_tflops_dense() -> None:
    h100 = builtin_catalog().entry("nvidia-h100-sxm5-80gb")
    assert h100.peak("bf16") == 989.5e12
    assert h100.sparsity_factor == 2.0
    assert h100.peak_provenance["bf16"] == "derived"  # the datasheet prints 1,979 with sparsity
    assert h100.peak_provenance["fp64"] == "datasheet"


@pytest.mark.parametrize(("key", "j_per_flop"), J_PER_FLOP_AT_TDP.items(), ids=lambda v: str(v))
def test_j_per_flop_at_tdp_matches_reference_table(key: tuple[str, str], j_per_flop: float) -> None:
    entry_id, dtype = key
    flop_per_j = builtin_catalog().entry(entry_id).peak_flop_per_j(dtype)
    assert flop_per_j is not None
    assert 1.0 / flop_per_j == pytest.approx(j_per_flop, rel=0.02)


@pytest.mark.parametrize(("entry_id", "ridge"), RIDGE_FLOP_PER_BYTE.items())
def test_ridge_points(entry_id: str, ridge: float) -> None:
    entry = builtin_catalog().entry(entry_id)
    assert entry.ridge_point_flop_per_byte("bf16") == pytest.approx(ridge, rel=0.01)


def test_units_are_si() -> None:
    h100 = builtin_catalog().entry("nvidia-h100-sxm5-80gb")
    assert h100.memory_bandwidth_bytes_per_s == pytest.approx(3.35e12)
    assert h100.memory_bytes == pytest.approx(80e9)
    assert h100.tdp_w == 700.0
    tpu_v4 = builtin_catalog().entry("google-tpu-v4")
    assert tpu_v4.memory_bytes == 32 * 2**30


def test_tpus_without_published_tdp_say_so() -> None:
    v4 = builtin_catalog().entry("google-tpu-v4")
    assert v4.tdp_kind == "measured_max"
    assert v4.tdp_w == 192.0
    assert v4.provenance["tdp"] == "measured"
    assert "No TDP published" in v4.notes
    v5e = builtin_catalog().entry("google-tpu-v5e")
    assert v5e.tdp_kind == "unpublished"
    assert v5e.tdp_w is None
    assert v5e.peak_flop_per_j("bf16") is None
    assert v5e.energy_roofline is None


def test_nvml_power_semantics() -> None:
    cat = builtin_catalog()
    assert cat.entry("nvidia-a100-sxm4-80gb").nvml_power == "instant"  # GA100
    assert cat.entry("nvidia-v100-sxm2-32gb").nvml_power == "instant"
    assert cat.entry("nvidia-h100-sxm5-80gb").nvml_power == "average_1s"
    assert cat.entry("nvidia-l4-24gb").nvml_power == "average_1s"
    assert cat.entry("amd-mi300x-192gb").nvml_power == "not_nvml"
    assert cat.entry("amd-mi250x-128gb").logical_devices_per_package == 2


def test_energy_roofline_constants_derive_from_tdp() -> None:
    h100 = builtin_catalog().entry("nvidia-h100-sxm5-80gb")
    constants = h100.energy_roofline
    assert constants is not None
    assert constants.eps_flop_j["bf16"] == pytest.approx(700.0 / 989.5e12)
    assert constants.eps_flop_j["bf16"] == pytest.approx(0.71e-12, rel=0.01)  # ref §2.3
    assert constants.eps_mem_j_per_byte == pytest.approx(209e-12, rel=0.01)  # ref §2.3
    assert constants.eps_flop_provenance["bf16"].kind == "derived"
    assert constants.eps_mem_provenance.kind == "derived"
    assert constants.pi0_w == 0.0
    assert constants.pi0_provenance.kind == "assumed"
    assert "pi0 = 0 W assumed" in constants.pi0_provenance.note


def test_catalog_is_parsed_lazily_once() -> None:
    assert builtin_catalog() is builtin_catalog()
    assert load_catalog() is builtin_catalog()
    code = (
        "import thermoledger.accounting.catalog as c; "
        "assert c._builtin_document.cache_info().currsize == 0; "
        "assert c.builtin_catalog.cache_info().currsize == 0"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "entry_id"), REPORTED_NAMES.items())
def test_reported_names_resolve(name: str, entry_id: str) -> None:
    resolution = catalog.resolve(name)
    assert resolution.status == "found"
    assert resolution.entry is not None
    assert resolution.entry.id == entry_id
    entry = catalog.lookup(name)
    assert entry is not None
    assert entry.id == entry_id
    assert catalog.get(name).id == entry_id


@pytest.mark.parametrize(
    "name",
    ["  nvidia   H100 80gb  HBM3 ", "NVIDIA_H100-80GB-HBM3", "nvidia h100 80gb hbm3"],
)
def test_lookup_is_case_and_space_insensitive(name: str) -> None:
    entry = catalog.lookup(name)
    assert entry is not None
    assert entry.id == "nvidia-h100-sxm5-80gb"


def test_lookup_by_id() -> None:
    assert catalog.get("amd-mi300x-192gb").id == "amd-mi300x-192gb"
    assert catalog.get("AMD-MI300X-192GB").id == "amd-mi300x-192gb"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "NVIDIA A10",  # a different GPU, not an A100 by substring
        "NVIDIA L40",  # the L40, not the L40S
        "NVIDIA H100 NVL",  # not in the catalog; must not fall back to SXM or PCIe
        "NVIDIA GH200 480GB",
        "NVIDIA GeForce RTX 4090 D",
        "TPU v4 lite",
        "TPU v5",  # v5p, not v5e
        "AMD Instinct MI250",
        "Tesla V100S-PCIE-32GB",
        "Intel Gaudi 2",
    ],
)
def test_unknown_names_are_unknown(name: str) -> None:
    resolution = catalog.resolve(name)
    assert resolution.status == "unknown"
    assert resolution.entry is None
    assert catalog.lookup(name) is None
    with pytest.raises(UnknownDevice) as raised:
        catalog.get(name)
    assert isinstance(raised.value, AccountingError)
    assert isinstance(raised.value, LookupError)
    assert "not in the hardware catalog" in str(raised.value)


def test_unknown_name_lists_same_family_as_hint_not_choice() -> None:
    resolution = catalog.resolve("NVIDIA A100")
    assert resolution.status == "unknown"
    assert resolution.entry is None
    assert set(resolution.candidates) == {
        "nvidia-a100-sxm4-40gb",
        "nvidia-a100-sxm4-80gb",
        "nvidia-a100-pcie-40gb",
        "nvidia-a100-pcie-80gb",
    }
    with pytest.raises(UnresolvedDevice, match="same family"):
        catalog.get("NVIDIA A100")


def test_ambiguous_names_resolve_to_nothing() -> None:
    name = "NVIDIA A100-SXM4-40GB 80GB"
    resolution = catalog.resolve(name)
    assert resolution.status == "ambiguous"
    assert resolution.entry is None
    assert set(resolution.candidates) == {"nvidia-a100-sxm4-40gb", "nvidia-a100-sxm4-80gb"}
    assert catalog.lookup(name) is None
    with pytest.raises(UnknownDevice, match="ambiguous") as raised:
        catalog.get(name)
    assert isinstance(raised.value, UnresolvedDevice)
    assert raised.value.resolution.status == "ambiguous"


def test_normalize_name() -> None:
    assert normalize_name("  NVIDIA A100-SXM4-80GB ") == "nvidia a100 sxm4 80gb"


# ---------------------------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "dtype"),
    [
        ("bf16", "bf16"),
        ("bfloat16", "bf16"),
        ("torch.bfloat16", "bf16"),
        ("FP16", "fp16"),
        ("half", "fp16"),
        ("float32", "fp32"),
        ("fp8-e4m3", "fp8"),
        ("fp64_tensor", "fp64_tensor"),
    ],
)
def test_normalize_dtype(alias: str, dtype: str) -> None:
    assert normalize_dtype(alias) == dtype


def test_unknown_or_missing_dtype_raises() -> None:
    with pytest.raises(UnsupportedDtype, match="unknown dtype"):
        normalize_dtype("int8")
    v100 = builtin_catalog().entry("nvidia-v100-sxm2-32gb")
    assert not v100.supports("bf16")
    assert v100.supports("float16")
    with pytest.raises(UnsupportedDtype, match="no published bf16 peak"):
        v100.peak("bf16")


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------


def test_override_replaces_a_figure_and_marks_it() -> None:
    cat = load_catalog({"device": [{"id": "nvidia-h100-sxm5-80gb", "tdp_w": 500}]})
    h100 = cat.entry("nvidia-h100-sxm5-80gb")
    assert h100.tdp_w == 500.0
    assert h100.provenance["tdp"] == "override"
    assert h100.peak("bf16") == 989.5e12  # untouched figures stay
    assert h100.energy_roofline is not None
    assert h100.energy_roofline.eps_flop_j["bf16"] == pytest.approx(500.0 / 989.5e12)
    # the built-in catalog is not changed by an override
    assert builtin_catalog().entry("nvidia-h100-sxm5-80gb").tdp_w == 700.0


def test_override_peak_marks_only_that_dtype() -> None:
    cat = load_catalog(
        {"device": [{"id": "nvidia-l4-24gb", "peak_tflops": {"bf16": 100.0}}]},
    )
    l4 = cat.entry("nvidia-l4-24gb")
    assert l4.peak("bf16") == 100e12
    assert l4.peak_provenance["bf16"] == "override"
    assert l4.peak("fp8") == 242.5e12
    assert l4.peak_provenance["fp8"] == "derived"


def test_override_idle_power_sets_pi0_and_eps() -> None:
    cat = load_catalog(
        {
            "device": [
                {
                    "id": "nvidia-h100-sxm5-80gb",
                    "idle_power_w": 70.0,
                    "provenance": {"idle_power": "measured"},
                }
            ]
        }
    )
    constants = cat.entry("nvidia-h100-sxm5-80gb").energy_roofline
    assert constants is not None
    assert constants.pi0_w == 70.0
    assert constants.pi0_provenance.kind == "measured"
    assert constants.eps_flop_j["bf16"] == pytest.approx(630.0 / 989.5e12)


def test_override_explicit_energy_constants_are_given() -> None:
    cat = load_catalog(
        {
            "device": [
                {
                    "id": "google-tpu-v5e",
                    "energy_roofline": {
                        "eps_flop_pj": {"bf16": 0.5},
                        "eps_mem_pj_per_byte": 40.0,
                        "pi0_w": 50.0,
                        "provenance": "fitted on our pod, 2025",
                    },
                }
            ]
        }
    )
    constants = cat.entry("google-tpu-v5e").energy_roofline
    assert constants is not None
    assert constants.eps_flop_j["bf16"] == pytest.approx(0.5e-12)
    assert constants.eps_mem_j_per_byte == pytest.approx(40e-12)
    assert constants.pi0_w == 50.0
    assert constants.pi0_provenance == catalog.Provenance("given", "fitted on our pod, 2025")


def _new_entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "lab-asic-1",
        "vendor": "lab",
        "name": "Lab ASIC 1",
        "family": "labasic",
        "match": ["labasic 1"],
        "memory_gb": 64,
        "memory_type": "HBM3",
        "memory_bandwidth_tb_s": 2.0,
        "tdp_w": 500,
        "tdp_kind": "max_tdp",
        "nvml_power": "unknown",
        "confidence": "M",
        "sources": ["our lab measurements"],
        "peak_tflops": {"bf16": 1000.0},
        "provenance": {
            "peak": "measured",
            "memory_bandwidth": "measured",
            "memory": "datasheet",
            "tdp": "datasheet",
        },
    }
    entry.update(changes)
    return entry


def test_override_adds_an_entry_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "extra.toml"
    path.write_text(
        """
[[device]]
id = "lab-asic-1"
vendor = "lab"
name = "Lab ASIC 1"
family = "labasic"
match = ["labasic 1"]
memory_gb = 64
memory_type = "HBM3"
memory_bandwidth_tb_s = 2.0
tdp_w = 500
tdp_kind = "max_tdp"
nvml_power = "unknown"
confidence = "M"
sources = ["our lab measurements"]
[device.peak_tflops]
bf16 = 1000.0
[device.provenance]
peak = "measured"
memory_bandwidth = "measured"
memory = "datasheet"
tdp = "datasheet"
""",
        encoding="utf-8",
    )
    cat = load_catalog(path)
    assert len(cat) == len(builtin_catalog()) + 1
    entry = cat.get("LabASIC-1")
    assert entry.id == "lab-asic-1"
    assert entry.peak_flop_per_j("bf16") == pytest.approx(2e12)
    assert catalog.lookup("LabASIC-1") is None  # the default catalog knows nothing of it
    assert catalog.lookup("LabASIC-1", catalog=cat) is entry


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"device": [{"id": "nvidia-h100-sxm5-80gb", "tdp_watts": 1}]}, "unknown keys"),
        (
            {"device": [{"id": "nvidia-h100-sxm5-80gb", "peak_tflops": {"bf16": -1}}]},
            "finite and > 0",
        ),
        (
            {"device": [{"id": "nvidia-h100-sxm5-80gb", "peak_tflops": {"int8": 1}}]},
            "unknown dtypes",
        ),
        ({"device": [{"id": "nvidia-h100-sxm5-80gb", "idle_power_w": 800}]}, "below tdp_w"),
        ({"device": [{"id": "nvidia-h100-sxm5-80gb", "tdp_kind": "unpublished"}]}, "tdp_w"),
        ({"device": [_new_entry(match=["h100 pcie"])]}, "repeats"),
        ({"device": [_new_entry(sources=[])]}, "at least one source"),
        ({"device": [_new_entry(sources=["x" * 200])]}, "short"),
        ({"device": [_new_entry(provenance={"peak": "datasheet"})]}, "provenance"),
        ({"device": [_new_entry(memory_gib=64)]}, "exactly one of memory_gb"),
        ({"device": [{"id": "lab-asic-2"}]}, "lab-asic-2"),
        (
            {"device": [_new_entry(energy_roofline={"pi0_w": 10.0})]},
            "provenance must be a non-empty string",
        ),
        ({"device": [_new_entry(energy_roofline={"pi0_w": 600.0, "provenance": "x"})]}, "below"),
        ({"defaults": {"pi0_w": -1.0}}, "pi0_w"),
        ({"device": [{"id": "nvidia-l4-24gb", "provenance": "datasheet"}]}, "must be a table"),
        ({"devices": []}, "unknown top-level keys"),
    ],
)
def test_invalid_overrides_are_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_catalog(override)


def test_unreadable_override_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[device]\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(bad)


@pytest.mark.parametrize(
    ("entry_id", "figure", "expected"),
    [
        ("nvidia-l4-24gb", "fp64", 0.473e12),  # the 1:64 rate of 30.3 TF FP32
        ("amd-mi250x-128gb", "fp32", 47.9e12),  # vector
        ("amd-mi250x-128gb", "fp32_matrix", 95.7e12),  # packed / matrix cores, its own name
        ("amd-mi250x-128gb", "bandwidth", 3.2768e12),
    ],
)
def test_corrected_entries(entry_id: str, figure: str, expected: float) -> None:
    entry = builtin_catalog().entry(entry_id)
    value = entry.memory_bandwidth_bytes_per_s if figure == "bandwidth" else entry.peak(figure)
    assert value == pytest.approx(expected, rel=1e-9)
