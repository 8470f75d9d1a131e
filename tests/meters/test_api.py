"""The in-process `Meter`: phases, work, decorator, summary, failure, ranks, never raising.

Meters run on the real clock with short intervals (10 ms, 50 ms chunks); waits are polled and
bounded, and nothing asserts on durations.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.waiting import wait_until
from thermoledger.meters.api import Meter, empty_summary, meter
from thermoledger.meters.backends import Bursty, SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.control import ControlStore
from thermoledger.meters.discovery import Sources, open_backend
from thermoledger.meters.errors import DeviceUnavailable, NothingMeasurable
from thermoledger.meters.runid import NODE_METER_ENV, node_meter_mark
from thermoledger.meters.spool import Spool
from thermoledger.meters.testing.fake_powercap import FakePowercap
from thermoledger.meters.testing.fake_pynvml import FakeNvml

WAIT_S = 20.0
HOST = "unit-host"


def backend() -> SimulatedBackend:
    return SimulatedBackend(
        [
            SimulatedDevice(steady(300.0)),
            SimulatedDevice(Bursty(100.0, 500.0, period_s=0.1), has_counter=False),
        ]
    )


def make(tmp_path: Path, env: dict[str, str] | None = None, **options: Any) -> Meter:
    options.setdefault("backend", backend())
    options.setdefault("interval_s", 0.01)
    options.setdefault("chunk_s", 0.05)
    return Meter(
        options.pop("run", "unit"),
        spool_dir=tmp_path,
        env={} if env is None else env,
        host=HOST,
        **options,
    )


def sealed(m: Meter, n: int) -> Callable[[], bool]:
    return lambda: all(d.chunks_sealed >= n for d in m.summary().devices)


def test_a_metered_block_spools_its_run_phases_and_work(tmp_path: Path) -> None:
    m = make(tmp_path, tags={"team": "nlp"})
    with m:
        assert m.sampling
        assert m.recording
        with m.phase("epoch-1", lr="3e-4") as outer:
            m.add_tokens(100)
            with m.phase("eval") as inner:
                m.add_flops(1e12, dtype="bf16")
            wait_until(sealed(m, 2), "two chunks per device")
        m.add_tokens(5)
        m.declare_model(params=7_000_000)
    summary = m.summary()
    assert outer.t1_s is not None
    assert inner.t1_s is not None
    assert outer.t0_s <= inner.t0_s <= inner.t1_s <= outer.t1_s
    assert m.work.tokens == 105
    assert m.work.flops == 1e12

    with Spool.in_directory(tmp_path) as spool, ControlStore.in_directory(tmp_path) as control:
        record = spool.run_status(m.run_id)
        assert record is not None
        assert (record.status, record.exit_code) == ("finished", 0)
        assert record.metadata["name"] == "unit"
        chunks = spool.chunks(m.run_id)
        stored_j = math.fsum(c.payload["energy_j"] for c in chunks)
        assert summary.energy_j > 0
        assert stored_j == pytest.approx(summary.energy_j, rel=1e-12)  # all it counted is spooled
        assert {d.key for d in summary.devices} == {f"{HOST}/SIM-0", f"{HOST}/SIM-1"}

        run = control.get(m.run_id, "run")
        assert run is not None
        assert run.body["name"] == "unit"
        assert run.body["kind"] == "training"
        assert run.body["simulated"] is True
        assert run.body["tags"] == {"team": "nlp"}
        phases = {
            msg.body["name"]: msg.body for msg in control.messages(m.run_id) if msg.kind == "phase"
        }
        assert phases["epoch-1"]["tokens"] == 100
        assert phases["epoch-1"]["flops"] == {"value": 1e12, "unit": "FLOP"}
        assert phases["epoch-1"]["tags"] == {"lr": "3e-4"}
        assert phases["epoch-1"]["t1_s"] == outer.t1_s
        assert phases["eval"]["flops"] == {"value": 1e12, "unit": "FLOP"}
        assert "tokens" not in phases["eval"]
        work = control.get(m.run_id, "work")
        assert work is not None
        assert work.body == {
            "flops": {"value": 1e12, "unit": "FLOP"},
            "dtype": "bf16",
            "tokens": 105,
            "model_params": 7_000_000,
        }


def test_an_exception_in_the_job_marks_the_run_failed_and_propagates(tmp_path: Path) -> None:
    m = make(tmp_path)

    def job() -> None:
        with m, m.phase("doomed"):
            wait_until(sealed(m, 1), "a chunk")
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        job()
    with Spool.in_directory(tmp_path) as spool, ControlStore.in_directory(tmp_path) as control:
        record = spool.run_status(m.run_id)
        assert record is not None
        assert (record.status, record.exit_code) == ("failed", 1)
        assert spool.chunks(m.run_id)  # what was measured before the failure is kept
        (phase,) = [msg for msg in control.messages(m.run_id) if msg.kind == "phase"]
        assert "t1_s" in phase.body  # closed although the body raised


@pytest.mark.parametrize(("code", "status", "stored"), [(0, "finished", 0), (4, "failed", 4)])
def test_system_exit_records_its_code(tmp_path: Path, code: int, status: str, stored: int) -> None:
    m = make(tmp_path)
    with pytest.raises(SystemExit), m:
        raise SystemExit(code)
    with Spool.in_directory(tmp_path) as spool:
        record = spool.run_status(m.run_id)
        assert record is not None
        assert (record.status, record.exit_code) == (status, stored)


def test_the_decorator_meters_each_call_as_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = backend()

    @meter(run="decorated", backend=shared, spool_dir=tmp_path, env={}, interval_s=0.01)
    def train(x: int) -> int:
        return 2 * x

    assert train(21) == 42
    assert train(1) == 2

    monkeypatch.setenv("THERMOLEDGER_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("THERMOLEDGER_BACKEND", "simulated")

    @meter
    def evaluate() -> str:
        return "done"

    assert evaluate() == "done"
    assert evaluate.__name__ == "evaluate"
    with Spool.in_directory(tmp_path) as spool:
        runs = spool.runs()
    names = [r.metadata["name"] for r in runs]
    assert names.count("decorated") == 2
    assert any(name.endswith("evaluate") for name in names)
    assert len({r.run_id for r in runs}) == 3
    assert all(r.status == "finished" for r in runs)


def test_the_summary_grows_while_running_and_is_final_after_stop(tmp_path: Path) -> None:
    m = make(tmp_path).start()
    try:
        wait_until(lambda: m.summary().energy_j > 0, "energy")
        first = m.summary().energy_j
        wait_until(lambda: m.summary().energy_j > first, "more energy")
        device = m.summary().devices[0]
        assert device.method == "counter"
        assert device.energy_low_j <= device.energy_j <= device.energy_high_j
        assert m.summary().devices[1].method == "power_instant"
    finally:
        final = m.stop()
    assert m.stop() is final  # a second stop changes nothing
    assert m.summary() is final
    assert final.energy_j > first


def test_a_meter_that_cannot_start_never_disturbs_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    for broken in (
        make(tmp_path, server="ftp://ledger"),
        make(tmp_path, interval_s=-1.0),
        make(tmp_path, kind="party"),
        Meter("x", spool_dir=blocker / "spool", env={}, backend=backend()),
    ):
        with caplog.at_level(logging.ERROR), broken as m:
            with m.phase("still runs") as phase:
                m.add_flops(1e9)
                m.add_tokens(3)
            assert m.state == "disabled"
            assert not m.sampling
            assert m.summary().devices == ()
        assert phase.t1_s is not None
        assert "metering disabled" in caplog.text
        caplog.clear()


def test_bad_work_arguments_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), make(tmp_path) as m:
        for bad in (math.nan, -1.0, math.inf, "many"):
            m.add_flops(bad)  # type: ignore[arg-type]
        m.add_flops(1.0, dtype="not a dtype!")
        for bad_count in (1.5, -2, "3"):
            m.add_tokens(bad_count)  # type: ignore[arg-type]
        m.add_tokens(np.int64(7))  # type: ignore[arg-type]
        m.declare_model(params=0)
        assert m.work.flops == 0.0
        assert m.work.tokens == 7
        assert m.work.model_params is None
    assert "add_flops" in caplog.text
    assert "add_tokens" in caplog.text
    assert "declare_model" in caplog.text


def test_other_local_ranks_neither_sample_nor_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), make(tmp_path, env={"LOCAL_RANK": "3", "RANK": "3"}) as m:
        with m.phase("epoch"):
            m.add_tokens(10)
        assert m.state == "idle"
        assert not m.sampling
        empty = empty_summary(m.run_id)
        assert (
            dataclasses.replace(
                empty, **{f.name: getattr(m.summary(), f.name) for f in dataclasses.fields(empty)}
            )
            == empty
        )
    assert "LOCAL_RANK=3" in caplog.text
    assert not (tmp_path / "spool.sqlite3").exists()


@pytest.mark.parametrize(
    "env",
    [
        {"LOCAL_RANK": "1", "RANK": "0"},
        {NODE_METER_ENV: node_meter_mark(HOST, 1), "THERMOLEDGER_RUN_ID": "job-9"},
    ],
    ids=["local-rank-1", "under-thermoledger-run"],
)
def test_rank_0_without_the_node_meter_records_phases_only(
    tmp_path: Path, env: dict[str, str]
) -> None:
    with make(tmp_path, env=env) as m:
        with m.phase("epoch"):
            m.add_tokens(10)
        assert m.state == "recording"
        assert not m.sampling
    with ControlStore.in_directory(tmp_path) as control:
        kinds = sorted(msg.kind for msg in control.messages(m.run_id))
    assert kinds == ["phase", "run", "work"]
    assert not (tmp_path / "spool.sqlite3").exists()  # it never sampled
    if "THERMOLEDGER_RUN_ID" in env:
        assert m.run_id == str(
            uuid.uuid5(uuid.UUID("1129c22e-55a2-553c-ac4c-22f91001401a"), "job-9")
        )


def test_a_restarted_meter_never_reuses_an_acknowledged_seq(tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    with make(tmp_path, run_id=run_id) as first:
        wait_until(sealed(first, 2), "two chunks per device")
    with Spool.in_directory(tmp_path) as spool, ControlStore.in_directory(tmp_path) as control:
        chunks = spool.chunks(run_id)
        top = spool.next_seqs(run_id)
        # what an uploader does: remember the seqs, mark acked; then the purge frees the rows
        control.note_seqs(run_id, [c.key for c in chunks])
        spool.mark_acked([c.key for c in chunks])
        assert spool.purge_acked() == len(chunks)
    with make(tmp_path, run_id=run_id) as second:
        wait_until(sealed(second, 1), "a chunk per device")
    with Spool.in_directory(tmp_path) as spool:
        for key, seq in top.items():
            seqs = [c.key.seq for c in spool.chunks(run_id, key)]
            assert seqs
            assert min(seqs) == seq  # numbering resumes above everything acknowledged


def no_devices(tmp_path: Path) -> Sources:
    """A node with nothing measurable: NVML fails to load, no powercap tree, no hwmon chip."""
    (tmp_path / "sys" / "class" / "powercap").mkdir(parents=True)
    (tmp_path / "sys" / "class" / "hwmon").mkdir(parents=True)
    return Sources(
        nvml=FakeNvml([], init_error=codes.NVML_ERROR_LIBRARY_NOT_FOUND),
        powercap=tmp_path / "sys" / "class" / "powercap",
        hwmon=tmp_path / "sys" / "class" / "hwmon",
    )


def test_auto_never_falls_back_to_simulated_devices(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing measurable: the job runs, one warning says so, and nothing is recorded."""
    spool_dir = tmp_path / "spool"
    with (
        caplog.at_level(logging.INFO),
        make(spool_dir, backend=None, sources=no_devices(tmp_path)) as m,
    ):
        with m.phase("epoch"):
            m.add_tokens(10)
        assert m.state == "unmetered"
        assert not m.sampling
        assert not m.recording
        assert not m.simulated
        assert m.devices == ()
    summary = m.summary()
    assert summary.devices == ()
    assert math.isnan(summary.energy_j)  # no figure, never a measured 0 J
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "nothing measurable on this node" in warnings[0]
    assert "nvml: no NVIDIA GPU" in warnings[0]
    assert "rapl: no RAPL package zone" in warnings[0]
    assert "--cpu-tdp-w" in warnings[0]
    assert "simulat" not in caplog.text.lower()
    assert not spool_dir.exists()  # no run in the spool, nothing in an outbox


