"""The NVML backend against the fake NVML module (and, where there is one, a real GPU)."""

from __future__ import annotations

import ctypes.util

import numpy as np
import pytest

from tests.support.gpu import real_nvml
from tests.support.meters import open_nvml as _open
from thermoledger.meters.backends import DeviceStatus, Method, NvmlBackend, translate_nvml_error
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.simulated import Bursty, steady
from thermoledger.meters.errors import (
    DeviceLost,
    DeviceUnavailable,
    MeterError,
    NotSupported,
    PermissionDenied,
    ReadError,
)
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_pynvml import FakeGpu, FakeNvml, Fault, a100, h100, p100, v100

MIG_A = "MIG-1b7c2d30-0000-4000-8000-00000000000a"
MIG_B = "MIG-1b7c2d30-0000-4000-8000-00000000000b"
UUIDS = (
    "GPU-11111111-aaaa-4000-8000-000000000000",
    "GPU-11112222-bbbb-4000-8000-000000000000",
    "GPU-33333333-cccc-4000-8000-000000000000",
)


def _three() -> list[FakeGpu]:
    return [
        h100(uuid=UUIDS[0], profile=steady(300.0)),
        h100(uuid=UUIDS[1], profile=steady(400.0)),
        a100(uuid=UUIDS[2], profile=steady(200.0), mig_devices=(MIG_A, MIG_B)),
    ]


# -- devices and units --------------------------------------------------------------------------


def test_devices_report_vendor_names_uuids_and_limits_in_watts() -> None:
    backend, _, _ = _open(_three())
    devices = backend.devices()
    assert [d.uid for d in devices] == list(UUIDS)
    assert [d.index for d in devices] == [0, 1, 2]
    assert devices[0].name == "NVIDIA H100 80GB HBM3"
    assert [d.power_limit_w for d in devices] == [700.0, 700.0, 400.0]
    assert all(d.backend == "nvml" and not d.simulated and d.scope == "gpu" for d in devices)
    assert all(d.has_energy_counter and d.counter_wrap_j is None for d in devices)
    assert devices[0].uncertainty.power_rel == 0.05
    assert backend.selection.source == "all"


def test_readings_are_in_watts_and_joules() -> None:
    backend, _, clock = _open([h100(profile=steady(300.0), counter_start_mj=5_000)])
    clock.advance(10.0)
    readings = backend.read()
    assert readings.power_w.tolist() == [300.0]
    assert readings.energy_j.tolist() == [5.0 + 3000.0]  # 300 W for 10 s, on top of 5 J
    assert readings.status.tolist() == [DeviceStatus.OK]
    assert readings.energy_method.tolist() == [Method.COUNTER]


def test_power_comes_from_the_average_field_by_default_and_the_instant_on_request() -> None:
    wave = Bursty(100.0, 500.0, period_s=2.0)
    clock = ManualClock()
    average, fake_a, _ = _open([h100(profile=wave)], clock)
    instant, fake_i, _ = _open([h100(profile=wave)], clock, power_reading="instant")
    assert average.power_reading == "auto"
    info = average.devices()[0]
    assert info.power_method is Method.POWER_AVG
    assert info.uncertainty.power_window_s == 1.0
    assert "NVML_FI_DEV_POWER_AVERAGE" in info.uncertainty.note  # where the window comes from
    assert instant.devices()[0].power_method is Method.POWER_INSTANT
    assert instant.devices()[0].uncertainty.power_window_s is None
    clock.advance(0.5)
    assert instant.read().power_w.tolist() == [500.0]
    assert average.read().power_w.tolist() == [300.0]  # mean of the last second
    for fake in (fake_a, fake_i):
        assert fake.calls[("nvmlDeviceGetPowerUsage", 0)] == 0  # fields were enough
        assert fake.calls[("nvmlDeviceGetPciInfo", 0)] == 0


