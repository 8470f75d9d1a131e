"""The benchmarks' synthetic workloads are valid input for the service.

Benchmarks are not tests, but the data they build must be what a meter sends: a workload the
service refuses measures nothing.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from thermoledger.meters.wire import dumps_batch, dumps_binary_batch
from thermoledger.service.ingest import prepare_batch, prepare_binary_batch
from thermoledger.service.schemas import IngestBatchIn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
_support = importlib.import_module("_support")


def test_meter_chunks_are_accepted_in_every_form() -> None:
    devices = _support.device_payloads("node-0", 2)
    chunks = _support.meter_chunks(devices, chunks_per_device=4, samples_per_chunk=50)
    batch = [c for per_device in chunks for c in per_device]
    assert [c["n"] for c in batch] == [50] * 8
    assert all(len(c["samples"]["t_s"]) == c["n"] for c in batch)
    parsed = IngestBatchIn.model_validate_json(dumps_batch(devices, batch))
    as_json = prepare_batch(parsed, max_chunks=100, max_samples_per_chunk=1000)
    as_binary = prepare_binary_batch(
        dumps_binary_batch(devices, batch), max_chunks=100, max_samples_per_chunk=1000
    )
    assert len(as_json.chunks) == len(as_binary.chunks) == 8
    assert [c.content_hash for c in as_json.chunks] == [c.content_hash for c in as_binary.chunks]
