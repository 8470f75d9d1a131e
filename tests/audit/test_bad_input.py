"""No bad input to the ledger, factor, rollup or audit routes answers 5xx; each is a 4xx."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.support.client import Project, TestClient
from tests.support.ledger import OPERATOR

NAN = float("nan")
HUGE = 2**70


def _raw(value: Any) -> bytes:
    return json.dumps(value).encode()  # keeps NaN / Infinity literals


def _requests() -> list[tuple[str, str, bytes | None, str]]:
    """(method, path, body, whose token)."""
    entry = {"figure": "offset", "quantity": "1 kgCO2e", "reference": "x"}
    factor = {
        "region": "DE",
        "basis": "location",
        "intensity": "300 gCO2e/kWh",
        "valid_from": "2025-01-01T00:00:00Z",
        "source": "x",
    }
    tariff = {
        "region": "DE",
        "price": "0.1 USD/kWh",
        "valid_from": "2025-01-01T00:00:00Z",
        "source": "x",
    }
    return [
        ("post", "/api/v1/ledger", b"{", "admin"),
        (
            "post",
            "/api/v1/ledger",
            _raw({**entry, "quantity": {"value": NAN, "unit": "kgCO2e"}}),
            "admin",
        ),
        ("post", "/api/v1/ledger", _raw({**entry, "quantity": "1e308 tCO2e"}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "quantity": "1e308 kgCO2e"}), "admin"),
        (
            "post",
            "/api/v1/ledger",
            _raw({**entry, "quantity": {"value": 1, "unit": "x" * 100}}),
            "admin",
        ),
        ("post", "/api/v1/ledger", _raw({**entry, "quantity": "((("}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "quantity": [1]}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "supersedes": HUGE}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "supersedes": 2**62}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "reference": "nul\u0000"}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "reference": "x" * 600}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "at": "0001-01-01T00:00:00+14:00"}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "run_id": "not-a-uuid"}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "run_id": str(uuid.uuid4())}), "admin"),
        ("post", "/api/v1/ledger", _raw({**entry, "extra": 1}), "admin"),
        ("get", f"/api/v1/ledger/{HUGE}", None, "read"),
        ("get", f"/api/v1/ledger/{2**62}", None, "read"),
        ("get", "/api/v1/ledger/0", None, "read"),
        ("get", f"/api/v1/ledger?after={HUGE}", None, "read"),
        ("get", "/api/v1/ledger?limit=0", None, "read"),
        ("get", "/api/v1/ledger?figure=joy", None, "read"),
        ("post", "/api/v1/factors", _raw({**factor, "intensity": "1e308 kgCO2e/kWh"}), "admin"),
        (
            "post",
            "/api/v1/factors",
            _raw({**factor, "intensity": {"value": NAN, "unit": "g"}}),
            "admin",
        ),
        (
            "post",
            "/api/v1/factors",
            _raw({**factor, "valid_from": "0001-01-01T00:00:00+14:00"}),
            "admin",
        ),
        ("post", "/api/v1/factors", _raw({**factor, "region": "\u0000"}), "admin"),
        ("post", "/api/v1/factors", _raw({**factor, "year": HUGE}), "admin"),
        (
            "post",
            f"/api/v1/factors/{HUGE}/close",
            _raw({"valid_to": "2026-01-01T00:00:00Z"}),
            "admin",
        ),
        ("post", "/api/v1/factors/1/close", _raw({"valid_to": "yesterday"}), "admin"),
        ("get", "/api/v1/factors?region=%00", None, "read"),
        ("get", "/api/v1/factors/lookup?region=DE&at=0001-01-01T00:00:00Z", None, "read"),
        ("get", "/api/v1/factors/lookup?region=%00", None, "read"),
        ("post", "/api/v1/tariffs", _raw({**tariff, "price": "1e308 USD/kWh"}), "admin"),
        ("post", "/api/v1/tariffs", _raw({**tariff, "price": "-1e308 USD/kWh"}), "admin"),
        ("post", "/api/v1/tariffs", _raw({**tariff, "price": "1 EUR/kWh"}), "admin"),
        ("get", "/api/v1/tariffs/lookup?region=DE&at=9999-12-31T23:59:59-14:00", None, "read"),
        (
            "put",
            "/api/v1/accounting",
            _raw({"region": "DE", "pue": {"value": 1e300, "source": "x"}}),
            "admin",
        ),
        (
            "put",
            "/api/v1/accounting",
            _raw({"region": "DE", "pue": {"value": NAN, "source": "x"}}),
            "admin",
        ),
        ("put", "/api/v1/accounting", _raw({"region": "x" * 100}), "admin"),
        ("get", "/api/v1/rollups?tag_key=%00&group_by=tag", None, "read"),
        ("get", "/api/v1/rollups?from=0001-01-01T00:00:00%2B14:00", None, "read"),
        ("get", "/api/v1/audit/export?format=xml", None, "read"),
        ("get", "/api/v1/audit/export?to=nonsense", None, "read"),
        ("get", "/api/v1/audit/verify?anchor=99999999999999999999:" + "a" * 64, None, "admin"),
        ("get", "/api/v1/audit/verify?anchor=%00", None, "admin"),
    ]


def test_no_route_answers_5xx(client: TestClient, project: Project) -> None:
    tokens = {"admin": project.admin, "read": project.read}
    failures = []
    for method, path, body, who in _requests():
        headers = {**tokens[who], "Content-Type": "application/json"}
        response = client.request(method, path, content=body, headers=headers)
        if not 400 <= response.status_code < 500:
            failures.append(f"{method.upper()} {path} {body!r:.80} -> {response.status_code}")
        elif response.status_code == 422:
            assert response.json()["field"], (path, body, response.json())
    assert not failures, "\n".join(failures)
    # The operator's shared versions go through the same checks.
    response = client.post(
        "/api/v1/tariffs",
        content=_raw(
            {
                "region": "DE",
                "price": "1e308 USD/kWh",
                "valid_from": "2025-01-01T00:00:00Z",
                "source": "x",
            }
        ),
        headers={**OPERATOR, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["field"] == "price"
