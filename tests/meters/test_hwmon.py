"""The hwmon backend against a fake hwmon tree: socket counters only, µJ, permissions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thermoledger.meters.backends import DeviceStatus, Method
from thermoledger.meters.backends.base import FlatBuffer
from thermoledger.meters.backends.hwmon import HwmonBackend
from thermoledger.meters.errors import DeviceUnavailable
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_hwmon import FakeHwmon


@pytest.fixture
def hwmon(tmp_path: Path) -> FakeHwmon:
    tree = FakeHwmon(tmp_path / "hwmon")
    tree.add_chip("coretemp", {"temp1_input": "45000", "temp1_label": "Package id 0"})
    tree.add_amd_energy(sockets=2, cores=4, socket_energy_uj=3_000_000, core_energy_uj=1_000)
    tree.add_chip("nvme", {"temp1_input": "38000"})
    return tree


def _open(tree: FakeHwmon, clock: ManualClock | None = None) -> HwmonBackend:
    return HwmonBackend(tree.root, read_text=tree.read_text, clock=clock or ManualClock())


def test_discovers_socket_counters_only(hwmon: FakeHwmon) -> None:
    devices = _open(hwmon).devices()
    assert [(d.uid, d.index, d.scope, d.kind) for d in devices] == [
        ("amd_energy:Esocket0", 0, "package", "cpu"),
        ("amd_energy:Esocket1", 1, "package", "cpu"),
    ]  # no core (part of its socket), nothing from coretemp or nvme
    assert all(d.backend == "hwmon" and d.has_energy_counter for d in devices)
    assert all(d.power_method is Method.NONE and d.counter_wrap_j is None for d in devices)
    assert devices[0].name == "CPU socket 0 (amd_energy)"


def test_reads_microjoules_as_joules_and_read_device_matches_read(hwmon: FakeHwmon) -> None:
    clock = ManualClock()
    backend = _open(hwmon, clock)
    hwmon.add_energy_j(1, 12.5)
    readings = backend.read()
    assert readings.energy_j.tolist() == pytest.approx([3.0, 15.5])
    assert np.isnan(readings.power_w).all()
    assert (readings.status == DeviceStatus.OK).all()
    buffer = FlatBuffer(2, t_wall_s=clock.wall_s(), t_mono_s=clock.monotonic_s())
    backend.read_device(buffer, 1)
    backend.read_device(buffer, 0)
    assert buffer.freeze().energy_j.tolist() == readings.energy_j.tolist()


def test_a_root_only_counter_is_denied_with_the_fix(hwmon: FakeHwmon) -> None:
    hwmon.deny(hwmon.socket_input(0))
    backend = _open(hwmon)
    assert "CVE-2020-12912" in backend.devices()[0].note
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.DENIED, DeviceStatus.OK]
    assert np.isnan(readings.energy_j[0])
    assert "chmod a+r" in readings.messages[0]


def test_zenergy_reads_like_amd_energy(tmp_path: Path) -> None:
    tree = FakeHwmon(tmp_path / "hwmon")
    tree.add_amd_energy(sockets=1, driver="zenergy")
    assert [d.uid for d in _open(tree).devices()] == ["zenergy:Esocket0"]


def test_no_cpu_energy_driver_is_unavailable(tmp_path: Path) -> None:
    tree = FakeHwmon(tmp_path / "hwmon")
    tree.add_chip("coretemp", {"temp1_input": "45000"})
    with pytest.raises(DeviceUnavailable, match="no CPU socket energy counter"):
        _open(tree)
    with pytest.raises(DeviceUnavailable):
        HwmonBackend(tmp_path / "missing")
