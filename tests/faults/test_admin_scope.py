"""Issue 13, item 8: on admin routes a token without the admin scope gets 403 before its body is
read or validated, so it cannot probe a route's schema (it used to get 422 describing the body).

Every admin route (projects and their tokens, token revocation, emission factors, tariffs, the
project's accounting settings, hand-posted ledger entries) is called with a read-only and an
ingest-only token and bodies that are wrong in every way: schema-invalid, malformed JSON, not
JSON, empty, with bad path parameters. Each answer is 403, and nothing is written. The same
bodies with an admin token are 422 (so the 403 above really came first), on SQLite and
PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from tests.faults.harness import fingerprint
from tests.support.client import OPERATOR_TOKEN, TestClient, bearer, make_project

#: Bodies no admin route accepts: (content, content type).
_BAD_BODIES: list[tuple[bytes, str]] = [
    (b'{"nonsense": [1, 2, 3], "slug": 7, "scopes": "x"}', "application/json"),
    (b'{"name": ', "application/json"),
    (b"[[[[[[[[[[", "application/json"),
    (b"name=x&scopes=read", "application/x-www-form-urlencoded"),
    (b"", "application/json"),
    (b"\xff\xfe\x00", "application/octet-stream"),
]


def _admin_routes(slug: str, token_id: int) -> list[tuple[str, str]]:
    return [
        ("POST", "/api/v1/projects"),
        ("POST", f"/api/v1/projects/{slug}/tokens"),
        ("POST", "/api/v1/projects/Not%20A%20Slug!/tokens"),
        ("GET", f"/api/v1/projects/{slug}/tokens"),
        ("DELETE", f"/api/v1/tokens/{token_id}"),
        ("DELETE", "/api/v1/tokens/not-a-number"),
        ("POST", "/api/v1/factors"),
        ("POST", "/api/v1/factors/1/close"),
        ("POST", "/api/v1/factors/-5/close"),
        ("POST", "/api/v1/tariffs"),
        ("POST", "/api/v1/tariffs/1/close"),
        ("PUT", "/api/v1/accounting"),
        ("POST", "/api/v1/ledger"),
    ]


def test_a_token_without_the_admin_scope_gets_403_before_any_validation(app: FastAPI) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    project = make_project(app)
    before = fingerprint(app.state.engine)
    refused: list[str] = []
    for method, path in _admin_routes(project.slug, project.token_ids["admin"]):
        for headers in (project.read, project.ingest):
            for content, content_type in _BAD_BODIES:
                response = client.request(
                    method, path, content=content, headers={**headers, "Content-Type": content_type}
                )
                body: dict[str, Any] = response.json()
                if response.status_code != 403 or body["code"] != "forbidden":
                    refused.append(f"{method} {path} {content!r}: {response.status_code} {body}")
                elif "admin" not in body["detail"]:
                    refused.append(f"{method} {path}: 403 without saying why: {body}")
    assert not refused, "\n".join(refused[:10])
    assert fingerprint(app.state.engine) == before


@pytest.mark.parametrize("who", ["admin", "operator"])
def test_the_same_bodies_with_the_admin_scope_are_validated(app: FastAPI, who: str) -> None:
    """The control: with the right scope the bad bodies reach validation (422), so the 403
    of the test above was answered before it."""
    client = TestClient(app, raise_server_exceptions=False)
    project = make_project(app)
    headers = project.admin if who == "admin" else bearer(OPERATOR_TOKEN)
    before = fingerprint(app.state.engine)
    writes = [
        (m, p)
        for m, p in _admin_routes(project.slug, project.token_ids["admin"])
        if m in ("POST", "PUT") and "%20" not in p and "-5" not in p
    ]
    if who == "admin":  # the operator creates projects; an admin token is refused that one
        writes = [(m, p) for m, p in writes if p != "/api/v1/projects"]
    validated = []
    for method, path in writes:
        for content, content_type in _BAD_BODIES[:3]:
            response = client.request(
                method, path, content=content, headers={**headers, "Content-Type": content_type}
            )
            validated.append((method, path, response.status_code))
    # A write the operator may not make at all (a project's accounting) is 403 for it even
    # with a good body; every other one is judged by its body.
    judged = [(m, p, s) for m, p, s in validated if s != 403 or who == "admin"]
    assert judged
    assert all(status == 422 for _, _, status in judged), judged
    assert fingerprint(app.state.engine) == before


def test_a_read_token_cannot_tell_an_admin_route_from_a_missing_project(app: FastAPI) -> None:
    """403 whatever the slug: the answer says nothing about which projects exist."""
    client = TestClient(app, raise_server_exceptions=False)
    project, other = make_project(app), make_project(app)
    answers = {
        client.post(
            f"/api/v1/projects/{slug}/tokens",
            json={"name": "x", "scopes": ["read"]},
            headers=project.read,
        ).json()["detail"]
        for slug in (project.slug, other.slug, "no-such-project")
    }
    assert len(answers) == 1
