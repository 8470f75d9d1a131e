"""The fake NVML module keeps NVML's constants, shapes, units and error behaviour."""

from __future__ import annotations

import ctypes
import inspect
import sys
from typing import Any

import pytest

from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.simulated import Bursty, Ramp, steady
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing import fake_pynvml as fake_module
from thermoledger.meters.testing.fake_pynvml import (
    FakeGpu,
    FakeHandle,
    FakeNvml,
    Fault,
    a30,
    a100,
    a800,
    gh200,
    h100,
    p100,
    v100,
)


@pytest.fixture(scope="module")
def real() -> Any:
    # The real binding, untyped: the tests compare attributes the fake mirrors by name.
    return pytest.importorskip("pynvml")


def test_constants_equal_the_real_pynvml(real: Any) -> None:
    fake = FakeNvml([])
    names = [n for n in dir(fake) if n.startswith("NVML_")]
    assert len(names) > 40
    for name in names:
        assert getattr(fake, name) == getattr(real, name), name
    # every error code the real binding knows is known (and mapped) here too
    real_errors = {n for n in dir(real) if n.startswith("NVML_ERROR_")}
    assert real_errors <= set(names)
    assert {getattr(real, n) for n in real_errors} <= set(codes._ERRORS) | {codes.NVML_SUCCESS}


def test_field_value_struct_has_the_real_layout(real: Any) -> None:
    pairs: list[tuple[Any, Any]] = [
        (fake_module.c_nvmlFieldValue_t, real.c_nvmlFieldValue_t),
        (fake_module.c_nvmlValue_t, real.c_nvmlValue_t),
        (fake_module.nvmlPciInfo_t, real.nvmlPciInfo_t),  # what nvmlDeviceGetPciInfo returns
        (fake_module.c_nvmlC2cModeInfo_v1_t, real.c_nvmlC2cModeInfo_v1_t),  # C2C mode
        (fake_module.c_nvmlUtilization_t, real.c_nvmlUtilization_t),  # utilization rates
    ]
    for ours, theirs in pairs:
        assert [name for name, _ in ours._fields_] == [name for name, _ in theirs._fields_]
        assert [ctypes.sizeof(t) for _, t in ours._fields_] == [
            ctypes.sizeof(t) for _, t in theirs._fields_
        ]
        assert ctypes.sizeof(ours) == ctypes.sizeof(theirs)


def test_error_classes_mirror_the_real_ones(real: Any) -> None:
    fake = FakeNvml([])
    for code in (codes.NVML_ERROR_GPU_IS_LOST, codes.NVML_ERROR_NOT_SUPPORTED, 999):
        ours, theirs = fake.nvmlExceptionClass(code), real.nvmlExceptionClass(code)
        assert ours.__name__ == theirs.__name__
        error = fake.NVMLError(code)
        assert type(error) is ours
        assert error.value == code
        assert isinstance(error, fake.NVMLError)
    assert fake.NVMLError_GpuIsLost().value == codes.NVML_ERROR_GPU_IS_LOST
    assert str(fake.NVMLError(codes.NVML_ERROR_GPU_IS_LOST)) == "GPU is lost"


def test_the_fake_never_poses_as_pynvml() -> None:
    fake: object = FakeNvml([h100()])
    assert all(module is not fake for module in sys.modules.values())
    pynvml = sys.modules.get("pynvml")
    assert pynvml is None or not isinstance(pynvml, FakeNvml)


def test_calls_before_init_fail_like_nvml() -> None:
    fake = FakeNvml([h100()])
    with pytest.raises(fake.NVMLError) as caught:
        fake.nvmlDeviceGetCount()
    assert caught.value.value == codes.NVML_ERROR_UNINITIALIZED
    fake.nvmlInit()
    fake.nvmlInit()
    fake.nvmlShutdown()
    assert fake.nvmlDeviceGetCount() == 1  # reference counted, like NVML


def test_units_are_milliwatts_and_millijoules() -> None:
    clock = ManualClock()
    fake = FakeNvml([h100(profile=steady(312.5), counter_start_mj=7)], clock=clock)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    clock.advance(2.0)
    assert fake.nvmlDeviceGetPowerUsage(handle) == 312_500
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) == 7 + 625_000
    assert fake.nvmlDeviceGetPowerManagementLimit(handle) == 700_000
    values = fake.nvmlDeviceGetFieldValues(
        handle, [codes.NVML_FI_DEV_POWER_INSTANT, (codes.NVML_FI_DEV_POWER_AVERAGE, 0), 999]
    )
    assert [v.fieldId for v in values] == [186, 185, 999]
    assert [v.nvmlReturn for v in values] == [0, 0, codes.NVML_ERROR_NOT_SUPPORTED]
    assert values[0].valueType == codes.NVML_VALUE_TYPE_UNSIGNED_INT
    assert values[0].value.uiVal == 312_500
    assert values[0].timestamp == int(clock.wall_s() * 1e6)


