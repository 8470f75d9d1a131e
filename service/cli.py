"""`thermoledger-server`: the server-side command line.

Commands:

* ``serve`` — run the API with uvicorn (settings from ``THERMOLEDGER_*``); ``--log-format json``
  (or ``THERMOLEDGER_LOG_FORMAT=json``) logs one JSON object per line (`service.logs`).
  ``--workers N`` runs N processes on the port, their ``/metrics`` merged through a
  ``PROMETHEUS_MULTIPROC_DIR`` (the operator's, wiped at start, or a private temporary one
  removed at exit: `service.metrics.multiprocess_directory`). A connection whose request line
  and headers take longer than ``THERMOLEDGER_HEADER_TIMEOUT_S`` (default 10 s) is closed
  (`service.server`; uvicorn has no such timeout of its own); request bodies have
  ``THERMOLEDGER_BODY_TIMEOUT_S`` (`service.guard`).
* ``migrate`` — upgrade the database to the newest schema (run it before ``serve``); prints the
  database it migrates (the URL with its password masked; for SQLite, the file) and the
  revision before and after.
* ``token create --project X --scopes admin,ingest,read`` — create the project if it is missing
  and issue a token for it, printed once on stdout (``TOKEN=$(thermoledger-server token create
  ...)``); this is how a fresh install gets its first token. ``token revoke --id N``.
* ``demo`` — a short simulated 8-GPU job metered into an embedded service on a fresh SQLite
  database and reported (`service.demo`; ``--serve`` keeps the pages up until Ctrl-C).
* ``audit verify [--project SLUG] [--anchor SEQ:HASH]`` — recompute every ledger hash chain and
  name each broken entry; exit 1 if any is broken (`service.audit_cli`).
* ``estimate --project X --name N --devices 8 --duration "10 h" --mean-power "300 W" --source S``
  — record a run that was never metered: device time × mean power (or TDP × utilisation) × PUE,
  with its band and provenance, ledgered and labelled an estimate (`service.estimate_cli`).
* ``project set ml-lab --region DE --pue hyperscale [--create]``, ``project show ml-lab``,
  ``project factor add ml-lab --kind location --value "350 gCO2e/kWh" --valid-from 2025-01-01
  --source S`` and ``tariff add ml-lab --value "0.12 USD/kWh" --valid-from … --source S`` — a
  project's region, PUE, factors and tariffs, through the API's own schemas and routes
  (`service.project_cli`).
* ``rebasis --project ml-lab --run RUN_ID --reason "..."`` — re-price an ended run on its
  project's current region and PUE by new, superseding ledger entries (`service.project_cli`).

Heavy imports (the web stack, SQLAlchemy, Alembic) happen inside the command that needs them,
so ``thermoledger-server demo`` and ``--help`` stay fast. Without the ``[service]`` extra (a
plain ``pip install thermoledger`` has only the meter) a command says which extra to install
and exits 1, with no traceback (`missing_extra`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

from thermoledger._cli_suggest import suggest_close

from .audit_cli import add_audit_parser
from .estimate_cli import add_estimate_parser
from .project_cli import add_project_parsers

__all__ = ["build_parser", "database_label", "main", "missing_extra"]

#: The top-level modules of each extra the server commands need (and their own dependencies a
#: broken install may lack), so a missing one is named with the ``pip install`` that fixes it.
_EXTRA_MODULES: dict[str, frozenset[str]] = {
    "service": frozenset(
        {
            "alembic",
            "annotated_types",
            "anyio",
            "fastapi",
            "httptools",
            "jinja2",
            "mako",
            "markupsafe",
            "pint",
            "platformdirs",
            "pydantic",
            "pydantic_core",
            "pydantic_settings",
            "sqlalchemy",
            "starlette",
            "uvicorn",
            "uvloop",
        }
    ),
    "postgres": frozenset({"psycopg", "psycopg_binary"}),
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``error`` names (``"service"``, ``"postgres"``);
    None for a module no extra provides (a bug, which keeps its traceback)."""
    top = (error.name or "").split(".")[0]
    for extra, modules in _EXTRA_MODULES.items():
        if top in modules:
            return extra
    return None


