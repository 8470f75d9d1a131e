"""``thermoledger-server project …`` and ``tariff add``: a project's accounting from the CLI.

The server-side twins of ``PUT /api/v1/accounting``, ``POST /api/v1/factors`` and
``POST /api/v1/tariffs``, for an operator setting up a project without a token, as ``token
create`` does::

    thermoledger-server project set ml-lab --region DE --pue hyperscale [--create]
    thermoledger-server project factor add ml-lab --kind location --value "350 gCO2e/kWh" \\
        --valid-from 2025-01-01 --source "UBA 2024"
    thermoledger-server tariff add ml-lab --value "0.12 USD/kWh" --valid-from 2025-01-01 \\
        --source "supplier contract"
    thermoledger-server project show ml-lab
    thermoledger-server rebasis --project ml-lab --run RUN_ID --reason "region set after the run"

Each builds the API's own request schema (`service.ledger_schemas`) and calls the API's own
route function with the project's admin rights, so the command line and the API cannot
disagree on what they accept or store. A bare date (``--valid-from 2025-01-01``) is midnight
UTC; a time needs its zone, as in the API. ``--region`` defaults to the project's region for
factors and tariffs. ``--pue`` takes a built-in default's name (hyperscale, typical,
colocation, on_prem_unknown, none) or a measured value with ``--pue-source``. Each prints what
was stored as JSON; ``show`` prints the settings and the factors and tariff in force now.
``rebasis`` re-prices an ended run on the project's current basis (`service.routes.rebasis`)
and prints the entries it appended (none when nothing changed).
Exit 2 names the refused flag; exit 1: no such project (``project set --create`` makes it),
an overlapping version, or a database not migrated. Only argparse is imported at module level.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any, TextIO

__all__ = ["add_project_parsers", "project_main", "rebasis_main", "tariff_main"]

#: The API's field for each flag, so an error names the flag the user typed.
_FLAGS = {
    "region": "--region",
    "pue": "--pue",
    "basis": "--kind",
    "rate": "--rate",
    "intensity": "--value",
    "price": "--value",
    "valid_from": "--valid-from",
    "valid_to": "--valid-to",
    "source": "--source",
    "year": "--year",
    "reason": "--reason",
    "run_id": "--run",
    "status": "--run",
}


def _flag(field: str | None) -> str:
    """``pue.measured.value`` → ``--pue``: the flag behind an API field path."""
    head = (field or "").split(".")[0].split("[")[0]
    return _FLAGS.get(head, f"--{head.replace('_', '-')}" if head else "arguments")


def _version_flags(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("project", help="project slug (must exist)")
    parser.add_argument("--region", help="grid region, e.g. DE (default: the project's region)")
    parser.add_argument("--value", required=True, help=f"with its unit, e.g. {example!r}")
    parser.add_argument("--valid-from", required=True, help="ISO date or time, e.g. 2025-01-01")
    parser.add_argument("--valid-to", help="exclusive end (default: open-ended)")
    parser.add_argument("--source", required=True, help="where the value comes from")
    parser.add_argument("--year", type=int, help="the data's reference year")


def add_project_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    database_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``project`` (set, show, factor add) and ``tariff`` (add) to the server CLI."""
    doc = __doc__.split("\n\n")[1] if __doc__ else None
    project = sub.add_parser("project", help="a project's region, PUE and factors", description=doc)
    actions = project.add_subparsers(dest="project_command", required=True, metavar="ACTION")
    set_ = actions.add_parser("set", help="set the project's region and PUE (PUT /accounting)")
    database_option(set_)
    set_.add_argument("project", help="project slug")
    set_.add_argument("--region", required=True, help="grid region, e.g. DE, US-CAL-CISO, WORLD")
    set_.add_argument(
        "--pue",
        default="none",
        help="hyperscale, typical, colocation, on_prem_unknown, none (IT only; the default), "
        "or a measured value such as 1.18 (with --pue-source)",
    )
    set_.add_argument("--pue-source", help="where a measured PUE comes from")
    set_.add_argument("--pue-year", type=int, help="the measured PUE's year")
    set_.add_argument("--create", action="store_true", help="create the project if missing")
    show = actions.add_parser("show", help="print the settings and the factors in force now")
    database_option(show)
    show.add_argument("project", help="project slug")
    factor = actions.add_parser("factor", help="the project's own emission-factor versions")
    factor_actions = factor.add_subparsers(dest="factor_command", required=True, metavar="ACTION")
    factor_add = factor_actions.add_parser("add", help="add a version (POST /factors)")
    database_option(factor_add)
    _version_flags(factor_add, "350 gCO2e/kWh")
    factor_add.add_argument("--kind", required=True, help="location or market (the basis)")
    factor_add.add_argument("--rate", default="average", help="average (default) or marginal")

    tariff = sub.add_parser("tariff", help="the project's own tariff versions", description=doc)
    tariff_actions = tariff.add_subparsers(dest="tariff_command", required=True, metavar="ACTION")
    tariff_add = tariff_actions.add_parser("add", help="add a version (POST /tariffs)")
    database_option(tariff_add)
    _version_flags(tariff_add, "0.12 USD/kWh")

    rebasis = sub.add_parser(
        "rebasis",
        help="re-price an ended run on its project's current basis (POST /runs/{id}/rebasis)",
        description="Append new facility-energy, CO2e and cost entries for an ended run, "
        "derived from its ledgered IT energy with the project's current region and PUE, each "
        "superseding the old one with the reason and the basis it replaces; nothing is edited, "
        "and nothing is appended when the basis has not changed.",
    )
    database_option(rebasis)
    rebasis.add_argument("--project", required=True, help="project slug")
    rebasis.add_argument("--run", required=True, type=uuid.UUID, help="the run's id")
    rebasis.add_argument("--reason", required=True, help="why the run is re-priced")