def test_root_only_rapl_alone_is_nothing_measurable_and_names_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sources = no_devices(tmp_path)
    tree = FakePowercap(sources.powercap)
    tree.add_package(0)
    tree.deny("intel-rapl:0")
    tree.deny("intel-rapl:0:1")
    sources = dataclasses.replace(sources, read_text=tree.read_text)
    with (
        caplog.at_level(logging.WARNING),
        make(tmp_path / "spool", backend=None, sources=sources) as m,
    ):
        assert m.state == "unmetered"
    assert "CVE-2020-8694" in caplog.text
    assert "chmod a+r" in caplog.text
    assert not (tmp_path / "spool").exists()


def test_a_cpu_tdp_meters_a_labelled_estimate_where_nothing_is_measurable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sources = no_devices(tmp_path)
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    sources = dataclasses.replace(sources, proc_stat=stat)
    with (
        caplog.at_level(logging.WARNING),
        make(tmp_path / "spool", backend=None, sources=sources, cpu_tdp_w=150.0) as m,
    ):
        assert m.state == "running"
        assert m.backend_label == "estimate: CPU utilisation × 150 W TDP (not a measurement)"
        (device,) = m.devices
        assert device["kind"] == "cpu"
        assert device["power_method"] == "estimate"
        assert device["name"].startswith("CPU estimate")
        assert not device["simulated"]
        wait_until(sealed(m, 1), "a chunk")
    assert "ESTIMATE" in caplog.text
    (d,) = m.summary().devices
    assert d.method == "estimate"
    with Spool.in_directory(tmp_path / "spool") as spool:
        chunks = spool.chunks(m.run_id)
    assert chunks
    assert {c.payload["method"] for c in chunks} == {"estimate"}