def database_label(url: str) -> str:
    """Where a database is, for people: the URL with its password masked (``***``); for SQLite,
    the file's absolute path (or ``in memory``).

    Args:
        url: A SQLAlchemy URL.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = parsed.database or ""
        if name in ("", ":memory:") or name.startswith("file::memory:"):
            return "SQLite in memory"
        return f"SQLite file {os.path.abspath(name)}"
    return parsed.render_as_string(hide_password=True)


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: THERMOLEDGER_DATABASE_URL, else the embedded SQLite file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thermoledger-server",
        description="thermoledger's server side: storage, API, reports and the demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="run the simulated 8-GPU demo and print its report", add_help=False)

    serve = sub.add_parser(
        "serve",
        help="run the HTTP API (uvicorn)",
        description="Run the HTTP API with uvicorn. Settings come from THERMOLEDGER_* (e.g. "
        "THERMOLEDGER_HEADER_TIMEOUT_S, default 10: a connection that has not sent its "
        "request headers in that time is closed; THERMOLEDGER_BODY_TIMEOUT_S, default 30: "
        "a request body that takes longer is refused with 408).",
    )
    _database_option(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    serve.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (default: 1; about two per core for heavy ingest)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text, or json lines with the run id (default: THERMOLEDGER_LOG_FORMAT, else text)",
    )

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the newest revision")
    _database_option(migrate)

    token = sub.add_parser("token", help="issue or revoke API tokens directly in the database")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_sub.add_parser("create", help="issue a token (creating the project if missing)")
    _database_option(create)
    create.add_argument("--project", required=True, help="project slug, e.g. ml-lab")
    create.add_argument("--project-name", help="display name for a new project (default: slug)")
    create.add_argument("--name", default="cli", help="token name (default: %(default)s)")
    create.add_argument(
        "--scopes", required=True, help="comma-separated: ingest, read, admin (e.g. ingest,read)"
    )
    create.add_argument("--expires-days", type=float, help="expire after this many days")
    revoke = token_sub.add_parser("revoke", help="revoke a token by id")
    _database_option(revoke)
    revoke.add_argument("--id", type=int, required=True, dest="token_id", help="token id")
    add_audit_parser(sub, _database_option)
    add_estimate_parser(sub, _database_option)
    add_project_parsers(sub, _database_option)
    return parser


def _database_url(args: argparse.Namespace) -> str:
    from .settings import Settings

    if args.database_url:
        return str(args.database_url)
    return Settings().database_url


def _require_migrated(url: str, err: TextIO) -> bool:
    from thermoledger.db import migrate

    current, head = migrate.current(url), migrate.head()
    if current != head:
        err.write(
            f"thermoledger-server: the database is at {current or 'no revision'}, not {head}; "
            "run `thermoledger-server migrate` first\n"
        )
        return False
    return True


def _token_create(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from thermoledger.db.engine import make_engine, make_sessionmaker
    from thermoledger.db.tokens import get_or_create_project

    from .auth import issue_token, parse_scopes, scope_names
    from .settings import Settings

    try:
        scopes = parse_scopes(args.scopes.split(","))
    except ValueError as e:
        err.write(f"thermoledger-server: --scopes: {e}\n")
        return 2
    url = _database_url(args)
    expires_at = None
    if args.expires_days is not None:
        latest = Settings(database_url=url).latest_time
        days = args.expires_days
        now = datetime.now(UTC)
        if not (math.isfinite(days) and days > 0 and days <= (latest - now).days):
            err.write(
                f"thermoledger-server: --expires-days: {days!r} must be > 0 and end before "
                f"{latest.date().isoformat()} (THERMOLEDGER_LATEST_TIME)\n"
            )
            return 2
        expires_at = now + timedelta(days=days)
    if not _require_migrated(url, err):
        return 1
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            project, created = get_or_create_project(
                session, slug=args.project, name=args.project_name
            )
            issued = issue_token(
                session, project_id=project.id, name=args.name, scopes=scopes, expires_at=expires_at
            )
    finally:
        engine.dispose()
    if created:
        err.write(f"created project {project.slug!r}\n")
    err.write(
        f"token {issued.record.id} {issued.record.name!r} for project {project.slug!r} "
        f"({', '.join(scope_names(scopes))}); it is shown this once:\n"
    )
    out.write(issued.token + "\n")
    return 0


def _token_revoke(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from thermoledger.db.engine import make_engine, make_sessionmaker
    from thermoledger.db.errors import NotFound
    from thermoledger.db.tokens import revoke_token

    url = _database_url(args)
    if not _require_migrated(url, err):
        return 1
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            record = revoke_token(session, token_id=args.token_id, project_id=None)
    except NotFound:
        err.write(f"thermoledger-server: no token {args.token_id}\n")
        return 1
    finally:
        engine.dispose()
    out.write(f"revoked token {record.id} {record.name!r} of project {record.project_slug!r}\n")
    return 0


def _migrate(args: argparse.Namespace, out: TextIO) -> int:
    from thermoledger.db import migrate

    url = _database_url(args)
    before = migrate.current(url)
    out.write(f"database: {database_label(url)}\n")
    migrate.upgrade(url)
    after = migrate.current(url)
    if before == after:
        out.write(f"revision: {after} (already the newest)\n")
    else:
        out.write(f"revision: {before or 'none (empty database)'} -> {after}\n")
    return 0


def main(
    argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Dispatch ``thermoledger-server <command> ...``; returns the exit status.

    A command whose extra is not installed (`missing_extra`) says which one to install and
    returns 1.
    """
    argv = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    err = err or sys.stderr
    parser = suggest_close(build_parser())  # an unknown flag suggests the close one
    args, rest = parser.parse_known_args(argv)
    try:
        return _dispatch(parser, args, rest, out, err)
    except ModuleNotFoundError as e:
        extra = missing_extra(e)
        if extra is None:
            raise
        err.write(
            f"thermoledger-server {args.command}: needs the [{extra}] extra ({e}): "
            f"pip install 'thermoledger[{extra}]'\n"
        )
        return 1
    except Exception as e:
        reason = _unreachable_database(e)
        if reason is None:
            raise
        url = getattr(args, "database_url", None) or os.environ.get("THERMOLEDGER_DATABASE_URL")
        where = f" ({database_label(url)})" if url else ""
        hint = (
            "that its directory exists and is writable"
            if (url or "sqlite").startswith("sqlite")
            else "that the server is up and accepts this user"
        )
        err.write(
            f"thermoledger-server {args.command}: cannot reach the database{where}: {reason}; "
            f"check THERMOLEDGER_DATABASE_URL or --database-url, and {hint}\n"
        )
        return 1