def _set_body(args: argparse.Namespace) -> dict[str, Any]:
    pue: Any = args.pue
    try:
        value = float(pue)
    except ValueError:
        if args.pue_source is not None or args.pue_year is not None:
            raise _Refused(
                "--pue-source", "only a measured --pue (a number) has a source"
            ) from None
    else:
        if args.pue_source is None:
            raise _Refused("--pue-source", f"a measured --pue {pue} needs its source")
        pue = {"value": value, "source": args.pue_source}
        if args.pue_year is not None:
            pue["year"] = args.pue_year
    return {"region": args.region, "pue": pue}


def _instant(text: str) -> str:
    """A bare date (``2025-01-01``) as midnight UTC; anything else as given (the API's check)."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        return text
    return f"{day.isoformat()}T00:00:00+00:00"


def _version_body(args: argparse.Namespace, region: str | None, value_field: str) -> dict[str, Any]:
    if region is None:
        raise _Refused("--region", "give a region: the project has none (project set --region)")
    body: dict[str, Any] = {
        "region": region,
        value_field: args.value,
        "valid_from": _instant(args.valid_from),
        "source": args.source,
    }
    if args.valid_to is not None:
        body["valid_to"] = _instant(args.valid_to)
    if args.year is not None:
        body["year"] = args.year
    if value_field == "intensity":
        body["basis"] = args.kind
        body["rate"] = args.rate
    return body


def _named(error: Exception) -> str:
    """An error's message with its API field (``price: …``) told as the flag (``--value: …``)."""
    field = getattr(error, "field", None)
    message = str(error)
    if not isinstance(field, str):
        return message
    message = message.removeprefix(f"{field}: ")
    return f"{_flag(field)}: {message}"