@pytest.mark.parametrize(
    ("gpu", "method"),
    [
        (h100(field_power=False), Method.POWER_AVG),  # Hopper: 1 s average
        (a100(field_power=False), Method.POWER_INSTANT),  # GA100: instantaneous
        (FakeGpu(name="NVIDIA A30", architecture=7, field_power=False), Method.POWER_INSTANT),
        (FakeGpu(name="NVIDIA A10", architecture=7, field_power=False), Method.POWER_AVG),
        (v100(field_power=False), Method.POWER_INSTANT),
        (p100(), Method.POWER_INSTANT),
    ],
)
def test_power_usage_fallback_is_labelled_by_architecture(gpu: FakeGpu, method: Method) -> None:
    backend, fake, clock = _open([gpu])
    assert backend.devices()[0].power_method is method
    probes = fake.calls[("nvmlDeviceGetPowerUsage", 0)]
    clock.advance(1.0)
    readings = backend.read()
    assert readings.power_method.tolist() == [method]
    assert fake.calls[("nvmlDeviceGetPowerUsage", 0)] == probes + 1


def test_unknown_architecture_is_said_not_guessed_silently() -> None:
    gpu = FakeGpu(architecture=codes.NVML_DEVICE_ARCH_UNKNOWN, field_power=False)
    backend, _, _ = _open([gpu])
    assert "architecture unknown" in backend.devices()[0].note


# -- NotSupported, counter reset, lost GPU, transient errors -----------------------------------


def test_pre_volta_gpu_reads_power_only_with_nan_energy() -> None:
    backend, _, clock = _open([p100(profile=steady(180.0)), h100()])
    info = backend.devices()[0]
    assert not info.has_energy_counter
    assert info.power_method is Method.POWER_INSTANT
    assert "no energy counter" in info.note
    clock.advance(1.0)
    readings = backend.read()
    assert readings.power_w[0] == 180.0
    assert np.isnan(readings.energy_j[0])
    assert readings.energy_method[0] == Method.NONE
    assert readings.status[0] == DeviceStatus.OK


def test_a_gpu_with_neither_power_nor_counter_is_not_supported() -> None:
    backend, _, _ = _open([p100(power_usage=False)])
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.NOT_SUPPORTED]
    assert np.isnan(readings.power_w[0])
    assert np.isnan(readings.energy_j[0])
    assert backend.devices()[0].power_method is Method.NONE


def test_counter_reset_on_driver_reload_is_passed_on_raw() -> None:
    gpu = h100(profile=steady(100.0), counter_start_mj=50_000_000, reloads_at_s=(5.0,))
    backend, _, clock = _open([gpu])
    clock.advance(4.0)
    before = backend.read()
    clock.advance(2.0)
    after = backend.read()
    assert before.energy_j[0] == 50_000.0 + 400.0
    assert after.energy_j[0] == 100.0  # restarted at the reload, 1 s ago
    assert after.status[0] == DeviceStatus.OK
    assert backend.devices()[0].counter_wrap_j is None  # so a decrease means a reset


def test_a_gpu_that_falls_off_the_bus_is_lost_and_the_others_continue() -> None:
    gpus = _three()
    gpus[1] = h100(uuid=UUIDS[1], profile=steady(400.0), lost_at_s=5.0)
    backend, fake, clock = _open(gpus)
    clock.advance(4.0)
    assert backend.read().status.tolist() == [DeviceStatus.OK] * 3
    for _ in range(3):
        clock.advance(2.0)
        readings = backend.read()
        assert readings.status.tolist() == [DeviceStatus.OK, DeviceStatus.LOST, DeviceStatus.OK]
        assert np.isnan(readings.power_w[1])
        assert np.isnan(readings.energy_j[1])
        assert "GPU is lost" in readings.messages[1]
        assert readings.power_w[[0, 2]].tolist() == [300.0, 200.0]
    calls_to_lost_gpu = sum(n for (_, position), n in fake.calls.items() if position == 1)
    clock.advance(1.0)
    backend.read()
    assert sum(n for (_, p), n in fake.calls.items() if p == 1) == calls_to_lost_gpu


def test_an_unknown_error_is_taken_as_lost() -> None:
    gpu = h100(faults=(Fault(codes.NVML_ERROR_UNKNOWN, 1.0, 2.0),))
    backend, _, clock = _open([gpu])
    clock.advance(1.5)
    assert backend.read().status.tolist() == [DeviceStatus.LOST]
    clock.advance(1.0)
    assert backend.read().status.tolist() == [DeviceStatus.LOST]  # it stays lost


