"""Window edges: a run, a phase and a summary are measured to the instant, not to the last tick.

Real time and the real `Meter` over the fake NVML, whose GPUs draw analytic profiles: the truth
over any window is the profile's exact energy. Each window's edges are synchronous readings
(`Sampler.start`, `Sampler.stop`, `Sampler.mark`), so with an energy counter a window's energy
is the counter's difference at its edges, whatever the 0.1 s tick; the only error left is the
counter's whole-millijoule resolution.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest

from thermoledger.meters.api import Meter
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.backends.simulated import Bursty, steady
from thermoledger.meters.edges import MAX_WAIT_S
from thermoledger.meters.spool import Spool, SpooledChunk
from thermoledger.meters.testing.fake_pynvml import FakeNvml, h100
from thermoledger.meters.wire import decode_column

pytestmark = pytest.mark.slow  # real time: a second or so of metering per test

PROFILES = (steady(300.0), Bursty(120.0, 650.0, period_s=0.13, duty=0.3))
# What is left at each edge: the counter's whole millijoules, and where inside the NVML call the
# driver took the value (a reading is timed at its call's middle; a call takes tens of µs, and a
# shared test machine may hold a thread up for a millisecond): 650 W for 1 ms, twice. A window
# cut at the tick instead would be off by up to a tick, 650 W × 0.1 s = 65 J.
COUNTER_J = 2e-3 + 2 * 650.0 * 1e-3


def _meter(tmp_path: Path, *, counter_update_s: float = 0.0) -> tuple[Meter, FakeNvml]:
    fake = FakeNvml(
        [h100(profile=profile, counter_update_s=counter_update_s) for profile in PROFILES]
    )
    backend = NvmlBackend(nvml=fake, env={})
    meter = Meter(
        "edges", backend=backend, spool_dir=tmp_path, interval_s=0.1, chunk_s=10.0, env={}
    )
    return meter, fake


def _fake_s(unix_s: float, meter: Meter, fake: FakeNvml) -> float:
    """A sample's unix time as seconds since the fake driver loaded (its profiles' clock)."""
    sampler = meter._sampler
    assert sampler is not None
    return unix_s - sampler._unix_offset_s - fake.loaded_mono_s


def _chunks(tmp_path: Path, meter: Meter) -> dict[str, list[SpooledChunk]]:
    with Spool.in_directory(tmp_path) as spool:
        return {d["key"]: spool.chunks(meter.run_id, d["key"]) for d in meter.devices}


def test_a_run_window_is_exact_at_both_edges(tmp_path: Path) -> None:
    meter, fake = _meter(tmp_path)
    before_s = time.time()
    meter.start()
    job_start_s = time.time()
    time.sleep(0.37)  # not a multiple of the tick: the edges fall between ticks
    job_end_s = time.time()
    summary = meter.stop()
    sampler = meter._sampler
    assert sampler is not None
    # the window holds the job: opened before start() returned, closed after stop() was called
    assert before_s <= sampler.opened_at_s <= job_start_s
    assert job_end_s <= sampler.closed_at_s <= time.time()
    chunks = _chunks(tmp_path, meter)
    for position, (profile, device) in enumerate(zip(PROFILES, summary.devices, strict=True)):
        mine = chunks[meter.devices[position]["key"]]
        t0 = _fake_s(mine[0].payload["t0_s"], meter, fake)
        t1 = _fake_s(mine[-1].payload["t1_s"], meter, fake)
        # the device's own edge readings, within the edges' read spans
        assert t0 == pytest.approx(_fake_s(sampler.opened_at_s, meter, fake), abs=0.01)
        assert t1 == pytest.approx(_fake_s(sampler.closed_at_s, meter, fake), abs=0.01)
        truth = profile.energy_between_j(t0, t1)
        assert device.method == "counter"
        assert device.energy_j == pytest.approx(truth, abs=COUNTER_J + 1e-6 * truth)
        assert device.energy_low_j <= truth <= device.energy_high_j


def test_on_a_counter_that_moves_every_100_ms_the_run_edges_are_updates(tmp_path: Path) -> None:
    """The edges wait for the counter's next update: its value is exact at that instant."""
    meter, fake = _meter(tmp_path, counter_update_s=0.1)
    meter.start()
    job_start_s = time.time()
    time.sleep(0.43)
    job_end_s = time.time()
    summary = meter.stop()
    sampler = meter._sampler
    assert sampler is not None
    assert sampler.opened_at_s <= job_start_s
    assert job_end_s <= sampler.closed_at_s
    assert sorted(sampler.counter_update_s) == [0, 1]
    for period in sampler.counter_update_s.values():
        assert period == pytest.approx(0.1, abs=0.005)
    chunks = _chunks(tmp_path, meter)
    for position, (profile, device) in enumerate(zip(PROFILES, summary.devices, strict=True)):
        mine = chunks[meter.devices[position]["key"]]
        t0 = _fake_s(mine[0].payload["t0_s"], meter, fake)
        t1 = _fake_s(mine[-1].payload["t1_s"], meter, fake)
        # both edges on the fake's update grid (multiples of 0.1 s since it loaded), to the
        # time between two reads of the device
        for t in (t0, t1):
            assert abs(t - round(t, 1)) < 2e-3
        truth = profile.energy_between_j(t0, t1)
        assert device.energy_j == pytest.approx(truth, abs=COUNTER_J)