def test_power_usage_is_averaged_on_hopper_and_instant_on_ga100() -> None:
    clock = ManualClock()
    wave = Bursty(100.0, 500.0, period_s=2.0)
    fake = FakeNvml([h100(profile=wave), a100(profile=wave)], clock=clock)
    fake.nvmlInit()
    clock.advance(0.5)  # high half: the instant is 500 W, the last second averaged 300 W
    assert fake.nvmlDeviceGetPowerUsage(FakeHandle(0)) == 300_000
    assert fake.nvmlDeviceGetPowerUsage(FakeHandle(1)) == 500_000


def test_the_real_binding_returns_the_pci_struct_the_fake_mirrors(real: Any) -> None:
    # nvmlDeviceGetPciInfo is nvmlDeviceGetPciInfo_v3, which fills an nvmlPciInfo_t
    assert "nvmlPciInfo_t()" in inspect.getsource(real.nvmlDeviceGetPciInfo_v3)


def test_pci_info_carries_the_device_id_in_the_upper_half() -> None:
    fake = FakeNvml([h100(), a800(name="NVIDIA Graphics Device"), a30(), p100(pci_device_id=None)])
    fake.nvmlInit()
    info = fake.nvmlDeviceGetPciInfo(FakeHandle(1))
    assert isinstance(info, fake_module.nvmlPciInfo_t)
    assert info.pciDeviceId == 0x20F310DE  # A800-SXM4-80GB, vendor 10de
    assert info.busId == b"00000000:02:00.0"
    assert fake.nvmlDeviceGetPciInfo(FakeHandle(0)).pciDeviceId >> 16 == 0x2330  # H100 SXM5
    assert fake.nvmlDeviceGetPciInfo(FakeHandle(2)).pciDeviceId >> 16 == 0x20B7  # A30 PCIe
    with pytest.raises(fake.nvmlExceptionClass(codes.NVML_ERROR_NOT_SUPPORTED)):
        fake.nvmlDeviceGetPciInfo(FakeHandle(3))


def test_the_average_field_answers_only_where_the_driver_averages() -> None:
    """nvml.h: POWER_AVERAGE is "supported on Ampere (except GA100) or newer architectures"."""
    fake = FakeNvml([h100(), a100(), a800(), v100()])
    fake.nvmlInit()
    fields = [codes.NVML_FI_DEV_POWER_AVERAGE, codes.NVML_FI_DEV_POWER_INSTANT]
    returns = [
        [v.nvmlReturn for v in fake.nvmlDeviceGetFieldValues(FakeHandle(i), fields)]
        for i in range(4)
    ]
    unsupported = codes.NVML_ERROR_NOT_SUPPORTED
    assert returns == [[0, 0], [unsupported, 0], [unsupported, 0], [unsupported, 0]]


def test_pre_volta_has_no_counter_no_fields_no_mig() -> None:
    fake = FakeNvml([p100()])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    for call in (fake.nvmlDeviceGetTotalEnergyConsumption, fake.nvmlDeviceGetMigMode):
        with pytest.raises(fake.nvmlExceptionClass(codes.NVML_ERROR_NOT_SUPPORTED)):
            call(handle)
    (value,) = fake.nvmlDeviceGetFieldValues(handle, [codes.NVML_FI_DEV_POWER_INSTANT])
    assert value.nvmlReturn == codes.NVML_ERROR_NOT_SUPPORTED


def test_driver_reload_restarts_the_counter_and_updates_are_stepped() -> None:
    clock = ManualClock()
    gpu = h100(
        profile=steady(100.0), counter_start_mj=10**9, reloads_at_s=(5.0,), counter_update_s=0.1
    )
    fake = FakeNvml([gpu], clock=clock)
    fake.nvmlInit()
    clock.advance(4.0 + 0.05)  # between two counter updates: the counter shows t = 4.0
    assert fake.nvmlDeviceGetTotalEnergyConsumption(FakeHandle(0)) == 10**9 + 400_000
    clock.advance(2.0)  # t = 6.05: reloaded at 5 s, counted from 0 up to t = 6.0
    assert fake.nvmlDeviceGetTotalEnergyConsumption(FakeHandle(0)) == 100_000


