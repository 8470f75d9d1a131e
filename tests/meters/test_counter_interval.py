"""Counter-only devices (RAPL, hwmon energy) read every ``counter_interval_s``, not every tick.

Their energy is the counter's difference across any interval, so reading them every second
instead of every 100 ms must give the same energy (exactly: the same counter values at the
shared ticks), count no skipped tick as missed or slow, keep the run's coverage whole, leave the
sampler's fast path to the ticks that skip them, and keep every edge (`Sampler.mark`) exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.meters.test_node import RAPL_W, Node
from tests.meters.test_sampler_slow import Sink
from tests.support.meters import CountingPlain
from thermoledger.meters.backends.rapl import RaplBackend
from thermoledger.meters.discovery import open_backend
from thermoledger.meters.options import build_parser
from thermoledger.meters.sampler import MeterSummary, Sampler
from thermoledger.meters.settings import MeterSettings, SettingsError
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_powercap import FakePowercap


def _node_run(
    tmp_path: Path, *, counter_interval_s: float, ticks: int = 41
) -> tuple[CountingPlain, Sink, MeterSummary]:
    node = Node(tmp_path, psys=False)
    backend, _ = open_backend("auto", sources=node.sources)
    sink = Sink()
    sampler = CountingPlain(
        backend,
        run_id="counter-interval",
        spool=sink,
        interval_s=0.1,
        chunk_s=1.0,
        counter_interval_s=counter_interval_s,
        clock=node.clock,
        sleep=node.sleep,
        host="node",
    )
    sampler.run_ticks(ticks)
    return sampler, sink, sampler.stop()


def _zones(summary: MeterSummary) -> dict[str, int]:
    return {d.key.split("/", 1)[1]: i for i, d in enumerate(summary.devices) if d.kind != "gpu"}


def test_counter_only_devices_are_read_every_second_for_the_same_energy(tmp_path: Path) -> None:
    sparse, sparse_sink, every = _node_run(tmp_path / "a", counter_interval_s=1.0)
    dense, dense_sink, each = _node_run(tmp_path / "b", counter_interval_s=0.0)
    assert sparse.counter_interval_s == pytest.approx(1.0)
    assert dense.counter_interval_s == pytest.approx(0.1)
    zones = _zones(every)
    assert set(zones) == set(RAPL_W)
    for i, (d, e) in enumerate(zip(every.devices, each.devices, strict=True)):
        if i in zones.values():
            assert d.samples == 5  # ticks 0, 10, 20, 30, 40 (4 s)
            assert e.samples == 41
            # the counter's difference over the same span: the same energy
            assert d.energy_j == pytest.approx(e.energy_j, rel=1e-12)
            assert d.duration_s == pytest.approx(e.duration_s, rel=1e-12)
        else:  # the GPUs are read every tick either way
            assert d.samples == e.samples == 41
            assert d.energy_j == e.energy_j
        assert d.missed == e.missed == {}  # a skipped tick is no reading, let alone a missed one
        assert d.gap_count == 0
    for zone, i in zones.items():
        d = every.devices[i]
        assert d.energy_j == pytest.approx(RAPL_W[zone] * d.duration_s, rel=1e-9)
    assert every.energy_j == pytest.approx(each.energy_j, rel=1e-12)
    # same chunks (one per second and device), and none with a gap
    assert {k: len(v) for k, v in sparse_sink.chunks.items()} == {
        k: len(v) for k, v in dense_sink.chunks.items()
    }
    for chunks in sparse_sink.chunks.values():
        assert all(c["gap_count"] == 0 and c["gap_s"] == 0.0 for c in chunks)
    # the coverage does not call the skipped ticks missing: the grade is the every-tick one
    assert every.quality is not None
    assert each.quality is not None
    assert [f.coverage for f in every.quality.devices] == [1.0] * len(every.devices)
    assert every.quality.grade == each.quality.grade
    assert every.quality.limits == each.quality.limits


def test_the_ticks_that_skip_the_counters_take_the_fast_path(tmp_path: Path) -> None:
    sparse, _, _ = _node_run(tmp_path / "a", counter_interval_s=1.0)
    dense, _, _ = _node_run(tmp_path / "b", counter_interval_s=0.0)
    # every tick but the 5 that read the counters (which start the bins here) is plain
    assert sparse.plain_ticks == 41 - 5
    assert sparse.plain_ticks >= dense.plain_ticks


def test_marks_read_every_device_so_a_window_is_exact(tmp_path: Path) -> None:
    node = Node(tmp_path, psys=False)
    backend, _ = open_backend("auto", sources=node.sources)
    sink = Sink()
    sampler = Sampler(
        backend,
        run_id="marks",
        spool=sink,
        interval_s=0.1,
        chunk_s=1.0,
        clock=node.clock,
        sleep=node.sleep,
        host="node",
    )
    sampler.run_ticks(13)
    start_s = sampler.mark()
    sampler.run_ticks(7)  # no counter tick in between: the window is only its edges
    end_s = sampler.mark()
    summary = sampler.stop()
    for zone, i in _zones(summary).items():
        key = summary.devices[i].key
        inside = [
            c for c in sink.chunks[key] if c["t0_s"] >= start_s - 1e-3 and c["t1_s"] <= end_s + 1e-3
        ]
        assert inside, zone
        assert inside[0]["t0_s"] == pytest.approx(start_s, abs=1e-6)
        assert inside[-1]["t1_s"] == pytest.approx(end_s, abs=1e-6)
        span_s = inside[-1]["t1_s"] - inside[0]["t0_s"]
        energy_j = math.fsum(c["energy_j"] for c in inside)
        assert energy_j == pytest.approx(RAPL_W[zone] * span_s, rel=1e-6)
        assert summary.devices[i].missed == {}


def test_the_interval_is_whole_ticks_at_most_a_chunk(tmp_path: Path) -> None:
    clock = ManualClock()
    tree = FakePowercap(tmp_path)
    tree.add_package(0)

    def sampler(counter_interval_s: float, *, chunk_s: float = 10.0) -> Sampler:
        return Sampler(
            RaplBackend(tree.root, read_text=tree.read_text, clock=clock),
            run_id="r",
            interval_s=0.1,
            chunk_s=chunk_s,
            counter_interval_s=counter_interval_s,
            clock=clock,
            sleep=clock.advance,
            host="h",
        )

    assert sampler(1.0).counter_interval_s == pytest.approx(1.0)
    assert sampler(0.25).counter_interval_s == pytest.approx(0.2)
    assert sampler(5.0, chunk_s=2.0).counter_interval_s == pytest.approx(2.0)
    assert sampler(0.0).counter_interval_s == pytest.approx(0.1)
    assert sampler(0.05).counter_interval_s == pytest.approx(0.1)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="counter_interval_s"):
            sampler(bad)


def test_the_setting_comes_from_the_flag_then_the_environment_then_one_second() -> None:
    assert MeterSettings.resolve(env={}).counter_interval_s == 1.0
    env = {"THERMOLEDGER_COUNTER_INTERVAL_S": "0.5"}
    assert MeterSettings.resolve(env=env).counter_interval_s == 0.5
    assert MeterSettings.resolve(env=env, counter_interval_s=0.0).counter_interval_s == 0.0
    with pytest.raises(SettingsError, match="counter_interval_s"):
        MeterSettings.resolve(env={"THERMOLEDGER_COUNTER_INTERVAL_S": "-1"})
    args = build_parser().parse_args(["run", "--counter-interval", "2", "--", "true"])
    assert args.counter_interval == 2.0
