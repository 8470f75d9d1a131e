"""The NVML backend on real nodes: refused GPUs, transient errors at open, hints, odd fields,
the energy-field check at every phase of a counter step, and closing under a pending read."""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import pytest

from tests.support.meters import open_nvml as _open
from thermoledger.meters.backends import DeviceStatus, Method, NvmlBackend, translate_nvml_error
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.simulated import steady
from thermoledger.meters.errors import DeviceLost, DeviceUnavailable
from thermoledger.meters.testing.fake_pynvml import (
    FakeGpu,
    FakeNvml,
    Fault,
    SlowCall,
    default_uuid,
    h100,
)

NO_PERMISSION = codes.NVML_ERROR_NO_PERMISSION
TIMEOUT = codes.NVML_ERROR_TIMEOUT
COUNTER = "nvmlDeviceGetTotalEnergyConsumption"
FIELDS = "nvmlDeviceGetFieldValues"


def _cgroup_fleet() -> list[FakeGpu]:
    """Four GPUs; the process may not open GPU 1 (another job's, under a device cgroup)."""
    refused = Fault(NO_PERMISSION, call="nvmlDeviceGetHandleByIndex")
    return [h100(), h100(faults=(refused,)), h100(), h100()]


# -- item 1: a GPU the process may not open -----------------------------------------------------


def test_a_gpu_refused_at_its_handle_is_left_out_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        backend, _, clock = _open(_cgroup_fleet())
    assert [d.index for d in backend.devices()] == [0, 2, 3]
    assert backend.selection.source == "all"
    (unopened,) = backend.selection.unopened
    assert unopened.startswith("GPU 1: ")
    assert "Insufficient Permissions" in unopened
    assert "/dev/nvidia" in unopened  # the fix text
    assert "may not open" in caplog.text
    assert "GPU 1" in caplog.text
    clock.advance(1.0)
    assert backend.read().status.tolist() == [DeviceStatus.OK] * 3


def test_a_gpu_refused_at_its_uuid_is_left_out_too() -> None:
    refused = Fault(NO_PERMISSION, call="nvmlDeviceGetUUID")
    backend, _, _ = _open([h100(faults=(refused,)), h100()])
    assert [d.index for d in backend.devices()] == [1]
    assert backend.selection.unopened[0].startswith("GPU 0: ")


@pytest.mark.parametrize(
    ("visible", "nvml_indices"),
    [("0", [0]), ("1", [2]), ("2", [3]), ("0,2", [0, 3]), ("1,2", [2, 3])],
)
def test_integer_cuda_indices_count_the_gpus_the_process_can_open(
    visible: str, nvml_indices: list[int]
) -> None:
    backend, _, _ = _open(_cgroup_fleet(), env={"CUDA_VISIBLE_DEVICES": visible})
    assert [d.index for d in backend.devices()] == nvml_indices
    assert [d.uid for d in backend.devices()] == [default_uuid(i) for i in nvml_indices]


def test_a_cuda_index_past_the_openable_gpus_is_ignored_as_cuda_does() -> None:
    backend, _, _ = _open(_cgroup_fleet(), env={"CUDA_VISIBLE_DEVICES": "0,3"})
    assert [d.index for d in backend.devices()] == [0]
    assert "3 this process can open" in backend.selection.ignored[0]


def test_an_explicit_gpu_the_process_may_not_open_raises() -> None:
    with pytest.raises(DeviceUnavailable, match="may not be opened"):
        _open(_cgroup_fleet(), gpus=[1])
    backend, _, _ = _open(_cgroup_fleet(), gpus=[2])  # explicit entries stay NVML indices
    assert [d.index for d in backend.devices()] == [2]


def test_no_gpu_the_process_may_open_is_an_empty_backend_never_a_simulated_one() -> None:
    refused = Fault(NO_PERMISSION, call="nvmlDeviceGetHandleByIndex")
    backend, _, _ = _open([h100(faults=(refused,))] * 2)
    assert backend.devices() == ()
    assert len(backend.selection.unopened) == 2