def test_lost_gpu_faults_and_latency() -> None:
    clock = ManualClock()
    gpu = h100(
        lost_at_s=10.0,
        call_latency_s=0.5,
        faults=(Fault(codes.NVML_ERROR_TIMEOUT, 1.0, 2.0, call="nvmlDeviceGetPowerUsage"),),
    )
    fake = FakeNvml([gpu], clock=clock)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)  # takes 0.5 s
    assert clock.monotonic_s() == 1000.5
    assert fake.nvmlDeviceGetPowerUsage(handle) == 300_000  # answered mid-call, at t = 0.75
    clock.advance(0.25)
    with pytest.raises(fake.NVMLError) as caught:
        fake.nvmlDeviceGetPowerUsage(handle)  # answered at t = 1.5, inside the fault window
    assert caught.value.value == codes.NVML_ERROR_TIMEOUT
    assert fake.nvmlDeviceGetName(handle) == "NVIDIA H100 80GB HBM3"  # other calls unaffected
    assert fake.nvmlDeviceGetPowerUsage(handle) == 300_000  # t = 2.5: the window is over
    clock.advance(10.0)
    with pytest.raises(fake.NVMLError) as caught:
        fake.nvmlDeviceGetName(handle)
    assert caught.value.value == codes.NVML_ERROR_GPU_IS_LOST
    assert fake.calls[("nvmlDeviceGetName", 0)] == 2


def test_mig_devices_lead_to_their_parent() -> None:
    mig = "MIG-5d3b4c2a-0000-4000-8000-000000000001"
    fake = FakeNvml([h100(), a100(mig_devices=(mig,))])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByUUID(mig)
    assert fake.nvmlDeviceGetUUID(handle) == mig
    parent = fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
    assert fake.nvmlDeviceGetUUID(parent) == fake.uuids[1]
    assert fake.nvmlDeviceGetMigMode(parent) == [1, 1]
    assert fake.nvmlDeviceGetMigMode(fake.nvmlDeviceGetHandleByIndex(0)) == [0, 0]
    with pytest.raises(fake.NVMLError):
        fake.nvmlDeviceGetHandleByUUID("MIG-nope")


def test_default_uuids_are_distinct_and_stable() -> None:
    a = FakeNvml([FakeGpu(), FakeGpu(), FakeGpu()])
    b = FakeNvml([FakeGpu(), FakeGpu(), FakeGpu()])
    assert a.uuids == b.uuids
    assert len(set(a.uuids)) == 3
    assert all(u.startswith("GPU-") for u in a.uuids)


def test_energy_field_is_the_counter_as_an_unsigned_long_long() -> None:
    clock = ManualClock()
    gpu = h100(profile=steady(100.0), counter_start_mj=10**12, reloads_at_s=(5.0,))
    fake = FakeNvml([gpu, p100(), h100(energy_field_offset_mj=-3)], clock=clock)
    fake.nvmlInit()
    fields = [codes.NVML_FI_DEV_POWER_INSTANT, codes.NVML_FI_DEV_ENERGY]
    clock.advance(4.0)
    power, energy = fake.nvmlDeviceGetFieldValues(FakeHandle(0), fields)
    assert (power.valueType, power.value.uiVal) == (codes.NVML_VALUE_TYPE_UNSIGNED_INT, 100_000)
    assert energy.valueType == codes.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    assert energy.nvmlReturn == codes.NVML_SUCCESS
    assert energy.value.ullVal == 10**12 + 400_000 > 2**32  # needs the 64-bit member
    assert energy.value.ullVal == fake.nvmlDeviceGetTotalEnergyConsumption(FakeHandle(0))
    clock.advance(2.0)
    (energy,) = fake.nvmlDeviceGetFieldValues(FakeHandle(0), [codes.NVML_FI_DEV_ENERGY])
    assert energy.value.ullVal == 100_000  # restarted at the reload
    (energy,) = fake.nvmlDeviceGetFieldValues(FakeHandle(1), [codes.NVML_FI_DEV_ENERGY])
    assert energy.nvmlReturn == codes.NVML_ERROR_NOT_SUPPORTED
    (energy,) = fake.nvmlDeviceGetFieldValues(FakeHandle(2), [codes.NVML_FI_DEV_ENERGY])
    assert energy.value.ullVal == fake.nvmlDeviceGetTotalEnergyConsumption(FakeHandle(2)) - 3


