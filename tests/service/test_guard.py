"""The request guard (`service.guard`), in process, through raw ASGI calls.

Raw calls (not the test client) show what the guard does with the body: whether it read it at
all, and what happens when it never comes or the client goes away. Each test bounds its waits;
none asserts on durations. Orders of completion (who was answered first) stand in for "did not
wait".
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from fastapi import FastAPI

from tests.support.client import OPERATOR_TOKEN, Project, TestClient, clean_settings, make_project
from thermoledger.db.models import Scope
from thermoledger.service.app import create_app
from thermoledger.service.auth import Principal
from thermoledger.service.errors import Unauthenticated
from thermoledger.service.guard import CHECK_SLOTS, VERIFIED_TTL_S, TokenGate
from thermoledger.service.metrics import ACCESS_LOGGER

WAIT_S = 20.0
EIGHT_MIB = 8 * 1024 * 1024


@dataclass
class Answer:
    """What a raw ASGI call got back, and how much of its body the server asked for."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reads: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: FastAPI,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: Sequence[bytes] = (),
    then: Literal["end", "hang", "disconnect"] = "end",
) -> Answer:
    """One request straight into the ASGI app: ``body`` in messages, and after them the end of
    the body, a client that never sends more, or a disconnect."""
    answer = Answer()
    parts = list(body)
    forever = asyncio.Event()

    async def receive() -> dict[str, Any]:
        answer.reads += 1
        if parts:
            chunk = parts.pop(0)
            return {
                "type": "http.request",
                "body": chunk,
                "more_body": bool(parts) or then != "end",
            }
        if then == "disconnect":
            return {"type": "http.disconnect"}
        if then == "end" and answer.reads == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await forever.wait()  # a body that never comes, or (after the end) no disconnect yet
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
        "state": {},
    }
    async with asyncio.timeout(WAIT_S):
        await app(scope, receive, send)
    return answer


def auth(project: Project, scope: str = "every") -> tuple[str, str]:
    headers: dict[str, str] = getattr(project, scope)
    return ("authorization", headers["Authorization"])


@pytest.fixture
def tight(database_url: str) -> Iterator[FastAPI]:
    """An app with two in-flight slots and a half-second body deadline."""
    application = create_app(
        clean_settings(
            database_url=database_url,
            max_in_flight=2,
            body_timeout_s=0.5,
            bootstrap_admin_token=OPERATOR_TOKEN,
        )
    )
    yield application
    application.state.engine.dispose()


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Bearer not-a-token", "Bearer tl_000000000000_" + "A" * 43],
    ids=["missing", "basic", "malformed", "unknown"],
)
@pytest.mark.parametrize("path", ["/api/v1/runs/{id}", "/api/v1/runs/{id}/chunks"])
def test_an_api_request_without_a_valid_token_is_refused_from_its_headers(
    app: FastAPI, authorization: str | None, path: str
) -> None:
    """An 8 MiB body without a valid token: 401 in the usual shape, not one byte read, and
    the connection closed (it cannot carry another request)."""
    headers = [("content-type", "application/json"), ("content-length", str(EIGHT_MIB))]
    if authorization is not None:
        headers.append(("authorization", authorization))
    target = path.format(id=uuid.uuid4())
    answer = asyncio.run(call(app, "PUT", target, headers=headers, body=[b"{"], then="hang"))
    assert answer.status == 401
    assert answer.reads == 0
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.headers["connection"] == "close"
    body = answer.json()
    assert body["code"] == "unauthenticated"
    assert set(body) == {"detail", "code", "field", "errors"}


def test_a_made_up_token_is_looked_up_once_then_refused_from_memory(app: FastAPI) -> None:
    gate: TokenGate = app.state.gate
    made_up = ("authorization", f"Bearer tl_{uuid.uuid4().hex[:12]}_" + "Z" * 43)
    before = gate.lookups
    for _ in range(5):
        answer = asyncio.run(call(app, "GET", "/api/v1/runs", headers=[made_up]))
        assert answer.status == 401
        assert answer.json()["detail"] == "invalid token"
    assert gate.lookups == before + 1


