"""The fake ``amdsmi`` keeps the real binding's constants, dict shapes, units and errors.

The real package is checked two ways. Where it can be imported (``libamd_smi.so`` present),
its runtime constants are compared with the fake's. Where it is only installed (``pip install
amdsmi`` on a machine without ROCm: importing it then fails with a KeyError, after printing that
it found no library), its source files are read instead, without executing them: the
``amdsmi_status_t`` and init-flag constants of ``amdsmi_wrapper.py``, the ``AmdSmiInitFlags``
members of ``amdsmi_interface.py``, the functions and exceptions the backend uses, and the keys
of the dicts it reads, against the fake's dicts for the same binding version. Both skip where
``amdsmi`` is not installed (it is not a dev dependency). They were run against amdsmi 6.2.0,
6.2.4, 6.3.0, 6.4.3 and 7.0.2 from PyPI, installed without ROCm.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any

import pytest

from thermoledger.meters.backends import amdsmi as codes
from thermoledger.meters.backends.simulated import Bursty, steady
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing import fake_amdsmi as fake_module
from thermoledger.meters.testing.fake_amdsmi import (
    LIBRARY_RESOLUTION_UJ,
    FakeAmdSmi,
    FakeProcessorHandle,
    Fault,
    counter,
    mi210,
    mi250x,
    mi300x,
)

# What the backend relies on: these must exist in every binding it supports.
USED_CODES = (
    "AMDSMI_STATUS_SUCCESS",
    "AMDSMI_STATUS_NOT_SUPPORTED",
    "AMDSMI_STATUS_NO_PERM",
    "AMDSMI_STATUS_NOT_FOUND",
    "AMDSMI_STATUS_UNKNOWN_ERROR",
    "AMDSMI_STATUS_TIMEOUT",
    "AMDSMI_STATUS_RETRY",
    "AMDSMI_STATUS_DRIVER_NOT_LOADED",
    "AMDSMI_STATUS_NOT_INIT",
    "AMDSMI_INIT_AMD_GPUS",
)
USED_FUNCTIONS = (
    "amdsmi_init",
    "amdsmi_shut_down",
    "amdsmi_get_processor_handles",
    "amdsmi_get_gpu_device_uuid",
    "amdsmi_get_gpu_device_bdf",
    "amdsmi_get_gpu_asic_info",
    "amdsmi_get_power_cap_info",
    "amdsmi_get_power_info",
    "amdsmi_get_energy_count",
)
EXCEPTIONS = (
    "AmdSmiException",
    "AmdSmiLibraryException",
    "AmdSmiRetryException",
    "AmdSmiTimeoutException",
    "AmdSmiParameterException",
)


def _ours() -> dict[str, int]:
    return {
        n: getattr(codes, n) for n in dir(codes) if n.startswith(("AMDSMI_STATUS_", "AMDSMI_INIT_"))
    }


# -- against the real package, imported --------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> Any:
    # pytest.importorskip only catches ImportError; without libamd_smi.so the binding raises
    # KeyError (AttributeError when the library is older than it), after printing to stdout.
    if importlib.util.find_spec("amdsmi") is None:
        pytest.skip("amdsmi is not installed")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module("amdsmi")
    except (ImportError, OSError, KeyError, AttributeError) as e:
        pytest.skip(f"amdsmi is installed but cannot load libamd_smi.so ({e!r})")


def test_constants_equal_the_real_amdsmi(real: Any) -> None:
    fake = FakeAmdSmi([])
    for name, value in _ours().items():
        if hasattr(real.amdsmi_wrapper, name):
            assert getattr(real.amdsmi_wrapper, name) == value, name
        assert getattr(fake.amdsmi_wrapper, name) == value, name
    for name in USED_CODES:
        assert hasattr(real.amdsmi_wrapper, name), name
    for member in fake.AmdSmiInitFlags:
        if hasattr(real.AmdSmiInitFlags, member.name):
            assert real.AmdSmiInitFlags[member.name] == member, member.name
    assert fake.AmdSmiInitFlags.INIT_AMD_GPUS == real.AmdSmiInitFlags.INIT_AMD_GPUS


def test_functions_and_exceptions_exist_in_the_real_amdsmi(real: Any) -> None:
    for name in USED_FUNCTIONS + EXCEPTIONS:
        assert hasattr(real, name), name
    assert issubclass(real.AmdSmiRetryException, real.AmdSmiLibraryException)
    assert issubclass(real.AmdSmiTimeoutException, real.AmdSmiLibraryException)
    error = real.AmdSmiLibraryException(-codes.AMDSMI_STATUS_NOT_SUPPORTED)
    assert error.err_code == error.get_error_code() == codes.AMDSMI_STATUS_NOT_SUPPORTED


# -- against the real package's source, where it is installed but cannot load -----------------


@pytest.fixture(scope="module")
def source() -> Path:
    spec = importlib.util.find_spec("amdsmi")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("amdsmi is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _int_constants(tree: ast.Module) -> dict[str, int]:
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and type(node.value.value) is int
        ):
            found[node.targets[0].id] = node.value.value
    return found


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"amdsmi_interface.py defines no {name}")


def _dict_keys(function: ast.FunctionDef) -> set[str]:
    """The string keys of every dict literal in ``function``."""
    keys = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Dict):
            keys |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    return {k for k in keys if isinstance(k, str)}


def _installed_api() -> str:
    major, minor, *_ = importlib.metadata.version("amdsmi").split(".")
    return f"{major}.{minor}"


def test_constants_equal_the_real_source(source: Path) -> None:
    real = _int_constants(_tree(source / "amdsmi_wrapper.py"))
    for name, value in _ours().items():
        if name in real:
            assert real[name] == value, name
    assert set(USED_CODES) <= set(real)
    # AmdSmiInitFlags: each member is an amdsmi_wrapper constant, by name
    interface = _tree(source / "amdsmi_interface.py")
    (flags,) = (
        n for n in interface.body if isinstance(n, ast.ClassDef) and n.name == "AmdSmiInitFlags"
    )
    members = {
        a.targets[0].id: a.value.attr
        for a in flags.body
        if isinstance(a, ast.Assign)
        and isinstance(a.targets[0], ast.Name)
        and isinstance(a.value, ast.Attribute)
    }
    assert members["INIT_AMD_GPUS"] == "AMDSMI_INIT_AMD_GPUS"
    for member in fake_module.AmdSmiInitFlags:
        if member.name in members and members[member.name] in real:
            assert real[members[member.name]] == member.value, member.name


def test_functions_exceptions_and_na_match_the_real_source(source: Path) -> None:
    interface = _tree(source / "amdsmi_interface.py")
    package = (source / "__init__.py").read_text(encoding="utf-8")
    for name in USED_FUNCTIONS:
        _function(interface, name)
        assert f"import {name}\n" in package, name
    exceptions = _tree(source / "amdsmi_exception.py")
    defined = {n.name for n in exceptions.body if isinstance(n, ast.ClassDef)}
    assert set(EXCEPTIONS) <= defined
    for name in EXCEPTIONS:
        assert f"import {name}\n" in package, name
    # the library's "unsupported" becomes the string "N/A" (from 6.1 on), which the fake speaks
    power_info = ast.unparse(_function(interface, "amdsmi_get_power_info"))
    assert "'N/A'" in power_info
    assert "65535" in power_info  # 0xFFFF, the library's marker


@pytest.mark.parametrize(
    "function",
    ["amdsmi_get_power_info", "amdsmi_get_energy_count", "amdsmi_get_power_cap_info"],
)
def test_the_fakes_dicts_have_the_real_keys(source: Path, function: str) -> None:
    real_keys = _dict_keys(_function(_tree(source / "amdsmi_interface.py"), function))
    fake = FakeAmdSmi([mi300x()], api_version=_installed_api())
    fake.amdsmi_init(fake.AmdSmiInitFlags.INIT_AMD_GPUS)
    answer = getattr(fake, function)(FakeProcessorHandle(0))
    assert set(answer) == real_keys


def test_the_asic_info_keys_the_backend_reads_are_real(source: Path) -> None:
    real_keys = _dict_keys(
        _function(_tree(source / "amdsmi_interface.py"), "amdsmi_get_gpu_asic_info")
    )
    assert "market_name" in real_keys
    fake = FakeAmdSmi([mi300x()], api_version=_installed_api())
    fake.amdsmi_init(fake.AmdSmiInitFlags.INIT_AMD_GPUS)
    assert set(fake.amdsmi_get_gpu_asic_info(FakeProcessorHandle(0))) >= {"market_name"}


# -- the fake on its own -----------------------------------------------------------------------


def _ready(*gpus: Any, clock: ManualClock | None = None, **kw: Any) -> FakeAmdSmi:
    fake = FakeAmdSmi(list(gpus), clock=clock or ManualClock(), **kw)
    fake.amdsmi_init(fake.AmdSmiInitFlags.INIT_AMD_GPUS)
    return fake


def test_the_fake_never_poses_as_amdsmi() -> None:
    fake: object = FakeAmdSmi([mi300x()])
    assert all(module is not fake for module in sys.modules.values())
    amdsmi = sys.modules.get("amdsmi")
    assert amdsmi is None or not isinstance(amdsmi, FakeAmdSmi)


def test_calls_before_init_fail_and_init_wants_the_enum() -> None:
    fake = FakeAmdSmi([mi300x()])
    with pytest.raises(fake.AmdSmiLibraryException) as caught:
        fake.amdsmi_get_processor_handles()
    assert caught.value.err_code == codes.AMDSMI_STATUS_NOT_INIT
    with pytest.raises(fake.AmdSmiParameterException):
        fake.amdsmi_init(codes.AMDSMI_INIT_AMD_GPUS)  # a plain int, refused like the binding
    fake.amdsmi_init(fake.AmdSmiInitFlags.INIT_AMD_GPUS)
    fake.amdsmi_init(fake.AmdSmiInitFlags.INIT_AMD_GPUS)
    fake.amdsmi_shut_down()
    assert not fake.initialized  # no reference count, as amd_smi.cc
    with pytest.raises(fake.AmdSmiParameterException):
        fake.amdsmi_get_power_info(0)  # not a processor handle


def test_units_are_whole_watts_microwatts_and_counts_of_microjoules() -> None:
    clock = ManualClock()
    fake = _ready(mi300x(profile=steady(612.4), counter_start=7), clock=clock)
    (handle,) = fake.amdsmi_get_processor_handles()
    clock.advance(2.0)
    power = fake.amdsmi_get_power_info(handle)
    assert power["current_socket_power"] == power["socket_power"] == 612
    assert power["average_socket_power"] == "N/A"  # MI300X
    assert fake.amdsmi_get_power_cap_info(handle)["power_cap"] == 750_000_000
    energy = fake.amdsmi_get_energy_count(handle)
    assert energy["counter_resolution"] == LIBRARY_RESOLUTION_UJ == 15.300000190734863
    assert energy["energy_accumulator"] == 7 + int(1224.8e6 // LIBRARY_RESOLUTION_UJ)
    assert energy["timestamp"] == round(clock.monotonic_s() * 1e9)
    assert fake.amdsmi_get_gpu_asic_info(handle)["market_name"] == "AMD Instinct MI300X"
    assert fake.amdsmi_get_gpu_device_uuid(handle) == fake.uuids[0]
    assert fake.amdsmi_get_gpu_device_bdf(handle) == "0000:05:00.0"


def test_mi200_parts_average_and_the_second_die_reports_zeros() -> None:
    clock = ManualClock()
    wave = Bursty(100.0, 500.0, period_s=2.0)
    fake = _ready(mi210(profile=wave), *mi250x(wave), clock=clock)
    single, primary, secondary = fake.amdsmi_get_processor_handles()
    clock.advance(0.5)  # high half: the instant is 500 W, the last second averaged 300 W
    for handle in (single, primary):
        power = fake.amdsmi_get_power_info(handle)
        assert (power["average_socket_power"], power["current_socket_power"]) == (300, "N/A")
        assert fake.amdsmi_get_energy_count(handle)["energy_accumulator"] > 0
    power = fake.amdsmi_get_power_info(secondary)
    assert (power["average_socket_power"], power["current_socket_power"]) == (0, "N/A")
    assert fake.amdsmi_get_energy_count(secondary)["energy_accumulator"] == 0
    assert fake.amdsmi_get_power_cap_info(secondary)["power_cap"] == 0
    assert fake.exact_energy_j(1, 0.0, 0.5) == 250.0
    assert fake.exact_energy_j(2, 0.0, 0.5) == 0.0


@pytest.mark.parametrize(
    ("api_version", "keys"),
    [
        ("6.2", {"power"}),
        ("6.3", {"power", "energy_accumulator"}),
        ("6.4", {"energy_accumulator"}),
        ("7.0", {"energy_accumulator"}),
    ],
)
def test_older_bindings_shapes(api_version: str, keys: set[str]) -> None:
    fake = _ready(mi300x(), api_version=api_version)
    energy = fake.amdsmi_get_energy_count(FakeProcessorHandle(0))
    assert set(energy) == keys | {"counter_resolution", "timestamp"}
    power = fake.amdsmi_get_power_info(FakeProcessorHandle(0))
    assert ("socket_power" in power) is (api_version == "7.0")


def test_errors_are_the_bindings_classes_with_its_codes() -> None:
    clock = ManualClock()
    faults = (
        Fault(codes.AMDSMI_STATUS_TIMEOUT, 1.0, 2.0, call="amdsmi_get_power_info"),
        Fault(codes.AMDSMI_STATUS_RETRY, 2.0, 3.0),
        Fault(codes.AMDSMI_STATUS_BUSY, 3.0, 4.0),
    )
    fake = _ready(mi300x(faults=faults, lost_at_s=10.0), clock=clock)
    handle = FakeProcessorHandle(0)
    clock.advance(1.5)
    with pytest.raises(fake.AmdSmiTimeoutException) as timeout:
        fake.amdsmi_get_power_info(handle)
    assert timeout.value.err_code == codes.AMDSMI_STATUS_TIMEOUT
    assert fake.amdsmi_get_energy_count(handle)  # other calls unaffected
    clock.advance(1.0)
    with pytest.raises(fake.AmdSmiRetryException):
        fake.amdsmi_get_energy_count(handle)
    clock.advance(1.0)
    with pytest.raises(fake.AmdSmiLibraryException) as busy:
        fake.amdsmi_get_energy_count(handle)
    assert type(busy.value) is fake.AmdSmiLibraryException
    assert str(busy.value) == "Error code:\n\t30 | AMDSMI_STATUS_BUSY - Device busy"
    assert busy.value.get_error_info(detailed=False) == "AMDSMI_STATUS_BUSY"
    clock.advance(10.0)
    with pytest.raises(fake.AmdSmiLibraryException) as lost:
        fake.amdsmi_get_gpu_device_uuid(handle)
    assert lost.value.get_error_code() == codes.AMDSMI_STATUS_NOT_FOUND
    assert fake.calls[("amdsmi_get_energy_count", 0)] == 3
    assert fake.AmdSmiLibraryException(-2).err_code == 2  # the binding takes abs()


def test_the_count_is_the_exact_energy_in_whole_counts_held_between_updates() -> None:
    gpu = mi300x(profile=Bursty(150.0, 680.0, period_s=2.0, duty=0.6), counter_update_s=0.05)
    resolution_j = LIBRARY_RESOLUTION_UJ * 1e-6
    for t_s in (0.0, 0.3, 1.17, 5.01, 33.3):
        held_s = int(t_s / 0.05) * 0.05
        exact_j = gpu.profile.energy_between_j(0.0, held_s)
        assert 0.0 <= exact_j - counter(gpu, t_s) * resolution_j < resolution_j
    assert counter(mi300x(counter_resolution_uj=1000.0, profile=steady(1.0)), 2.0) == 2000
