"""``thermoledger-server audit verify``: check every project's ledger chain from the database.

Prints one line per project (entries, the last seq and its hash: the anchor to publish) and,
for a broken chain, one line per broken entry naming its seq, row id and what is wrong; exits 1
when any chain is broken (2 on bad arguments, 1 on an unmigrated database), so it can gate a
cron job or a CI step. ``--anchor SEQ:HASH`` (with ``--project``) also proves that a head
published earlier is still in the chain. Only argparse is imported here; the database stack
loads when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TextIO

__all__ = ["add_audit_parser", "audit_main"]


def add_audit_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    database_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``audit verify`` to the server CLI's subcommands."""
    audit = sub.add_parser("audit", help="verify the ledger's hash chains")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify", help="recompute every ledger hash and link; exit 1 if a chain is broken"
    )
    database_option(verify)
    verify.add_argument("--project", help="only this project's chain (slug)")
    verify.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="a head published earlier that must still be in the chain (needs --project)",
    )


def audit_main(args: argparse.Namespace, out: TextIO, err: TextIO, *, url: str) -> int:
    """Run ``audit verify``; returns the exit status."""
    from thermoledger.db import ledger, migrate
    from thermoledger.db.engine import make_engine, make_sessionmaker
    from thermoledger.db.errors import InvalidInput, NotFound

    from .routes.audit import parse_anchors

    try:
        anchors = parse_anchors(args.anchor)
    except InvalidInput as e:
        err.write(f"thermoledger-server: --anchor: {e}\n")
        return 2
    if anchors and not args.project:
        err.write("thermoledger-server: --anchor needs --project\n")
        return 2
    current, head = migrate.current(url), migrate.head()
    if current != head:
        err.write(
            f"thermoledger-server: the database is at {current or 'no revision'}, not {head}; "
            "run `thermoledger-server migrate` first\n"
        )
        return 1
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            results = ledger.verify_projects(session, slug=args.project, anchors=anchors)
    except NotFound:
        err.write(f"thermoledger-server: no project {args.project!r}\n")
        return 1
    finally:
        engine.dispose()
    broken = 0
    for slug, verdict in results:
        state = "OK" if verdict.ok else f"BROKEN ({len(verdict.problems)} problem(s))"
        out.write(
            f"{slug}: {verdict.entries} entries, last seq {verdict.head_seq} hash "
            f"{verdict.head_hash}: {state}\n"
        )
        for problem in verdict.problems:
            entry = f"id {problem.entry_id}" if problem.entry_id is not None else "no row"
            out.write(f"  seq {problem.seq} ({entry}) {problem.kind}: {problem.message}\n")
        broken += 0 if verdict.ok else 1
    if broken:
        err.write(f"thermoledger-server: {broken} ledger chain(s) broken\n")
        return 1
    return 0
