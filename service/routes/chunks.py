"""Chunk ingest: the meters' batches, all or nothing, idempotent by (run, device, seq)."""

from __future__ import annotations

import json
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from thermoledger.db import chunks
from thermoledger.db.models import Scope
from thermoledger.meters.wire import BINARY_CONTENT_TYPE

from ..deps import (
    RawBody,
    SettingsDep,
    authenticate_request,
    ingest_precheck,
    request_transaction,
)
from ..ingest import prepare_batch, prepare_binary_batch
from ..metrics import record_ingest
from ..schemas import IngestBatchIn, IngestPublic
from ..settings import Settings

router = APIRouter(prefix="/runs/{run_id}/chunks", tags=["chunks"])

_SCHEMA = IngestBatchIn.model_json_schema(
    by_alias=True, ref_template="#/components/schemas/{model}"
)
#: Models the ingest body refers to; `service.app` adds them to the OpenAPI components.
SCHEMA_COMPONENTS: dict[str, Any] = {
    **_SCHEMA.pop("$defs", {}),
    "IngestBatchIn": _SCHEMA,
}
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/IngestBatchIn"}},
            BINARY_CONTENT_TYPE: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": (
                        "The same batch, columnar: b'TLB\\x01', a u32le header length, a JSON "
                        "header (devices, one list per chunk field, sampled/counter flags), "
                        "then float64le blocks t_s, power_w, energy_j (see meters.wire)"
                    ),
                }
            },
        },
    }
}


@router.post(
    "",
    response_model=IngestPublic,
    openapi_extra=_BODY,
    dependencies=[Depends(ingest_precheck)],
    responses={
        409: {"description": "a chunk key repeats with other content"},
        413: {"description": "body larger than max_body_bytes"},
        422: {"description": "a refused field, named by its path; nothing was stored"},
    },
)
async def ingest_chunks(
    run_id: UUID,
    request: Request,
    settings: SettingsDep,
    body: RawBody,
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Store a batch of sealed chunks (`meters.wire.IngestBatch`).

    The body is parsed here in one pass (not by FastAPI) so a large batch is parsed by
    pydantic's JSON parser straight into typed values. Each chunk is acknowledged as
    ``stored`` or ``duplicate`` (identical to a stored chunk); any refused chunk rejects the
    whole batch and stores nothing. ``Content-Type:
    application/vnd.thermoledger.batch`` sends the columnar binary form
    (`meters.wire.BATCH_BINARY`); anything else is read as JSON.
    """
    # All of it in one thread-pool hop (`service.deps` says why): one transaction,
    # authenticated in full inside it, committed before the acknowledgement is sent.
    return await run_in_threadpool(_ingest, request, settings, run_id, body, content_type)


def _ingest(
    request: Request, settings: Settings, run_id: UUID, body: bytes, content_type: str | None
) -> Response:
    limits: dict[str, Any] = {
        "max_chunks": settings.max_chunks_per_batch,
        "max_samples_per_chunk": settings.max_samples_per_chunk,
        "compress_samples": settings.compress_samples,
    }
    media_type = (content_type or "").partition(";")[0].strip().lower()
    with request_transaction(request) as session:
        tenant = authenticate_request(request, session, settings).require(Scope.INGEST)
        if media_type == BINARY_CONTENT_TYPE:
            prepared = prepare_binary_batch(body, **limits)
        else:
            prepared = prepare_batch(IngestBatchIn.model_validate_json(body), **limits)
        acks = chunks.ingest_chunks(
            session,
            project_id=tenant.id,
            run_id=run_id,
            devices=prepared.devices,
            chunks=prepared.chunks,
            compress_samples=settings.compress_samples,
        )
    stored = sum(1 for a in acks if a.status == "stored")
    record_ingest(
        stored=stored, duplicates=len(acks) - stored, samples=sum(c.n for c in prepared.chunks)
    )
    # The acks echo values already validated: written straight as JSON in the shape of
    # `IngestPublic` (which documents it) instead of through a model per chunk, which cost
    # ~10 % of an ingest request's CPU (a batch acknowledges hundreds of chunks).
    keys = {key: json.dumps(key) for key in {a.device_key for a in acks}}
    chunks_json = ",".join(
        f'{{"device_key":{keys[a.device_key]},"seq":{a.seq},"status":"{a.status}"}}' for a in acks
    )
    content = (
        f'{{"run_id":"{run_id}","stored":{stored},"duplicates":{len(acks) - stored},'
        f'"chunks":[{chunks_json}]}}'
    )
    return Response(content, media_type="application/json")
