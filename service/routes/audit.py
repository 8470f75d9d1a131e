"""The audit: verify the project's ledger chain (admin) and export it for an auditor (read).

``GET /audit/verify`` recomputes every hash and link (`db.chain`) and names each broken entry;
``anchor=seq:hash`` (repeatable) also proves that a head published earlier is still in the
chain. ``GET /audit/export`` lists every entry in range — superseded ones included — with its
run, measurement method, uncertainty band, PUE, factor or tariff version (value, unit, source,
year, basis, window), seq and hashes, as CSV or JSON; ``provenance_json`` is exactly what the
hash covers, so an auditor can recompute each hash from the export alone. The CSV follows the
service's one CSV policy (`service.csv_writer`): a text cell a spreadsheet would run as a formula
(a run named ``=HYPERLINK(...)``) starts with an apostrophe, which `service.csv_writer.unguard`
removes; numbers are written as numbers.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from thermoledger.db import ledger, rollups
from thermoledger.db.chain import ChainVerdict
from thermoledger.db.errors import InvalidInput
from thermoledger.db.models import Scope
from thermoledger.db.types import utcnow

from ..csv_writer import write_csv
from ..deps import PrincipalDep, ReadTenant, SessionDep
from ..ledger_schemas import ChainProblemPublic, HeadPublic, Instant, VerifyPublic
from .rollups import check_range

router = APIRouter(prefix="/audit", tags=["audit"])

_ANCHOR = re.compile(r"^([1-9][0-9]{0,18}):([0-9a-f]{64})$")

HASH_RULE = (
    "hash = SHA-256(prev_hash + canonical JSON of {seq, project, run, kind, value_si, unit_si, "
    "value_given, unit_given, source, provenance, created_at}) with sorted keys, no whitespace, "
    "integral numbers within ±2^53 written as integers; prev_hash of seq 1 is 64 zeros"
)


def parse_anchors(anchors: list[str]) -> dict[int, str]:
    """``["12:ab…"]`` → ``{12: "ab…"}``.

    Raises:
        InvalidInput: An anchor that is not ``seq:hash`` (naming it by position).
    """
    parsed: dict[int, str] = {}
    for i, text in enumerate(anchors):
        match = _ANCHOR.match(text.strip())
        if match is None:
            raise InvalidInput.one(f"anchor[{i}]", f"{text!r} is not <seq>:<64 hex digits>")
        parsed[int(match.group(1))] = match.group(2)
    return parsed


def verify_public(project: str, verdict: ChainVerdict) -> VerifyPublic:
    """The API form of a verdict."""
    return VerifyPublic(
        project=project,
        ok=verdict.ok,
        entries=verdict.entries,
        head=HeadPublic(seq=verdict.head_seq, hash=verdict.head_hash),
        problems=[
            ChainProblemPublic(kind=p.kind, seq=p.seq, id=p.entry_id, message=p.message)
            for p in verdict.problems
        ],
    )


@router.get("/verify")
def verify(
    principal: PrincipalDep,
    session: SessionDep,
    anchor: Annotated[
        list[str], Query(description="<seq>:<hash> published earlier; repeat for several")
    ] = [],  # noqa: B006 - FastAPI copies query defaults
) -> VerifyPublic:
    """Verify the project's ledger chain (admin scope); ``ok`` false lists each broken entry."""
    tenant = principal.require(Scope.ADMIN)
    verdict = ledger.verify(session, project_id=tenant.id, anchors=parse_anchors(anchor))
    return verify_public(tenant.slug, verdict)


@router.get(
    "/export",
    response_class=Response,
    responses={
        200: {
            "content": {"text/csv": {}, "application/json": {}},
            "description": "every entry in range, traceable to runs, methods and factors",
        }
    },
)
def export(
    tenant: ReadTenant,
    session: SessionDep,
    format: Literal["csv", "json"] = "json",
    start: Annotated[Instant | None, Query(alias="from")] = None,
    end: Annotated[Instant | None, Query(alias="to", description="exclusive")] = None,
) -> Response:
    """The auditor's export of the project's ledger (entries by ``accounted_at`` in range)."""
    check_range(start, end)
    rows, verdict = rollups.export_rows(session, project_id=tenant.id, start=start, end=end)
    chain = verify_public(tenant.slug, verdict)
    stem = f"ledger-{tenant.slug}"
    headers = {
        "X-Thermoledger-Chain-Ok": "true" if verdict.ok else "false",
        "X-Thermoledger-Chain-Head": f"{verdict.head_seq}:{verdict.head_hash}",
    }
    if format == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{stem}.csv"'
        return Response(
            write_csv(rollups.EXPORT_COLUMNS, rows),
            media_type="text/csv; charset=utf-8",
            headers=headers,
        )
    document = {
        "project": tenant.slug,
        "generated_at": utcnow().isoformat(),
        "from": None if start is None else start.isoformat(),
        "to": None if end is None else end.isoformat(),
        "chain": chain.model_dump(),
        "hash_rule": HASH_RULE,
        "columns": list(rollups.EXPORT_COLUMNS),
        "entries": [{**row, "provenance": json.loads(row["provenance_json"])} for row in rows],
    }
    headers["Content-Disposition"] = f'attachment; filename="{stem}.json"'
    return Response(
        json.dumps(document, ensure_ascii=False, allow_nan=False),
        media_type="application/json",
        headers=headers,
    )
