"""``thermoledger-server project …`` and ``tariff add`` (`service.project_cli`) on SQLite and
PostgreSQL: what the API stores and shows, and refusals naming the flag."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from tests.support.client import Project, TestClient
from thermoledger.service import cli as server_cli


def _run(database_url: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = server_cli.main([*argv, "--database-url", database_url], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_set_factor_tariff_and_show(database_url: str, client: TestClient) -> None:
    slug = f"p-{uuid.uuid4().hex[:10]}"
    status, _, err = _run(database_url, "project", "set", slug, "--region", "DE")
    assert status == 1
    assert "add --create" in err
    status, out, err = _run(
        database_url, "project", "set", slug, "--region", "DE", "--pue", "hyperscale", "--create"
    )
    assert status == 0, err
    assert json.loads(out)["region"] == "DE"
    assert json.loads(out)["pue"]["name"] == "hyperscale"
    status, out, err = _run(
        database_url, "project", "factor", "add", slug, "--kind", "market",
        "--value", "0.2 kgCO2e/kWh", "--valid-from", "2025-01-01", "--source", "PPA 2025",
    )  # fmt: skip
    assert status == 0, err
    factor = json.loads(out)
    assert (factor["region"], factor["basis"], factor["shared"]) == ("DE", "market", False)
    assert factor["intensity_g_per_kwh"] == pytest.approx(200.0)
    assert factor["valid_from"].startswith("2025-01-01T00:00:00")
    status, out, err = _run(
        database_url, "tariff", "add", slug, "--value", "0.12 USD/kWh",
        "--valid-from", "2025-01-01", "--valid-to", "2099-01-01T00:00:00Z", "--source", "contract",
    )  # fmt: skip
    assert status == 0, err
    assert json.loads(out)["usd_per_kwh"] == pytest.approx(0.12)
    status, out, err = _run(database_url, "project", "show", slug)
    assert status == 0, err
    shown = json.loads(out)
    assert shown["accounting"]["region"] == "DE"
    assert shown["in_force"]["market_factor"]["intensity_g_per_kwh"] == pytest.approx(200.0)
    assert shown["in_force"]["tariff"]["usd_per_kwh"] == pytest.approx(0.12)


def test_the_api_sees_what_the_cli_stored(
    database_url: str, client: TestClient, project: Project
) -> None:
    status, _, err = _run(
        database_url, "project", "set", project.slug, "--region", "FR",
        "--pue", "1.25", "--pue-source", "site meter 2024",
    )  # fmt: skip
    assert status == 0, err
    accounting = client.get("/api/v1/accounting", headers=project.read).json()
    assert accounting["region"] == "FR"
    assert accounting["pue"]["value"] == pytest.approx(1.25)
    _run(
        database_url, "tariff", "add", project.slug, "--value", "90 USD/MWh",
        "--valid-from", "2024-01-01", "--source", "invoice",
    )  # fmt: skip
    listed = client.get("/api/v1/tariffs", headers=project.read).json()
    assert [t["usd_per_kwh"] for t in listed] == [pytest.approx(0.09)]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["project", "set", "{slug}", "--region", "DE", "--pue", "hyprscale"], "--pue"),
        (["project", "set", "{slug}", "--region", "DE", "--pue", "1.2"], "--pue-source"),
        (["project", "set", "{slug}", "--region", "D E"], "--region"),
        (
            [
                "project",
                "factor",
                "add",
                "{slug}",
                "--region",
                "DE",
                "--kind",
                "locaton",
                "--value",
                "350 gCO2e/kWh",
                "--valid-from",
                "2025-01-01",
                "--source",
                "s",
            ],
            "--kind",
        ),
        (
            [
                "tariff",
                "add",
                "{slug}",
                "--region",
                "DE",
                "--value",
                "0.1 gCO2e/kWh",
                "--valid-from",
                "2025-01-01",
                "--source",
                "s",
            ],
            "--value",
        ),
        (
            [
                "tariff",
                "add",
                "{slug}",
                "--region",
                "DE",
                "--value",
                "0.1 USD/kWh",
                "--valid-from",
                "2025-01-01T00:00:00",
                "--source",
                "s",
            ],
            "--valid-from",
        ),
        (
            [
                "tariff",
                "add",
                "{slug}",
                "--value",
                "0.1 USD/kWh",
                "--valid-from",
                "2025-01-01",
                "--source",
                "s",
            ],
            "--region",
        ),
    ],
    ids=["pue-name", "pue-source", "region", "kind", "unit", "naive-time", "no-region"],
)
def test_refusals_exit_2_naming_the_flag(
    database_url: str, client: TestClient, project: Project, argv: list[str], flag: str
) -> None:
    before = client.get("/api/v1/accounting", headers=project.read).json()
    status, out, err = _run(database_url, *[a.replace("{slug}", project.slug) for a in argv])
    assert status == 2, (out, err)
    assert f": {flag}: " in err
    assert client.get("/api/v1/accounting", headers=project.read).json() == before
    assert client.get("/api/v1/tariffs", headers=project.read).json() == []


def test_an_overlapping_version_exits_1(database_url: str, project: Project) -> None:
    argv = [
        "tariff", "add", project.slug, "--region", "DE", "--value", "0.1 USD/kWh",
        "--valid-from", "2025-01-01", "--source", "s",
    ]  # fmt: skip
    assert _run(database_url, *argv)[0] == 0
    status, _, err = _run(database_url, *argv)
    assert status == 1
    assert "overlaps" in err
