"""The AMD SMI backend against the fake ``amdsmi`` module (and, where there is one, a real GPU)."""

from __future__ import annotations

import ctypes.util
import importlib.util
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermoledger.meters.backends import amdsmi as codes
from thermoledger.meters.backends.amdsmi import AmdSmiBackend, translate_amdsmi_error
from thermoledger.meters.backends.base import (
    DeviceReader,
    DeviceStatus,
    FlatReader,
    Method,
    PowerBackend,
)
from thermoledger.meters.backends.simulated import Bursty, Ramp, steady
from thermoledger.meters.errors import (
    DeviceLost,
    DeviceUnavailable,
    MeterError,
    NotSupported,
    PermissionDenied,
    ReadError,
)
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.spool import RunStatus
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_amdsmi import (
    LIBRARY_RESOLUTION_UJ,
    FakeAmdGpu,
    FakeAmdSmi,
    Fault,
    counter,
    mi210,
    mi250x,
    mi300x,
)
from thermoledger.meters.wire import ChunkPayload, DevicePayload

UJ = 1e-6
RESOLUTION_J = LIBRARY_RESOLUTION_UJ * UJ  # one count, in joules


def _open(
    fleet: Iterable[FakeAmdGpu], clock: ManualClock | None = None, **kwargs: Any
) -> tuple[AmdSmiBackend, FakeAmdSmi, ManualClock]:
    clock = clock or ManualClock()
    api_version = kwargs.pop("api_version", "7.0")
    fake = FakeAmdSmi(list(fleet), clock=clock, api_version=api_version)
    return AmdSmiBackend(amdsmi=fake, clock=clock, **kwargs), fake, clock


def _calls_to(fake: FakeAmdSmi, position: int) -> int:
    return sum(n for (_, p), n in fake.calls.items() if p == position)


# -- devices and units --------------------------------------------------------------------------


def test_devices_report_market_names_uuids_and_caps_in_watts() -> None:
    backend, fake, _ = _open([mi300x(), mi210()])
    assert isinstance(backend, PowerBackend)
    assert isinstance(backend, FlatReader)
    assert isinstance(backend, DeviceReader)
    first, second = backend.devices()
    assert [first.uid, second.uid] == list(fake.uuids)
    assert (first.index, second.index) == (0, 1)
    assert (first.name, second.name) == ("AMD Instinct MI300X", "AMD Instinct MI210")
    assert (first.power_limit_w, second.power_limit_w) == (750.0, 300.0)  # from µW
    for device in (first, second):
        assert device.backend == "amdsmi"
        assert device.scope == "gpu"  # the wire kind is "gpu"
        assert not device.simulated
        assert device.has_energy_counter
        assert device.counter_wrap_j is None  # 64-bit accumulator: a decrease is a reset
        assert device.uncertainty.counter_resolution_j == pytest.approx(15.3e-6, rel=1e-7)
        assert "0.27 %" in device.uncertainty.note  # the library's 15.3 µJ vs 2^-16 J
        assert device.uncertainty.power_rel == 0.0  # AMD states none: the kernel's defaults


def test_readings_are_watts_and_counts_times_resolution_in_joules() -> None:
    gpu = mi300x(profile=steady(612.0), counter_start=10**9)
    backend, _, clock = _open([gpu])
    clock.advance(10.0)
    readings = backend.read()
    assert readings.power_w.tolist() == [612.0]
    assert readings.power_method.tolist() == [Method.POWER_INSTANT]
    count = 10**9 + math.floor(6120.0 / RESOLUTION_J)
    assert count == counter(gpu, 10.0)
    assert readings.energy_j.tolist() == [count * LIBRARY_RESOLUTION_UJ * 1e-6]
    assert readings.energy_method.tolist() == [Method.COUNTER]
    assert readings.status.tolist() == [DeviceStatus.OK]
    # the counter holds the energy since load to within one count
    assert readings.energy_j[0] - 10**9 * RESOLUTION_J == pytest.approx(6120.0, abs=RESOLUTION_J)


