"""Disclosure exports (read scope), each anchored in the ledger (`db.disclosure`).

``GET /disclosures/eu-ai-act?model=<tag>`` (or ``run_id=`` repeated): the EU AI Act / GPAI
Model Documentation Form energy section, JSON or ``format=md``. ``GET /disclosures/esrs?from=
&to=``: ESRS E1-5 and E1-6 for the period. ``GET /disclosures/spdx?model=<tag>``: an SPDX
3.0.1 JSON-LD document with the model's ``ai_energyConsumption``. Each names the entries it
rests on and the chain head (also in the ``X-Thermoledger-Chain-Head`` header), which
``GET /audit/verify?anchor=`` checks later.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response

from thermoledger.accounting import disclosure as fmt
from thermoledger.db import disclosure
from thermoledger.db.errors import InvalidInput
from thermoledger.db.types import utcnow

from ..deps import ReadTenant, SessionDep
from ..disclosure_schemas import EsrsPublic, EuAiActPublic, FigurePublic
from ..ledger_schemas import Instant
from .rollups import check_range

router = APIRouter(prefix="/disclosures", tags=["disclosures"])

ModelQuery = Annotated[
    str | None, Query(min_length=1, max_length=200, pattern=r"^[^\x00]*$", description="model tag")
]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no run carries the model tag"}}


def _head(anchor: dict[str, Any]) -> dict[str, str]:
    return {"X-Thermoledger-Chain-Head": f"{anchor['head']['seq']}:{anchor['head']['hash']}"}


def _with_reason(figure: FigurePublic) -> str:
    return figure.text if figure.reason is None else f"{figure.text} ({figure.reason})"


def _eu_markdown(doc: EuAiActPublic) -> str:
    return fmt.markdown(
        f"EU AI Act energy disclosure: model {doc.model or '(runs listed)'}",
        [
            (
                "Annex XI §1(2)(d)-(e), GPAI Model Documentation Form",
                [
                    ("Training energy (MWh)", _with_reason(doc.training_energy_mwh)),
                    ("Boundary", doc.boundary.kind),
                    ("PUE", ", ".join(f"{p:g}" for p in doc.boundary.pue or []) or None),
                    ("Training FLOPs", _with_reason(doc.training_flops)),
                    ("Wall-clock days", doc.wall_clock_days),
                    ("Hardware days", doc.hardware_days),
                    ("Methodology", doc.methodology),
                ],
            ),
            (
                "Ledger anchor",
                [
                    ("Chain head", f"{doc.anchor.head.seq}:{doc.anchor.head.hash}"),
                    ("Entries", ", ".join(f"{e.seq}:{e.hash}" for e in doc.anchor.entries)),
                    ("Verify", doc.anchor.verify["cli"]),
                ],
            ),
        ],
    )


@router.get(
    "/eu-ai-act",
    responses={**_NOT_FOUND, 200: {"content": {"text/markdown": {}}}},
    response_model=EuAiActPublic,
)
def eu_ai_act(
    tenant: ReadTenant,
    session: SessionDep,
    model: ModelQuery = None,
    run_id: Annotated[list[UUID], Query(max_length=1000)] = [],  # noqa: B006 - FastAPI copies
    format: Literal["json", "md"] = "json",
) -> Response:
    """Training energy (MWh), methodology, FLOPs, days and boundary of a model's training."""
    if model is None and not run_id:
        raise InvalidInput.one("model", "give the model tag (model=<tag>) or run_id=… values")
    doc = EuAiActPublic.model_validate(
        disclosure.eu_ai_act(session, project_id=tenant.id, model_tag=model, run_ids=run_id)
    )
    headers = _head(doc.anchor.model_dump())
    if format == "md":
        return Response(
            _eu_markdown(doc), media_type="text/markdown; charset=utf-8", headers=headers
        )
    return Response(doc.model_dump_json(), media_type="application/json", headers=headers)


@router.get("/esrs", response_model=EsrsPublic)
def esrs(
    tenant: ReadTenant,
    session: SessionDep,
    start: Annotated[Instant | None, Query(alias="from")] = None,
    end: Annotated[Instant | None, Query(alias="to", description="exclusive")] = None,
) -> Response:
    """ESRS E1-5 (energy, MWh) and E1-6 (gross Scope 2 both ways, tCO2e) for ``[from, to)``."""
    check_range(start, end)
    doc = EsrsPublic.model_validate(
        disclosure.esrs(session, project_id=tenant.id, start=start, end=end)
    )
    return Response(
        json.dumps(doc.dump(), ensure_ascii=False, allow_nan=False),
        media_type="application/json",
        headers=_head(doc.anchor.model_dump()),
    )


@router.get(
    "/spdx",
    response_class=Response,
    responses={**_NOT_FOUND, 200: {"content": {"application/ld+json": {}}}},
)
def spdx(tenant: ReadTenant, session: SessionDep, model: ModelQuery = None) -> Response:
    """An SPDX 3.0.1 JSON-LD document: the model's ``ai_AIPackage`` and its energy (kWh)."""
    if model is None:
        raise InvalidInput.one("model", "give the model tag (model=<tag>)")
    document, anchor = disclosure.spdx(session, project_id=tenant.id, model_tag=model, now=utcnow())
    headers = _head(anchor.to_dict())
    return Response(
        json.dumps(document, ensure_ascii=False, allow_nan=False),
        media_type="application/ld+json",
        headers=headers,
    )