def test_a_gpu_lost_before_opening_is_listed_as_lost() -> None:
    backend, _, _ = _open([h100(lost_at_s=0.0), h100(uuid=UUIDS[1])])
    devices = backend.devices()
    assert devices[0].uid == "NVML-INDEX-0"
    assert "did not answer" in devices[0].note
    assert backend.read().status.tolist() == [DeviceStatus.LOST, DeviceStatus.OK]


@pytest.mark.parametrize(
    "gpu",
    [
        # two calls: the counter call times out
        h100(
            energy_field=False,
            faults=(
                Fault(
                    codes.NVML_ERROR_TIMEOUT, 1.0, 2.0, call="nvmlDeviceGetTotalEnergyConsumption"
                ),
            ),
        ),
        # one call: the energy field answers the timeout in its own nvmlReturn
        h100(
            faults=(Fault(codes.NVML_ERROR_TIMEOUT, 1.0, 2.0, field_id=codes.NVML_FI_DEV_ENERGY),)
        ),
    ],
)
def test_a_transient_error_costs_one_figure_for_one_tick(gpu: FakeGpu) -> None:
    backend, _, clock = _open([gpu, h100()])
    clock.advance(1.5)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.ERROR, DeviceStatus.OK]
    assert readings.power_w[0] == 300.0  # the power read still worked
    assert np.isnan(readings.energy_j[0])
    assert readings.energy_method[0] == Method.NONE
    assert "Timeout" in readings.messages[0]
    clock.advance(1.0)
    assert backend.read().status.tolist() == [DeviceStatus.OK, DeviceStatus.OK]


def test_a_refused_read_is_denied_not_zero() -> None:
    refused = Fault(codes.NVML_ERROR_NO_PERMISSION, 1.0, call="nvmlDeviceGetFieldValues")
    backend, _, clock = _open([h100(faults=(refused,))])
    clock.advance(2.0)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.DENIED]
    assert np.isnan(readings.power_w[0])
    assert "/dev/nvidia" in readings.messages[0]


@pytest.mark.parametrize(("energy_field", "calls"), [(False, 2), (True, 1)])
def test_slow_calls_stamp_each_gpu_at_the_midpoint_of_its_reads(
    energy_field: bool, calls: int
) -> None:
    gpus = [h100(call_latency_s=latency_s, energy_field=energy_field) for latency_s in (0.02, 0.05)]
    backend, _, clock = _open(gpus)
    assert backend.energy_in_field == (energy_field, energy_field)
    t0_s, wall0_s = clock.monotonic_s(), clock.wall_s()
    readings = backend.read()
    # two calls each (power field, counter) or one (both fields): each GPU stamped mid-read
    first_s, second_s = calls * 0.02, calls * 0.05
    assert readings.t_mono_s == pytest.approx([t0_s + first_s / 2, t0_s + first_s + second_s / 2])
    # wall times are ~1.7e9 s, whose float64 spacing is ~2.4e-7 s
    assert readings.t_wall_s - wall0_s == pytest.approx(readings.t_mono_s - t0_s, abs=1e-6)
    assert clock.monotonic_s() == pytest.approx(t0_s + first_s + second_s)


# -- selection ----------------------------------------------------------------------------------


def _uids(env: dict[str, str] | None = None, gpus: list[int | str] | None = None) -> list[str]:
    backend, _, _ = _open(_three(), env=env or {}, gpus=gpus)
    return [d.uid for d in backend.devices()]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("2,0", [UUIDS[2], UUIDS[0]]),
        (" 1 ", [UUIDS[1]]),
        (UUIDS[1], [UUIDS[1]]),
        ("GPU-3333", [UUIDS[2]]),  # a unique prefix
        ("GPU-11112222-BBBB", [UUIDS[1]]),  # prefixes match regardless of case
        (f"0,{UUIDS[0]}", [UUIDS[0]]),  # the same GPU twice is metered once
        ("0,7,1", [UUIDS[0]]),  # CUDA stops at the first invalid entry
        ("0,GPU-1111,2", [UUIDS[0]]),  # an ambiguous prefix is invalid
        ("", []),
        ("-1", []),
    ],
)
def test_cuda_visible_devices(visible: str, expected: list[str]) -> None:
    assert _uids({"CUDA_VISIBLE_DEVICES": visible}) == expected