@pytest.mark.parametrize("resolution_uj", [1.0, 1000.0, 15.625])
def test_the_reported_resolution_scales_the_count(resolution_uj: float) -> None:
    backend, _, clock = _open([mi300x(profile=steady(500.0), counter_resolution_uj=resolution_uj)])
    assert backend.devices()[0].uncertainty.counter_resolution_j == resolution_uj * UJ
    assert "0.27 %" not in backend.devices()[0].uncertainty.note
    clock.advance(2.0)
    assert backend.read().energy_j[0] == pytest.approx(1000.0, abs=resolution_uj * UJ)


def test_a_counter_that_moves_in_steps_is_passed_on_as_it_stands() -> None:
    backend, _, clock = _open([mi300x(profile=steady(100.0), counter_update_s=0.5)])
    clock.advance(1.7)  # the count still shows t = 1.5 s
    assert backend.read().energy_j[0] == pytest.approx(150.0, abs=RESOLUTION_J)


@pytest.mark.parametrize("api_version", ["6.2", "6.3", "6.4", "7.0"])
def test_every_binding_shape_reads_the_same(api_version: str) -> None:
    """6.2 names the count ``power``, 6.3 gives both keys, 6.4 on ``energy_accumulator``."""
    backend, _, clock = _open([mi300x(profile=steady(300.0)), mi210()], api_version=api_version)
    clock.advance(3.0)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.OK] * 2
    assert readings.power_w.tolist() == [300.0, 300.0]
    assert readings.energy_j.tolist() == pytest.approx([900.0, 900.0], abs=RESOLUTION_J)


# -- averaged or instantaneous power ------------------------------------------------------------


def test_average_socket_power_is_preferred_and_labelled_averaged() -> None:
    wave = Bursty(100.0, 500.0, period_s=2.0)
    both = mi300x(profile=wave, na_fields=frozenset())  # a GPU offering both fields
    backend, _, clock = _open([mi210(profile=wave), mi300x(profile=wave), both])
    methods = [d.power_method for d in backend.devices()]
    assert methods == [Method.POWER_AVG, Method.POWER_INSTANT, Method.POWER_AVG]
    # AMD documents no window: none is claimed
    assert all(d.uncertainty.power_window_s is None for d in backend.devices())
    clock.advance(0.5)  # high half: the instant is 500 W, the last second averaged 300 W
    readings = backend.read()
    assert readings.power_w.tolist() == [300.0, 500.0, 300.0]
    assert readings.power_method.tolist() == methods


def test_power_is_whole_watts() -> None:
    backend, _, clock = _open([mi300x(profile=Ramp(100.0, 200.0, duration_s=10.0))])
    clock.advance(3.33)  # 133.3 W
    assert backend.read().power_w.tolist() == [133.0]


def test_socket_power_of_amdsmi_7_is_the_last_resort_and_says_so() -> None:
    only_socket = mi300x(na_fields=frozenset({"current_socket_power", "average_socket_power"}))
    backend, _, clock = _open([only_socket])
    (device,) = backend.devices()
    assert device.power_method is Method.POWER_INSTANT
    assert "socket_power" in device.note
    clock.advance(1.0)
    assert backend.read().power_w.tolist() == [300.0]
    # before amdsmi 7 there is no socket_power: the GPU has no power reading at all
    older, _, _ = _open([only_socket], api_version="6.4")
    assert older.devices()[0].power_method is Method.NONE
    assert "no power reading" in older.devices()[0].note


# -- "N/A" is absent, never 0 -------------------------------------------------------------------

NOTHING = frozenset({"current_socket_power", "average_socket_power", "socket_power"})


def test_an_mi300x_with_na_power_fields_reads_nan_power_and_keeps_its_counter() -> None:
    backend, _, clock = _open([mi300x(na_fields=NOTHING)])
    (device,) = backend.devices()
    assert device.power_method is Method.NONE
    assert device.has_energy_counter
    clock.advance(2.0)
    readings = backend.read()
    assert np.isnan(readings.power_w[0])  # absent, never 0
    assert readings.power_method.tolist() == [Method.NONE]
    assert readings.energy_j[0] == pytest.approx(600.0, abs=RESOLUTION_J)
    assert readings.status.tolist() == [DeviceStatus.OK]