@pytest.mark.parametrize(
    "gpu",
    [
        h100(profile=Bursty(150.0, 680.0, period_s=2.0, duty=0.6, phase_s=0.4)),
        h100(profile=Ramp(120.0, 650.0, duration_s=3.0, t_start_s=0.5), counter_start_mj=7),
        h100(profile=steady(333.3), energy_field_offset_mj=5),
        h100(profile=Bursty(90.0, 240.0, period_s=1.3), reloads_at_s=(1.05,)),
        h100(profile=steady(250.0), counter_update_s=0.05),
    ],
)
def test_the_energy_field_reads_the_counter_to_the_millijoule(gpu: FakeGpu) -> None:
    clock = ManualClock()
    fake = FakeNvml([gpu], clock=clock)
    fake.nvmlInit()
    for _ in range(40):
        clock.advance(0.0937)
        (energy,) = fake.nvmlDeviceGetFieldValues(FakeHandle(0), [codes.NVML_FI_DEV_ENERGY])
        counter = fake.nvmlDeviceGetTotalEnergyConsumption(FakeHandle(0))
        assert energy.value.ullVal == counter + gpu.energy_field_offset_mj


def test_a_field_fault_answers_in_that_field_only() -> None:
    clock = ManualClock()
    fault = Fault(codes.NVML_ERROR_TIMEOUT, 1.0, 2.0, field_id=codes.NVML_FI_DEV_ENERGY)
    fake = FakeNvml([h100(faults=(fault,))], clock=clock)
    fake.nvmlInit()
    fields = [codes.NVML_FI_DEV_POWER_INSTANT, codes.NVML_FI_DEV_ENERGY]
    clock.advance(1.5)
    power, energy = fake.nvmlDeviceGetFieldValues(FakeHandle(0), fields)
    assert power.nvmlReturn == codes.NVML_SUCCESS
    assert energy.nvmlReturn == codes.NVML_ERROR_TIMEOUT
    assert fake.nvmlDeviceGetTotalEnergyConsumption(FakeHandle(0)) == 450_000  # the call is fine
    clock.advance(1.0)
    _, energy = fake.nvmlDeviceGetFieldValues(FakeHandle(0), fields)
    assert energy.nvmlReturn == codes.NVML_SUCCESS


def test_a_counter_fault_also_fails_the_energy_field() -> None:
    clock = ManualClock()
    counter_call = "nvmlDeviceGetTotalEnergyConsumption"
    fault = Fault(codes.NVML_ERROR_TIMEOUT, 1.0, 2.0, call=counter_call)
    fake = FakeNvml([h100(faults=(fault,))], clock=clock)
    fake.nvmlInit()
    fields = [codes.NVML_FI_DEV_POWER_INSTANT, codes.NVML_FI_DEV_ENERGY]
    clock.advance(1.5)
    power, energy = fake.nvmlDeviceGetFieldValues(FakeHandle(0), fields)
    assert power.nvmlReturn == codes.NVML_SUCCESS
    assert energy.nvmlReturn == codes.NVML_ERROR_TIMEOUT


def test_the_real_binding_names_the_calls_the_fake_adds_for_node_selection(real: Any) -> None:
    # the C2C query is nvmlDeviceGetC2cModeInfoV (-> c_nvmlC2cModeInfo_v1_t.isC2cEnabled)
    assert "c_nvmlC2cModeInfo_v1_t()" in inspect.getsource(real.nvmlDeviceGetC2cModeInfoV1)
    assert callable(real.nvmlDeviceGetC2cModeInfoV)
    assert callable(real.nvmlDeviceGetMinorNumber)
    assert real.NVML_POWER_SCOPE_MODULE == codes.NVML_POWER_SCOPE_MODULE == 1


def test_the_real_binding_returns_the_utilization_struct_the_fake_mirrors(real: Any) -> None:
    assert "c_nvmlUtilization_t()" in inspect.getsource(real.nvmlDeviceGetUtilizationRates)