def test_ignored_entries_are_reported() -> None:
    backend, _, _ = _open(_three(), env={"CUDA_VISIBLE_DEVICES": "1,1,9,0"})
    assert backend.selection.source == "CUDA_VISIBLE_DEVICES"
    assert backend.selection.indices == (1,)
    assert "already selected" in backend.selection.ignored[0]
    assert "'9', '0'" in backend.selection.ignored[1]
    assert "no GPU with index 9" in backend.selection.ignored[1]


def test_mig_entries_select_the_parent_gpu_flagged_and_once() -> None:
    backend, _, _ = _open(_three(), env={"CUDA_VISIBLE_DEVICES": f"{MIG_A},{MIG_B}"})
    (device,) = backend.devices()
    assert device.uid == UUIDS[2]
    assert device.mig
    assert "whole GPU" in device.note
    assert backend.selection.via_mig == frozenset({2})


def test_legacy_mig_syntax_names_the_parent_uuid() -> None:
    backend, _, _ = _open(_three(), env={"CUDA_VISIBLE_DEVICES": f"MIG-{UUIDS[0]}/1/0"})
    assert [(d.uid, d.mig) for d in backend.devices()] == [(UUIDS[0], True)]


def test_a_gpu_in_mig_mode_is_flagged_even_when_named_by_index() -> None:
    backend, _, _ = _open(_three(), env={"CUDA_VISIBLE_DEVICES": "2,0"})
    assert [d.mig for d in backend.devices()] == [True, False]


def test_explicit_gpus_override_the_environment() -> None:
    assert _uids({"CUDA_VISIBLE_DEVICES": "0"}, gpus=[2, "GPU-11112"]) == [UUIDS[2], UUIDS[1]]


@pytest.mark.parametrize("entry", [5, "GPU-1111", "GPU-ffff", "MIG-nope", "banana"])
def test_an_explicit_gpu_that_names_nothing_raises(entry: int | str) -> None:
    clock = ManualClock()
    fake = FakeNvml(_three(), clock=clock)
    with pytest.raises(DeviceUnavailable, match="gpus entry"):
        NvmlBackend(nvml=fake, clock=clock, gpus=[0, entry], env={})
    assert fake.refcount == 0  # NVML was shut down again


# -- opening, closing, error translation --------------------------------------------------------


def test_no_driver_is_device_unavailable_with_the_nvml_error_as_cause() -> None:
    fake = FakeNvml([h100()], init_error=codes.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(DeviceUnavailable, match="Driver Not Loaded") as caught:
        NvmlBackend(nvml=fake, env={})
    assert isinstance(caught.value.__cause__, fake.NVMLError)
    assert caught.value.__cause__.value == codes.NVML_ERROR_DRIVER_NOT_LOADED


def test_close_shuts_nvml_down_once() -> None:
    backend, fake, _ = _open(_three())
    assert fake.refcount == 1
    backend.close()
    backend.close()
    assert fake.refcount == 0
    with _open(_three())[0] as other:
        assert len(other.devices()) == 3


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (codes.NVML_ERROR_GPU_IS_LOST, DeviceLost),
        (codes.NVML_ERROR_RESET_REQUIRED, DeviceLost),
        (codes.NVML_ERROR_UNKNOWN, DeviceLost),
        (codes.NVML_ERROR_NOT_SUPPORTED, NotSupported),
        (codes.NVML_ERROR_FUNCTION_NOT_FOUND, NotSupported),
        (codes.NVML_ERROR_NO_PERMISSION, PermissionDenied),
        (codes.NVML_ERROR_LIBRARY_NOT_FOUND, DeviceUnavailable),
        (codes.NVML_ERROR_DRIVER_NOT_LOADED, DeviceUnavailable),
        (codes.NVML_ERROR_TIMEOUT, ReadError),
        (12345, ReadError),
    ],
)
def test_translation_table(code: int, error: type[MeterError]) -> None:
    translated = translate_nvml_error(code, call="nvmlDeviceGetPowerUsage", device="GPU-x")
    assert type(translated) is error
    assert "nvmlDeviceGetPowerUsage for GPU-x failed" in str(translated)


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="an NVIDIA driver is installed"
)
def test_real_pynvml_without_a_driver_is_device_unavailable() -> None:
    pytest.importorskip("pynvml")
    with pytest.raises(DeviceUnavailable, match="libnvidia-ml"):
        NvmlBackend(env={})


