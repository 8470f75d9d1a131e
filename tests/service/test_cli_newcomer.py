"""`thermoledger-server` for a newcomer (issue 14): without the ``[service]`` extra a command
names the extra to install (no traceback), and ``migrate`` says which database it migrated and
from which revision to which."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dbutil
from thermoledger.db import migrate
from thermoledger.service import cli

# Runs the CLI in a fresh interpreter where the named modules cannot be imported (as in a plain
# `pip install thermoledger`): `sys.modules[name] = None` makes `import name` fail.
_BLOCKED_CLI = """
import contextlib, io, json, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from thermoledger.service.cli import main
results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(argv, out=out, err=err)
    except BaseException as e:
        code = f"raised {type(e).__name__}: {e}"
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def _blocked(modules: list[str], commands: list[list[str]]) -> list[tuple[object, str, str]]:
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKED_CLI, ",".join(modules), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return [tuple(r) for r in json.loads(done.stdout)]


@pytest.mark.slow
def test_without_the_service_extra_each_command_names_it(tmp_path: Path) -> None:
    url = dbutil.sqlite_url(tmp_path)
    commands = [
        ["migrate", "--database-url", url],
        ["serve", "--database-url", url],
        ["token", "create", "--project", "lab", "--scopes", "read", "--database-url", url],
        ["token", "revoke", "--id", "1", "--database-url", url],
        ["audit", "verify", "--database-url", url],
    ]
    results = _blocked(["alembic", "sqlalchemy", "uvicorn", "fastapi"], commands)
    for argv, (code, out, err) in zip(commands, results, strict=True):
        assert code == 1, (argv, code, err)
        assert out == ""
        assert err.startswith(f"thermoledger-server {argv[0]}: needs the [service] extra")
        assert "pip install 'thermoledger[service]'" in err
        assert "Traceback" not in err
        assert err.count("\n") == 1  # one line


@pytest.mark.slow
def test_only_alembic_missing_is_named(tmp_path: Path) -> None:
    [(code, _, err)] = _blocked(["alembic"], [["migrate", "--database-url", "sqlite://"]])
    assert code == 1
    assert "alembic" in err
    assert "pip install 'thermoledger[service]'" in err


@pytest.mark.slow
def test_without_the_postgres_extra_a_postgres_url_names_it() -> None:
    url = "postgresql+psycopg://lab:s3cret@127.0.0.1:1/ledger"
    [(code, _, err)] = _blocked(["psycopg"], [["migrate", "--database-url", url]])
    assert code == 1
    assert "pip install 'thermoledger[postgres]'" in err
    assert "s3cret" not in err


def test_a_module_no_extra_provides_keeps_its_error() -> None:
    assert cli.missing_extra(ModuleNotFoundError("x", name="alembic.command")) == "service"
    assert cli.missing_extra(ModuleNotFoundError("x", name="psycopg")) == "postgres"
    assert cli.missing_extra(ModuleNotFoundError("x", name="thermoledger.nope")) is None
    assert cli.missing_extra(ModuleNotFoundError("x")) is None


# -- migrate says where and what ----------------------------------------------------------------


def test_database_label_masks_the_password_and_names_the_sqlite_file(tmp_path: Path) -> None:
    label = cli.database_label("postgresql+psycopg://lab:s3cret@db.internal:5432/ledger")
    assert label == "postgresql+psycopg://lab:***@db.internal:5432/ledger"
    assert cli.database_label(f"sqlite:///{tmp_path}/x/../ledger.db") == (
        f"SQLite file {tmp_path}/ledger.db"
    )
    assert cli.database_label("sqlite://") == "SQLite in memory"


@pytest.fixture(params=dbutil.BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with dbutil.database_url(request.param, tmp_path) as url:
        yield url


def test_migrate_prints_the_database_and_the_revisions(empty_url: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["migrate", "--database-url", empty_url], out=out, err=err) == 0
    head = migrate.head()
    lines = out.getvalue().splitlines()
    assert lines == [
        f"database: {cli.database_label(empty_url)}",
        f"revision: none (empty database) -> {head}",
    ]
    if empty_url.startswith("sqlite"):
        assert lines[0].startswith("database: SQLite file /")
    out = io.StringIO()
    assert cli.main(["migrate", "--database-url", empty_url], out=out, err=err) == 0
    assert out.getvalue().splitlines()[1] == f"revision: {head} (already the newest)"


@pytest.mark.parametrize(
    ("command", "url", "said"),
    [
        (["migrate"], "postgresql+psycopg://postgres@127.0.0.1:1/none", "Connection refused"),
        (["migrate"], "sqlite:////nonexistent/directory/ledger.db", "unable to open"),
        (
            ["token", "create", "--project", "p", "--scopes", "read"],
            "sqlite:////nonexistent/directory/ledger.db",
            "unable to open",
        ),
    ],
)
def test_an_unreachable_database_is_one_line_not_a_traceback(
    command: list[str], url: str, said: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([*command, "--database-url", url], out=out, err=err)
    assert code == 1
    message = err.getvalue()
    assert message.count("\n") == 1, message
    assert f"thermoledger-server {command[0]}: cannot reach the database" in message
    assert said in message
    assert "--database-url" in message
    assert "Traceback" not in message
