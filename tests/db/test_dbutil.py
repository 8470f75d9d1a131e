"""The shared test-database helper: CI must never skip PostgreSQL quietly."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.support import dbutil


def test_missing_url_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dbutil.ENV_VAR, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        dbutil.postgres_base_url()


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_missing_url_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.delenv(dbutil.ENV_VAR, raising=False)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        dbutil.postgres_base_url()


def test_unreachable_server_fails() -> None:
    # Port 1 on localhost: nothing listens there, so the connection is refused at once.
    with (
        pytest.raises(pytest.fail.Exception, match="unreachable"),
        dbutil.postgres_schema("postgresql+psycopg://postgres@127.0.0.1:1/test"),
    ):
        pass


def test_schema_url_sets_the_search_path() -> None:
    url = sa.make_url(dbutil.schema_url("postgresql+psycopg://u:p%40ss@h:5432/db", "tl_test_ab"))
    assert url.query["options"] == "-csearch_path=tl_test_ab"
    assert url.password == "p@ss"
    assert url.database == "db"
