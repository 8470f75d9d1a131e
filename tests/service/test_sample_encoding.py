"""Samples as base64 float64 columns (`meters.wire.SAMPLES_F64_BASE64`) beside JSON lists."""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run, row_counts
from thermoledger.db.models import Chunk
from thermoledger.db.samples import decode_samples
from thermoledger.meters.wire import SAMPLES_F64_BASE64, decode_column, dumps_batch, encode_column

NOTHING = {"device": 0, "chunk": 0, "phase": 0}


def _post(client: TestClient, project: Project, run_id: str, body: bytes) -> Any:
    return client.post(
        f"/api/v1/runs/{run_id}/chunks",
        content=body,
        headers={**project.ingest, "Content-Type": "application/json"},
    )


def _binary(body: dict[str, Any]) -> bytes:
    return dumps_batch(body["devices"], body["chunks"], samples_encoding=SAMPLES_F64_BASE64)


def _counter_chunk(seq: int) -> dict[str, Any]:
    c = chunk(seq, n=20, interval_s=0.5, power_w=287.125)
    c["samples"]["energy_j"] = [1.2e7 + 143.5625 * i for i in range(20)]
    return c


def test_columns_round_trip_bit_for_bit() -> None:
    values = [0.0, 1.76e9 + 0.1, 287.125, 1e-300, 1.2345678901234567e7, math.inf]
    text = encode_column(values)
    assert text.isascii()
    assert list(decode_column(text)) == values
    assert decode_column(text).tobytes() == struct.pack("<6d", *values)
    with pytest.raises(ValueError, match="not base64"):
        decode_column("not base64!")
    with pytest.raises(ValueError, match="whole number of float64"):
        decode_column("AAAA")  # 3 bytes


def test_dumps_batch_encodes_only_list_samples() -> None:
    body = batch([_counter_chunk(0), {**chunk(1), "samples": None}])
    sent = json.loads(_binary(body))
    samples = sent["chunks"][0]["samples"]
    assert samples["encoding"] == SAMPLES_F64_BASE64
    assert list(decode_column(samples["energy_j"])) == body["chunks"][0]["samples"]["energy_j"]
    assert sent["chunks"][1]["samples"] is None
    assert json.loads(dumps_batch(body["devices"], body["chunks"])) == body  # json: as given
    with pytest.raises(ValueError, match="samples_encoding"):
        dumps_batch([], [], samples_encoding="msgpack")  # type: ignore[arg-type]


def test_a_binary_batch_is_stored_like_its_json_twin(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    binary_run = create_run(client, project)
    json_run = create_run(client, project)
    body = batch([_counter_chunk(0), _counter_chunk(1)])
    assert _post(client, project, binary_run, _binary(body)).json()["stored"] == 2
    assert _post(client, project, json_run, json.dumps(body).encode()).json()["stored"] == 2
    # The same values in the other encoding are the same content: duplicates, not conflicts.
    again = _post(client, project, binary_run, json.dumps(body).encode()).json()
    assert (again["stored"], again["duplicates"]) == (0, 2)
    assert _post(client, project, json_run, _binary(body)).json()["duplicates"] == 2
    with app.state.engine.connect() as connection:
        stored = {
            str(run_id): (content_hash, decode_samples(blob))
            for run_id, content_hash, blob in connection.execute(
                sa.select(Chunk.run_id, Chunk.content_hash, Chunk.samples).where(
                    Chunk.run_id.in_([uuid.UUID(binary_run), uuid.UUID(json_run)]), Chunk.seq == 1
                )
            )
        }
    (hash_b, columns_b), (hash_j, columns_j) = stored[binary_run], stored[json_run]
    assert hash_b == hash_j
    for name in ("t_s", "power_w", "energy_j"):
        np.testing.assert_array_equal(columns_b[name], columns_j[name])


def _edit(column: str, index: int, value: float) -> Callable[[dict[str, Any]], None]:
    def mutate(samples: dict[str, Any]) -> None:
        values = list(decode_column(samples[column]))
        values[index] = value
        samples[column] = encode_column(values)

    return mutate


def _set(column: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(samples: dict[str, Any]) -> None:
        samples[column] = value

    return mutate


BAD = {
    "nan-power": (_edit("power_w", 3, math.nan), "chunks[1].samples.power_w[3]"),
    "negative-power": (_edit("power_w", 4, -1.0), "chunks[1].samples.power_w[4]"),
    "inf-counter": (_edit("energy_j", 7, math.inf), "chunks[1].samples.energy_j[7]"),
    "huge-counter": (_edit("energy_j", 0, 1e305), "chunks[1].samples.energy_j[0]"),
    "nan-time": (_edit("t_s", 2, math.nan), "chunks[1].samples.t_s[2]"),
    "time-backwards": (_edit("t_s", 5, 0.0), "chunks[1].samples.t_s[5]"),
    "power-above-max": (_edit("power_w", 6, 400.0), "chunks[1].samples.power_w[6]"),
    "not-base64": (_set("t_s", "%%%"), "chunks[1].samples.t_s"),
    "partial-value": (_set("power_w", encode_column([1.0, 2.0])[:-4]), "chunks[1].samples.power_w"),
    "list-under-base64": (_set("power_w", [287.125] * 20), "chunks[1].samples.power_w"),
    "ragged": (_set("energy_j", encode_column([1.0] * 19)), "chunks[1].samples"),
    "unknown-encoding": (_set("encoding", "f32le-base64"), "chunks[1].samples.encoding"),
}


@pytest.mark.parametrize(("mutate", "field"), list(BAD.values()), ids=list(BAD))
def test_bad_binary_samples_are_422_naming_the_field(
    app: FastAPI,
    client: TestClient,
    project: Project,
    mutate: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    run_id = create_run(client, project)
    body = json.loads(_binary(batch([_counter_chunk(0), _counter_chunk(1)])))
    mutate(body["chunks"][1]["samples"])
    response = _post(client, project, run_id, json.dumps(body).encode())
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()
    assert row_counts(app, run_id) == NOTHING


def test_a_string_column_under_json_encoding_is_422(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    body = json.loads(_binary(batch([_counter_chunk(0)])))
    del body["chunks"][0]["samples"]["encoding"]  # the default, json, wants lists
    response = _post(client, project, run_id, json.dumps(body).encode())
    assert response.status_code == 422
    assert response.json()["field"] == "chunks[0].samples.t_s"
    assert row_counts(app, run_id) == NOTHING
