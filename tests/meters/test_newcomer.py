"""What a newcomer hit first (issue 14): counts the meter refused, a summary that printed a repr,
an upload tally of one pass, a bad token that cost the upload timeout.

Meters run on the real clock with short intervals; waits are polled and bounded, and nothing
asserts on durations.
"""

from __future__ import annotations

import http.server
import io
import logging
import math
import os
import random
import sys
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.waiting import wait_until
from thermoledger.meters import cli
from thermoledger.meters.api import REFUSED_DECLARATIONS, Meter, RunSummary, whole_count
from thermoledger.meters.backends import SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.control import ControlStore
from thermoledger.meters.runid import NODE_METER_ENV, node_meter_mark
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.spool import Spool
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_service import FakeService, Fault
from thermoledger.meters.uploader import Backoff, Uploader

HOST = "newcomer-host"
API = "http://ledger.test/api/v1"


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


# -- item 4: the upload tally counts every pass -------------------------------------------------


def spooled(tmp_path: Path, ticks: int = 40) -> str:
    """A finished run of a few dozen chunks in the spool; returns its id."""
    run_id = str(uuid.uuid4())
    clock = ManualClock()
    with Spool.in_directory(tmp_path) as spool:
        sampler = Sampler(
            SimulatedBackend([SimulatedDevice(steady(300.0))], clock=clock),
            run_id=run_id,
            spool=spool,
            interval_s=0.1,
            chunk_s=0.5,
            clock=clock,
            sleep=clock.advance,
            host=HOST,
            metadata={"name": "unit", "kind": "training"},
        )
        sampler.run_ticks(ticks)
        sampler.stop(status="finished", exit_code=0)
    return run_id


def uploader(tmp_path: Path, service: FakeService, **options: Any) -> Uploader:
    return Uploader(
        Spool.in_directory(tmp_path),
        ControlStore.in_directory(tmp_path),
        api_url=API,
        token="tl_test",
        transport=httpx.MockTransport(service),
        backoff=Backoff(rng=random.Random(7)),
        **options,
    )


def test_stop_counts_what_the_background_thread_stored(tmp_path: Path) -> None:
    run_id = spooled(tmp_path)
    service = FakeService()
    up = uploader(tmp_path, service, poll_s=0.01)
    try:
        total = up.spool.counts(run_id).pending
        assert total >= 7
        up.start()
        wait_until(lambda: service.ends.get(run_id) is not None, "the thread uploads it all")
        result = up.stop(drain_timeout_s=10.0)
    finally:
        up.close()
        up.spool.close()
        up.control.close()
    assert result.complete
    assert result.stored == len(service.chunks) == total  # not the last pass's 0
    assert result.messages_sent >= 2  # the run's declaration and its end


def test_the_meters_summary_says_how_many_chunks_every_pass_stored(tmp_path: Path) -> None:
    service = FakeService()
    m = make(tmp_path, server="http://ledger.test", upload_transport=httpx.MockTransport(service))
    with m:
        wait_until(lambda: len(service.chunks) >= 3, "chunks uploaded while the job runs")
    assert m.upload is not None
    assert m.upload.complete
    assert m.upload.stored == len(service.chunks)
    assert f"uploaded: {len(service.chunks)} chunks stored" in str(m.summary())


# -- item 5: a refused token is final -----------------------------------------------------------


def always(status: int) -> Fault:
    def fault(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": f"token refused ({status})"})

    return fault


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_ends_a_drain_at_once_and_keeps_the_data(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = spooled(tmp_path)
    service = FakeService(faults=[always(status)])
    waits: list[float] = []
    up = uploader(tmp_path, service)
    try:
        pending = up.spool.counts(run_id).pending
        with caplog.at_level(logging.WARNING):
            result = up.drain(timeout_s=30.0, sleep=waits.append)
    finally:
        up.close()
        up.spool.close()
        up.control.close()
    assert result.token_refused
    assert not result.complete
    assert f"HTTP {status}" in (result.error or "")
    assert waits == []  # no backoff: asking again cannot help
    assert len(service.log) == 1
    assert result.remaining == pending
    assert "retrying" not in caplog.text
    assert "not retried" in caplog.text


def test_a_meter_with_a_refused_token_stops_asking_and_says_how_to_push(tmp_path: Path) -> None:
    service = FakeService(faults=[always(401)])
    m = make(
        tmp_path,
        server="http://ledger.test",
        upload_transport=httpx.MockTransport(service),
        upload_timeout_s=30.0,
    )
    with m, m.phase("epoch"):  # a nudge: the thread tries (and is refused) while it runs
        wait_until(lambda: len(service.log) >= 1, "the thread tried")
    assert m.upload is not None
    assert m.upload.token_refused
    # The thread's one try and the final drain's one, not a 30 s backoff loop.
    assert len(service.log) <= 2
    text = str(m.summary())
    assert "NOT uploaded (the service refused the token (HTTP 401" in text
    assert f"thermoledger push --server http://ledger.test --spool-dir {tmp_path}" in text
    assert "--token-file FILE" in text
    with Spool.in_directory(tmp_path) as spool:
        assert spool.counts(m.run_id).pending > 0


class _Refusing(http.server.BaseHTTPRequestHandler):
    requests = 0

    def _refuse(self) -> None:
        type(self).requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"detail": "unknown token"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST = do_GET = _refuse  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    _Refusing.requests = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_thermoledger_run_with_a_bad_token_returns_the_childs_code_and_the_push_command(
    tmp_path: Path, refusing_server: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(
        [
            "run", "--simulate", "--interval", "0.01", "--chunk", "0.05",
            "--upload-timeout", "30", "--spool-dir", str(tmp_path),
            "--server", refusing_server, "--token", "tl_bad",
            "--", sys.executable, "-c", "raise SystemExit(3)",
        ],
        env={"PATH": os.environ.get("PATH", "")},
        out=out,
        err=err,
    )  # fmt: skip
    text = err.getvalue()
    assert code == 3
    assert _Refusing.requests <= 2
    assert "retrying" not in text
    assert f"thermoledger push --server {refusing_server} --spool-dir {tmp_path}" in text
    assert "NOT uploaded (the service refused the token (HTTP 401: unknown token))" in text


def test_push_with_a_bad_token_stops_at_once_and_says_so(
    tmp_path: Path, refusing_server: str
) -> None:
    spooled(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(
        ["push", "--server", refusing_server, "--token", "tl_bad", "--spool-dir", str(tmp_path)],
        env={"PATH": os.environ.get("PATH", "")},
        out=out,
        err=err,
    )
    assert code == 1
    assert _Refusing.requests == 1
    assert "retrying" not in out.getvalue() + err.getvalue()
    assert "not retried: everything stays in the spool" in out.getvalue()
    assert f"thermoledger push --server {refusing_server}" in out.getvalue()
