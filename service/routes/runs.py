"""Runs: create-or-merge by client UUID, list, read, end, declare work."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response, status

from thermoledger.db import ledger, runs
from thermoledger.db.errors import InvalidInput
from thermoledger.db.models import RunKind, RunStatus
from thermoledger.db.records import RunCursor, RunRecord
from thermoledger.db.types import to_utc, utcnow

from ..deps import IngestTenant, ReadTenant, SessionDep, SettingsDep
from ..quantities import parse_count, parse_flops
from ..schemas import TAG_KEY_PATTERN, RunCreate, RunEnd, RunPage, RunPublic, WorkDeclare
from ..timebounds import StoredTime

router = APIRouter(prefix="/runs", tags=["runs"])

MAX_PAGE = 500
#: Longest cursor accepted; the cursors this server issues are about 110 characters.
MAX_CURSOR_CHARS = 256


@router.put(
    "/{run_id}",
    responses={
        201: {"model": RunPublic, "description": "created"},
        409: {"description": "the run exists with another kind, or has ended under another name"},
    },
)
def put_run(
    run_id: UUID,
    body: RunCreate,
    tenant: IngestTenant,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> RunPublic:
    """Create the run with this client-made id, or merge into it (every node of a job calls it).

    The id names a run within the token's project: another project may use the same id for
    a run of its own, and neither sees the other's. 201 when created, 200 when it existed
    (same body: same run, unchanged). 409 when the run exists with another kind, or has ended
    and the request would rename it or move its start. 422 when the run's merged tags or
    ``host_info`` would pass their limits.
    """
    record, created = runs.upsert_run(
        session,
        project_id=tenant.id,
        run_id=run_id,
        name=body.name,
        kind=body.kind,
        started_at=body.started_at or utcnow(),
        tags=body.tags,
        host_info=body.host_info,
        simulated=body.simulated,
        max_host_info_bytes=settings.max_host_info_bytes,
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return RunPublic.of(record, tenant.slug)


def _encode_cursor(record: RunRecord) -> str:
    """The key of the page's last run: base64url of ``["<started_at ISO>", "<run id>"]``."""
    raw = json.dumps([record.started_at.isoformat(), str(record.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> RunCursor:
    """The key `_encode_cursor` wrote; anything else (a client can send any text) is a 422
    naming ``cursor``: not JSON, nested too deep, not two strings, not a UUID, or a time
    without a UTC equivalent. The time is not held to the stored range: a cursor only
    repeats a stored run's start."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
        if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ValueError("not a [time, run id] pair")
        started, run_id = key
        at = datetime.fromisoformat(started)
        if at.tzinfo is None:
            raise ValueError("naive time")
        return RunCursor(started_at=to_utc(at), run_id=UUID(run_id))
    except (ValueError, TypeError, RecursionError, binascii.Error) as e:
        raise InvalidInput.one("cursor", "not a cursor this server issued") from e


def _parse_tags(tags: list[str], max_filters: int) -> list[tuple[str, str]]:
    if len(tags) > max_filters:
        raise InvalidInput.one(
            "tag", f"{len(tags)} tag filters; at most {max_filters} in one query"
        )
    wanted = []
    for i, text in enumerate(tags):
        key, sep, value = text.partition("=")
        if not sep or not TAG_KEY_PATTERN.match(key):
            raise InvalidInput.one(f"tag[{i}]", f"{text!r} is not key=value")
        wanted.append((key, value))
    return wanted


@router.get("")
def list_runs(
    tenant: ReadTenant,
    session: SessionDep,
    settings: SettingsDep,
    kind: RunKind | None = None,
    status_: Annotated[RunStatus | None, Query(alias="status")] = None,
    tag: Annotated[
        list[str],
        Query(description="key=value; repeat to require several (at most max_tag_filters)"),
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    started_after: StoredTime | None = None,
    started_before: StoredTime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
) -> RunPage:
    """The project's runs, newest first, filtered; keyset pages (pass ``next_cursor`` back).

    422 for more ``tag`` filters than ``Settings.max_tag_filters`` (each one is a condition
    of the query), for ``started_after``/``started_before`` outside the stored time range
    (refused, not clamped: `service.timebounds`), and for a cursor this server did not issue.
    """
    records = runs.list_runs(
        session,
        project_id=tenant.id,
        kind=kind,
        status=status_,
        tags=_parse_tags(tag, settings.max_tag_filters),
        started_after=started_after,
        started_before=started_before,
        after=None if cursor is None else _decode_cursor(cursor),
        limit=limit + 1,
    )
    page = records[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(records) > limit else None
    return RunPage(items=[RunPublic.of(r, tenant.slug) for r in page], next_cursor=next_cursor)


@router.get("/{run_id}")
def get_run(run_id: UUID, tenant: ReadTenant, session: SessionDep) -> RunPublic:
    """One run."""
    return RunPublic.of(runs.get_run(session, project_id=tenant.id, run_id=run_id), tenant.slug)


def _end(
    session: SessionDep,
    tenant: IngestTenant,
    run_id: UUID,
    body: RunEnd | None,
    run_status: Literal[RunStatus.FINISHED, RunStatus.FAILED],
) -> RunPublic:
    body = body or RunEnd()
    record = runs.end_run(
        session,
        project_id=tenant.id,
        run_id=run_id,
        status=run_status,
        ended_at=body.ended_at,
        exit_code=body.exit_code,
    )
    # Freeze the run's published figures in the ledger, in the same transaction (a repeat
    # appends only when its measurements changed since; see `db.ledger.record_run_end`).
    ledger.record_run_end(session, project_id=tenant.id, run_id=run_id)
    return RunPublic.of(record, tenant.slug)


@router.post("/{run_id}/finish")
def finish_run(
    run_id: UUID, tenant: IngestTenant, session: SessionDep, body: RunEnd | None = None
) -> RunPublic:
    """Mark the run finished (idempotent; 409 if it already failed)."""
    return _end(session, tenant, run_id, body, RunStatus.FINISHED)


@router.post("/{run_id}/fail")
def fail_run(
    run_id: UUID, tenant: IngestTenant, session: SessionDep, body: RunEnd | None = None
) -> RunPublic:
    """Mark the run failed, with the job's exit code (idempotent; 409 if it finished)."""
    return _end(session, tenant, run_id, body, RunStatus.FAILED)


@router.post("/{run_id}/work")
def declare_work(
    run_id: UUID, body: WorkDeclare, tenant: IngestTenant, session: SessionDep
) -> RunPublic:
    """Declare the run's work: totals so far (FLOPs with a unit, tokens, model size N)."""
    record = runs.declare_work(
        session,
        project_id=tenant.id,
        run_id=run_id,
        flops=None if body.flops is None else parse_flops(body.flops, field="flops"),
        flops_dtype=body.dtype,
        tokens=None if body.tokens is None else parse_count(body.tokens, "tokens", field="tokens"),
        params=(
            None
            if body.model_params is None
            else parse_count(body.model_params, "dimensionless", field="model_params")
        ),
    )
    return RunPublic.of(record, tenant.slug)
