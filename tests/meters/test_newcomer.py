"""What a newcomer hit first (issue 14): counts the meter refused, a summary that printed a repr,
an upload tally of one pass, a bad token that cost the upload timeout.

Meters run on the real clock with short intervals; waits are polled and bounded, and nothing
asserts on durations.
"""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thermoledger.meters.api import REFUSED_DECLARATIONS, Meter, RunSummary, whole_count
from thermoledger.meters.backends import SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.control import ControlStore
from thermoledger.meters.runid import NODE_METER_ENV, node_meter_mark

HOST = "newcomer-host"


def make(tmp_path: Path, env: dict[str, str] | None = None, **options: Any) -> Meter:
    options.setdefault("backend", SimulatedBackend([SimulatedDevice(steady(250.0))]))
    options.setdefault("interval_s", 0.01)
    options.setdefault("chunk_s", 0.05)
    return Meter(
        options.pop("run", "newcomer"),
        spool_dir=tmp_path,
        env={} if env is None else env,
        host=HOST,
        **options,
    )


# -- item 1: a whole count is a count, whatever its type ----------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        7e9,
        7_000_000_000,
        np.int64(7_000_000_000),
        np.float64(7e9),
        np.float32(7e9 / 1024) * 1024,
        Fraction(7_000_000_000),
        Decimal("7e9"),
    ],
    ids=["float", "int", "np.int64", "np.float64", "np.float32", "Fraction", "Decimal"],
)
def test_declare_model_takes_any_whole_number(tmp_path: Path, value: object) -> None:
    expected = int(float(value))  # type: ignore[arg-type]
    with make(tmp_path) as m:
        m.declare_model(params=value)  # type: ignore[arg-type]
        m.add_tokens(value)  # type: ignore[arg-type]
        assert m.work.model_params == expected
        assert m.work.tokens == expected
    assert m.summary().refused_declarations == ()
    with ControlStore.in_directory(tmp_path) as control:
        work = control.get(m.run_id, "work")
    assert work is not None
    assert work.body["model_params"] == expected
    assert type(work.body["model_params"]) is int  # JSON sends 7000000000, not 7e9


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [
        (7e9, 1, 7_000_000_000),
        (np.uint8(3), 0, 3),
        (0, 0, 0),
        (0, 1, None),
        (0.0, 1, None),
        (-3, 0, None),
        (1.5, 0, None),
        (math.nan, 0, None),
        (math.inf, 0, None),
        (1e30, 0, None),  # past a signed 64-bit integer: the service could not store it
        ("7e9", 0, None),
        (b"7", 0, None),
        (True, 0, None),
        (np.True_, 0, None),
        (None, 0, None),
        (3 + 0j, 0, None),
    ],
)
def test_whole_count(value: object, minimum: int, expected: int | None) -> None:
    assert whole_count(value, minimum=minimum) == expected


def test_a_refused_declaration_is_in_the_summary_and_the_runs_host_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), make(tmp_path) as m:
        m.declare_model(params="7e9")  # type: ignore[arg-type]
        m.add_tokens(2.5)
        m.add_flops(math.nan)
        m.declare_model(params="7e9")  # type: ignore[arg-type]  # once, however often
        live = m.summary()
    refused = (
        "declare_model(params='7e9') ignored: need a whole count > 0 (e.g. 7e9); "
        "no 6·N·D FLOPs, MFU or bounds from it",
        "add_tokens(2.5) ignored: need a whole count >= 0",
        "add_flops(nan, dtype='bf16') ignored: need a finite FLOP count >= 0 and a short "
        "dtype ([A-Za-z0-9_]{1,16})",
    )
    assert live.refused_declarations == refused
    final = m.summary()
    assert final.refused_declarations == refused
    table = str(final)
    for line in refused:
        assert f"REFUSED declaration: {line}" in table
    assert caplog.text.count("declare_model(params='7e9')") == 1
    with ControlStore.in_directory(tmp_path) as control:
        run = control.get(m.run_id, "run")
    assert run is not None
    assert run.body["host_info"][f"meter@{HOST}"][REFUSED_DECLARATIONS] == list(refused)


def test_a_refusal_before_start_reaches_the_run(tmp_path: Path) -> None:
    m = make(tmp_path)
    m.declare_model(params=-1)
    with m:
        pass
    with ControlStore.in_directory(tmp_path) as control:
        run = control.get(m.run_id, "run")
    assert run is not None
    assert run.body["host_info"][f"meter@{HOST}"][REFUSED_DECLARATIONS] == [
        "declare_model(params=-1) ignored: need a whole count > 0 (e.g. 7e9); no 6·N·D FLOPs, "
        "MFU or bounds from it"
    ]


def test_the_jobs_refusal_joins_the_wrappers_declaration_and_summary(tmp_path: Path) -> None:
    """Under ``thermoledger run``: the wrapper samples and declares the run, the job's meter
    records work; a refusal in the job keeps the wrapper's declaration and shows in the
    wrapper's summary."""
    run_env = {"THERMOLEDGER_RUN_ID": "job-14"}
    wrapper = make(tmp_path, env=run_env, run="wrapped").start()
    try:
        job_env = {NODE_METER_ENV: node_meter_mark(HOST, 1), **run_env}
        with make(tmp_path, env=job_env, run="the job's own name") as job:
            assert job.state == "recording"
            job.declare_model(params=0.5)
        assert job.summary().refused_declarations != ()
    finally:
        final = wrapper.stop()
    assert final.refused_declarations == job.summary().refused_declarations
    assert "REFUSED declaration: declare_model(params=0.5)" in str(final)
    with ControlStore.in_directory(tmp_path) as control:
        run = control.get(wrapper.run_id, "run")
    assert run is not None
    assert run.body["name"] == "wrapped"  # the wrapper's declaration stands
    host_info = run.body["host_info"]
    assert "quality" in host_info[f"meter@{HOST}"]
    assert host_info[f"job@{HOST}"][REFUSED_DECLARATIONS][0].startswith(
        "declare_model(params=0.5) ignored"
    )


# -- item 7: print(m.summary()) prints the table ------------------------------------------------


def test_print_summary_prints_the_wrappers_table(tmp_path: Path) -> None:
    with make(tmp_path, run="llama-ft") as m:
        running = m.summary()
        assert isinstance(running, RunSummary)
        text = str(running)
        assert text.startswith(f"thermoledger: run {m.run_id} 'llama-ft' so far\n")
        assert "RunSummary(" not in text
    final = m.summary()
    text = str(final)
    assert text.startswith(f"thermoledger: run {m.run_id} 'llama-ft' finished (exit 0)\n")
    assert "energy J" in text
    assert f"{HOST}/SIM-0" in text
    assert "SIMULATED devices" in text
    assert f"offline: the run is in the spool {tmp_path}" in text
    assert repr(final).startswith("RunSummary(")  # the repr is still there for debugging


def test_the_summary_of_a_meter_that_samples_nothing_says_so(tmp_path: Path) -> None:
    with make(tmp_path, env={"LOCAL_RANK": "1", "RANK": "1"}) as m:
        assert "no device was metered by this process" in str(m.summary())