def test_a_gpu_with_neither_power_nor_counter_is_not_supported() -> None:
    backend, fake, clock = _open([mi300x(na_fields=NOTHING, has_counter=False)])
    (device,) = backend.devices()
    assert (device.power_method, device.has_energy_counter) == (Method.NONE, False)
    calls = _calls_to(fake, 0)
    clock.advance(1.0)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.NOT_SUPPORTED]
    assert np.isnan(readings.power_w[0])
    assert np.isnan(readings.energy_j[0])
    assert _calls_to(fake, 0) == calls  # nothing to ask it


class SentinelAmdSmi(FakeAmdSmi):
    """A binding that passes the library's "unsupported" markers on as numbers."""

    def __init__(self, *args: Any, power: Mapping[str, int], count: int | None, **kw: Any):
        super().__init__(*args, **kw)
        self.power = dict(power)
        self.count = count

    def amdsmi_get_power_info(self, processor_handle: object) -> dict[str, Any]:
        return super().amdsmi_get_power_info(processor_handle) | self.power

    def amdsmi_get_energy_count(self, processor_handle: object) -> dict[str, Any]:
        answer = super().amdsmi_get_energy_count(processor_handle)
        return answer if self.count is None else answer | {"energy_accumulator": self.count}


@pytest.mark.parametrize("marker", [0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF])
def test_unsupported_markers_passed_on_as_numbers_are_absent_too(marker: int) -> None:
    fields = {"socket_power": marker, "current_socket_power": marker}
    fake = SentinelAmdSmi([mi300x()], power=fields, count=None, clock=ManualClock())
    assert AmdSmiBackend(amdsmi=fake).devices()[0].power_method is Method.NONE


@pytest.mark.parametrize("marker", [0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF])
def test_an_invalid_count_is_no_counter(marker: int) -> None:
    fake = SentinelAmdSmi([mi300x()], power={}, count=marker, clock=ManualClock())
    (device,) = AmdSmiBackend(amdsmi=fake).devices()
    assert not device.has_energy_counter
    assert "no energy counter" in device.note


class FlickeringAmdSmi(FakeAmdSmi):
    """Power and count turn "N/A" / invalid while ``flicker`` is set."""

    flicker = False

    def amdsmi_get_power_info(self, processor_handle: object) -> dict[str, Any]:
        answer = super().amdsmi_get_power_info(processor_handle)
        return answer | {"current_socket_power": "N/A"} if self.flicker else answer

    def amdsmi_get_energy_count(self, processor_handle: object) -> dict[str, Any]:
        answer = super().amdsmi_get_energy_count(processor_handle)
        return answer | {"energy_accumulator": 0xFFFFFFFF} if self.flicker else answer


def test_a_field_that_turns_na_mid_run_costs_that_tick_only() -> None:
    clock = ManualClock()
    fake = FlickeringAmdSmi([mi300x(), mi210()], clock=clock)
    backend = AmdSmiBackend(amdsmi=fake, clock=clock)
    clock.advance(1.0)
    fake.flicker = True
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.ERROR, DeviceStatus.ERROR]
    assert np.isnan(readings.power_w[0])  # never 0
    assert np.isnan(readings.energy_j).all()
    assert readings.power_w[1] == 300.0  # the MI210 reads its average, still there
    assert "current_socket_power is 'N/A'" in readings.messages[0]
    fake.flicker = False
    clock.advance(1.0)
    assert backend.read().status.tolist() == [DeviceStatus.OK, DeviceStatus.OK]


# -- MI250X: two dies, one package, counted once -------------------------------------------------


