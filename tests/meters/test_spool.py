"""The SQLite spool: durable, idempotent by chunk key, never overwriting, safe across threads."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from thermoledger.meters.spool import (
    SPOOL_FILENAME,
    ChunkKey,
    Spool,
    SpoolConflict,
    SpoolError,
    UnknownRun,
)
from thermoledger.meters.wire import ChunkPayload, DevicePayload, content_hash

RUN = "0b7e6a52-3f7e-4c69-9a51-6d2f3c1a0001"
GPU0 = "node-1/GPU-0"
GPU1 = "node-1/GPU-1"


class Now:
    """A settable unix clock for created_at / acked_at."""

    def __init__(self, t_s: float = 1_700_000_000.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


def _device(key: str) -> DevicePayload:
    return {
        "key": key,
        "host": "node-1",
        "kind": "gpu",
        "index": int(key[-1]),
        "uid": key.split("/")[1],
        "name": "NVIDIA H100 80GB HBM3",
        "power_limit_w": 700.0,
        "has_energy_counter": True,
        "power_method": "power_instant",
        "simulated": False,
    }


def _chunk(key: str, seq: int, energy_j: float = 3000.0) -> ChunkPayload:
    t0_s = 1_700_000_000.0 + 10.0 * seq
    return {
        "device_key": key,
        "seq": seq,
        "t0_s": t0_s,
        "t1_s": t0_s + 10.0,
        "n": 2,
        "method": "counter",
        "energy_j": energy_j,
        "energy_low_j": 0.98 * energy_j,
        "energy_high_j": 1.02 * energy_j,
        "sensor_uncertainty_j": 0.02 * energy_j,
        "bound_below_j": 0.0,
        "bound_above_j": 0.0,
        "min_power_w": 300.0,
        "mean_power_w": 300.0,
        "max_power_w": 300.0,
        "gap_s": 0.0,
        "gap_count": 0,
        "reset_count": 0,
        "wrap_count": 0,
        "samples": {
            "t_s": [t0_s, t0_s + 5.0, t0_s + 10.0],
            "power_w": [300.0, 300.0, 300.0],
            "energy_j": [1.0e6, 1.0e6 + 1500.0, 1.0e6 + energy_j],
        },
    }


@pytest.fixture
def now() -> Now:
    return Now()


@pytest.fixture
def spool(tmp_path: Path, now: Now) -> Iterator[Spool]:
    with Spool(tmp_path / "state" / SPOOL_FILENAME, now=now) as opened:
        opened.open_run(RUN, {"host": "node-1", "interval_s": 0.1})
        opened.put_devices(RUN, [_device(GPU0), _device(GPU1)])
        yield opened


def test_the_file_is_wal_with_full_sync(spool: Spool) -> None:
    with sqlite3.connect(spool.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    assert spool._connection().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_in_directory_names_the_file(tmp_path: Path) -> None:
    with Spool.in_directory(tmp_path / "x") as spool:
        assert spool.path == tmp_path / "x" / SPOOL_FILENAME
        assert spool.path.exists()


def test_put_pending_ack_purge(spool: Spool, now: Now) -> None:
    for seq in range(3):
        assert spool.put_chunk(RUN, _chunk(GPU0, seq))
        now.t_s += 1.0
        assert spool.put_chunk(RUN, _chunk(GPU1, seq))
        now.t_s += 1.0
    pending = spool.pending(RUN, limit=4)
    # oldest first, in the order they were stored
    assert [(c.key.device_key, c.key.seq) for c in pending] == [
        (GPU0, 0),
        (GPU1, 0),
        (GPU0, 1),
        (GPU1, 1),
    ]
    assert pending[0].payload == _chunk(GPU0, 0)
    assert pending[0].content_hash == content_hash(_chunk(GPU0, 0))
    assert pending[0].acked_at_s is None

    acked_at = now.t_s
    assert spool.mark_acked([c.key for c in pending]) == 4
    assert spool.mark_acked([pending[0].key]) == 0  # an ack is recorded once
    assert spool.counts(RUN).pending == 2
    assert spool.counts().acked == 4
    assert [c.key.seq for c in spool.pending()] == [2, 2]

    now.t_s = acked_at + 59.0
    assert spool.purge_acked(older_than_s=60.0) == 0
    now.t_s = acked_at + 61.0
    assert spool.purge_acked(older_than_s=60.0) == 4
    assert spool.counts() == spool.counts(RUN)
    assert spool.counts().pending == 2
    assert spool.counts().acked == 0


def test_an_identical_chunk_is_a_no_op(spool: Spool) -> None:
    assert spool.put_chunk(RUN, _chunk(GPU0, 0)) is True
    assert spool.put_chunk(RUN, _chunk(GPU0, 0)) is False
    assert spool.put_chunks(RUN, [_chunk(GPU0, 0), _chunk(GPU0, 1)]) == 1
    assert len(spool.chunks(RUN)) == 2


def test_a_different_chunk_under_a_stored_key_is_refused_and_nothing_is_written(
    spool: Spool,
) -> None:
    spool.put_chunk(RUN, _chunk(GPU0, 0, energy_j=3000.0))
    with pytest.raises(SpoolConflict) as caught:
        spool.put_chunks(RUN, [_chunk(GPU0, 1), _chunk(GPU0, 0, energy_j=3001.0)])
    assert caught.value.keys == (ChunkKey(RUN, GPU0, 0),)
    assert isinstance(caught.value, ValueError)
    stored = spool.chunks(RUN, GPU0)
    assert [c.key.seq for c in stored] == [0]  # the batch's new chunk was rolled back too
    assert stored[0].payload["energy_j"] == 3000.0


def test_next_seqs_resume_after_the_highest_stored(spool: Spool) -> None:
    assert spool.next_seqs(RUN) == {}
    spool.put_chunks(RUN, [_chunk(GPU0, s) for s in range(4)] + [_chunk(GPU1, 0)])
    spool.mark_acked([ChunkKey(RUN, GPU0, s) for s in range(4)])
    assert spool.next_seqs(RUN) == {GPU0: 4, GPU1: 1}
    assert spool.next_seqs("another-run") == {}


def test_payloads_round_trip_exactly_including_infinity(spool: Spool) -> None:
    chunk = _chunk(GPU0, 0)
    chunk["energy_high_j"] = math.inf  # an unbounded counter reset
    chunk["t0_s"] = 1_700_000_000.123456789
    spool.put_chunk(RUN, chunk)
    (stored,) = spool.chunks(RUN)
    assert stored.payload == chunk
    assert content_hash(stored.payload) == content_hash(chunk) == stored.content_hash
    assert spool.put_chunk(RUN, stored.payload) is False


def test_runs_and_status(spool: Spool, now: Now) -> None:
    record = spool.run_status(RUN)
    assert record is not None
    assert record.status == "running"
    assert record.metadata == {"host": "node-1", "interval_s": 0.1}
    now.t_s += 5.0
    spool.set_run_status(RUN, "failed", exit_code=3)
    record = spool.run_status(RUN)
    assert record is not None
    assert (record.status, record.exit_code) == ("failed", 3)
    assert record.updated_at_s == record.created_at_s + 5.0
    # reopening (a restarted meter) keeps the metadata and says running again
    spool.open_run(RUN, {"host": "elsewhere"})
    (again,) = spool.runs()
    assert (again.status, again.exit_code, again.metadata["host"]) == ("running", None, "node-1")
    assert spool.run_status("nope") is None
    assert [d["key"] for d in spool.devices(RUN)] == [GPU0, GPU1]


def test_unknown_runs_devices_and_statuses_are_refused(spool: Spool) -> None:
    with pytest.raises(UnknownRun):
        spool.set_run_status("nope", "finished")
    with pytest.raises(UnknownRun):
        spool.put_devices("nope", [_device(GPU0)])
    with pytest.raises(SpoolError, match="FOREIGN KEY"):
        spool.put_chunk("nope", _chunk(GPU0, 0))
    with pytest.raises(SpoolError, match="FOREIGN KEY"):
        spool.put_chunk(RUN, _chunk("node-1/GPU-9", 0))
    with pytest.raises(ValueError, match="status"):
        spool.set_run_status(RUN, "exploded")  # type: ignore[arg-type]
    assert spool.chunks(RUN) == []


def test_a_second_process_sees_committed_chunks(spool: Spool, tmp_path: Path) -> None:
    with Spool(spool.path) as other:
        spool.put_chunk(RUN, _chunk(GPU0, 0))
        assert [c.key for c in other.pending()] == [ChunkKey(RUN, GPU0, 0)]
        other.mark_acked([ChunkKey(RUN, GPU0, 0)])
    assert spool.counts().acked == 1


def test_a_spool_from_a_newer_meter_is_refused(tmp_path: Path) -> None:
    path = tmp_path / SPOOL_FILENAME
    Spool(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(SpoolError, match="schema 99"):
        Spool(path)


def test_a_closed_spool_raises(spool: Spool) -> None:
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.pending()


def test_a_writer_and_an_uploader_thread_share_one_spool(spool: Spool) -> None:
    n = 200
    errors: list[BaseException] = []
    acked: list[ChunkKey] = []
    written = threading.Event()

    def write() -> None:
        try:
            for seq in range(n):
                spool.put_chunk(RUN, _chunk(GPU0, seq))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            written.set()

    def upload() -> None:
        try:
            while True:
                done = written.is_set()
                batch = spool.pending(limit=17)
                spool.mark_acked([c.key for c in batch])
                acked.extend(c.key for c in batch)
                if done and not batch:
                    return
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write), threading.Thread(target=upload)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30.0)
    assert errors == []
    assert sorted(k.seq for k in acked) == list(range(n))  # each chunk acked exactly once
    assert spool.counts() == spool.counts(RUN)
    assert spool.counts().pending == 0


def test_json_safe_fast_path_keeps_non_finite_markers() -> None:
    """The all-finite fast path for sample columns must not let inf/NaN through unmarked."""
    from thermoledger.meters.wire import _json_safe

    assert _json_safe([1.0, 2.5]) == [1.0, 2.5]
    assert _json_safe([1.0, float("inf"), 2.0]) == [1.0, "inf", 2.0]
    assert _json_safe([1e308, 1e308]) == [1e308, 1e308]  # the sum overflows: checked one by one
    assert _json_safe([float("inf"), float("-inf")]) == ["inf", "-inf"]
    assert _json_safe([float("nan")]) == ["nan"]
