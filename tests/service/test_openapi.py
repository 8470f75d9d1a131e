"""The product's main outputs have an OpenAPI schema: the run report, the plan, amortisation
and the rollups each declare a typed 200 response, with units in the field names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.client import TestClient, clean_settings
from thermoledger.service.app import create_app


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory: Path = tmp_path_factory.mktemp("openapi")
    app = create_app(clean_settings(database_url=f"sqlite:///{directory}/unused.db"))
    try:
        response = TestClient(app).get("/openapi.json")
    finally:
        app.state.engine.dispose()
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``$ref`` followed, and ``anyOf: [X, null]`` (an optional X) taken as X."""
    while True:
        if "$ref" in schema:
            name = schema["$ref"].removeprefix("#/components/schemas/")
            schema = document["components"]["schemas"][name]
        elif "anyOf" in schema:
            options = [s for s in schema["anyOf"] if s.get("type") != "null"]
            assert len(options) == 1, schema
            schema = options[0]
        else:
            return schema


def _ok_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    response = document["paths"][path][method]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]
    assert "$ref" in schema, f"{method.upper()} {path}: untyped 200 response {schema}"
    resolved = _resolve(document, schema)
    assert resolved.get("type") == "object", resolved
    assert resolved.get("properties"), resolved
    return resolved


def _field(document: dict[str, Any], schema: dict[str, Any], *path: str) -> dict[str, Any]:
    """The schema of ``path`` inside ``schema``; list items are entered with ``[]``."""
    for part in path:
        if part == "[]":
            schema = _resolve(document, schema["items"])
        elif part == "{}":
            schema = _resolve(document, schema["additionalProperties"])
        else:
            assert part in schema["properties"], f"{part} not in {sorted(schema['properties'])}"
            schema = _resolve(document, schema["properties"][part])
    return schema


def _description(document: dict[str, Any], schema: dict[str, Any], *path: str) -> str:
    parent = _field(document, schema, *path[:-1])
    description: str = parent["properties"][path[-1]]["description"]
    return description


def test_the_run_report_names_its_energy_band_and_method(openapi: dict[str, Any]) -> None:
    report = _ok_schema(openapi, "/api/v1/runs/{run_id}/report", "get")
    assert {"energy", "efficiency", "bounds", "cost", "carbon", "accounting"} <= set(
        report["properties"]
    )
    for line in (("total",), ("by_device", "[]"), ("by_phase", "[]"), ("by_host", "{}")):
        band = _field(openapi, report, "energy", *line)
        for name in ("energy_j", "energy_kwh", "energy_low_j", "energy_high_j"):
            assert _field(openapi, band, name)["type"] == "number", (line, name)
            assert "description" in band["properties"][name], (line, name)
    method = _field(openapi, report, "energy", "by_device", "[]", "method")
    assert method["type"] == "string"
    assert "counter" in _description(openapi, report, "energy", "by_device", "[]", "method")
    # Not available is None with a reason, never 0.
    high = _field(openapi, report, "energy", "total")["properties"]["energy_high_j"]
    assert {"type": "null"} in high["anyOf"]
    assert "energy_reason" in _field(openapi, report, "cost")["properties"]


@pytest.mark.parametrize(
    ("path", "method", "fields"),
    [
        ("/api/v1/plan", "post", {"flops", "energy", "duration_s", "basis", "pricing"}),
        (
            "/api/v1/models/{model_tag}/amortisation",
            "get",
            {"training", "inference", "at", "parity", "curve", "pricing"},
        ),
        ("/api/v1/rollups", "get", {"period", "group_by", "from", "to", "method", "rows"}),
    ],
)
def test_plan_amortisation_and_rollups_are_typed(
    openapi: dict[str, Any], path: str, method: str, fields: set[str]
) -> None:
    schema = _ok_schema(openapi, path, method)
    assert fields <= set(schema["properties"])


def test_figures_carry_their_units(openapi: dict[str, Any]) -> None:
    plan = _ok_schema(openapi, "/api/v1/plan", "post")
    energy = _field(openapi, plan, "energy")
    assert {"energy_j_central", "energy_j_low", "energy_j_high"} <= set(energy["properties"])
    answer = _ok_schema(openapi, "/api/v1/models/{model_tag}/amortisation", "get")
    assert {"j_per_token", "usd_per_token", "co2e_g_per_token"} <= set(
        _field(openapi, answer, "at")["properties"]
    )
    rollups = _ok_schema(openapi, "/api/v1/rollups", "get")
    row = _field(openapi, rollups, "rows", "[]")
    assert "kwh" in _field(openapi, row, "energy", "facility")["properties"]