def test_an_mi250x_is_two_devices_whose_package_is_counted_on_the_die_reporting_it() -> None:
    backend, fake, clock = _open(mi250x(steady(480.0)))
    primary, secondary = backend.devices()
    assert (primary.uid, secondary.uid) == fake.uuids
    assert primary.name == secondary.name == "AMD Instinct MI250X/MI250"
    assert primary.power_method is Method.POWER_AVG
    assert primary.has_energy_counter
    assert primary.power_limit_w == 560.0
    assert f"both dies (this one and {secondary.uid})" in primary.note
    assert secondary.power_method is Method.NONE
    assert not secondary.has_energy_counter
    assert secondary.power_limit_w is None  # its cap reads 0: no limit, not a 0 W one
    assert f"reported by its sibling die {primary.uid}" in secondary.note
    assert secondary.scope == primary.scope == "gpu"

    calls = _calls_to(fake, 1)
    clock.advance(5.0)
    start = backend.read()
    clock.advance(20.0)
    end = backend.read()
    assert end.status.tolist() == [DeviceStatus.OK, DeviceStatus.NOT_SUPPORTED]
    assert "sibling die" in end.messages[1]
    # the package's power once: the secondary's 0 W is not a reading
    assert end.power_w[0] == 480.0
    assert np.isnan(end.power_w[1])
    assert np.nansum(end.power_w) == 480.0
    # the energy over a window is the package's exact energy, once
    exact_j = fake.exact_energy_j(0, 5.0, 25.0)
    assert exact_j == 480.0 * 20.0
    metered_j = np.nansum(end.energy_j) - np.nansum(start.energy_j)
    assert metered_j == pytest.approx(exact_j, abs=2 * RESOLUTION_J)
    assert _calls_to(fake, 1) == calls  # the secondary die is not asked each tick


def test_a_secondary_die_answering_na_rather_than_zero_is_recognised_too() -> None:
    primary, secondary = mi250x()
    quiet = FakeAmdGpu(**{**_fields(secondary), "na_fields": NOTHING, "has_counter": False})
    backend, _, _ = _open([primary, quiet])
    assert backend.devices()[1].power_method is Method.NONE
    assert "sibling die" in backend.devices()[1].note


def _fields(gpu: FakeAmdGpu) -> dict[str, Any]:
    return {name: getattr(gpu, name) for name in FakeAmdGpu.__dataclass_fields__}


def test_two_mi250x_pair_each_die_with_its_own_sibling() -> None:
    backend, _, clock = _open([*mi250x(steady(400.0)), *mi250x(steady(300.0))])
    uids = [d.uid for d in backend.devices()]
    notes = [d.note for d in backend.devices()]
    for first, second in ((0, 1), (2, 3)):
        assert uids[second] in notes[first]
        assert uids[first] in notes[second]
    clock.advance(2.0)
    readings = backend.read()
    assert np.nansum(readings.power_w) == 700.0
    assert readings.status.tolist() == [DeviceStatus.OK, DeviceStatus.NOT_SUPPORTED] * 2


def test_a_secondary_die_whose_sibling_is_gone_is_absent_and_says_why() -> None:
    primary, secondary = mi250x()
    gone = FakeAmdGpu(**{**_fields(primary), "lost_at_s": 0.0})
    backend, _, _ = _open([gone, secondary])
    assert backend.read().status.tolist() == [DeviceStatus.LOST, DeviceStatus.NOT_SUPPORTED]
    assert "could not be identified" in backend.devices()[1].note


def test_selecting_only_the_secondary_die_meters_nothing_and_names_the_sibling() -> None:
    everything, fake, _ = _open(mi250x())
    backend = AmdSmiBackend(amdsmi=fake, gpus=[1], clock=ManualClock())
    (device,) = backend.devices()
    assert device.uid == everything.devices()[1].uid
    assert everything.devices()[0].uid in device.note
    assert backend.read().status.tolist() == [DeviceStatus.NOT_SUPPORTED]


def test_a_single_die_part_reporting_zero_is_not_mistaken_for_a_secondary_die() -> None:
    backend, _, clock = _open([mi210(profile=steady(0.0))])
    assert backend.devices()[0].power_method is Method.POWER_AVG
    clock.advance(1.0)
    assert backend.read().power_w.tolist() == [0.0]


