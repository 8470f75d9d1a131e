"""Simulated GPUs: closed-form energy against numerical integration, exact moving averages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoledger.meters.backends import (
    Bursty,
    DeviceStatus,
    Method,
    Profile,
    Ramp,
    SimulatedBackend,
    SimulatedDevice,
    default_fleet,
    idle,
    steady,
)
from thermoledger.meters.backends.base import DeviceReader, FlatBuffer
from thermoledger.meters.testing import ManualClock


def _numeric_energy_j(profile: Profile, t0_s: float, t1_s: float, n: int = 200_001) -> float:
    t = np.linspace(t0_s, t1_s, n)
    return float(np.trapezoid(profile.power_w(t), t))


powers = st.floats(0.0, 1000.0)
times = st.floats(-50.0, 50.0)
profiles = st.one_of(
    st.builds(steady, powers),
    st.builds(idle, st.floats(10.0, 120.0)),
    st.builds(
        Bursty,
        powers,
        powers,
        period_s=st.floats(0.5, 5.0),
        duty=st.floats(0.0, 1.0),
        phase_s=st.floats(-3.0, 3.0),
    ),
    st.builds(
        Ramp, powers, powers, duration_s=st.floats(0.5, 30.0), t_start_s=st.floats(-10.0, 10.0)
    ),
)


@settings(max_examples=40, deadline=None)
@given(profile=profiles, t0_s=times, span_s=st.floats(0.0, 20.0))
def test_closed_form_energy_matches_numerical_integration(
    profile: Profile, t0_s: float, span_s: float
) -> None:
    exact_j = float(profile.energy_j(t0_s, t0_s + span_s))
    numeric_j = _numeric_energy_j(profile, t0_s, t0_s + span_s)
    # a square wave's jumps cost the trapezoid rule at most one grid step of the jump each
    step_s = span_s / 200_000
    jumps = span_s / profile.period_s + 2 if isinstance(profile, Bursty) else 0
    # F(t1) - F(t0) cancels: its rounding scales with |F|, not with the difference
    f_scale_j = float(abs(profile.primitive_j(t0_s)) + abs(profile.primitive_j(t0_s + span_s)))
    rounding_j = 16 * float(np.finfo(np.float64).eps) * f_scale_j
    # a ramp's two kinks cost it at most |slope| × step² each (the trapezoid's own error there)
    kinks_j = (
        2 * abs(profile.end_w - profile.start_w) / profile.duration_s * step_s**2
        if isinstance(profile, Ramp)
        else 0.0
    )
    tolerance_j = 1e-9 * (1 + abs(exact_j)) + rounding_j + 1000.0 * step_s * jumps + kinks_j
    assert exact_j == pytest.approx(numeric_j, abs=tolerance_j)


def test_known_energies() -> None:
    assert float(steady(300.0).energy_j(0.0, 10.0)) == 3000.0  # 300 W for 10 s
    wave = Bursty(100.0, 500.0, period_s=2.0, duty=0.25)
    # 0.5 s at 500 W and 1.5 s at 100 W per period, 5 periods
    assert float(wave.energy_j(0.0, 10.0)) == pytest.approx(5 * (0.5 * 500 + 1.5 * 100))
    ramp = Ramp(100.0, 300.0, duration_s=10.0, t_start_s=5.0)
    # 5 s at 100 W, the ramp's mean 200 W for 10 s, 5 s at 300 W
    assert float(ramp.energy_j(0.0, 20.0)) == pytest.approx(500 + 2000 + 1500)
    assert float(ramp.power_w(7.5)) == pytest.approx(150.0)


@settings(max_examples=30, deadline=None)
@given(profile=profiles, t_s=times)
def test_moving_average_is_the_mean_power_over_the_last_second(
    profile: Profile, t_s: float
) -> None:
    numeric_w = _numeric_energy_j(profile, t_s - 1.0, t_s, n=100_001)
    jumps = 3 if isinstance(profile, Bursty) else 0
    assert float(profile.average_power_w(t_s)) == pytest.approx(
        numeric_w, abs=1e-9 * (1 + numeric_w) + 1000.0 * jumps / 100_000
    )


def test_average_reading_equals_the_analytic_moving_average() -> None:
    clock = ManualClock()
    wave = Bursty(100.0, 700.0, period_s=1.5, duty=0.4, phase_s=0.2)
    backend = SimulatedBackend(
        [SimulatedDevice(wave, reading="average"), SimulatedDevice(wave, reading="instant")],
        clock=clock,
    )
    assert [d.power_method for d in backend.devices()] == [Method.POWER_AVG, Method.POWER_INSTANT]
    assert backend.devices()[0].uncertainty.power_window_s == 1.0
    for _ in range(40):
        clock.advance(0.137)
        t_s = backend.elapsed_s()
        readings = backend.read()
        expected_w = (wave.primitive_j(t_s) - wave.primitive_j(t_s - 1.0)) / 1.0
        assert readings.power_w[0] == pytest.approx(float(expected_w), rel=1e-12)
        assert readings.power_w[1] == float(wave.power_w(t_s))
        assert readings.power_method.tolist() == [Method.POWER_AVG, Method.POWER_INSTANT]


def test_counter_differences_are_the_exact_energy() -> None:
    clock = ManualClock()
    backend = SimulatedBackend(clock=clock)
    first = backend.read()
    clock.advance(12.5)
    second = backend.read()
    for i, spec in enumerate(default_fleet()):
        assert first.energy_j[i] == spec.counter_offset_j
        assert second.energy_j[i] - first.energy_j[i] == pytest.approx(
            float(spec.profile.energy_j(0.0, 12.5)), rel=1e-12
        )
    assert (second.energy_method == Method.COUNTER).all()
    assert (second.status == DeviceStatus.OK).all()
    assert (second.t_mono_s == clock.monotonic_s()).all()
    assert (second.t_wall_s == clock.wall_s()).all()


def test_default_fleet_is_eight_labelled_distinct_devices() -> None:
    devices = SimulatedBackend(clock=ManualClock()).devices()
    assert len(devices) == 8
    assert all(d.simulated and d.backend == "simulated" for d in devices)
    assert all(d.name.startswith("Simulated") for d in devices)
    assert len({d.uid for d in devices}) == 8
    assert len({d.name for d in devices}) >= 4  # steady, bursty, ramp and idle profiles


def test_a_device_without_counter_reports_nan_not_zero() -> None:
    backend = SimulatedBackend(
        [SimulatedDevice(steady(250.0), has_counter=False)], clock=ManualClock()
    )
    readings = backend.read()
    assert not backend.devices()[0].has_energy_counter
    assert np.isnan(readings.energy_j[0])
    assert readings.energy_method[0] == Method.NONE
    assert readings.power_w[0] == 250.0


def test_same_clock_same_readings() -> None:
    a_clock, b_clock = ManualClock(), ManualClock()
    a, b = SimulatedBackend(clock=a_clock), SimulatedBackend(clock=b_clock)
    a_clock.advance(3.3)
    b_clock.advance(3.3)
    ra, rb = a.read(), b.read()
    np.testing.assert_array_equal(ra.power_w, rb.power_w)
    np.testing.assert_array_equal(ra.energy_j, rb.energy_j)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Bursty(1.0, 2.0, period_s=0.0),
        lambda: Bursty(1.0, 2.0, period_s=1.0, duty=1.5),
        lambda: Ramp(1.0, 2.0, duration_s=0.0),
    ],
)
def test_profiles_refuse_nonsense(build: object) -> None:
    with pytest.raises(ValueError, match="needs"):
        build()  # type: ignore[operator]


def test_bursty_primitive_never_steps_back_at_period_boundaries() -> None:
    """A counter built from F must be monotone: floor and mod must agree at boundaries."""
    from thermoledger.meters.backends.simulated import Bursty

    for phase_s in (0.0, 0.37, 1.11, 2.59):
        profile = Bursty(310.0, 640.0, period_s=1.7, duty=0.72, phase_s=phase_s)
        t = np.arange(0.0, 900.0, 0.1)
        assert np.all(np.diff(profile.primitive_j(t)) >= 0.0)


@settings(max_examples=60, deadline=None)
@given(profile=profiles, t_s=times, window_s=st.floats(0.01, 5.0))
def test_scalar_path_equals_the_vectorised_one_exactly(
    profile: Profile, t_s: float, window_s: float
) -> None:
    assert profile.power_at_w(t_s) == float(profile.power_w(t_s))
    assert profile.primitive_at_j(t_s) == float(profile.primitive_j(t_s))
    assert profile.energy_between_j(t_s - window_s, t_s) == float(
        profile.energy_j(t_s - window_s, t_s)
    )
    assert profile.average_power_at_w(t_s, window_s) == float(
        profile.average_power_w(t_s, window_s)
    )
    assert type(profile.power_at_w(t_s)) is float
    assert type(profile.primitive_at_j(t_s)) is float


def test_scalar_path_at_bursty_period_boundaries() -> None:
    profile = Bursty(310.0, 640.0, period_s=1.7, duty=0.72, phase_s=0.37)
    for t_s in np.arange(0.0, 50.0, 0.1).tolist() + [1.7 * k - 0.37 for k in range(30)]:
        assert profile.primitive_at_j(t_s) == float(profile.primitive_j(t_s))
        assert profile.power_at_w(t_s) == float(profile.power_w(t_s))


def test_read_device_reads_one_device_at_the_clock_s_time() -> None:
    clock = ManualClock()
    backend = SimulatedBackend(clock=clock)
    assert isinstance(backend, DeviceReader)
    clock.advance(3.7)
    whole = backend.read()
    buffer = FlatBuffer(8, t_wall_s=clock.wall_s(), t_mono_s=clock.monotonic_s())
    for i in reversed(range(8)):
        backend.read_device(buffer, i)
    one_by_one = buffer.freeze()
    for name in ("power_w", "energy_j", "t_mono_s", "t_wall_s", "power_method", "status"):
        assert getattr(one_by_one, name).tolist() == getattr(whole, name).tolist(), name
