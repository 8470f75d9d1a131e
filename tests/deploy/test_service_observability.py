"""The service's ``/metrics`` and request logs, through the real app on SQLite and PostgreSQL.

Counts are read back from the Prometheus text the endpoint serves (what a scraper sees), and
compared before and after the requests under test, so the tests do not depend on each other.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.liveserver import ROOT, free_port, migrate_and_issue_token
from tests.support import dbutil
from tests.support.builders import batch, chunk
from tests.support.client import TestClient, bearer, clean_settings, create_run, make_project
from thermoledger.db import migrate
from thermoledger.meters.logs import JsonFormatter
from thermoledger.service.app import create_app
from thermoledger.service.metrics import UNMATCHED, record_ingest
from thermoledger.service.settings import Settings

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

WAIT_S = 30.0


@pytest.fixture(scope="module", params=dbutil.BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with dbutil.database_url(request.param, tmp_path_factory.mktemp("obs-db")) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="module")
def app(database_url: str) -> Iterator[FastAPI]:
    application = create_app(clean_settings(database_url=database_url, max_body_bytes=64 * 1024))
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``GET /metrics``: (name, sorted labels) → value."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_served_in_the_prometheus_text_format(client: TestClient) -> None:
    samples = scrape(client)
    assert value(samples, "thermoledger_service_info", version="0.1.0") == 1.0
    assert value(samples, "thermoledger_threadpool_threads_limit") > 0
    # Served while the scrape itself is in flight.
    assert value(samples, "thermoledger_http_requests_in_flight") == 1.0


def test_requests_are_counted_and_timed_by_route_template(client: TestClient, app: FastAPI) -> None:
    project = make_project(app)
    before = scrape(client)
    run_id = create_run(client, project)
    missing = client.get(f"/api/v1/runs/{uuid.uuid4()}", headers=project.read)
    assert missing.status_code == 404  # routed: counted under the route's template
    # refused from its headers, before routing (service.guard): counted as unmatched
    assert client.get(f"/api/v1/runs/{run_id}").status_code == 401
    assert (
        client.get(f"/api/v1/no-such-thing/{uuid.uuid4()}", headers=project.read).status_code == 404
    )
    after = scrape(client)
    template = "/api/v1/runs/{run_id}"
    put = {"method": "PUT", "route": template}
    assert value(after, "thermoledger_http_requests_total", **put, status_class="2xx") == (
        value(before, "thermoledger_http_requests_total", **put, status_class="2xx") + 1
    )
    get = {"method": "GET", "route": template, "status_class": "4xx"}
    assert value(after, "thermoledger_http_requests_total", **get) == (
        value(before, "thermoledger_http_requests_total", **get) + 1
    )
    unmatched = {"method": "GET", "route": UNMATCHED, "status_class": "4xx"}
    assert value(after, "thermoledger_http_requests_total", **unmatched) == (
        value(before, "thermoledger_http_requests_total", **unmatched) + 2
    )
    count = "thermoledger_http_request_duration_seconds_count"
    assert value(after, count, **put) == value(before, count, **put) + 1
    assert value(after, "thermoledger_http_request_duration_seconds_sum", **put) > 0
    # Raw ids never become label values (bounded cardinality).
    text = client.get("/metrics").text
    assert run_id not in text


def test_ingest_through_the_api_moves_the_ingest_counters(client: TestClient, app: FastAPI) -> None:
    project = make_project(app)
    run_id = create_run(client, project)
    body = batch([chunk(0, n=10), chunk(1, n=10), chunk(0, device_index=1, n=5)])
    url = f"/api/v1/runs/{run_id}/chunks"
    before = scrape(client)
    assert client.post(url, json=body, headers=project.ingest).status_code == 200
    assert client.post(url, json=body, headers=project.ingest).status_code == 200  # repeats
    refused = batch([{**chunk(2), "n": 0}])
    assert client.post(url, json=refused, headers=project.ingest).status_code == 422
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("thermoledger_ingest_batches_total") == 2
    assert delta("thermoledger_ingest_chunks_total", status="stored") == 3
    assert delta("thermoledger_ingest_chunks_total", status="duplicate") == 3
    assert delta("thermoledger_ingest_samples_total") == 2 * 25
    errors = {"method": "POST", "route": "/api/v1/runs/{run_id}/chunks", "status_class": "4xx"}
    assert delta("thermoledger_http_requests_total", **errors) == 1


def test_record_ingest_outside_a_request_changes_nothing(client: TestClient) -> None:
    before = scrape(client)
    record_ingest(stored=5, duplicates=0, samples=50)
    after = scrape(client)
    assert value(after, "thermoledger_ingest_chunks_total", status="stored") == value(
        before, "thermoledger_ingest_chunks_total", status="stored"
    )


def test_a_body_refused_before_routing_is_counted_as_unmatched(
    client: TestClient, app: FastAPI
) -> None:
    project = make_project(app)
    labels = {"method": "POST", "route": UNMATCHED, "status_class": "4xx"}
    before = scrape(client)
    big = b"x" * (64 * 1024 + 1)
    url = f"/api/v1/runs/{uuid.uuid4()}/chunks"
    response = client.post(url, content=big, headers=project.ingest)
    assert response.status_code == 413
    after = scrape(client)
    assert value(after, "thermoledger_http_requests_total", **labels) == (
        value(before, "thermoledger_http_requests_total", **labels) + 1
    )


def test_each_app_counts_on_its_own_registry(database_url: str) -> None:
    settings = clean_settings(database_url=database_url)
    first, second = create_app(settings), create_app(settings)
    try:
        with TestClient(first) as a, TestClient(second) as b:
            for _ in range(3):
                a.get("/healthz")
            b.get("/healthz")
            labels = {"method": "GET", "route": "/healthz", "status_class": "2xx"}
            assert value(scrape(a), "thermoledger_http_requests_total", **labels) == 3
            assert value(scrape(b), "thermoledger_http_requests_total", **labels) == 1
    finally:
        first.state.engine.dispose()
        second.state.engine.dispose()


def test_a_metrics_token_guards_the_endpoint(database_url: str) -> None:
    token = "scrape-" + "s" * 30
    settings = clean_settings(database_url=database_url, metrics_token=token)
    app = create_app(settings)
    try:
        with TestClient(app) as c:
            assert c.get("/metrics").status_code == 401
            assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
            ok = c.get("/metrics", headers=bearer(token))
            assert ok.status_code == 200
            assert "thermoledger_http_requests_total" in ok.text
    finally:
        app.state.engine.dispose()


def test_request_logs_carry_the_route_status_and_run_id(
    client: TestClient, app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    project = make_project(app)
    run_id = create_run(client, project)
    caplog.set_level(logging.INFO, logger="thermoledger.service.access")
    assert client.get(f"/api/v1/runs/{run_id}", headers=project.read).status_code == 200
    (record,) = [r for r in caplog.records if r.name == "thermoledger.service.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["run_id"] == run_id
    assert line["route"] == "/api/v1/runs/{run_id}"
    assert line["status"] == 200
    assert line["method"] == "GET"
    assert line["duration_ms"] >= 0


def test_serve_with_json_logs_writes_one_object_per_line(tmp_path: Path) -> None:
    """``thermoledger-server serve --log-format json``: uvicorn's lines and request lines alike."""
    url = dbutil.sqlite_url(tmp_path)
    token = migrate_and_issue_token(url, project="logs")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOLEDGER_")}
    log_path = tmp_path / "server.log"
    run_id = str(uuid.uuid4())
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "thermoledger.service.cli", "serve", "--database-url", url,
             "--port", str(port), "--log-format", "json"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        httpx.get(
            f"http://127.0.0.1:{port}/api/v1/runs/{run_id}", headers=bearer(token), timeout=5.0
        )
    finally:
        server.terminate()
        server.wait(timeout=WAIT_S)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert {"uvicorn.error", "thermoledger.service.access"} <= {line["logger"] for line in lines}
    (request,) = [line for line in lines if line.get("run_id") == run_id]
    assert request["status"] == 404  # a routed request: its line has the route and the run
    assert request["route"] == "/api/v1/runs/{run_id}"
    assert not any(line["logger"] == "uvicorn.access" for line in lines)


def test_settings_know_the_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMOLEDGER_LOG_FORMAT", "json")
    assert Settings(database_url="sqlite://").log_format == "json"
    monkeypatch.setenv("THERMOLEDGER_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings(database_url="sqlite://")