# -- lost GPUs, transient errors ----------------------------------------------------------------


def test_a_gpu_that_is_gone_is_lost_for_good_and_the_others_continue() -> None:
    fleet = [mi300x(profile=steady(300.0)), mi300x(profile=steady(400.0), lost_at_s=5.0), mi210()]
    backend, fake, clock = _open(fleet)
    clock.advance(4.0)
    assert backend.read().status.tolist() == [DeviceStatus.OK] * 3
    for _ in range(3):
        clock.advance(2.0)
        readings = backend.read()
        assert readings.status.tolist() == [DeviceStatus.OK, DeviceStatus.LOST, DeviceStatus.OK]
        assert np.isnan(readings.power_w[1])
        assert np.isnan(readings.energy_j[1])
        assert "Device Not found" in readings.messages[1]
        assert readings.power_w[[0, 2]].tolist() == [300.0, 300.0]
    calls = _calls_to(fake, 1)
    clock.advance(1.0)
    backend.read()
    assert _calls_to(fake, 1) == calls  # not called again


def test_an_unknown_error_is_taken_as_lost() -> None:
    gpu = mi300x(faults=(Fault(codes.AMDSMI_STATUS_UNKNOWN_ERROR, 1.0, 2.0),))
    backend, _, clock = _open([gpu])
    clock.advance(1.5)
    assert backend.read().status.tolist() == [DeviceStatus.LOST]
    clock.advance(1.0)
    assert backend.read().status.tolist() == [DeviceStatus.LOST]  # it stays lost


def test_a_gpu_gone_before_opening_is_listed_as_lost() -> None:
    backend, _, _ = _open([mi300x(lost_at_s=0.0), mi300x()])
    first, _ = backend.devices()
    assert first.uid == "AMDSMI-INDEX-0"
    assert "did not answer while opening" in first.note
    assert backend.read().status.tolist() == [DeviceStatus.LOST, DeviceStatus.OK]


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (codes.AMDSMI_STATUS_TIMEOUT, "Timeout"),  # raised as AmdSmiTimeoutException
        (codes.AMDSMI_STATUS_RETRY, "Retry"),  # raised as AmdSmiRetryException
        (codes.AMDSMI_STATUS_BUSY, "Device busy"),
    ],
)
def test_a_transient_error_costs_one_figure_for_one_tick(code: int, text: str) -> None:
    fault = Fault(code, 1.0, 2.0, call="amdsmi_get_energy_count")
    backend, _, clock = _open([mi300x(faults=(fault,)), mi300x()])
    clock.advance(1.5)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.ERROR, DeviceStatus.OK]
    assert readings.power_w[0] == 300.0  # the power read still worked
    assert np.isnan(readings.energy_j[0])
    assert readings.energy_method[0] == Method.NONE
    assert text in readings.messages[0]
    clock.advance(1.0)
    assert backend.read().status.tolist() == [DeviceStatus.OK, DeviceStatus.OK]


def test_a_refused_read_is_denied_not_zero() -> None:
    refused = Fault(codes.AMDSMI_STATUS_NO_PERM, 1.0, call="amdsmi_get_power_info")
    backend, _, clock = _open([mi300x(faults=(refused,))])
    clock.advance(2.0)
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.DENIED]
    assert np.isnan(readings.power_w[0])
    assert readings.energy_j[0] > 0.0  # the counter still answered
    assert "/dev/kfd" in readings.messages[0]


def test_read_flat_and_read_device_give_what_read_gives() -> None:
    fleet = [mi300x(), *mi250x(), mi300x(lost_at_s=0.5)]
    one, _, clock_one = _open(fleet)
    two, _, clock_two = _open(fleet)
    clock_one.advance(1.0)
    clock_two.advance(1.0)
    readings, flat = one.read(), two.read_flat()
    assert flat.power_w == pytest.approx(readings.power_w.tolist(), nan_ok=True)
    assert flat.energy_j == pytest.approx(readings.energy_j.tolist(), nan_ok=True)
    assert flat.status == readings.status.tolist()
    assert flat.messages == list(readings.messages)


