"""``thermoledger-server estimate``: record an estimated run directly in the database.

The server-side twin of ``POST /api/v1/runs/{run_id}/estimate`` (same schema, same checks, same
ledger entries: `service.routes.estimates.record_estimated_run`), for an operator entering a
publication's figures or a scheduler's GPU-hours without a token, as ``token create`` does::

    thermoledger-server estimate --project nlp --name gpt-3 --devices 10000 \\
        --duration "14.8 day" --mean-power "330 W" --pue 1.10 \\
        --intensity "0.429 kgCO2e/kWh" --source "Patterson et al. 2021" --page "Table 4"

Quantities take their units (``"1082990 h"``, ``"0.954 lbCO2e/kWh"``); ``--energy "0.47 kWh"``
records an energy the source states, in place of device time × power. ``--rel INPUT=R`` and
``--range INPUT=LOW:HIGH`` give an input's range (repeatable). Prints the run id, the figures
with their bands and the ledger entries as JSON; exits 2 naming the refused field, 1 when the
project is unknown, the database is not migrated, or the run is measured (conflict).

``service.cli`` registers it (`add_estimate_parser`, `estimate_main`); it also runs as
``python -m thermoledger.service.estimate_cli``. Only argparse is imported at module level.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

__all__ = ["add_estimate_parser", "estimate_main", "main"]

_INPUTS = (
    "energy", "device_time", "devices", "duration", "mean_power", "tdp", "utilisation", "pue",
)  # fmt: skip
_BANDED = (*_INPUTS, "intensity")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", required=True, help="project slug (must exist)")
    parser.add_argument("--run-id", type=uuid.UUID, help="the run's id (default: a new one)")
    parser.add_argument("--name", help="the run's name (required for a new run)")
    parser.add_argument("--kind", help="training, inference, ... (default: training)")
    parser.add_argument("--started-at", help="ISO time with a zone (default: now)")
    parser.add_argument("--ended-at", help="ISO time (default: start + duration, or now)")
    parser.add_argument(
        "--energy", help='IT energy stated by the source, e.g. "0.47 kWh" (no device time/power)'
    )
    parser.add_argument("--device-time", help='device-hours as a time, e.g. "1082990 h"')
    parser.add_argument("--devices", type=float, help="number of devices (with --duration)")
    parser.add_argument("--duration", help='wall-clock duration, e.g. "14.8 day"')
    parser.add_argument("--mean-power", help='mean power per device, e.g. "330 W"')
    parser.add_argument("--tdp", help='TDP per device (default: the catalog\'s), e.g. "400 W"')
    parser.add_argument("--utilisation", type=float, help="mean fraction of TDP, (0, 1]")
    parser.add_argument("--device", help="device name, for the catalog's TDP")
    parser.add_argument("--pue", type=float, help="PUE (default: the project's)")
    parser.add_argument("--intensity", help='location-based, e.g. "0.954 lbCO2e/kWh"')
    parser.add_argument(
        "--rel",
        action="append",
        default=[],
        metavar="INPUT=R",
        help=f"relative uncertainty of an input ({', '.join(_BANDED)}), e.g. pue=0.05",
    )
    parser.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="INPUT=LOW:HIGH",
        help='an input\'s range, e.g. "mean_power=250 W:350 W" or utilisation=0.3:0.6',
    )
    parser.add_argument("--source", required=True, help="where the inputs come from")
    parser.add_argument("--document", help="title, arXiv id, URL, invoice")
    parser.add_argument("--page", help="page, table or section")
    parser.add_argument("--note", help="what was derived or assumed")


def add_estimate_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    database_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``estimate`` to the server CLI's subcommands."""
    estimate = sub.add_parser(
        "estimate",
        help="record an estimated run (device time × power × PUE) in the database",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    database_option(estimate)
    _arguments(estimate)


def _band(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    band: dict[str, dict[str, Any]] = {}
    for text in args.rel:
        name, sep, value = str(text).partition("=")
        if not sep or name not in _BANDED:
            raise ValueError(f"--rel {text!r}: expected INPUT=R with INPUT one of {_BANDED}")
        band.setdefault(name, {})["rel"] = float(value)
    for text in args.range:
        name, sep, ends = str(text).partition("=")
        low, colon, high = ends.partition(":")
        if not sep or not colon or name not in _BANDED:
            raise ValueError(f"--range {text!r}: expected INPUT=LOW:HIGH")
        unitless = name in ("devices", "utilisation", "pue")
        band.setdefault(name, {}).update(
            low=float(low) if unitless else low.strip(),
            high=float(high) if unitless else high.strip(),
        )
    return band


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "provenance": {
            key: value
            for key in ("source", "document", "page", "note")
            if (value := getattr(args, key)) is not None
        },
        "band": _band(args),
    }
    for key in ("name", "kind", "started_at", "ended_at", "device", "intensity", *_INPUTS):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    return body


def estimate_main(args: argparse.Namespace, out: TextIO, err: TextIO, *, url: str) -> int:
    """Run ``estimate``; returns the exit status."""
    import pydantic

    from thermoledger.accounting.errors import AccountingError
    from thermoledger.db import migrate
    from thermoledger.db.engine import make_engine, make_sessionmaker
    from thermoledger.db.errors import Conflict, InvalidInput, NotFound
    from thermoledger.db.tokens import get_project

    from .errors import field_path
    from .estimate_schemas import EstimateCreate, EstimatePublic
    from .routes.estimates import record_estimated_run
    from .schemas import RunPublic
    from .settings import Settings
    from .timebounds import bind

    settings = Settings(database_url=url)
    bind(settings)  # the schemas' stored time range, as a request binds it
    try:
        body = EstimateCreate.model_validate(_body(args))
    except ValueError as e:
        if isinstance(e, pydantic.ValidationError):
            first = e.errors()[0]
            err.write(f"thermoledger-server: {field_path(first['loc'])}: {first['msg']}\n")
        else:
            err.write(f"thermoledger-server: {e}\n")
        return 2
    current, head = migrate.current(url), migrate.head()
    if current != head:
        err.write(
            f"thermoledger-server: the database is at {current or 'no revision'}, not {head}; "
            "run: thermoledger-server migrate\n"
        )
        return 1
    run_id = args.run_id or uuid.uuid4()
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            project = get_project(session, slug=args.project)
            record, _, estimate, entries = record_estimated_run(
                session, project_id=project.id, run_id=run_id, body=body, settings=settings
            )
            answer = EstimatePublic.of(RunPublic.of(record, project.slug), estimate, entries)
    except (InvalidInput, AccountingError) as e:
        err.write(f"thermoledger-server: {e}\n")
        return 2
    except (NotFound, Conflict) as e:
        err.write(f"thermoledger-server: {e}\n")
        return 1
    finally:
        engine.dispose()
    out.write(answer.model_dump_json(indent=2) + "\n")
    return 0


def main(
    argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """``python -m thermoledger.service.estimate_cli``: the same command, on its own."""
    parser = argparse.ArgumentParser(
        prog="thermoledger-server estimate",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: THERMOLEDGER_DATABASE_URL, else the embedded SQLite file)",
    )
    _arguments(parser)
    args = parser.parse_args(argv)
    if args.database_url:
        url = str(args.database_url)
    else:
        from .settings import Settings

        url = Settings().database_url
    return estimate_main(args, out, err, url=url)


if __name__ == "__main__":
    raise SystemExit(main())
