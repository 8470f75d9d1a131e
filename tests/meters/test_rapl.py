"""The RAPL backend against a fake powercap tree: discovery, raw counters, wraps, permissions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from thermoledger.meters.backends import DeviceStatus, Method, RaplBackend
from thermoledger.meters.backends.base import DeviceReader, FlatBuffer
from thermoledger.meters.backends.simulated import steady
from thermoledger.meters.errors import DeviceUnavailable, PermissionDenied
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_powercap import DEFAULT_MAX_ENERGY_RANGE_UJ, FakePowercap


@pytest.fixture
def powercap(tmp_path: Path) -> FakePowercap:
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_package(0, energy_uj=1_000_000, dram_energy_uj=2_000_000)
    tree.add_package(1, energy_uj=3_000_000, dram=False, power_limit_uw=None)
    tree.add_psys(2, energy_uj=9_000_000)
    return tree


def _open(tree: FakePowercap, **kwargs: object) -> RaplBackend:
    return RaplBackend(
        tree.root,
        read_text=tree.read_text,
        clock=kwargs.pop("clock", ManualClock()),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def test_discovers_packages_and_dram_but_not_core_or_psys(powercap: FakePowercap) -> None:
    devices = _open(powercap).devices()
    assert [(d.uid, d.name, d.scope, d.index) for d in devices] == [
        ("intel-rapl:0", "package-0", "package", 0),
        ("intel-rapl:0:1", "dram", "dram", 0),
        ("intel-rapl:1", "package-1", "package", 1),
    ]
    assert all(d.backend == "rapl" and d.has_energy_counter for d in devices)
    assert all(d.power_method is Method.NONE for d in devices)
    assert devices[0].power_limit_w == pytest.approx(125.0)
    assert devices[2].power_limit_w is None
    assert devices[0].counter_wrap_j == pytest.approx(DEFAULT_MAX_ENERGY_RANGE_UJ * 1e-6)
    assert devices[1].zone == "intel-rapl:0:1"


def test_dram_can_be_left_out(powercap: FakePowercap) -> None:
    assert [d.scope for d in _open(powercap, include_dram=False).devices()] == [
        "package",
        "package",
    ]


def test_reads_raw_counters_in_joules_and_no_power(powercap: FakePowercap) -> None:
    clock = ManualClock()
    backend = _open(powercap, clock=clock)
    readings = backend.read()
    assert readings.energy_j.tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert (readings.energy_method == Method.COUNTER).all()
    assert np.isnan(readings.power_w).all()
    assert (readings.power_method == Method.NONE).all()
    assert (readings.status == DeviceStatus.OK).all()
    assert (readings.t_mono_s == clock.monotonic_s()).all()


def test_a_wrap_is_passed_on_raw_with_the_modulus_to_undo_it(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_package(0, energy_uj=999_000_000, max_energy_range_uj=1_000_000_000, dram=False)
    backend = _open(tree)
    (wrap_j,) = [d.counter_wrap_j for d in backend.devices()]
    assert wrap_j == 1000.0
    before = backend.read().energy_j[0]
    tree.add_energy_j("intel-rapl:0", 25.0)  # crosses the 1000 J range
    after = backend.read().energy_j[0]
    assert after < before  # raw: the counter wrapped
    delta_j = after - before + wrap_j
    assert delta_j == pytest.approx(25.0, abs=1e-5)  # one µJ fake energy unit per wrap


def test_permission_denied_is_a_labelled_absence_naming_file_and_fix(
    powercap: FakePowercap,
) -> None:
    denied = powercap.deny("intel-rapl:0")
    backend = _open(powercap)
    info = backend.devices()[0]
    assert str(denied) in info.note
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.DENIED, DeviceStatus.OK, DeviceStatus.OK]
    assert np.isnan(readings.energy_j[0])  # not zero, not a TDP estimate
    assert np.isnan(readings.power_w[0])
    message = readings.messages[0]
    assert str(denied) in message
    assert "CVE-2020-8694" in message
    assert "chmod a+r" in message
    powercap.allow("intel-rapl:0")
    assert backend.read().status.tolist() == [DeviceStatus.OK] * 3  # fixed while running


def test_permission_denied_raises_when_strict(powercap: FakePowercap) -> None:
    denied = powercap.deny("intel-rapl:0:1")
    with pytest.raises(PermissionDenied) as caught:
        _open(powercap, strict=True)
    assert caught.value.path == denied
    assert str(denied) in str(caught.value)
    assert "intel-rapl:*/intel-rapl:*:*/energy_uj" in caught.value.fix
    assert isinstance(caught.value.__cause__, PermissionError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_modes_alone_deny_an_unprivileged_reader(powercap: FakePowercap) -> None:
    powercap.deny("intel-rapl:1")
    powercap.denied.clear()  # rely on the 0400 mode, read through the default reader
    readings = RaplBackend(powercap.root, clock=ManualClock()).read()
    assert readings.status[2] == DeviceStatus.DENIED


def test_an_unreadable_range_leaves_the_wrap_unknown(powercap: FakePowercap) -> None:
    powercap.deny("intel-rapl:1", "max_energy_range_uj")
    info = _open(powercap).devices()[2]
    assert info.counter_wrap_j is None
    assert "max_energy_range_uj" in info.note


def test_garbage_in_a_counter_is_an_error_for_that_tick(powercap: FakePowercap) -> None:
    backend = _open(powercap)
    (powercap.zone_path("intel-rapl:1") / "energy_uj").write_text("not a number\n")
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.OK, DeviceStatus.OK, DeviceStatus.ERROR]
    assert "intel-rapl:1/energy_uj" in readings.messages[2]


def test_no_rapl_is_device_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="no RAPL package zone"):
        RaplBackend(tmp_path / "missing")
    empty = FakePowercap(tmp_path / "empty")
    empty.add_psys(0)
    with pytest.raises(DeviceUnavailable):
        RaplBackend(empty.root, read_text=empty.read_text)


def test_read_device_reads_one_zone_as_read_does(powercap: FakePowercap) -> None:
    clock = ManualClock()
    powercap.deny("intel-rapl:0:1")
    backend = _open(powercap, clock=clock)
    assert isinstance(backend, DeviceReader)
    whole = backend.read()
    buffer = FlatBuffer(3, t_wall_s=clock.wall_s(), t_mono_s=clock.monotonic_s())
    for i in (2, 0, 1):
        backend.read_device(buffer, i)
    one_by_one = buffer.freeze()
    assert repr(one_by_one.energy_j.tolist()) == repr(whole.energy_j.tolist())
    assert one_by_one.status.tolist() == whole.status.tolist()
    assert one_by_one.messages == whole.messages
    assert one_by_one.t_mono_s.tolist() == whole.t_mono_s.tolist()


def test_the_counter_files_are_read_by_pread_on_descriptors_kept_open(
    powercap: FakePowercap,
) -> None:
    """Without ``read_text``: one descriptor per zone, opened at its first read, re-read at
    offset 0 (a sysfs file's value is regenerated per read; a rewritten file's likewise)."""
    fds_before = set(os.listdir("/proc/self/fd"))
    backend = RaplBackend(powercap.root, clock=ManualClock())
    assert set(os.listdir("/proc/self/fd")) == fds_before  # nothing opened before a read
    first = backend.read()
    assert list(first.energy_j) == [1.0, 2.0, 3.0]
    opened = set(os.listdir("/proc/self/fd")) - fds_before
    assert len(opened) == 3
    powercap.set_energy_uj("intel-rapl:0", 1_500_000)
    powercap.add_energy_j("intel-rapl:1", 0.25)
    second = backend.read()
    assert list(second.energy_j) == [1.5, 2.0, 3.25]
    assert set(os.listdir("/proc/self/fd")) - fds_before == opened  # the same descriptors
    backend.close()
    assert set(os.listdir("/proc/self/fd")) == fds_before


def test_a_counter_file_that_cannot_be_opened_is_an_error_until_it_can(
    powercap: FakePowercap,
) -> None:
    backend = RaplBackend(powercap.root, clock=ManualClock())
    counter = powercap.zone_path("intel-rapl:1") / "energy_uj"
    counter.unlink()
    failed = backend.read()
    assert failed.status_of(2) is DeviceStatus.ERROR
    assert np.isnan(failed.energy_j[2])
    assert str(counter) in failed.messages[2]
    assert failed.status_of(0) is DeviceStatus.OK
    counter.write_text("7000000\n")
    assert backend.read().energy_j[2] == 7.0  # opened again at the next read
    backend.close()


# -- zones on real nodes: hexadecimal numbers, mirrored zones, TPMI --------------------------------


def test_zone_numbers_are_hexadecimal_and_ordered_by_value(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    for package in range(12):  # intel-rapl:0 ... intel-rapl:9, intel-rapl:a, intel-rapl:b
        tree.add_package(package, energy_uj=1_000_000 * (package + 1), core=False)
    backend = _open(tree)
    devices = backend.devices()
    packages = [i for i, d in enumerate(devices) if d.scope == "package"]
    assert [devices[i].uid for i in packages][9:] == [
        "intel-rapl:9",
        "intel-rapl:a",
        "intel-rapl:b",
    ]
    assert [devices[i].index for i in packages] == list(range(12))
    dram = [d for d in devices if d.scope == "dram"]
    assert dram[10].uid == "intel-rapl:a:0"
    assert dram[10].index == 10
    energy_j = backend.read().energy_j[packages].tolist()
    assert energy_j == pytest.approx([float(p + 1) for p in range(12)])


def test_the_package_number_comes_from_the_name_not_the_zone_number(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_package(1, zone_number=0, dram=False)
    tree.add_package(0, zone_number=1, dram=False)
    assert [(d.uid, d.index) for d in _open(tree).devices()] == [
        ("intel-rapl:0", 1),
        ("intel-rapl:1", 0),
    ]


def test_mirrored_zones_of_one_package_are_counted_once(tmp_path: Path) -> None:
    # an AMD kernel before the 2024 fix: one zone per chiplet, each the same package counter
    tree = FakePowercap(tmp_path / "powercap")
    for ccd in range(8):
        tree.add_package(0, zone_number=ccd, energy_uj=5_000_000, dram=False, core=False)
    for ccd in range(8, 16):
        tree.add_package(1, zone_number=ccd, energy_uj=7_000_000, dram=False, core=False)
    backend = _open(tree)
    devices = backend.devices()
    assert [(d.uid, d.index) for d in devices] == [("intel-rapl:0", 0), ("intel-rapl:8", 1)]
    assert "intel-rapl:7 mirrors this zone's counter" in devices[0].note
    assert "intel-rapl:f mirrors this zone's counter" in devices[1].note
    assert "counted once" in devices[0].note
    assert backend.read().energy_j.tolist() == pytest.approx([5.0, 7.0])  # not 8 x each


def test_mirrored_zones_are_collapsed_while_the_counter_moves(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    clock = ManualClock()
    for ccd in range(4):
        zone = tree.add_package(0, zone_number=ccd, dram=False, core=False)
        tree.drive(zone, steady(200.0), clock=clock)
    clock.advance(3.0)
    backend = _open(tree, clock=clock)
    assert [d.uid for d in backend.devices()] == ["intel-rapl:0"]
    assert backend.read().energy_j.tolist() == pytest.approx([600.0])


def test_zones_of_one_name_with_their_own_counters_are_each_counted(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_package(0, zone_number=0, energy_uj=1_000_000, dram=False)
    tree.add_package(0, zone_number=1, energy_uj=2_000_000, dram=False)
    devices = _open(tree).devices()
    assert [(d.uid, d.index) for d in devices] == [("intel-rapl:0", 0), ("intel-rapl:1", 0)]
    assert "mirrors" not in devices[0].note


def test_unreadable_zones_of_one_name_are_counted_once_and_said(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    for ccd in range(3):
        tree.add_package(0, zone_number=ccd, dram=False)
        tree.deny(f"intel-rapl:{ccd}")
    devices = _open(tree).devices()
    assert [d.uid for d in devices] == ["intel-rapl:0"]
    assert "intel-rapl:2 has this zone's name" in devices[0].note


def test_tpmi_zones_are_read(tmp_path: Path) -> None:
    # Xeon 6: the packages under intel-rapl-tpmi, only psys under intel-rapl
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_psys(0, energy_uj=9_000_000)
    tree.add_package(0, control="intel-rapl-tpmi", energy_uj=1_000_000, dram_energy_uj=3_000_000)
    tree.add_package(1, control="intel-rapl-tpmi", energy_uj=2_000_000, dram=False)
    backend = _open(tree)
    assert [(d.uid, d.index, d.scope) for d in backend.devices()] == [
        ("intel-rapl-tpmi:0", 0, "package"),
        ("intel-rapl-tpmi:0:1", 0, "dram"),
        ("intel-rapl-tpmi:1", 1, "package"),
    ]
    assert backend.read().energy_j.tolist() == pytest.approx([1.0, 3.0, 2.0])


def test_a_package_under_both_interfaces_is_counted_once(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_package(0, energy_uj=1_000_000, dram=False)
    tree.add_package(0, control="intel-rapl-tpmi", energy_uj=1_000_123, dram=False)
    devices = _open(tree).devices()
    assert [d.uid for d in devices] == ["intel-rapl:0"]
    assert "the same package is also intel-rapl-tpmi:0" in devices[0].note


def test_a_denied_tpmi_zone_names_the_tpmi_files_in_its_fix(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_package(0, control="intel-rapl-tpmi", dram=False)
    tree.deny("intel-rapl-tpmi:0")
    readings = _open(tree).read()
    assert readings.status.tolist() == [DeviceStatus.DENIED]
    assert "intel-rapl-tpmi:*/energy_uj" in readings.messages[0]
