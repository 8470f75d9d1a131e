"""The columnar binary batch (`meters.wire.BATCH_BINARY`) beside the JSON forms.

The same chunks in any of the three forms must be the same content (same hashes: a retry in
another form is a duplicate), and every malformed binary body must be a 422 naming what is
wrong, with nothing stored.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run, row_counts
from thermoledger.meters.wire import (
    BATCH_BINARY,
    BINARY_CONTENT_TYPE,
    BINARY_MAGIC,
    SAMPLE_ENCODINGS,
    content_type,
    dumps_batch,
    split_binary_batch,
)
from thermoledger.service.ingest import prepare_batch, prepare_binary_batch
from thermoledger.service.schemas import IngestBatchIn

NOTHING = {"device": 0, "chunk": 0, "phase": 0}
LIMITS: dict[str, Any] = {"max_chunks": 1000, "max_samples_per_chunk": 1000}


def _counter_chunk(seq: int, *, device_index: int = 0) -> dict[str, Any]:
    c = chunk(seq, n=20, interval_s=0.5, power_w=287.125, device_index=device_index)
    c["samples"]["energy_j"] = [1.2e7 + 143.5625 * i for i in range(20)]
    return c


def _mixed() -> dict[str, Any]:
    """Chunks with a counter column, without one, without samples, and with an unbounded band."""
    no_samples = {**chunk(1, device_index=1), "samples": None}
    unbounded = chunk(2, device_index=1, power_w=250.0)
    unbounded["bound_above_j"] = math.inf
    unbounded["energy_high_j"] = math.inf
    return batch([_counter_chunk(0), chunk(0, device_index=1), no_samples, unbounded])


def _post(client: TestClient, project: Project, run_id: str, body: bytes, kind: str) -> Any:
    return client.post(
        f"/api/v1/runs/{run_id}/chunks",
        content=body,
        headers={**project.ingest, "Content-Type": kind},
    )


def _binary(body: dict[str, Any]) -> bytes:
    return dumps_batch(body["devices"], body["chunks"], samples_encoding=BATCH_BINARY)


def test_layout_is_the_documented_one() -> None:
    body = _binary(batch([_counter_chunk(0)]))
    assert body[:4] == BINARY_MAGIC
    (length,) = struct.unpack_from("<I", body, 4)
    assert length % 8 == 0
    header = json.loads(body[8 : 8 + length])
    assert header["chunks"]["sampled"] == [True]
    assert header["chunks"]["counter"] == [True]
    values = np.frombuffer(body[8 + length :], "<f8")
    assert values.size == 3 * 20
    assert values[20:40].tolist() == [287.125] * 20
    assert values[40] == 1.2e7
    text, blocks = split_binary_batch(body)
    assert blocks.nbytes == 3 * 20 * 8
    assert json.loads(text) == header
    assert content_type(BATCH_BINARY) == BINARY_CONTENT_TYPE
    assert content_type("json") == "application/json"


@pytest.mark.parametrize("encoding", SAMPLE_ENCODINGS)
def test_every_form_prepares_to_the_same_rows(encoding: Any) -> None:
    body = _mixed()
    reference = prepare_batch(
        IngestBatchIn.model_validate_json(json.dumps(body).replace("Infinity", '"inf"')),
        **LIMITS,
    )
    wire = dumps_batch(body["devices"], body["chunks"], samples_encoding=encoding)
    if encoding == BATCH_BINARY:
        prepared = prepare_binary_batch(wire, **LIMITS)
    else:
        prepared = prepare_batch(IngestBatchIn.model_validate_json(wire), **LIMITS)
    assert prepared.devices == reference.devices
    for got, want in zip(prepared.chunks, reference.chunks, strict=True):
        assert got.content_hash == want.content_hash
        assert (got.seq, got.device_key, got.bound_above_j, got.n) == (
            want.seq,
            want.device_key,
            want.bound_above_j,
            want.n,
        )
        if want.samples is None:
            assert got.samples is None
        else:
            assert got.samples is not None
            assert set(got.samples) == set(want.samples)
            for name, values in want.samples.items():
                np.testing.assert_array_equal(got.samples[name], values)


def test_binary_and_json_are_one_content(
    client: TestClient, project: Project, app: FastAPI
) -> None:
    run_id = create_run(client, project)
    body = _mixed()
    first = _post(client, project, run_id, _binary(body), BINARY_CONTENT_TYPE)
    assert first.status_code == 200, first.text
    assert (first.json()["stored"], first.json()["duplicates"]) == (4, 0)
    again = _post(
        client,
        project,
        run_id,
        dumps_batch(body["devices"], body["chunks"]),
        "application/json; charset=utf-8",
    )
    assert (again.json()["stored"], again.json()["duplicates"]) == (0, 4)
    changed = _mixed()
    changed["chunks"][0]["samples"]["t_s"][3] += 0.125  # other content, still valid
    conflict = _post(client, project, run_id, _binary(changed), BINARY_CONTENT_TYPE)
    assert conflict.status_code == 409, conflict.text
    assert row_counts(app, run_id)["chunk"] == 4


def _rebuild(body: bytes, edit: Callable[[dict[str, Any], np.ndarray], bytes | None]) -> bytes:
    text, blocks = split_binary_batch(body)
    header = json.loads(text)
    values = np.frombuffer(blocks, "<f8").copy()
    tail = edit(header, values)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return BINARY_MAGIC + struct.pack("<I", len(new)) + new + (tail or values.tobytes())


def _value(index: int, value: float) -> Callable[[dict[str, Any], np.ndarray], None]:
    def edit(header: dict[str, Any], values: np.ndarray) -> None:
        values[index] = value

    return edit


def _column(name: str, value: Any) -> Callable[[dict[str, Any], np.ndarray], None]:
    def edit(header: dict[str, Any], values: np.ndarray) -> None:
        header["chunks"][name] = value

    return edit


def _entry(name: str, index: int, value: Any) -> Callable[[dict[str, Any], np.ndarray], None]:
    def edit(header: dict[str, Any], values: np.ndarray) -> None:
        header["chunks"][name][index] = value

    return edit


def _truncate(header: dict[str, Any], values: np.ndarray) -> bytes:
    return values[:-1].tobytes()


# Two counter chunks of 20 samples: t_s is values[0:40], power_w [40:80], energy_j [80:120].
BAD: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "magic": (lambda b: b"XXXX" + b[4:], "body"),
    "header-past-end": (lambda b: b[:4] + struct.pack("<I", 10**6) + b[8:], "body"),
    "header-not-json": (lambda b: b[:8] + b"{" * (len(b) - 8), "body"),
    "ragged-columns": (lambda b: _rebuild(b, _column("seq", [0])), "chunks.seq"),
    "short-blocks": (lambda b: _rebuild(b, _truncate), "body"),
    "nan-time": (lambda b: _rebuild(b, _value(22, math.nan)), "chunks[1].samples.t_s[2]"),
    "time-backwards": (lambda b: _rebuild(b, _value(25, 0.0)), "chunks[1].samples.t_s[5]"),
    "negative-power": (lambda b: _rebuild(b, _value(44, -1.0)), "chunks[0].samples.power_w[4]"),
    "power-above-max": (lambda b: _rebuild(b, _value(66, 400.0)), "chunks[1].samples.power_w[6]"),
    "inf-counter": (lambda b: _rebuild(b, _value(87, math.inf)), "chunks[0].samples.energy_j[7]"),
    "negative-seq": (lambda b: _rebuild(b, _entry("seq", 1, -1)), "chunks.seq[1]"),
    "nan-energy": (lambda b: _rebuild(b, _entry("energy_j", 0, "nan")), "chunks.energy_j[0]"),
    "counter-unsampled": (
        lambda b: _rebuild(b, _column("sampled", [True, False])),
        "chunks[1].counter",
    ),
    "too-many-samples": (lambda b: _rebuild(b, _entry("n", 0, 5000)), "chunks[0].n"),
    "unknown-device": (
        lambda b: _rebuild(b, _entry("device_key", 0, "node-9/gpu0")),
        "chunks[0].device_key",
    ),
}


@pytest.mark.parametrize(("mutate", "field"), list(BAD.values()), ids=list(BAD))
def test_bad_binary_batches_are_422_naming_the_field(
    app: FastAPI,
    client: TestClient,
    project: Project,
    mutate: Callable[[bytes], bytes],
    field: str,
) -> None:
    run_id = create_run(client, project)
    body = mutate(_binary(batch([_counter_chunk(0), _counter_chunk(1)])))
    response = _post(client, project, run_id, body, BINARY_CONTENT_TYPE)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()
    assert row_counts(app, run_id) == NOTHING