def _unreachable_database(e: BaseException) -> str | None:
    """The driver's first line when ``e`` says the database could not be opened or reached
    (refused, unknown host, bad credentials, an SQLite file that cannot be opened), else None.
    """
    try:
        from sqlalchemy.exc import OperationalError
    except ModuleNotFoundError:  # pragma: no cover - every database command needs [service]
        return None
    if not isinstance(e, OperationalError):
        return None
    text = str(e.orig if e.orig is not None else e).strip()
    return text.splitlines()[0] if text else type(e.orig).__name__


def _dispatch(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    rest: list[str],
    out: TextIO,
    err: TextIO,
) -> int:
    if args.command == "demo":
        from . import demo

        return demo.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "migrate":
        return _migrate(args, out)
    if args.command == "serve":
        import uvicorn

        from .app import create_app
        from .logs import log_config
        from .metrics import MULTIPROC_ENV, multiprocess_directory
        from .server import HttpToolsHeaderTimeout
        from .settings import Settings

        overrides = {"database_url": args.database_url, "log_format": args.log_format}
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        if args.workers > 1:
            # Each worker process builds its own app from the environment: pass the overrides on.
            for name, value in overrides.items():
                if value is not None:
                    os.environ[f"THERMOLEDGER_{name.upper()}"] = value
        # Workers share their metrics through a directory named in the environment they
        # inherit. One process needs none, but when the operator names one, prometheus_client
        # writes there even so, and stale files from an earlier run must go first.
        metrics_dir = (
            multiprocess_directory(os.environ)
            if args.workers > 1 or os.environ.get(MULTIPROC_ENV, "").strip()
            else contextlib.nullcontext()
        )
        with metrics_dir:
            uvicorn.run(
                "thermoledger.service.app:app_from_env"
                if args.workers > 1
                else create_app(settings),
                factory=args.workers > 1,
                workers=args.workers,
                # uvicorn's own parser, closing connections slow to send their headers; the
                # timeout reaches it through the app's lifespan state (service.server).
                http=HttpToolsHeaderTimeout,
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                log_config=log_config(settings.log_format, args.log_level),
                access_log=False,  # the service's own request log replaces it (service.metrics)
            )
        return 0
    if args.command == "token" and args.token_command == "create":
        return _token_create(args, out, err)
    if args.command == "token" and args.token_command == "revoke":
        return _token_revoke(args, out, err)
    if args.command == "audit":
        from .audit_cli import audit_main

        return audit_main(args, out, err, url=_database_url(args))
    if args.command == "estimate":
        from .estimate_cli import estimate_main

        return estimate_main(args, out, err, url=_database_url(args))
    if args.command == "project":
        from .project_cli import project_main

        return project_main(args, out, err, url=_database_url(args))
    if args.command == "rebasis":
        from .project_cli import rebasis_main

        return rebasis_main(args, out, err, url=_database_url(args))
    if args.command == "tariff":
        from .project_cli import tariff_main

        return tariff_main(args, out, err, url=_database_url(args))
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    raise SystemExit(main())
