"""The browser session (issue 13, item 7) and the login form's hostile bodies (item 3).

In process (`TestClient`), on SQLite and on PostgreSQL (the ``app`` fixture of this folder):

* the session cookie is not an API credential, and the token is never in a cookie;
* signing out revokes the session server-side (a replayed cookie is no session), and so does
  revoking the token the session was opened with, or the session's expiry;
* every form POST is CSRF-protected: a cross-site POST (``Sec-Fetch-Site``, ``Origin``) and a
  missing or wrong CSRF value are refused with 403, and nothing changes;
* the security headers are on the pages, the API's JSON, its errors and the exports;
* a ``?token=`` is never echoed into a page or a redirect;
* ``POST /login`` and ``/logout`` with 1000 fields or junk bodies get a 4xx, never a 5xx, and
  write nothing (the table fingerprint of the fuzz suite, before and after).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.faults.harness import fingerprint
from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run, make_project
from tests.support.signin import FORM, HTML, form_csrf, sign_in, sign_out
from thermoledger.db.models import BrowserSession
from thermoledger.service.pages.auth import COOKIE, LOGIN_CSRF_COOKIE, MAX_FORM_FIELDS

SECRET_MARK = "tl_0123456789ab_" + "S" * 43  # a token-shaped value that must never come back


def _token(project: Project, scope: str = "read") -> str:
    headers: dict[str, str] = getattr(project, scope)
    return headers["Authorization"].removeprefix("Bearer ")


def _browser(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def _signed_in(app: FastAPI, project: Project) -> tuple[TestClient, str]:
    """A client signed in with the project's read token, and its session cookie's value."""
    browser = _browser(app)
    response = sign_in(browser, _token(project))
    assert response.status_code == 303, response.text
    session_id = browser.cookies.get(COOKIE)
    assert session_id
    return browser, session_id


def _sessions(app: FastAPI) -> list[Any]:
    with app.state.engine.connect() as connection:
        return list(connection.execute(sa.select(BrowserSession.__table__)).all())


def _replay(app: FastAPI, session_id: str, path: str = "/runs") -> Any:
    """``path`` from a fresh client that only has the session cookie's value."""
    thief = _browser(app)
    thief.cookies.set(COOKIE, session_id)
    return thief.get(path, headers=HTML, follow_redirects=False)


# --------------------------------------------------------------------------- the session


def test_the_session_cookie_is_not_an_api_token(app: FastAPI) -> None:
    project = make_project(app)
    browser, session_id = _signed_in(app, project)
    assert session_id != _token(project)
    assert len(session_id) >= 22  # >= 128 bits of token_urlsafe
    rows = _sessions(app)
    assert len(rows) == 1
    assert rows[0].hash == hashlib.sha256(session_id.encode()).hexdigest()  # the id: not stored
    assert session_id not in {str(v) for v in rows[0]}
    api = _browser(app)
    for authorization in (f"Bearer {session_id}", f"Bearer {rows[0].csrf}"):
        response = api.get("/api/v1/runs", headers={"Authorization": authorization})
        assert response.status_code == 401, response.text
    # the cookie alone does not reach the API either
    assert browser.get("/api/v1/runs").status_code == 401
    assert browser.get("/runs", headers=HTML).status_code == 200


def test_signing_out_revokes_the_session_server_side(app: FastAPI) -> None:
    project = make_project(app)
    browser, session_id = _signed_in(app, project)
    assert _replay(app, session_id).status_code == 200  # a copy works while it is live
    assert sign_out(browser).status_code == 303
    assert COOKIE not in browser.cookies
    (row,) = _sessions(app)
    assert row.revoked_at is not None
    replayed = _replay(app, session_id)
    assert replayed.status_code == 303
    assert replayed.headers["location"].startswith("/login")
    # a second sign-out with the stale cookie is harmless and changes nothing
    stale = _browser(app)
    stale.cookies.set(COOKIE, session_id)
    assert stale.post("/logout", data={}, follow_redirects=False).status_code == 303


def test_revoking_the_token_ends_its_sessions(app: FastAPI) -> None:
    project = make_project(app)
    browser, session_id = _signed_in(app, project)
    response = browser.delete(f"/api/v1/tokens/{project.token_ids['read']}", headers=project.admin)
    assert response.status_code == 204, response.text
    page = browser.get("/runs", headers=HTML, follow_redirects=False)
    assert page.status_code == 303
    form = browser.get(page.headers["location"], headers=HTML)
    assert _replay(app, session_id).status_code == 303
    assert form.status_code == 200


@pytest.fixture
def expired(app: FastAPI) -> tuple[Project, str]:
    """A project and the id of a session of it that expired an hour ago."""
    project = make_project(app)
    _, session_id = _signed_in(app, project)
    created = datetime.now(UTC) - timedelta(hours=2)
    with app.state.engine.begin() as connection:
        connection.execute(
            sa.update(BrowserSession).values(
                created_at=created, expires_at=created + timedelta(hours=1)
            )
        )
    return project, session_id