# -- opening, closing, error translation --------------------------------------------------------


def test_no_driver_is_device_unavailable_with_the_amdsmi_error_as_cause() -> None:
    fake = FakeAmdSmi([mi300x()], init_error=codes.AMDSMI_STATUS_DRIVER_NOT_LOADED)
    with pytest.raises(DeviceUnavailable, match="Driver not loaded") as caught:
        AmdSmiBackend(amdsmi=fake)
    assert isinstance(caught.value.__cause__, fake.AmdSmiLibraryException)
    assert caught.value.__cause__.err_code == codes.AMDSMI_STATUS_DRIVER_NOT_LOADED


def test_no_permission_at_init_says_the_fix() -> None:
    fake = FakeAmdSmi([mi300x()], init_error=codes.AMDSMI_STATUS_NO_PERM)
    with pytest.raises(PermissionDenied, match="render"):
        AmdSmiBackend(amdsmi=fake)


def test_close_shuts_amdsmi_down_once() -> None:
    backend, fake, _ = _open([mi300x()])
    assert fake.initialized
    backend.close()
    backend.close()
    assert not fake.initialized
    with AmdSmiBackend(amdsmi=fake) as again:
        assert len(again.devices()) == 1
    assert not fake.initialized


def test_gpus_selects_by_position_uuid_or_bdf_in_the_order_named() -> None:
    _, fake, _ = _open([mi300x(), mi300x(), mi210()])
    chosen = AmdSmiBackend(amdsmi=fake, gpus=[2, fake.uuids[0].upper(), fake.bdfs[2], "1"])
    assert [d.index for d in chosen.devices()] == [2, 0, 1]


@pytest.mark.parametrize("entry", [3, "banana", "0000:ff:00.0"])
def test_a_gpus_entry_that_names_nothing_raises_and_shuts_down(entry: int | str) -> None:
    fake = FakeAmdSmi([mi300x(), mi210(), mi210()], clock=ManualClock())
    with pytest.raises(DeviceUnavailable, match="gpus entry"):
        AmdSmiBackend(amdsmi=fake, gpus=[0, entry])
    assert not fake.initialized


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (codes.AMDSMI_STATUS_NOT_FOUND, DeviceLost),
        (codes.AMDSMI_STATUS_UNKNOWN_ERROR, DeviceLost),
        (codes.AMDSMI_STATUS_NOT_SUPPORTED, NotSupported),
        (codes.AMDSMI_STATUS_NOT_YET_IMPLEMENTED, NotSupported),
        (codes.AMDSMI_STATUS_FILE_NOT_FOUND, NotSupported),
        (codes.AMDSMI_STATUS_NO_PERM, PermissionDenied),
        (codes.AMDSMI_STATUS_DRIVER_NOT_LOADED, DeviceUnavailable),
        (codes.AMDSMI_STATUS_NOT_INIT, DeviceUnavailable),
        (codes.AMDSMI_STATUS_INIT_ERROR, DeviceUnavailable),
        (codes.AMDSMI_STATUS_FAIL_LOAD_MODULE, DeviceUnavailable),
        (codes.AMDSMI_STATUS_TIMEOUT, ReadError),
        (codes.AMDSMI_STATUS_RETRY, ReadError),
        (codes.AMDSMI_STATUS_BUSY, ReadError),
        (codes.AMDSMI_STATUS_IO, ReadError),
        (codes.AMDSMI_STATUS_UNEXPECTED_SIZE, ReadError),
        (12345, ReadError),
    ],
)
def test_translation_table(code: int, error: type[MeterError]) -> None:
    translated = translate_amdsmi_error(code, call="amdsmi_get_power_info", device="GPU-x")
    assert type(translated) is error
    assert "amdsmi_get_power_info for GPU-x failed" in str(translated)