def test_a_valid_token_is_looked_up_once_per_ttl(app: FastAPI, project: Project) -> None:
    gate: TokenGate = app.state.gate
    before = gate.lookups
    for _ in range(5):
        assert asyncio.run(call(app, "GET", "/api/v1/runs", headers=[auth(project)])).status == 200
    assert gate.lookups == before + 1


def test_the_operator_token_passes_without_the_database(app: FastAPI) -> None:
    gate: TokenGate = app.state.gate
    before = gate.lookups
    answer = asyncio.run(
        call(
            app,
            "GET",
            "/api/v1/projects/nope/tokens",
            headers=[("authorization", f"Bearer {OPERATOR_TOKEN}")],
        )
    )
    assert answer.status == 404  # let in; the route looked for the project
    assert gate.lookups == before


def test_a_revoked_token_that_the_gate_remembers_is_refused_by_the_route(
    client: TestClient, project: Project
) -> None:
    assert client.get("/api/v1/runs", headers=project.read).status_code == 200  # remembered
    token_id = project.token_ids["read"]
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=project.admin).status_code == 204
    response = client.get("/api/v1/runs", headers=project.read)
    assert response.status_code == 401
    assert response.json()["detail"] == "token revoked"


def test_a_body_without_credentials_is_capped_small(app: FastAPI) -> None:
    cap = app.state.settings.max_unauthenticated_body_bytes
    declared = asyncio.run(
        call(
            app,
            "POST",
            "/login",
            headers=[("content-length", str(cap + 1))],
            body=[b"x"],
            then="hang",
        )
    )
    assert declared.status == 413
    assert declared.reads == 0
    assert declared.headers["connection"] == "close"
    # Streamed without a length: refused once it passes the cap, the rest never read.
    streamed = asyncio.run(
        call(
            app,
            "POST",
            "/login",
            headers=[("transfer-encoding", "chunked")],
            body=[b"t" * 4096] * 100,
            then="hang",
        )
    )
    assert streamed.status == 413
    assert streamed.json()["code"] == "payload_too_large"
    assert streamed.reads == cap // 4096 + 1


def test_an_authenticated_body_may_be_large(app: FastAPI, project: Project) -> None:
    """The small cap is for requests without credentials only."""
    cap = app.state.settings.max_unauthenticated_body_bytes
    run = f"/api/v1/runs/{uuid.uuid4()}"
    name = "n" * 200
    body = b'{"name": "%s", "kind": "training", "tags": {"pad": "%s"}}' % (
        name.encode(),
        b"p" * cap,
    )
    answer = asyncio.run(
        call(
            app,
            "PUT",
            run,
            headers=[
                auth(project),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ],
            body=[body],
        )
    )
    assert answer.status != 413


@pytest.mark.parametrize("who", ["authenticated", "unauthenticated"])
def test_a_body_that_does_not_arrive_in_time_is_408(tight: FastAPI, who: str) -> None:
    project = make_project(tight)
    run = f"/api/v1/runs/{uuid.uuid4()}"
    if who == "authenticated":
        request = ("PUT", run, [auth(project), ("content-length", "100")])
    else:
        request = ("POST", "/login", [("content-length", "100")])
    method, path, headers = request
    answer = asyncio.run(call(tight, method, path, headers=headers, body=[b'{"na'], then="hang"))
    assert answer.status == 408
    assert answer.json()["code"] == "body_timeout"
    assert answer.headers["connection"] == "close"
    assert asyncio.run(call(tight, "GET", run, headers=[auth(project)])).status == 404  # not stored


