"""The Grafana dashboard only queries metrics that the service and the meters export.

The exported names are read from the Prometheus text of a real service app and of a real meter
(simulated devices, an uploader's counting transport): every ``# TYPE`` line gives a family and
the series names it produces (``_total`` for a counter; ``_bucket``, ``_sum``, ``_count`` for a
histogram), so a family with no series yet (no missed reading so far) still counts as exported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.support import dbutil
from tests.support.client import clean_settings
from tests.support.deploy import DEPLOY
from thermoledger.db import migrate
from thermoledger.meters.api import Meter
from thermoledger.meters.metrics import CountingTransport, MeterCollector
from thermoledger.service.app import create_app

DASHBOARD = DEPLOY / "grafana" / "thermoledger-dashboard.json"
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "info": ("_info",),
}


def exported(text: str) -> set[str]:
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE):
        base = name.removesuffix("_total") if kind == "counter" else name
        names.update(base + suffix for suffix in SUFFIXES[kind])
    return names


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    directory: Path = tmp_path_factory.mktemp("dashboard")
    url = dbutil.sqlite_url(directory)
    migrate.upgrade(url)
    app = create_app(clean_settings(database_url=url))
    names = exported(generate_latest(app.state.metrics.registry).decode())
    app.state.engine.dispose()
    meter = Meter(
        "dashboard", backend="simulated", spool_dir=directory, env={}, interval_s=0.01
    ).start()
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MeterCollector(meter, transport=CountingTransport()))
        names |= exported(generate_latest(registry).decode())
    finally:
        meter.stop()
    return names


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["name"], variable["definition"]


def test_the_dashboard_is_grafana_json_with_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(list(queries(dashboard))) >= 10


def test_every_metric_the_dashboard_queries_is_exported(exported_names: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {
        (where, name)
        for where, expr in queries(dashboard)
        for name in re.findall(r"\bthermoledger_[a-z0-9_]+", expr)
    }
    assert len({name for _, name in used}) >= 12
    missing = sorted((where, name) for where, name in used if name not in exported_names)
    assert not missing, f"queried but not exported: {missing}"


def test_the_headline_metrics_have_their_unit_suffixed_names(exported_names: set[str]) -> None:
    assert {
        "thermoledger_gpu_power_watts",
        "thermoledger_gpu_energy_joules_total",
        "thermoledger_meter_samples_total",
        "thermoledger_meter_spool_pending_chunks",
        "thermoledger_meter_upload_failures_total",
        "thermoledger_ingest_chunks_total",
        "thermoledger_ingest_samples_total",
        "thermoledger_http_request_duration_seconds_bucket",
        "thermoledger_http_requests_total",
        "thermoledger_http_requests_in_flight",
        "thermoledger_threadpool_tasks_waiting",
    } <= exported_names
    assert "thermoledger_gpu_power_watt" not in exported_names  # control: exact names only