def _phases_against_truth(directory: Path) -> list[str]:
    """Meter two phases and check them against the fake's truth; what failed (empty: all held)."""
    meter, fake = _meter(directory)
    meter.start()
    time.sleep(0.12)
    with meter.phase("a") as a:
        time.sleep(0.23)
    with meter.phase("b") as b:
        time.sleep(0.17)
    time.sleep(0.05)
    meter.stop()
    assert a.t1_s is not None
    assert b.t1_s is not None
    failed: list[str] = []
    chunks = _chunks(directory, meter)
    for position, profile in enumerate(PROFILES):
        mine = chunks[meter.devices[position]["key"]]
        run_j = math.fsum(c.payload["energy_j"] for c in mine)
        phases_j = 0.0
        for phase in (a, b):
            assert phase.t1_s is not None
            # chunks end and start at the phase's edges (each device's own read, within µs)
            inside = [
                c
                for c in mine
                if c.payload["t0_s"] >= phase.t0_s - 1e-3 and c.payload["t1_s"] <= phase.t1_s + 1e-3
            ]
            if not inside:
                failed.append(f"GPU {position}: no chunk inside phase {phase.name}")
                continue
            t0 = _fake_s(inside[0].payload["t0_s"], meter, fake)
            t1 = _fake_s(inside[-1].payload["t1_s"], meter, fake)
            if inside[0].payload["t0_s"] != pytest.approx(phase.t0_s, abs=1e-3):
                failed.append(f"GPU {position}, {phase.name}: starts off the phase's edge")
            if inside[-1].payload["t1_s"] != pytest.approx(phase.t1_s, abs=1e-3):
                failed.append(f"GPU {position}, {phase.name}: ends off the phase's edge")
            energy_j = math.fsum(c.payload["energy_j"] for c in inside)
            truth = profile.energy_between_j(t0, t1)
            if energy_j != pytest.approx(truth, abs=COUNTER_J + 1e-6 * truth):
                failed.append(f"GPU {position}, {phase.name}: {energy_j} J against {truth} J")
            phases_j += energy_j
        # no chunk straddles a phase's edge, so phases and the rest share the run's chunks out
        for c in mine:
            for phase in (a, b):
                assert phase.t1_s is not None
                for edge_s in (phase.t0_s, phase.t1_s):
                    assert not c.payload["t0_s"] + 1e-3 < edge_s < c.payload["t1_s"] - 1e-3
        assert phases_j < run_j
    return failed


def test_waiting_for_the_edges_leaves_no_hole_in_the_samples_and_skips_no_tick(
    tmp_path: Path,
) -> None:
    """Edges on counters whose updates are out of step wait up to a few periods; devices whose
    opening edge came early are sampled meanwhile, and the schedule runs on from the opening."""
    fake = FakeNvml(
        [
            h100(profile=steady(300.0), counter_update_s=0.1, counter_update_phase_s=0.0),
            h100(profile=steady(200.0), counter_update_s=0.05, counter_update_phase_s=0.021),
            h100(profile=steady(100.0)),  # continuous
        ]
    )
    meter = Meter(
        "holes",
        backend=NvmlBackend(nvml=fake, env={}),
        spool_dir=tmp_path,
        interval_s=0.1,
        chunk_s=10.0,
        env={},
    )
    meter.start()
    time.sleep(0.6)
    summary = meter.stop()
    assert summary.overruns == 0
    for key, chunks in _chunks(tmp_path, meter).items():
        t_s: list[float] = []
        for chunk in chunks:
            column = chunk.payload["samples"]["t_s"]
            t_s.extend(decode_column(column) if isinstance(column, str) else column)
        steps = [b - a for a, b in itertools.pairwise(t_s)]
        # no interval over 3 ticks, the opening wait included; the last one (from the read at
        # stop() to the closing update, a few update periods) is the closing edge's wait
        assert max(steps[:-1]) <= 3 * 0.1, (key, steps)
        assert steps[-1] <= MAX_WAIT_S, (key, steps)


def test_a_phase_is_the_counter_difference_at_its_edges(tmp_path: Path) -> None:
    # The tolerances assume the host does not hold a thread up for over a millisecond inside a
    # read; a loaded machine sometimes does, so up to three runs are made: one must hold them
    # all (a real fault fails every run; the failures of each are shown).
    failures = []
    for attempt in range(3):
        failed = _phases_against_truth(tmp_path / f"run-{attempt}")
        if not failed:
            return
        failures.append(failed)
    pytest.fail(f"every run missed: {failures}")


def test_a_summary_reaches_the_moment_it_is_asked(tmp_path: Path) -> None:
    meter, fake = _meter(tmp_path)
    meter.start()
    time.sleep(0.26)
    asked_s = time.time()
    summary = meter.summary()
    answered_s = time.time()
    sampler = meter._sampler
    assert sampler is not None
    for profile, device in zip(PROFILES, summary.devices, strict=True):
        t0 = _fake_s(sampler.opened_at_s, meter, fake)
        t1 = t0 + device.duration_s
        # the last sample is the summary's own reading, not the tick before it
        assert _fake_s(asked_s, meter, fake) - 0.01 <= t1 <= _fake_s(answered_s, meter, fake)
        truth = profile.energy_between_j(t0, t1)
        assert device.energy_j == pytest.approx(truth, abs=COUNTER_J + 1e-3 * truth)
    meter.stop()
