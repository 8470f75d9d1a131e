"""`thermoledger-server migrate` and `token create/revoke`: a fresh install's first token."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dbutil
from tests.support.client import TestClient, bearer, clean_settings
from thermoledger.db import migrate
from thermoledger.service import cli
from thermoledger.service.app import create_app


@pytest.fixture(params=dbutil.BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with dbutil.database_url(request.param, tmp_path) as url:
        yield url


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_fresh_install_gets_its_first_token(empty_url: str) -> None:
    code, _, err = _run(
        "token", "create", "--project", "lab", "--scopes", "admin", "--database-url", empty_url
    )
    assert code == 1
    assert "thermoledger-server migrate" in err

    code, out, _ = _run("migrate", "--database-url", empty_url)
    assert code == 0
    assert migrate.current(empty_url) == migrate.head()
    assert migrate.head() in out

    code, out, err = _run(
        "token",
        "create",
        "--project",
        "lab",
        "--scopes",
        "admin,ingest,read",
        "--name",
        "bootstrap",
        "--database-url",
        empty_url,
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("tl_")
    assert "created project 'lab'" in err

    code, out2, err2 = _run(
        "token", "create", "--project", "lab", "--scopes", "read", "--database-url", empty_url
    )
    assert code == 0
    assert "created project" not in err2
    reader = out2.strip()
    assert reader != token

    with TestClient(create_app(clean_settings(database_url=empty_url))) as client:
        assert client.get("/api/v1/runs", headers=bearer(token)).status_code == 200
        listed = client.get("/api/v1/projects/lab/tokens", headers=bearer(token)).json()
        assert [t["name"] for t in listed] == ["bootstrap", "cli"]
        assert listed[1]["scopes"] == ["read"]
        reader_id = listed[1]["id"]
        code, out, _ = _run("token", "revoke", "--id", str(reader_id), "--database-url", empty_url)
        assert code == 0
        assert "revoked" in out
        assert client.get("/api/v1/runs", headers=bearer(reader)).status_code == 401
        assert client.get("/api/v1/runs", headers=bearer(token)).status_code == 200

    assert _run("token", "revoke", "--id", "999", "--database-url", empty_url)[0] == 1


def test_bad_scopes_are_refused_before_touching_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    code, _, err = _run(
        "token", "create", "--project", "lab", "--scopes", "root", "--database-url", url
    )
    assert code == 2
    assert "unknown scope 'root'" in err
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("days", ["1e9", "-1", "0", "nan", "inf", "40000"])
def test_an_expiry_out_of_range_is_refused_before_touching_the_database(
    tmp_path: Path, days: str
) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    code, _, err = _run(
        "token", "create", "--project", "lab", "--scopes", "read", "--expires-days", days,
        "--database-url", url,
    )  # fmt: skip
    assert code == 2
    assert "--expires-days" in err
    assert "THERMOLEDGER_LATEST_TIME" in err
    assert not (tmp_path / "never.db").exists()


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run("migrate", "--frobnicate")
    assert exit_info.value.code == 2