# -- item 6: a transient error at open -----------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(TIMEOUT, call=COUNTER, count=1),  # the counter probe
        Fault(TIMEOUT, call=COUNTER, count=2),  # ... twice: still within the tries
        Fault(TIMEOUT, call=FIELDS, count=1),  # the power-field probe
        Fault(TIMEOUT, field_id=codes.NVML_FI_DEV_POWER_AVERAGE, count=1),  # one field's own code
        Fault(TIMEOUT, field_id=codes.NVML_FI_DEV_ENERGY, count=1),  # the energy-field check
        Fault(TIMEOUT, call="nvmlDeviceGetHandleByIndex", count=1),  # the handle
        Fault(codes.NVML_ERROR_NO_DATA, call=COUNTER, count=1),
    ],
)
def test_a_transient_timeout_at_open_is_asked_again(fault: Fault) -> None:
    backend, _, clock = _open([h100(faults=(fault,))])
    (info,) = backend.devices()
    assert info.has_energy_counter
    assert info.power_method is Method.POWER_AVG
    assert backend.energy_in_field == (True,)
    assert "Timeout" not in info.note
    assert "No Data" not in info.note
    assert "Volta" not in info.note
    clock.advance(1.0)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.OK]
    assert readings.energy_j[0] == pytest.approx(300.0)


def test_a_timeout_that_outlasts_the_tries_keeps_the_counter_and_names_the_code() -> None:
    gpu = h100(faults=(Fault(TIMEOUT, 0.0, 0.5, call=COUNTER),))
    backend, _, clock = _open([gpu])
    (info,) = backend.devices()
    assert info.has_energy_counter  # TIMEOUT is not NOT_SUPPORTED: the counter is not absent
    assert "Timeout" in info.note
    assert "asked 3 times" in info.note
    assert "Volta" not in info.note  # an H100
    assert backend.energy_in_field == (False,)  # not checked: the safe two-call path
    clock.advance(1.0)  # the fault is over
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.OK]
    assert readings.energy_method.tolist() == [Method.COUNTER]


def test_only_not_supported_makes_the_counter_absent() -> None:
    backend, _, _ = _open([h100(has_counter=False)])
    (info,) = backend.devices()
    assert not info.has_energy_counter
    assert "no energy counter (NVML: Not Supported)" in info.note  # an H100: not "before Volta"


# -- item 7: permission and error hints -----------------------------------------------------------


def test_no_permission_while_probing_is_reported_as_permission_with_the_fix() -> None:
    faults = (
        Fault(NO_PERMISSION, 0.0, 0.5, call=COUNTER),
        Fault(NO_PERMISSION, 0.0, 0.5, field_id=codes.NVML_FI_DEV_POWER_INSTANT),
    )
    backend, _, clock = _open([h100(faults=faults)])
    (info,) = backend.devices()
    assert "Insufficient Permissions" in info.note
    assert "/dev/nvidia" in info.note  # the fix
    assert "Not Supported" not in info.note
    assert "nvmlDeviceGetFieldValues(186)" in info.note
    assert info.has_energy_counter
    clock.advance(1.0)
    assert backend.read().status.tolist() == [DeviceStatus.OK]


def test_a_refused_read_after_open_is_denied_with_the_fix() -> None:
    gpu = h100(energy_field=False, faults=(Fault(NO_PERMISSION, 1.0, 2.0, call=COUNTER),))
    backend, _, clock = _open([gpu])
    clock.advance(1.5)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.DENIED]
    assert "/dev/nvidia" in readings.messages[0]


def test_unknown_everywhere_lists_the_gpus_as_lost_with_the_container_hint() -> None:
    fleet = [h100(faults=(Fault(codes.NVML_ERROR_UNKNOWN),))] * 2
    backend, _, clock = _open(fleet)
    infos = backend.devices()
    assert len(infos) == 2
    for info in infos:
        assert "daemon-reload" in info.note
        assert "restart the container or pod" in info.note
    clock.advance(1.0)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.LOST] * 2
    assert "daemon-reload" in readings.messages[0]


def test_unknown_after_open_is_lost_with_the_container_hint() -> None:
    backend, _, clock = _open([h100(faults=(Fault(codes.NVML_ERROR_UNKNOWN, 1.0),))])
    clock.advance(2.0)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.LOST]
    assert "daemon-reload" in readings.messages[0]


def test_unknown_at_init_carries_the_container_hint() -> None:
    fake = FakeNvml([h100()], init_error=codes.NVML_ERROR_UNKNOWN)
    with pytest.raises(DeviceLost, match="daemon-reload"):
        NvmlBackend(nvml=fake, env={})


