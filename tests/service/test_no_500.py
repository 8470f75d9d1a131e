"""Catch-all: no bad input this suite can think of makes any route answer 5xx."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from fastapi import FastAPI

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, bearer, create_run, row_counts

NAN = float("nan")


def _raw(value: Any) -> bytes:
    return json.dumps(value).encode()  # keeps NaN / Infinity literals


def _bad_requests(run: str, project: Project) -> list[tuple[str, str, Any]]:
    runs = f"/api/v1/runs/{run}"
    huge = 2**70
    return [
        ("put", runs, b"{"),
        ("put", runs, _raw({"name": "x", "host_info": {"a": NAN}})),
        ("put", runs, _raw({"name": "x", "tags": {"k": "\u0000"}})),
        ("put", runs, _raw({"name": "nul\u0000byte"})),
        ("put", runs, _raw({"name": "x" * 5000})),
        ("put", runs, _raw({"name": "x", "started_at": "yesterday"})),
        ("put", "/api/v1/runs/not-a-uuid", _raw({"name": "x"})),
        ("get", "/api/v1/runs?limit=-1", None),
        ("get", "/api/v1/runs?limit=100000000000000000000", None),
        ("get", "/api/v1/runs?cursor=%00%00", None),
        ("get", "/api/v1/runs?tag=%00=%00", None),
        ("get", "/api/v1/runs?started_after=0000-01-01T00:00:00Z", None),
        ("post", f"{runs}/finish", _raw({"exit_code": huge})),
        ("post", f"{runs}/finish", _raw({"ended_at": "1900-01-01T00:00:00Z"})),
        ("post", f"{runs}/fail", b"[1, 2]"),
        ("post", f"{runs}/work", _raw({"tokens": huge})),
        ("post", f"{runs}/work", _raw({"tokens": 1e300})),
        ("post", f"{runs}/work", _raw({"flops": {"value": 1e308, "unit": "EFLOP"}})),
        ("post", f"{runs}/work", _raw({"flops": {"value": NAN, "unit": "FLOP"}})),
        ("post", f"{runs}/work", _raw({"flops": "1 FLOP/"})),
        ("post", f"{runs}/work", _raw({"flops": "((("})),
        ("post", f"{runs}/work", _raw({"flops": {"value": True, "unit": "FLOP"}})),
        ("post", f"{runs}/work", _raw({"model_params": [1]})),
        ("post", f"{runs}/work", _raw({"dtype": "x" * 100})),
        ("post", f"{runs}/phases", _raw({"name": "p", "t0_s": NAN})),
        ("post", f"{runs}/phases", _raw({"name": "p", "t0_s": 1e308})),
        ("post", f"{runs}/phases", _raw({"name": "p", "t0_s": 1.0, "tokens": huge})),
        ("post", f"{runs}/phases", _raw({"name": "p", "t0_s": 1.0, "t1_s": math.inf})),
        ("post", f"{runs}/chunks", _raw(batch([{**chunk(0), "seq": huge}]))),
        ("post", f"{runs}/chunks", _raw(batch([{**chunk(0), "seq": 2**40}]))),
        ("post", f"{runs}/chunks", _raw(batch([{**chunk(0), "gap_count": 2**40, "gap_s": 1.0}]))),
        (
            "post",
            f"{runs}/chunks",
            _raw(batch([{**chunk(0), "t0_s": 1e305, "t1_s": 1e306, "samples": None}])),
        ),
        (
            "post",
            f"{runs}/chunks",
            _raw(batch([{**chunk(0), "energy_j": 1e305, "energy_high_j": 1e306}])),
        ),
        ("post", f"{runs}/chunks", _raw(batch([chunk(0)], devices=[{"key": "node-0/gpu0"}]))),
        (
            "post",
            f"{runs}/chunks",
            _raw(
                {
                    **batch([chunk(0)]),
                    "devices": [{**batch([chunk(0)])["devices"][0], "index": 2**40}],
                }
            ),
        ),
        (
            "post",
            f"{runs}/chunks",
            _raw(
                {
                    **batch([chunk(0)]),
                    "devices": [{**batch([chunk(0)])["devices"][0], "host": "h\u0000"}],
                }
            ),
        ),
        (
            "post",
            f"{runs}/chunks",
            _raw(
                {
                    **batch([chunk(0)]),
                    "devices": [{**batch([chunk(0)])["devices"][0], "power_limit_w": 1e305}],
                }
            ),
        ),
        ("post", f"{runs}/chunks", b'{"schema": 1, "devices": [], "chunks": [' + b"[" * 5000),
        (
            "post",
            f"{runs}/chunks",
            _raw(batch([{**chunk(0), "samples": {"t_s": [], "power_w": []}}])),
        ),
        ("post", f"{runs}/report", None),
        ("post", "/api/v1/projects", _raw({"slug": "Bad Slug!"})),
        ("post", f"/api/v1/projects/{project.slug}/tokens", _raw({"name": "t", "scopes": []})),
        (
            "post",
            f"/api/v1/projects/{project.slug}/tokens",
            _raw({"name": "t", "scopes": ["root"]}),
        ),
        (
            "post",
            f"/api/v1/projects/{project.slug}/tokens",
            _raw({"name": "t", "scopes": ["read"], "expires_at": "2030-01-01T00:00:00"}),
        ),
        ("get", "/api/v1/projects/%00/tokens", None),
        ("delete", f"/api/v1/tokens/{huge}", None),
        ("delete", "/api/v1/tokens/-1", None),
        ("delete", "/api/v1/tokens/abc", None),
    ]


def _odd_requests(run: str) -> list[tuple[str, str, Any]]:
    """Strange but arguably valid: any answer but a 5xx will do."""
    runs = f"/api/v1/runs/{run}"
    return [
        ("put", runs, _raw({"name": "x", "started_at": "9999-12-31T23:59:59+14:00"})),
        ("put", runs, _raw({"name": "x", "host_info": {"n": 2**70, "deep": [[[{"a": []}]]]}})),
        ("get", "/api/v1/runs?tag=k=" + "v" * 3000, None),
        ("get", f"{runs}/report", None),
        ("post", f"{runs}/chunks", _raw(batch([{**chunk(0), "reset_count": 2**70}]))),
    ]


def _send(client: TestClient, project: Project, method: str, path: str, body: Any) -> int:
    response = client.request(
        method, path, content=body, headers={**project.every, "Content-Type": "application/json"}
    )
    return int(response.status_code)


def test_bad_input_is_4xx_and_writes_nothing(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run = create_run(client, project)
    before = row_counts(app, run)
    failures = [
        f"{method.upper()} {path:.80} {body!r:.100} -> {status}"
        for method, path, body in _bad_requests(run, project)
        if not 400 <= (status := _send(client, project, method, path, body)) < 500
    ]
    assert not failures, "\n".join(failures)
    assert row_counts(app, run) == before


def test_odd_input_never_answers_5xx(client: TestClient, project: Project) -> None:
    run = create_run(client, project)
    failures = [
        f"{method.upper()} {path:.80} {body!r:.100} -> {status}"
        for method, path, body in _odd_requests(run)
        if (status := _send(client, project, method, path, body)) >= 500
    ]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("token", ["", "tl_", "tl_" + "0" * 12 + "_" + "!" * 43, "x" * 10_000])
def test_no_bad_token_answers_5xx(client: TestClient, token: str) -> None:
    response = client.get("/api/v1/runs", headers=bearer(token))
    assert response.status_code == 401


def test_unknown_paths_and_methods_are_4xx(client: TestClient, project: Project) -> None:
    assert client.get("/api/v1/nothing-here", headers=project.read).status_code == 404
    response = client.patch(f"/api/v1/runs/{uuid.uuid4()}", headers=project.read)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