def test_an_expired_session_is_refused(app: FastAPI, expired: tuple[Project, str]) -> None:
    project, session_id = expired
    assert _replay(app, session_id).status_code == 303
    _signed_in(app, project)  # the next sign-in purges the dead row
    assert len(_sessions(app)) == 1


def test_signing_in_again_replaces_the_browsers_session(app: FastAPI) -> None:
    project = make_project(app)
    browser, first = _signed_in(app, project)
    assert sign_in(browser, _token(project)).status_code == 303
    second = browser.cookies.get(COOKIE)
    assert second not in (None, first)
    assert _replay(app, first).status_code == 303
    assert _replay(app, second or "").status_code == 200


# --------------------------------------------------------------------------- CSRF


def _login_post(browser: TestClient, project: Project, *, csrf: str | None, **headers: str) -> Any:
    data = {"token": _token(project), "next": "/runs"}
    if csrf is not None:
        data["csrf"] = csrf
    return browser.post("/login", data=data, headers=headers, follow_redirects=False)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver.evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},
    ],
    ids=["cross-site", "same-site", "other-origin", "lookalike-origin", "null-origin", "both"],
)
def test_a_cross_site_login_is_refused(app: FastAPI, headers: dict[str, str]) -> None:
    project = make_project(app)
    browser = _browser(app)
    csrf = form_csrf(browser.get("/login", headers=HTML).text)
    before = fingerprint(app.state.engine)
    response = _login_post(browser, project, csrf=csrf, **headers)
    assert response.status_code == 403, response.text
    assert "csrf" in response.json()["detail"]
    assert f"{COOKIE}=" not in response.headers.get("set-cookie", "")
    assert fingerprint(app.state.engine) == before
    # the same form from this site signs in
    same = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
    assert _login_post(browser, project, csrf=csrf, **same).status_code == 303


def test_a_login_without_the_forms_csrf_value_is_refused(app: FastAPI) -> None:
    project = make_project(app)
    before = fingerprint(app.state.engine)
    # no form fetched: no cookie, no value (another site posting blind)
    blind = _browser(app)
    assert _login_post(blind, project, csrf=None).status_code == 403
    assert _login_post(blind, project, csrf="A" * 43).status_code == 403
    # a form fetched, but the value missing, wrong, or only in the field
    browser = _browser(app)
    csrf = form_csrf(browser.get("/login", headers=HTML).text)
    assert browser.cookies.get(LOGIN_CSRF_COOKIE) == csrf
    for wrong in (None, "", "A" * 43, csrf[:-1], csrf + "x"):
        response = _login_post(browser, project, csrf=wrong, **HTML)
        assert response.status_code == 403, wrong
        assert "text/html" in response.headers["content-type"]
        assert "reload" in response.text
    other = _browser(app)
    assert _login_post(other, project, csrf=csrf).status_code == 403  # value without cookie
    assert fingerprint(app.state.engine) == before
    assert _login_post(browser, project, csrf=csrf).status_code == 303


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}, {"Origin": "null"}],
    ids=["cross-site", "other-origin", "null-origin"],
)
def test_a_forged_sign_out_is_refused_and_the_session_lives_on(
    app: FastAPI, headers: dict[str, str]
) -> None:
    project = make_project(app)
    browser, session_id = _signed_in(app, project)
    csrf = form_csrf(browser.get("/runs", headers=HTML).text)
    for data, extra in (({}, {}), ({"csrf": "A" * 43}, {}), ({"csrf": csrf}, headers)):
        response = browser.post("/logout", data=data, headers=extra, follow_redirects=False)
        assert response.status_code == 403, (data, extra)
        assert browser.cookies.get(COOKIE) == session_id
        assert _replay(app, session_id).status_code == 200
    assert all(row.revoked_at is None for row in _sessions(app))
    assert sign_out(browser).status_code == 303
    assert _replay(app, session_id).status_code == 303


# --------------------------------------------------------------------------- headers


@pytest.fixture
def measured(app: FastAPI) -> tuple[Project, str]:
    """A project with a run that has chunks (so that its report and exports exist)."""
    project = make_project(app)
    client = TestClient(app)
    run_id = create_run(client, project)
    body = batch([chunk(s) for s in range(3)])
    response = client.post(f"/api/v1/runs/{run_id}/chunks", json=body, headers=project.ingest)
    assert response.status_code == 200, response.text
    return project, run_id


def _assert_hardened(response: Any, url: str, *, cached: bool = False) -> None:
    headers = response.headers
    assert headers.get("x-frame-options") == "DENY", url
    assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), url
    assert headers.get("x-content-type-options") == "nosniff", url
    assert headers.get("referrer-policy"), url
    if not cached:
        assert headers.get("cache-control") == "no-store", url