class _Refused(Exception):
    """A flag the command refuses (exit 2)."""

    def __init__(self, flag: str, message: str) -> None:
        self.flag = flag
        super().__init__(message)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO, url: str, what: str) -> int:
    import pydantic

    from thermoledger.accounting.errors import AccountingError
    from thermoledger.db import migrate
    from thermoledger.db.engine import make_engine, make_sessionmaker
    from thermoledger.db.errors import Conflict, InvalidInput, NotFound
    from thermoledger.db.factors import get_accounting, resolve_context
    from thermoledger.db.models import Scope
    from thermoledger.db.tokens import get_or_create_project, get_project
    from thermoledger.db.types import utcnow

    from .auth import Principal
    from .errors import field_path
    from .ledger_schemas import AccountingPublic, AccountingSet, FactorCreate, TariffCreate
    from .routes import factors as routes
    from .routes.rebasis import RebasisCreate, rebasis
    from .settings import Settings
    from .timebounds import bind

    prog = f"thermoledger-server {what}"
    bind(Settings(database_url=url))  # the schemas' stored time range, as a request binds it
    current, head = migrate.current(url), migrate.head()
    if current != head:
        err.write(
            f"{prog}: the database is at {current or 'no revision'}, not {head}; "
            "run `thermoledger-server migrate` first\n"
        )
        return 1
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            if what == "project set" and args.create:
                project, created = get_or_create_project(session, slug=args.project)
                if created:
                    err.write(f"created project {project.slug!r}\n")
            else:
                project = get_project(session, slug=args.project)
            admin = Principal(
                project_id=project.id,
                project_slug=project.slug,
                scopes=Scope.ADMIN,
                token_id=None,
            )
            answer: Any
            if what == "project set":
                body = AccountingSet.model_validate(_set_body(args))
                answer = routes.set_accounting(body, admin, session)
            elif what == "project show":
                config = get_accounting(session, project_id=project.id)
                context = resolve_context(session, project_id=project.id, at=utcnow())
                answer = {
                    "accounting": AccountingPublic.of(config, project.slug).model_dump(mode="json"),
                    "in_force": context.to_dict(),
                }
            else:
                region = (
                    None
                    if what == "rebasis"
                    else args.region or get_accounting(session, project_id=project.id).region
                )
                if what == "rebasis":
                    request = RebasisCreate.model_validate({"reason": args.reason})
                    answer = rebasis(args.run, request, admin, session)
                elif what == "project factor add":
                    factor = FactorCreate.model_validate(_version_body(args, region, "intensity"))
                    answer = routes.add_factor(factor, admin, session)
                else:
                    tariff = TariffCreate.model_validate(_version_body(args, region, "price"))
                    answer = routes.add_tariff(tariff, admin, session)
    except _Refused as e:
        err.write(f"{prog}: {e.flag}: {e}\n")
        return 2
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        err.write(f"{prog}: {_flag(field_path(first['loc']))}: {first['msg']}\n")
        return 2
    except InvalidInput as e:
        problem = e.problems[0]
        err.write(f"{prog}: {_flag(problem.field)}: {problem.message}\n")
        return 2
    except AccountingError as e:
        err.write(f"{prog}: {_named(e)}\n")
        return 2
    except NotFound as e:
        hint = " (add --create to make it)" if what == "project set" else ""
        err.write(f"{prog}: {e}{hint}\n")
        return 1
    except Conflict as e:
        err.write(f"{prog}: {_named(e)}\n")
        return 1
    finally:
        engine.dispose()
    if isinstance(answer, pydantic.BaseModel):
        out.write(answer.model_dump_json(indent=2) + "\n")
    else:
        import json

        out.write(json.dumps(answer, indent=2) + "\n")
    return 0


def project_main(args: argparse.Namespace, out: TextIO, err: TextIO, *, url: str) -> int:
    """Run ``project set|show|factor add``; returns the exit status."""
    what = {"set": "project set", "show": "project show", "factor": "project factor add"}
    return _run(args, out, err, url, what[args.project_command])


def rebasis_main(args: argparse.Namespace, out: TextIO, err: TextIO, *, url: str) -> int:
    """Run ``rebasis``; returns the exit status."""
    return _run(args, out, err, url, "rebasis")


def tariff_main(args: argparse.Namespace, out: TextIO, err: TextIO, *, url: str) -> int:
    """Run ``tariff add``; returns the exit status."""
    return _run(args, out, err, url, "tariff add")