def test_every_code_the_fake_knows_is_in_the_table() -> None:
    known = {getattr(codes, n) for n in dir(codes) if n.startswith("AMDSMI_STATUS_")}
    assert known - set(codes._ERRORS) == {codes.AMDSMI_STATUS_SUCCESS}


def _libamd_smi_present() -> bool:
    rocm = Path("/opt/rocm/lib/libamd_smi.so")
    return ctypes.util.find_library("amd_smi") is not None or rocm.exists()


@pytest.mark.skipif(importlib.util.find_spec("amdsmi") is not None, reason="amdsmi is installed")
def test_without_amdsmi_the_error_names_the_extra() -> None:
    with pytest.raises(DeviceUnavailable, match=r"pip install 'thermoledger\[amd\]'"):
        AmdSmiBackend()


@pytest.mark.skipif(
    importlib.util.find_spec("amdsmi") is None or _libamd_smi_present(),
    reason="needs amdsmi installed without ROCm's libamd_smi.so",
)
def test_amdsmi_without_its_library_is_device_unavailable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(DeviceUnavailable, match=r"libamd_smi\.so"):
        AmdSmiBackend()
    assert capsys.readouterr().out == ""  # what the binding prints is kept off stdout


# -- through the sampler ------------------------------------------------------------------------

RUN = "run-amd"
HOST = "node"


class ListSink:
    """Keeps sealed chunks and devices in memory (the `ChunkSink` protocol, without disk)."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[ChunkPayload]] = {}
        self.devices: list[DevicePayload] = []

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        pass

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        self.devices = list(devices)

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        batch = list(chunks)
        for chunk in batch:
            self.chunks.setdefault(chunk["device_key"], []).append(chunk)
        return len(batch)

    def next_seqs(self, run_id: str) -> dict[str, int]:
        return {}

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        pass


def test_the_sampler_meters_each_package_once_at_the_fakes_exact_energy() -> None:
    clock = ManualClock()
    wave = Bursty(150.0, 700.0, period_s=2.0, duty=0.4, phase_s=0.3)
    fleet = [mi300x(profile=wave, counter_start=5 * 10**11), *mi250x(Ramp(200.0, 520.0, 30.0))]
    fake = FakeAmdSmi(fleet, clock=clock)
    backend = AmdSmiBackend(amdsmi=fake, clock=clock)
    sink = ListSink()
    sampler = Sampler(
        backend,
        run_id=RUN,
        spool=sink,
        interval_s=0.1,
        chunk_s=1.0,
        clock=clock,
        sleep=clock.advance,
        host=HOST,
    )
    sampler.run_ticks(300)
    summary = sampler.stop()

    keys = [d["key"] for d in sampler.devices]
    assert [d["kind"] for d in sampler.devices] == ["gpu"] * 3
    assert [d["key"] for d in sink.devices] == keys[:2]  # the secondary die stays off the wire
    assert list(sink.chunks) == keys[:2]
    mi300, package, secondary = summary.devices
    assert (secondary.method, secondary.energy_j, secondary.status) == (
        "none",
        0.0,
        "not_supported",
    )

    unix_to_fake_s = clock.wall_s() - clock.monotonic_s() + fake.loaded_mono_s
    for position, device in ((0, mi300), (1, package)):
        chunks = sink.chunks[keys[position]]
        assert {c["method"] for c in chunks} == {"counter"}
        # Unix times near 1.7e9 s are floats 2.4e-7 s apart (0.2 mJ at 700 W, more than a
        # count); the reads fall on the 0.1 s tick grid, so they are put back on it.
        t0_s = round(chunks[0]["t0_s"] - unix_to_fake_s, 3)
        t1_s = round(chunks[-1]["t1_s"] - unix_to_fake_s, 3)
        exact_j = fake.exact_energy_j(position, t0_s, t1_s)
        # the counter counts whole 15.3 µJ steps: each end is off by less than one
        assert sum(c["energy_j"] for c in chunks) == pytest.approx(exact_j, abs=2 * RESOLUTION_J)
        assert device.energy_j == pytest.approx(exact_j, abs=2 * RESOLUTION_J)
        assert device.missed == {}