def test_security_headers_on_pages_api_errors_and_exports(
    app: FastAPI, measured: tuple[Project, str]
) -> None:
    project, run_id = measured
    client = _browser(app)
    read = {**project.read}
    expected: list[tuple[str, dict[str, str], int]] = [
        ("/login", HTML, 200),
        ("/runs", {**read, **HTML}, 200),
        (f"/runs/{run_id}", {**read, **HTML}, 200),
        ("/plan", {**read, **HTML}, 200),
        (f"/runs/{run_id}/report.csv", read, 200),
        (f"/runs/{run_id}/report.json", read, 200),
        (f"/api/v1/runs/{run_id}/report", read, 200),
        (f"/api/v1/runs/{run_id}/report.csv", read, 200),
        ("/api/v1/audit/export?format=csv", read, 200),
        ("/api/v1/audit/export?format=json", read, 200),
        ("/api/v1/runs", read, 200),
        ("/api/v1/runs", {}, 401),
        ("/runs/00000000-0000-0000-0000-000000000000", {**read, **HTML}, 404),
        ("/no/such/page", {}, 404),
        ("/healthz", {}, 200),
    ]
    for url, headers, status in expected:
        response = client.get(url, headers=headers, follow_redirects=False)
        assert response.status_code == status, (url, response.text[:500])
        _assert_hardened(response, url)
    page = client.get("/runs", headers={**read, **HTML})
    assert "default-src 'none'" in page.headers["content-security-policy"]  # no script at all
    redirect = client.get("/runs", headers=HTML, follow_redirects=False)
    assert redirect.status_code == 303
    _assert_hardened(redirect, "redirect")
    style = client.get("/static/style.css")
    assert style.status_code == 200
    _assert_hardened(style, "/static/style.css", cached=True)


# --------------------------------------------------------------------------- the token in URLs


def test_a_token_in_the_url_is_never_echoed(app: FastAPI, measured: tuple[Project, str]) -> None:
    project, run_id = measured
    client = _browser(app)
    # signed out: the redirect to the form and the form drop it
    response = client.get(f"/runs?kind=training&token={SECRET_MARK}", headers=HTML)
    assert response.status_code == 200  # followed to the form
    assert SECRET_MARK not in response.text
    assert all(SECRET_MARK not in str(r.headers) for r in response.history)
    assert response.history[0].headers["location"] == "/login?next=%2Fruns%3Fkind%3Dtraining"
    for target in (f"/runs?token={SECRET_MARK}", f"/runs?a=1&TOKEN={SECRET_MARK}#x"):
        form = client.get("/login", params={"next": target, "token": SECRET_MARK}, headers=HTML)
        assert SECRET_MARK not in form.text
        assert SECRET_MARK not in str(form.headers)
    # the form's own next: the redirect after signing in drops it too
    signed = sign_in(_browser(app), _token(project), next=f"/runs?token={SECRET_MARK}&kind=eval")
    assert signed.headers["location"] == "/runs?kind=eval"
    # signed in: no page copies it
    read = {**project.read, **HTML}
    for path in ("/runs", f"/runs/{run_id}", "/plan", "/models", f"/compare?run={run_id}"):
        sep = "&" if "?" in path else "?"
        page = client.get(f"{path}{sep}token={SECRET_MARK}", headers=read)
        assert page.status_code == 200, (path, page.text[:500])
        assert SECRET_MARK not in page.text, path
        assert SECRET_MARK not in str(page.headers), path


# --------------------------------------------------------------------------- hostile bodies


def _junk_bodies(csrf: str) -> list[tuple[str, bytes, dict[str, str]]]:
    many = "&".join(f"f{i}=x" for i in range(1000))
    return [
        ("1000 fields", f"token=x&csrf={csrf}&{many}".encode(), FORM),
        ("1000 empty fields", b"&" * 999, FORM),
        ("1000 repeated tokens", "&".join(["token=x"] * 1000).encode(), FORM),
        (
            "one field too many",
            "&".join(f"f{i}=" for i in range(MAX_FORM_FIELDS + 1)).encode(),
            FORM,
        ),
        ("not utf-8", b"token=\xff\xfe&csrf=" + csrf.encode(), FORM),
        ("binary", bytes(range(256)) * 4, {"Content-Type": "application/octet-stream"}),
        ("json", b'{"token": "x", "csrf": "y"}', {"Content-Type": "application/json"}),
        (
            "multipart",
            b"--b\r\nContent-Disposition: form-data; name=token\r\n\r\nx\r\n--b--",
            {"Content-Type": "multipart/form-data; boundary=b"},
        ),
        ("large", b"token=" + b"A" * 200_000, FORM),
        ("percent junk", b"%%%%&=&==&%zz=%ff%fe", FORM),
        ("empty", b"", FORM),
    ]


@pytest.mark.parametrize("path", ["/login", "/logout"])
def test_hostile_form_bodies_get_a_4xx_and_write_nothing(app: FastAPI, path: str) -> None:
    project = make_project(app)
    browser, session_id = _signed_in(app, project)
    csrf = form_csrf(browser.get("/login", headers=HTML).text)
    before = fingerprint(app.state.engine)
    for name, body, headers in _junk_bodies(csrf):
        response = browser.post(path, content=body, headers=headers, follow_redirects=False)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        if name in ("1000 fields", "1000 empty fields", "1000 repeated tokens"):
            assert response.status_code == 422, (name, response.text)
            assert "fields" in response.json()["detail"]
    assert fingerprint(app.state.engine) == before
    assert _replay(app, session_id).status_code == 200  # nothing signed out or in
