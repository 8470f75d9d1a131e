"""The interface's invariants: no silent zero, read-only ticks, the error tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thermoledger.meters.backends import (
    DeviceStatus,
    Method,
    PowerBackend,
    RaplBackend,
    Readings,
    ReplayBackend,
    SimulatedBackend,
    write_trace,
)
from thermoledger.meters.backends.base import ReadingsBuffer
from thermoledger.meters.errors import (
    DeviceLost,
    DeviceUnavailable,
    MeterError,
    NotSupported,
    PermissionDenied,
    ReadError,
    TraceFormatError,
)
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_powercap import FakePowercap


def _readings(**overrides: object) -> Readings:
    fields: dict[str, object] = {
        "t_wall_s": np.array([1.0, 1.0]),
        "t_mono_s": np.array([2.0, 2.0]),
        "power_w": np.array([300.0, np.nan]),
        "energy_j": np.array([10.0, np.nan]),
        "status": np.array([DeviceStatus.OK, DeviceStatus.ERROR], dtype=np.int8),
        "power_method": np.array([Method.POWER_AVG, Method.NONE], dtype=np.int8),
        "energy_method": np.array([Method.COUNTER, Method.NONE], dtype=np.int8),
        "messages": ("", "timeout"),
    }
    fields.update(overrides)
    return Readings(**fields)  # type: ignore[arg-type]


def test_a_well_formed_tick_is_accepted_and_frozen() -> None:
    readings = _readings()
    assert len(readings) == 2
    assert readings.status_of(1) is DeviceStatus.ERROR
    assert readings.power_method_of(0) is Method.POWER_AVG
    assert readings.energy_method_of(1) is Method.NONE
    with pytest.raises(ValueError, match="read-only"):
        readings.power_w[0] = 0.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"power_w": np.array([300.0, 0.0])}, "without a method"),  # a zero nobody vouches for
        ({"power_method": np.array([Method.POWER_AVG, Method.POWER_AVG], dtype=np.int8)}, "method"),
        ({"energy_j": np.array([-1.0, np.nan])}, "non-negative"),
        ({"power_w": np.array([np.inf, np.nan])}, "finite"),
        ({"messages": ("",)}, "shape"),
        (
            {"status": np.array([DeviceStatus.LOST, DeviceStatus.ERROR], dtype=np.int8)},
            "lost or unsupported",
        ),
    ],
)
def test_malformed_ticks_are_refused(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _readings(**overrides)


def test_a_buffer_starts_absent_never_zero() -> None:
    readings = ReadingsBuffer(3, t_wall_s=5.0, t_mono_s=1.0).freeze()
    assert np.isnan(readings.power_w).all()
    assert np.isnan(readings.energy_j).all()
    assert (readings.power_method == Method.NONE).all()
    assert (readings.energy_method == Method.NONE).all()


def test_buffer_stamps_wall_time_from_the_ticks_clock_pair() -> None:
    buffer = ReadingsBuffer(2, t_wall_s=1_700_000_000.0, t_mono_s=50.0)
    buffer.stamp(1, 50.25)
    readings = buffer.freeze()
    assert readings.t_mono_s.tolist() == [50.0, 50.25]
    assert readings.t_wall_s.tolist() == [1_700_000_000.0, 1_700_000_000.25]


def test_the_gravest_status_wins_and_messages_accumulate() -> None:
    buffer = ReadingsBuffer(2, t_wall_s=0.0, t_mono_s=0.0)
    buffer.set_power(0, 100.0, Method.POWER_INSTANT)
    buffer.fail(0, DeviceStatus.ERROR, "counter timed out")
    buffer.fail(0, DeviceStatus.LOST, "GPU is lost")
    buffer.fail(1, DeviceStatus.LOST, "gone")
    buffer.fail(1, DeviceStatus.ERROR, "later")
    readings = buffer.freeze()
    assert readings.status.tolist() == [DeviceStatus.LOST, DeviceStatus.LOST]
    assert np.isnan(readings.power_w[0])  # a lost device carries nothing
    assert readings.messages[0] == "counter timed out; GPU is lost"


def test_every_backend_satisfies_the_protocol(tmp_path: Path) -> None:
    clock = ManualClock()
    powercap = FakePowercap(tmp_path / "powercap")
    powercap.add_package(0)
    trace = tmp_path / "trace.csv"
    write_trace(trace, t_s=[0.0], device=["a"], power_w=[1.0], energy_j=[2.0])
    backends: list[object] = [
        SimulatedBackend(clock=clock),
        RaplBackend(powercap.root, read_text=powercap.read_text, clock=clock),
        ReplayBackend(trace, clock=clock),
    ]
    for backend in backends:
        assert isinstance(backend, PowerBackend)
        readings = backend.read()
        assert len(readings) == len(backend.devices())


@pytest.mark.parametrize(
    ("error", "stdlib"),
    [
        (DeviceUnavailable("x"), RuntimeError),
        (DeviceLost("x"), RuntimeError),
        (NotSupported("x"), RuntimeError),
        (PermissionDenied("x"), PermissionError),
        (ReadError("x"), RuntimeError),
        (TraceFormatError("x"), ValueError),
    ],
)
def test_errors_are_both_ours_and_stdlib(error: MeterError, stdlib: type[Exception]) -> None:
    assert isinstance(error, MeterError)
    assert isinstance(error, stdlib)


def test_permission_denied_names_the_file_and_the_fix() -> None:
    error = PermissionDenied("cannot read /x/energy_uj", path=Path("/x/energy_uj"), fix="chmod")
    assert str(error) == "cannot read /x/energy_uj. Fix: chmod"
    assert error.path == Path("/x/energy_uj")