@pytest.mark.gpu
def test_real_gpus() -> None:
    # skipped where NVML sees no GPU (the rest of the lane: tests/gpu)
    with NvmlBackend(nvml=real_nvml(), env={}) as backend:
        devices = backend.devices()
        first, second = backend.read(), backend.read()
        for i, device in enumerate(devices):
            assert device.name
            assert device.uid.startswith("GPU-")
            assert second.status_of(i) is DeviceStatus.OK
            if device.power_method is not Method.NONE:
                assert 0.0 < second.power_w[i] < 2.0 * (device.power_limit_w or 2000.0)
            if device.has_energy_counter:
                assert second.energy_j[i] >= first.energy_j[i]


# -- power and energy in one field-values call -------------------------------------------------


def _calls_per_read(backend: NvmlBackend, fake: FakeNvml, clock: ManualClock) -> dict[str, int]:
    before = fake.calls.copy()
    clock.advance(0.1)
    backend.read()
    per_call: dict[str, int] = {}
    for (name, _), n in (fake.calls - before).items():
        per_call[name] = per_call.get(name, 0) + n
    return per_call


def test_h100_reads_power_and_energy_in_one_call() -> None:
    backend, fake, clock = _open([h100(profile=steady(300.0), counter_start_mj=7_000)] * 2)
    assert backend.energy_in_field == (True, True)
    assert "one nvmlDeviceGetFieldValues call" in backend.devices()[0].note
    assert _calls_per_read(backend, fake, clock) == {"nvmlDeviceGetFieldValues": 2}
    clock.advance(9.9)
    readings = backend.read()
    assert readings.power_w.tolist() == [300.0, 300.0]
    assert readings.energy_j.tolist() == [7.0 + 3000.0] * 2
    assert readings.energy_method.tolist() == [Method.COUNTER] * 2
    assert readings.status.tolist() == [DeviceStatus.OK] * 2


@pytest.mark.parametrize(
    ("gpu", "why"),
    [
        (h100(energy_field=False), "Not Supported"),  # an older driver does not know the field
        (h100(energy_field_offset_mj=5_000), "disagrees"),  # ahead of the counter
        (h100(energy_field_offset_mj=-2_000_000, counter_start_mj=10**9), "disagrees"),  # behind
        (
            h100(faults=(Fault(codes.NVML_ERROR_NOT_FOUND, field_id=codes.NVML_FI_DEV_ENERGY),)),
            "unusable",
        ),
    ],
)
def test_an_energy_field_that_fails_the_check_keeps_two_calls(gpu: FakeGpu, why: str) -> None:
    backend, fake, clock = _open([gpu])
    assert backend.energy_in_field == (False,)
    assert "nvmlDeviceGetTotalEnergyConsumption" in backend.devices()[0].note
    assert why in backend.devices()[0].note
    assert _calls_per_read(backend, fake, clock) == {
        "nvmlDeviceGetFieldValues": 1,
        "nvmlDeviceGetTotalEnergyConsumption": 1,
    }
    clock.advance(0.9)
    readings = backend.read()
    # the counter's value, not the field's
    assert readings.energy_j.tolist() == [gpu.counter_start_mj / 1000.0 + 300.0]
    assert readings.status.tolist() == [DeviceStatus.OK]