def test_utilization_rates_are_whole_percent_of_the_last_sample_period() -> None:
    clock = ManualClock()
    wave = Bursty(0.0, 1.0, period_s=4.0, duty=0.25)  # memory busy the first second of four
    gpus = [
        h100(memory_busy=wave, gpu_busy=steady(0.9), utilization_period_s=0.5),
        h100(utilization=False),
        a100(mig_devices=("MIG-1b7c2d30-0000-4000-8000-00000000000a",)),
    ]
    fake = FakeNvml(gpus, clock=clock)
    fake.nvmlInit()
    clock.advance(0.75)  # the last 0.5 s: all busy
    rates = fake.nvmlDeviceGetUtilizationRates(FakeHandle(0))
    assert (rates.gpu, rates.memory) == (90, 100)
    clock.advance(0.5)  # 0.75 .. 1.25 s: busy half of it
    assert fake.nvmlDeviceGetUtilizationRates(FakeHandle(0)).memory == 50
    for position in (1, 2):  # no such feature; MIG mode on: NOT_SUPPORTED, as NVML documents
        with pytest.raises(fake.NVMLError) as caught:
            fake.nvmlDeviceGetUtilizationRates(FakeHandle(position))
        assert caught.value.value == codes.NVML_ERROR_NOT_SUPPORTED


def test_minor_numbers_buses_and_a_c2c_superchip() -> None:
    fake = FakeNvml([h100(), h100(minor_number=7, pci_bus=0x41), gh200(), a100()])
    fake.nvmlInit()
    assert [fake.nvmlDeviceGetMinorNumber(FakeHandle(i)) for i in (0, 1)] == [0, 7]
    assert fake.nvmlDeviceGetPciInfo(FakeHandle(1)).busId == b"00000000:41:00.0"
    assert fake.nvmlDeviceGetC2cModeInfoV(FakeHandle(0)).isC2cEnabled == 0
    assert fake.nvmlDeviceGetC2cModeInfoV(FakeHandle(2)).isC2cEnabled == 1
    with pytest.raises(fake.nvmlExceptionClass(codes.NVML_ERROR_NOT_SUPPORTED)):
        fake.nvmlDeviceGetC2cModeInfoV(FakeHandle(3))  # before Hopper
    average, module = codes.NVML_FI_DEV_POWER_AVERAGE, codes.NVML_POWER_SCOPE_MODULE
    gpu_scope, module_scope = fake.nvmlDeviceGetFieldValues(
        FakeHandle(2), [average, (average, module)]
    )
    assert gpu_scope.nvmlReturn == codes.NVML_ERROR_NOT_SUPPORTED  # GPU scope refused on GH200
    assert module_scope.nvmlReturn == codes.NVML_SUCCESS
    assert module_scope.scopeId == module
    (h100_module,) = fake.nvmlDeviceGetFieldValues(FakeHandle(0), [(average, module)])
    assert h100_module.nvmlReturn == codes.NVML_ERROR_NOT_SUPPORTED


def test_field_values_without_faults_pack_what_the_general_path_packs() -> None:
    """The per-GPU plan (no scripted faults) answers byte for byte as the per-call path does."""
    profiles = [
        steady(450.0),
        Bursty(150.0, 680.0, period_s=2.0, duty=0.6),
        Ramp(120.0, 650.0, 30.0),
    ]
    far = (Fault(codes.NVML_ERROR_UNKNOWN, start_s=1e9),)  # a fault never due: the general path
    asked: list[Any] = [
        codes.NVML_FI_DEV_POWER_AVERAGE,
        codes.NVML_FI_DEV_ENERGY,
        codes.NVML_FI_DEV_POWER_INSTANT,
        (codes.NVML_FI_DEV_ENERGY, 1),  # a scope the fake does not answer
        (codes.NVML_FI_DEV_POWER_AVERAGE, codes.NVML_POWER_SCOPE_MODULE),
        1,  # a field it does not know
    ]
    clocks = ManualClock(), ManualClock()
    planned, general = (
        FakeNvml(
            [*(h100(profile=p, faults=faults) for p in profiles), gh200(faults=faults)], clock=clock
        )
        for faults, clock in zip(((), far), clocks, strict=True)
    )
    for fake in (planned, general):
        fake.nvmlInit()
    for step_s in (0.0, 0.1, 0.37, 1.9, 12.5):
        for clock in clocks:
            clock.advance(step_s)
        for i in range(len(profiles) + 1):
            mine = planned.nvmlDeviceGetFieldValues(planned.nvmlDeviceGetHandleByIndex(i), asked)
            theirs = general.nvmlDeviceGetFieldValues(general.nvmlDeviceGetHandleByIndex(i), asked)
            assert bytes(mine) == bytes(theirs)
