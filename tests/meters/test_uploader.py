"""The uploader: order, acknowledgement, retries, refusals, against a fake and a live service.

The fake service (`thermoledger.meters.testing.fake_service.FakeService`, behind
``httpx.MockTransport``) keeps chunks by key and content hash like the real one and can be told
to fail; the live tests run the real service on
loopback. No test sleeps: backoff waits are injected.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.liveserver import LiveServer, migrate_and_issue_token
from tests.support import dbutil
from tests.support.client import bearer
from thermoledger.meters.backends import Bursty, SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.control import ControlStore
from thermoledger.meters.sampler import Sampler
from thermoledger.meters.spool import Spool
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_service import FakeService, once
from thermoledger.meters.uploader import Backoff, PushResult, Uploader, run_body_from_spool

API = "http://ledger.test/api/v1"
HOST = "node"
DEVICES = (
    SimulatedDevice(steady(300.0)),
    SimulatedDevice(Bursty(100.0, 600.0, period_s=0.7), has_counter=False, reading="average"),
)


@dataclass
class Setup:
    spool: Spool
    control: ControlStore
    run_id: str
    service: FakeService

    def uploader(self, **options: Any) -> Uploader:
        return Uploader(
            self.spool,
            self.control,
            api_url=API,
            token="tl_test",
            transport=httpx.MockTransport(self.service),
            backoff=Backoff(rng=random.Random(7)),
            **options,
        )


def spool_run(
    directory: Path, *, ticks: int = 55, status: str = "finished", exit_code: int | None = 0
) -> str:
    """Meter simulated devices on a manual clock into a spool; returns the run id."""
    run_id = str(uuid.uuid4())
    clock = ManualClock()
    with Spool.in_directory(directory) as spool:
        sampler = Sampler(
            SimulatedBackend(DEVICES, clock=clock),
            run_id=run_id,
            spool=spool,
            interval_s=0.1,
            chunk_s=1.0,
            clock=clock,
            sleep=clock.advance,
            host=HOST,
            metadata={"name": "unit", "kind": "training"},
        )
        sampler.run_ticks(ticks)
        sampler.stop(status=status, exit_code=exit_code)  # type: ignore[arg-type]
    return run_id


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    run_id = spool_run(tmp_path)
    with Spool.in_directory(tmp_path) as spool, ControlStore.in_directory(tmp_path) as control:
        yield Setup(spool, control, run_id, FakeService())


def _keys(spool: Spool, run_id: str) -> set[tuple[str, str, int]]:
    return {tuple(c.key) for c in spool.chunks(run_id)}  # type: ignore[misc]


# -- the normal path ----------------------------------------------------------------------------


def test_a_pass_declares_the_run_sends_every_chunk_and_then_ends_it(setup: Setup) -> None:
    chunks = setup.spool.chunks(setup.run_id)
    assert len(chunks) >= 10
    with setup.uploader() as uploader:
        result = uploader.sync_once()
        assert result.complete
        assert result.stored == len(chunks)
        assert setup.service.log[0] == ("PUT", "run")
        assert setup.service.log[-1] == ("POST", "finish")
        assert set(setup.service.chunks) == _keys(setup.spool, setup.run_id)
        assert setup.service.ends[setup.run_id] == ("finished", 0)
        assert setup.spool.counts(setup.run_id).pending == 0
        body = setup.service.runs[setup.run_id]
        assert body["name"] == "unit"
        assert body["simulated"] is True

        requests = len(setup.service.log)
        again = uploader.sync_once()
        assert again.complete
        assert again.acknowledged == 0
        assert len(setup.service.log) == requests  # nothing left to say


@pytest.mark.parametrize(
    "limit", [{"max_chunks": 3}, {"max_samples": 5}, {"max_body_bytes": 100}], ids=str
)
def test_batches_respect_the_chunk_sample_and_byte_limits(
    setup: Setup, limit: dict[str, int]
) -> None:
    n = len(setup.spool.chunks(setup.run_id))
    with setup.uploader(**limit) as uploader:
        assert uploader.sync_once().stored == n
    # 3 chunks a batch; else every chunk alone (each has more than 5 samples and 100 bytes)
    expected = math.ceil(n / 3) if "max_chunks" in limit else n
    assert setup.service.count("chunks") == expected


# -- failures that are the service's ------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, text="boom"),
        httpx.Response(503, json={"detail": "down"}),
        httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "7"}),
        httpx.ConnectError("connection refused"),
    ],
    ids=["500", "503", "429", "connect"],
)
def test_service_failures_are_retried_and_nothing_is_marked(
    setup: Setup, failure: httpx.Response | Exception
) -> None:
    pending = setup.spool.counts(setup.run_id).pending
    setup.service.faults.append(once(failure, on="chunks"))
    with setup.uploader() as uploader:
        first = uploader.sync_once()
        assert first.error is not None
        assert not first.complete
        assert first.remaining == pending
        assert setup.spool.counts(setup.run_id).pending == pending
        assert setup.run_id not in setup.service.ends  # the end waits for the chunks
        if isinstance(failure, httpx.Response) and failure.status_code == 429:
            assert first.retry_after_s == 7.0
        second = uploader.sync_once()
    assert second.complete
    assert second.stored == pending


def test_a_request_that_timed_out_after_storing_is_acknowledged_as_a_duplicate(
    setup: Setup,
) -> None:
    """The fate of a timed-out batch is unknown: it stays pending and its repeat is a no-op."""
    service = setup.service

    def store_then_time_out(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/chunks") and not service.chunks:
            service.faults.clear()
            service(request)  # the service stores the batch...
            raise httpx.ReadTimeout("...but the answer never arrives")
        return None

    service.faults.append(store_then_time_out)
    n = len(setup.spool.chunks(setup.run_id))
    with setup.uploader(max_chunks=4) as uploader:
        first = uploader.sync_once()
        assert first.error is not None
        assert first.stored == 0
        assert setup.spool.counts(setup.run_id).pending == n
        second = uploader.sync_once()
    assert second.complete
    assert second.duplicates == 4
    assert second.stored == n - 4
    assert set(service.chunks) == _keys(setup.spool, setup.run_id)


def test_a_refused_token_is_final_and_keeps_the_data(setup: Setup) -> None:
    setup.service.faults.append(once(httpx.Response(401, json={"detail": "bad token"})))
    with setup.uploader() as uploader:
        result = uploader.sync_once()
    assert result.error is not None
    assert "token" in result.error
    assert result.token_refused
    assert result.remaining == setup.spool.counts(setup.run_id).pending > 0


def test_an_unknown_run_is_declared_again(setup: Setup) -> None:
    """After a service lost its database, a 404 on chunks makes the run be declared again."""
    with setup.uploader(max_chunks=2) as uploader:
        setup.service.faults.append(once(httpx.Response(503), on="chunks"))
        assert uploader.sync_once().error is not None  # the run is declared, chunks wait
        setup.service.runs.clear()
        result = uploader.sync_once()
    assert result.complete
    assert setup.service.count("run") == 2
    assert set(setup.service.chunks) == _keys(setup.spool, setup.run_id)


# -- failures that are bugs ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "named"), [(422, True), (409, False), (413, False)])
def test_a_refused_chunk_is_isolated_marked_and_not_retried_in_a_loop(
    setup: Setup, status: int, named: bool, caplog: pytest.LogCaptureFixture
) -> None:
    bad = setup.spool.chunks(setup.run_id)[3].key
    setup.service.refuse[(bad.device_key, bad.seq)] = (status, named)
    n = len(setup.spool.chunks(setup.run_id))
    with caplog.at_level(logging.ERROR), setup.uploader(max_chunks=50) as uploader:
        result = uploader.sync_once()
        assert result.rejected == 1
        assert result.refused == 1
        assert result.stored == n - 1
        assert result.remaining == 0
        assert not result.complete
        assert setup.service.ends[setup.run_id] == ("finished", 0)  # a bug does not hide it
        # bounded isolation: the named chunk at once, else a bisection
        assert setup.service.count("chunks") <= 2 + 2 * math.ceil(math.log2(n))
        assert f"#{bad.seq}" in caplog.text
        assert "--retry-rejected" in caplog.text

        requests = len(setup.service.log)
        again = uploader.sync_once()
        assert again.refused == 1
        assert len(setup.service.log) == requests  # no hot loop on a refused chunk
        assert bad in {c.key for c in setup.spool.pending(setup.run_id)}  # never dropped

        del setup.service.refuse[(bad.device_key, bad.seq)]
        assert setup.control.clear_rejections(setup.run_id) == 1
        final = uploader.sync_once()
    assert final.complete
    assert final.stored == 1
    assert setup.service.ends[setup.run_id] == ("finished", 0)


def test_phases_and_work_are_sent_and_a_conflicting_end_is_not_retried(setup: Setup) -> None:
    setup.control.put(setup.run_id, "phase", {"name": "epoch-1", "t0_s": 1.0e9}, key="e1")
    setup.control.put(setup.run_id, "work", {"tokens": 10})
    setup.service.ends[setup.run_id] = ("failed", 3)  # someone else ended it first
    with setup.uploader() as uploader:
        result = uploader.sync_once()
        assert result.complete
        assert setup.service.phases[(setup.run_id, "epoch-1", 1.0e9)]["name"] == "epoch-1"
        assert setup.service.work[setup.run_id] == {"tokens": 10}
        # A message that changes is sent again; an unchanged one is not.
        setup.control.put(setup.run_id, "work", {"tokens": 20})
        setup.control.put(setup.run_id, "phase", {"name": "epoch-1", "t0_s": 1.0e9}, key="e1")
        before = setup.service.count("phases")
        assert uploader.sync_once().complete
    assert setup.service.work[setup.run_id] == {"tokens": 20}
    assert setup.service.count("phases") == before
    assert setup.service.count("finish") == 1


def test_a_refused_declaration_blocks_the_run_but_keeps_its_chunks(setup: Setup) -> None:
    setup.service.faults.append(once(httpx.Response(409, json={"detail": "id taken"})))
    with setup.uploader() as uploader:
        result = uploader.sync_once()
    assert result.blocked
    assert "id taken" in result.blocked[0]
    assert not result.complete
    assert result.remaining == len(setup.spool.chunks(setup.run_id))


def test_a_200_that_acknowledges_nothing_does_not_loop(setup: Setup) -> None:
    setup.service.faults.append(
        lambda request: (
            httpx.Response(200, json={"chunks": []})
            if request.url.path.endswith("/chunks")
            else None
        )
    )
    with setup.uploader() as uploader:
        result = uploader.sync_once()
    assert result.error is not None
    assert "acknowledged none" in result.error
    assert setup.service.count("chunks") == 1
    assert result.remaining == len(setup.spool.chunks(setup.run_id))


def test_a_broken_spool_is_an_error_of_the_pass_not_an_exception(setup: Setup) -> None:
    with setup.uploader(run_ids=None) as uploader:
        setup.spool.close()
        result = uploader.sync_once()
    assert result.error is not None
    assert "closed" in result.error


# -- policy and the background thread -----------------------------------------------------------


def test_backoff_grows_is_capped_jittered_and_honours_retry_after() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0, jitter=0.5, rng=random.Random(1))
    delays = [backoff.next_delay_s() for _ in range(8)]
    for k, delay in enumerate(delays):
        base = min(4.0, 0.5 * 2**k)
        assert base * 0.5 <= delay <= base
    assert backoff.next_delay_s(floor_s=3.5) >= 3.5
    assert backoff.next_delay_s(floor_s=100.0) <= 4.0  # a server cannot park us for ever
    backoff.reset()
    assert backoff.next_delay_s() <= 0.5


def test_drain_stops_at_its_deadline_while_the_service_is_down(setup: Setup) -> None:
    setup.service.faults.append(lambda request: httpx.Response(503))
    waits: list[float] = []
    with setup.uploader() as uploader:
        result = uploader.drain(timeout_s=0.05, sleep=waits.append)
    assert result.error is not None
    assert result.remaining > 0
    assert all(0 < w <= 0.05 for w in waits)


def test_abort_drain_cuts_a_long_drain_short(setup: Setup) -> None:
    setup.service.faults.append(lambda request: httpx.Response(503))
    with setup.uploader() as uploader:
        waits: list[float] = []

        def wait_then_abort(delay_s: float) -> None:
            waits.append(delay_s)
            uploader.abort_drain()  # what a signal handler does while the wrapper finishes

        result = uploader.drain(timeout_s=3600.0, sleep=wait_then_abort)
    assert len(waits) == 1
    assert result.error is not None
    assert result.remaining > 0


def test_the_thread_uploads_in_the_background_and_stop_drains(setup: Setup) -> None:
    with setup.uploader(poll_s=0.01) as uploader:
        uploader.start()
        result = uploader.stop(drain_timeout_s=10.0)
    assert result.complete
    assert setup.spool.counts(setup.run_id).pending == 0


def test_acknowledged_seqs_outlive_the_purge(setup: Setup) -> None:
    with setup.uploader() as uploader:
        assert uploader.sync_once().complete
    expected = setup.spool.next_seqs(setup.run_id)
    assert setup.spool.purge_acked() == len(setup.service.chunks)
    assert setup.spool.next_seqs(setup.run_id) == {}
    assert setup.control.next_seqs(setup.run_id) == expected


def test_a_bare_sampler_run_is_declared_from_the_spool(tmp_path: Path) -> None:
    run_id = spool_run(tmp_path, status="failed", exit_code=3)
    with Spool.in_directory(tmp_path) as spool:
        record = spool.run_status(run_id)
        assert record is not None
        body = run_body_from_spool(record, spool.devices(run_id))
    assert body["name"] == "unit"
    assert body["kind"] == "training"
    assert body["simulated"] is True
    assert body["host_info"][f"meter@{HOST}"] == {"interval_s": 0.1, "chunk_s": 1.0}
    bare = run_body_from_spool(
        type(record)(
            run_id=record.run_id,
            metadata={},
            status=record.status,
            exit_code=record.exit_code,
            created_at_s=record.created_at_s,
            updated_at_s=record.updated_at_s,
        ),
        [],
    )
    assert bare["name"] == f"run {run_id}"
    assert bare["kind"] == "other"
    assert bare["simulated"] is False


def test_push_result_is_complete_only_when_nothing_is_left() -> None:
    assert PushResult().complete
    assert not PushResult(remaining=1).complete
    assert not PushResult(refused=1).complete
    assert not PushResult(messages_pending=1).complete
    assert not PushResult(error="down").complete


# -- against the real service -------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    directory = tmp_path_factory.mktemp("live")
    url = dbutil.sqlite_url(directory)
    token = migrate_and_issue_token(url)
    server = LiveServer(url, directory / "server.log")
    server.start()
    try:
        yield server, token
    finally:
        server.stop()


@pytest.mark.slow
def test_upload_to_the_live_service_matches_its_report(
    live: tuple[LiveServer, str], tmp_path: Path
) -> None:
    server, token = live
    run_id = spool_run(tmp_path, ticks=45)
    with Spool.in_directory(tmp_path) as spool, ControlStore.in_directory(tmp_path) as control:
        with Uploader(spool, control, api_url=f"{server.url}/api/v1", token=token) as uploader:
            result = uploader.drain(timeout_s=20.0)
            assert result.complete, result
            chunks = spool.chunks(run_id)
            assert result.stored == len(chunks)
            # Sending everything again is harmless: every chunk is a duplicate.
            spool.purge_acked()
        run_again = spool_run(tmp_path, ticks=5)  # a second run in the same spool
        with Uploader(spool, control, api_url=f"{server.url}/api/v1", token=token) as uploader:
            assert uploader.drain(timeout_s=20.0).complete
        spooled_j = math.fsum(c.payload["energy_j"] for c in chunks)
    headers = bearer(token)
    report = httpx.get(f"{server.url}/api/v1/runs/{run_id}/report", headers=headers).json()
    assert report["energy"]["total"]["energy_j"] == pytest.approx(spooled_j, rel=1e-12)
    assert report["run"]["status"] == "finished"
    assert report["run"]["simulated"] is True
    run = httpx.get(f"{server.url}/api/v1/runs/{run_again}", headers=headers).json()
    assert run["status"] == "finished"
    assert run["exit_code"] == 0
