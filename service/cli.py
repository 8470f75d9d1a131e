"""`thermoledger-server`: the server-side command line (demo now; serve, migrate later)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``thermoledger-server <command> ...``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="thermoledger-server",
        description="thermoledger's server side: storage, reports and the demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="run the simulated 8-GPU demo and print its report", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from service import demo

        return demo.main(rest)
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    raise SystemExit(main())
