"""The typed answers: the report model is the core's mapping key for key, and a plan reads each
comparable run's aggregates once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.orm import Session

from tests.pages.seed import Fleet
from tests.support.client import Project, TestClient
from thermoledger.db.basis import run_basis
from thermoledger.db.tokens import get_project
from thermoledger.db.totals import run_usage
from thermoledger.service.economics import comparable_runs
from thermoledger.service.reports import report_mapping, report_public

H100 = "nvidia-h100-sxm5-80gb"


def _project_id(session: Session, slug: str) -> int:
    return int(get_project(session, slug=slug).id)


def test_the_typed_report_is_the_mapping_key_for_key(
    app: FastAPI, client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    runs = (fleet.train, fleet.serve, fleet.train_large, fleet.serve_large)
    mappings = {}
    with app.state.sessionmaker() as session:
        project_id = _project_id(session, project.slug)
        for run in runs:
            usage = run_usage(session, project_id=project_id, run_id=UUID(run.id))
            basis = run_basis(session, project_id=project_id, run=usage.run)
            mapping = report_mapping(usage, basis=basis)
            typed = report_public(usage, basis=basis)
            # Same keys, same order, same values and number types (1 stays 1, 1.0 stays 1.0).
            assert json.dumps(typed.model_dump(mode="json")) == json.dumps(mapping), run.name
            mappings[run.id] = mapping
    for run in runs:
        response = client.get(f"/api/v1/runs/{run.id}/report", headers=project.read)
        assert response.json() == mappings[run.id]


@contextmanager
def _statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every SQL statement ``engine`` sends while the block runs."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_a_plan_reads_each_comparable_runs_aggregates_once(
    app: FastAPI, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    with app.state.sessionmaker() as session:
        project_id = _project_id(session, project.slug)
        with _statements(app.state.engine) as sent:
            runs = comparable_runs(session, project_id=project_id, hardware=H100, dtype="bf16")
    assert {str(r.id) for r in runs} == {fleet.train.id, fleet.train_large.id}
    # The device totals (`db.totals.run_usage`) are the run's aggregates: one read per
    # measured training run, never a second one for its report.
    totals = [s for s in sent if "device_total" in s]
    assert len(totals) == len(runs), f"{len(totals)} reads of the device totals, {len(runs)} runs"