def test_a_driver_upgraded_without_a_reboot_has_its_own_hint() -> None:
    fake = FakeNvml([h100()], init_error=codes.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    with pytest.raises(DeviceUnavailable, match="without a reboot") as caught:
        NvmlBackend(nvml=fake, env={})
    assert "reload the nvidia kernel modules" in str(caught.value)
    message = str(translate_nvml_error(codes.NVML_ERROR_LIB_RM_VERSION_MISMATCH, call="nvmlInit"))
    assert "NVML/RM version mismatch" in message
    assert "reboot" in message


# -- item 9: odd field values, the energy-field check, a pending read at close ------------------


@pytest.mark.parametrize(
    ("value_type", "value"),
    [
        (codes.NVML_VALUE_TYPE_SIGNED_LONG_LONG, -5_000.0),
        (codes.NVML_VALUE_TYPE_SIGNED_INT, -1.0),
        (codes.NVML_VALUE_TYPE_DOUBLE, math.nan),
        (codes.NVML_VALUE_TYPE_DOUBLE, -math.inf),
    ],
)
@pytest.mark.parametrize("energy_field", [True, False])
def test_a_negative_or_nan_field_is_an_error_status_never_an_exception(
    value_type: int, value: float, energy_field: bool
) -> None:
    override = ((codes.NVML_FI_DEV_POWER_AVERAGE, value_type, value),)
    backend, _, clock = _open([h100(field_overrides=override, energy_field=energy_field), h100()])
    clock.advance(1.0)
    readings = backend.read()  # must not raise
    assert readings.status.tolist() == [DeviceStatus.ERROR, DeviceStatus.OK]
    assert np.isnan(readings.power_w[0])
    assert readings.energy_j[0] == pytest.approx(300.0)  # the counter still counts
    assert "negative or not finite" in readings.messages[0]


@pytest.mark.parametrize("phase_ms", range(0, 100, 5))
def test_the_energy_field_check_passes_at_every_phase_of_a_counter_step(phase_ms: int) -> None:
    # 100 ms counter steps at 690 W carry 69 J at once; the two reads are 10 ms apart
    gpu = h100(
        profile=steady(690.0),
        counter_update_s=0.1,
        counter_update_phase_s=phase_ms / 1000.0,
        call_latency_s=0.01,
    )
    backend, _, _ = _open([gpu])
    assert backend.energy_in_field == (True,), backend.devices()[0].note


def test_the_energy_field_check_still_refuses_a_field_that_disagrees() -> None:
    gpu = h100(
        counter_update_s=0.1,
        call_latency_s=0.01,
        counter_start_mj=10**9,
        energy_field_offset_mj=-200_000,
    )
    backend, _, _ = _open([gpu])
    assert backend.energy_in_field == (False,)
    assert "disagrees" in backend.devices()[0].note


def _read_in_thread(backend: NvmlBackend) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(backend.read()))
    thread.start()
    return thread, out


def test_close_waits_for_a_pending_read_before_shutting_nvml_down() -> None:
    fake = FakeNvml([h100(slow_calls=(SlowCall(0.3, start_s=0.5, call=FIELDS),))])
    backend = NvmlBackend(nvml=fake, env={})
    time.sleep(max(0.0, 0.55 - fake.now_s()))
    thread, out = _read_in_thread(backend)
    time.sleep(0.05)  # the read is inside NVML now
    started_s = time.monotonic()
    backend.close()
    waited_s = time.monotonic() - started_s
    thread.join()
    assert fake.refcount == 0  # shut down, after the read
    assert fake.cut_by_shutdown == 0
    assert 0.1 < waited_s < 1.0
    (readings,) = out
    assert readings.status.tolist() == [DeviceStatus.OK]  # type: ignore[attr-defined]
    later = backend.read()  # a read after close is an error status, not a call into NVML
    assert later.status.tolist() == [DeviceStatus.ERROR]
    assert "closed" in later.messages[0]


def test_close_waits_a_bounded_time_and_then_leaves_nvml_initialised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeNvml([h100(slow_calls=(SlowCall(2.0, start_s=0.5, call=FIELDS),))])
    backend = NvmlBackend(nvml=fake, env={})
    time.sleep(max(0.0, 0.55 - fake.now_s()))
    thread, _ = _read_in_thread(backend)
    time.sleep(0.05)
    started_s = time.monotonic()
    with caplog.at_level(logging.WARNING):
        backend.close()
    assert time.monotonic() - started_s < 1.5
    assert "still pending" in caplog.text
    assert fake.refcount == 1  # not shut down under the read
    thread.join()
    assert fake.cut_by_shutdown == 0
