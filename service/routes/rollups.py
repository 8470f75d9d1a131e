"""Period rollups of the project's ledger (read scope): energy, Scope 2 both ways, cost, SCI.

Every figure is a sum of frozen ledger entries (`db.rollups`), and each row lists the seqs it
sums, so it can be traced to the entries — and through their provenance to the runs, the
measurement methods and the factor versions — with ``GET /audit/export``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from thermoledger.db import rollups
from thermoledger.db.errors import InvalidInput

from ..deps import ReadTenant, SessionDep
from ..ledger_schemas import Instant, RollupsPublic
from ..schemas import TAG_KEY_PATTERN

router = APIRouter(prefix="/rollups", tags=["rollups"])

METHOD = (
    "Sums of the ledger's current figures (superseded entries left out) whose accounted_at "
    "(a run's end) falls in the period, UTC. Facility energy = IT energy × the PUE each run "
    "was ledgered with. CO2e location- and market-based side by side (GHG Protocol Scope 2); "
    "a total is available only when every run of the group has the figure. SCI (ISO/IEC "
    "21031) = (location-based O + embodied M) / R. Offsets are never netted."
)


def check_range(start: datetime | None, end: datetime | None) -> None:
    """Refuse an empty or inverted ``[from, to)`` range, naming ``to``."""
    if start is not None and end is not None and end <= start:
        raise InvalidInput.one("to", f"{end.isoformat()} is not after from {start.isoformat()}")


@router.get("")
def get_rollups(
    tenant: ReadTenant,
    session: SessionDep,
    period: Literal["month", "quarter"] = "month",
    group_by: Literal["project", "tag"] = "project",
    tag_key: Annotated[
        str | None,
        Query(pattern=TAG_KEY_PATTERN.pattern, description="the tag to group by (group_by=tag)"),
    ] = None,
    start: Annotated[Instant | None, Query(alias="from")] = None,
    end: Annotated[Instant | None, Query(alias="to", description="exclusive")] = None,
) -> RollupsPublic:
    """The project's figures per month or quarter, by project or by the value of one tag."""
    if group_by == "tag" and tag_key is None:
        raise InvalidInput.one("tag_key", "required when group_by=tag (e.g. tag_key=team)")
    check_range(start, end)
    rows = rollups.rollup_project(
        session,
        project_id=tenant.id,
        period=period,
        group_by=group_by,
        tag_key=tag_key,
        start=start,
        end=end,
    )
    return RollupsPublic.model_validate(
        {
            "project": tenant.slug,
            "period": period,
            "group_by": group_by,
            "tag_key": tag_key,
            "from": None if start is None else start.isoformat(),
            "to": None if end is None else end.isoformat(),
            "method": METHOD,
            "rows": [row.to_dict() for row in rows],
        }
    )