def test_open_backend_choices(tmp_path: Path) -> None:
    simulated, label = open_backend("simulated", gpus=[0, 1])
    assert label == "simulated"
    assert len(simulated.devices()) == 2
    assert all(d.simulated for d in simulated.devices())
    try:
        nvml, label = open_backend("nvml")
    except DeviceUnavailable:
        with pytest.raises(DeviceUnavailable, match="nvmlInit"):
            open_backend("nvml")
    else:
        assert label == "nvml"
        nvml.close()
    sources = no_devices(tmp_path)
    for choice in ("rapl", "hwmon", "nvml"):  # one kind only: a clear error where it is absent
        with pytest.raises(DeviceUnavailable, match=choice if choice != "nvml" else "nvmlInit"):
            open_backend(choice, sources=sources)
    with pytest.raises(NothingMeasurable, match="nothing measurable"):
        open_backend("auto", sources=sources)


def test_meter_is_exported_lazily_and_import_meters_stays_light() -> None:
    import subprocess
    import sys

    import thermoledger
    import thermoledger.meters as meters
    import thermoledger.meters.api

    assert meters.Meter is meters.api.Meter
    assert meters.meter is meters.api.meter
    assert thermoledger.Meter is meters.api.Meter
    assert thermoledger.meter is meters.api.meter
    with pytest.raises(AttributeError):
        _ = meters.no_such_thing
    with pytest.raises(AttributeError):
        _ = thermoledger.no_such_thing
    probe = (
        "import thermoledger, thermoledger.meters, sys; "
        "print('httpx' in sys.modules, 'thermoledger.meters.api' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=WAIT_S
    )
    assert done.stdout.split() == ["False", "False"]