def test_slow_bodies_without_credentials_take_no_slot_and_slow_ones_with_free_theirs(
    tight: FastAPI,
) -> None:
    """Two in-flight slots. Thirty clients trickling a login form and two authenticated
    clients whose bodies never come: the authenticated reads are answered before any login
    times out, and once the two slow bodies hit their deadline (408) their slots serve others;
    /readyz answers all along."""
    project = make_project(tight)
    order: list[str] = []

    async def tagged(tag: str, **kwargs: Any) -> Answer:
        answer = await call(tight, **kwargs)
        order.append(tag)
        return answer

    async def scenario() -> dict[str, list[Answer]]:
        logins = [
            asyncio.create_task(
                tagged(
                    "login",
                    method="POST",
                    path="/login",
                    headers=[("content-length", "100")],
                    body=[b"t"],
                    then="hang",
                )
            )
            for _ in range(30)
        ]
        await asyncio.sleep(0)
        reads = [
            await tagged("read", method="GET", path="/api/v1/runs", headers=[auth(project)])
            for _ in range(5)
        ]
        ready = [await tagged("ready", method="GET", path="/readyz")]
        slow = [
            asyncio.create_task(
                tagged(
                    "slow",
                    method="PUT",
                    path=f"/api/v1/runs/{uuid.uuid4()}",
                    headers=[auth(project), ("content-length", "100")],
                    body=[b"{"],
                    then="hang",
                )
            )
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(
            tagged("waited", method="GET", path="/api/v1/runs", headers=[auth(project)])
        )
        return {
            "reads": reads,
            "ready": ready,
            "slow": list(await asyncio.gather(*slow)),
            "waited": [await waiting],
            "logins": list(await asyncio.gather(*logins)),
        }

    answers = asyncio.run(scenario())
    assert [a.status for a in answers["reads"]] == [200] * 5
    assert answers["ready"][0].status == 200
    assert [a.status for a in answers["slow"]] == [408, 408]
    assert answers["waited"][0].status == 200
    assert {a.status for a in answers["logins"]} == {408}
    assert order.index("ready") < order.index("login")  # nobody waited for the logins
    assert order.index("waited") > order.index("slow")  # it waited for a freed slot


def test_a_client_gone_mid_body_is_a_499_line_not_a_500(
    app: FastAPI, project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    run = f"/api/v1/runs/{uuid.uuid4()}"
    headers = [auth(project), ("content-type", "application/json"), ("content-length", "1000")]
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        for method, path, hdrs in (
            ("PUT", run, headers),
            ("POST", f"{run}/chunks", headers),
            ("POST", "/login", [("content-length", "1000")]),
        ):
            answer = asyncio.run(
                call(app, method, path, headers=hdrs, body=[b'{"name": "x'], then="disconnect")
            )
            assert answer.status is None  # nobody to answer
    lines = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [getattr(r, "status", None) for r in lines] == [499, 499, 499]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in lines)
    assert asyncio.run(call(app, "GET", run, headers=[auth(project)])).status == 404
    metrics = asyncio.run(call(app, "GET", "/metrics")).body.decode()
    assert 'status_class="5xx"' not in metrics


def test_a_flood_of_made_up_tokens_does_not_delay_a_known_one() -> None:
    """Made-up tokens fill the look-up lane and wait there; a token seen valid before is
    re-checked through its own lane meanwhile."""
    good = "tl_" + "a" * 12 + "_" + "G" * 43
    principal = Principal(project_id=1, project_slug="p", scopes=Scope.READ, token_id=1)
    release = threading.Event()
    now = [0.0]

    def verify(token: str) -> Principal:
        if token == good:
            return principal
        release.wait(WAIT_S)
        raise Unauthenticated("invalid token")

    gate = TokenGate(
        verify, settings=clean_settings(database_url="sqlite://"), clock=lambda: now[0]
    )
    bogus = [f"tl_{i:012x}_" + "B" * 43 for i in range(CHECK_SLOTS * 5)]

    async def scenario() -> None:
        assert await gate.check(good) == principal
        now[0] += VERIFIED_TTL_S + 1  # stale: asked again, but known
        flood = [asyncio.create_task(gate.check(token)) for token in bogus]
        await asyncio.sleep(0.05)
        async with asyncio.timeout(WAIT_S):
            assert await gate.check(good) == principal
        assert not any(task.done() for task in flood)
        release.set()
        results = await asyncio.gather(*flood, return_exceptions=True)
        assert all(isinstance(r, Unauthenticated) for r in results)
        lookups = gate.lookups
        with pytest.raises(Unauthenticated, match="invalid token"):
            await gate.check(bogus[0])  # remembered
        assert gate.lookups == lookups

    try:
        asyncio.run(scenario())
    finally:
        release.set()
