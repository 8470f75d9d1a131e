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
* ``migrate`` — upgrade the database to the newest schema (run it before ``serve``).
* ``token create --project X --scopes admin,ingest,read`` — create the project if it is missing
  and issue a token for it, printed once on stdout (``TOKEN=$(thermoledger-server token create
  ...)``); this is how a fresh install gets its first token. ``token revoke --id N``.
* ``demo`` — the simulated 8-GPU demo report (no database needed).
* ``audit verify [--project SLUG] [--anchor SEQ:HASH]`` — recompute every ledger hash chain and
  name each broken entry; exit 1 if any is broken (`service.audit_cli`).

Heavy imports (the web stack, SQLAlchemy, Alembic) happen inside the command that needs them,
so ``thermoledger-server demo`` and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

from .audit_cli import add_audit_parser


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

    try:
        scopes = parse_scopes(args.scopes.split(","))
    except ValueError as e:
        err.write(f"thermoledger-server: --scopes: {e}\n")
        return 2
    url = _database_url(args)
    if not _require_migrated(url, err):
        return 1
    expires_at = None
    if args.expires_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_days)
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


def main(
    argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Dispatch ``thermoledger-server <command> ...``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from . import demo

        return demo.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "migrate":
        from thermoledger.db import migrate

        url = _database_url(args)
        migrate.upgrade(url)
        out.write(f"database at revision {migrate.current(url)}\n")
        return 0
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
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    raise SystemExit(main())