def test_a_gpu_whose_counter_trails_by_what_it_drew_meanwhile_passes_the_check() -> None:
    # 0.5 s between the field and the counter read at 300 W: the counter is 150 J ahead
    backend, _, _ = _open([h100(call_latency_s=0.5)])
    assert backend.energy_in_field == (True,)


def test_gpus_without_a_power_field_or_counter_are_not_probed_for_the_energy_field() -> None:
    backend, fake, clock = _open([p100(), v100(field_power=False)])
    assert backend.energy_in_field == (False, False)
    assert fake.calls[("nvmlDeviceGetFieldValues", 1)] == 1  # the power-field probe only
    assert _calls_per_read(backend, fake, clock) == {
        "nvmlDeviceGetPowerUsage": 2,
        "nvmlDeviceGetTotalEnergyConsumption": 1,
    }


@pytest.mark.parametrize("energy_field", [True, False])
def test_counter_reset_reads_the_same_on_both_paths(energy_field: bool) -> None:
    gpu = h100(
        profile=steady(100.0),
        counter_start_mj=50_000_000,
        reloads_at_s=(5.0,),
        energy_field=energy_field,
    )
    backend, _, clock = _open([gpu])
    assert backend.energy_in_field == (energy_field,)
    clock.advance(4.0)
    before = backend.read()
    clock.advance(2.0)
    after = backend.read()
    assert before.energy_j.tolist() == [50_000.0 + 400.0]
    assert after.energy_j.tolist() == [100.0]
    assert after.status.tolist() == [DeviceStatus.OK]


@pytest.mark.parametrize("energy_field", [True, False])
def test_a_lost_gpu_reads_the_same_on_both_paths(energy_field: bool) -> None:
    gpus = [h100(lost_at_s=5.0, energy_field=energy_field), h100(energy_field=energy_field)]
    backend, fake, clock = _open(gpus)
    clock.advance(6.0)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.LOST, DeviceStatus.OK]
    assert np.isnan(readings.power_w[0])
    assert np.isnan(readings.energy_j[0])
    assert "GPU is lost" in readings.messages[0]
    calls_to_lost_gpu = sum(n for (_, p), n in fake.calls.items() if p == 0)
    backend.read()
    assert sum(n for (_, p), n in fake.calls.items() if p == 0) == calls_to_lost_gpu


@pytest.mark.parametrize(
    ("code", "status", "power_nan", "energy_nan"),
    [
        (codes.NVML_ERROR_NOT_SUPPORTED, DeviceStatus.ERROR, True, False),
        (codes.NVML_ERROR_TIMEOUT, DeviceStatus.ERROR, True, False),
        (codes.NVML_ERROR_NO_PERMISSION, DeviceStatus.DENIED, True, False),
        (codes.NVML_ERROR_GPU_IS_LOST, DeviceStatus.LOST, True, True),
    ],
)
@pytest.mark.parametrize("energy_field", [True, False])
def test_a_failing_power_field_maps_the_same_on_both_paths(
    energy_field: bool, code: int, status: DeviceStatus, power_nan: bool, energy_nan: bool
) -> None:
    fault = Fault(code, 1.0, 2.0, field_id=codes.NVML_FI_DEV_POWER_AVERAGE)  # read by default
    backend, _, clock = _open([h100(faults=(fault,), energy_field=energy_field)])
    assert backend.energy_in_field == (energy_field,)
    clock.advance(1.5)
    readings = backend.read()
    assert readings.status.tolist() == [status]
    assert np.isnan(readings.power_w[0]) == power_nan
    assert np.isnan(readings.energy_j[0]) == energy_nan
    assert "nvmlDeviceGetFieldValues(185)" in readings.messages[0]


def test_a_failing_combined_call_costs_both_figures_for_that_tick() -> None:
    timeout = Fault(codes.NVML_ERROR_TIMEOUT, 1.0, 2.0, call="nvmlDeviceGetFieldValues")
    backend, _, clock = _open([h100(faults=(timeout,))])
    clock.advance(1.5)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.ERROR]
    assert np.isnan(readings.power_w[0])
    assert np.isnan(readings.energy_j[0])
    clock.advance(1.0)
    assert backend.read().status.tolist() == [DeviceStatus.OK]
