"""``thermoledger-server estimate`` (`service.estimate_cli`) on SQLite and PostgreSQL: the same
run, label and ledger entries as the API, and refusals with their exit status."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from fastapi import FastAPI

from tests.support.client import Project, TestClient
from thermoledger.service import cli as server_cli
from thermoledger.service.estimate_cli import main

GPT3 = [
    "--name", "gpt-3",
    "--devices", "10000",
    "--duration", "14.8 day",
    "--mean-power", "330 W",
    "--pue", "1.10",
    "--intensity", "0.429 kgCO2e/kWh",
    "--source", "Patterson et al. 2021",
    "--document", "Carbon Emissions and Large Neural Network Training (arXiv:2104.10350)",
    "--page", "Table 4",
]  # fmt: skip


def _run(database_url: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["--database-url", database_url, *argv], out, err)
    return status, out.getvalue(), err.getvalue()


def test_the_cli_records_an_estimated_run(
    database_url: str, client: TestClient, project: Project
) -> None:
    run_id = str(uuid.uuid4())
    status, out, err = _run(
        database_url, "--project", project.slug, "--run-id", run_id,
        "--started-at", "2020-05-01T00:00:00Z", "--rel", "mean_power=0.1", *GPT3,
    )  # fmt: skip
    assert status == 0, err
    answer = json.loads(out)
    figures = {e["figure"]: e["value_si"] for e in answer["entries"]}
    # Patterson et al. 2021, Table 4: 1,287 MWh and 552 tCO2e.
    assert figures["facility_energy"] == pytest.approx(1287e6 * 3600, rel=0.005)
    assert figures["co2e_location"] == pytest.approx(552e6, rel=0.005)
    power = answer["estimate"]["inputs"]["mean_power_w"]
    assert (power["low"], power["high"]) == (pytest.approx(297.0), pytest.approx(363.0))
    run = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    assert run["host_info"]["estimate"]["method"] == "estimate"
    assert run["host_info"]["estimate"]["page"] == "Table 4"
    assert run["ended_at"].startswith("2020-05-15T19:12:00")


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--duration", "-1 day"], 2, "duration"),
        (["--utilisation", "0.5", "--device", "Quadro X"], 2, "utilisation"),
        (["--rel", "speed=0.1"], 2, "--rel"),
        (["--pue", "0.5"], 2, "pue"),
    ],
)
def test_bad_input_exits_2_naming_the_field(
    database_url: str, project: Project, argv: list[str], status: int, message: str
) -> None:
    code, out, err = _run(database_url, "--project", project.slug, *GPT3, *argv)
    assert code == status, out
    assert message in err
    assert out == ""


def test_an_unknown_project_exits_1(database_url: str, app: FastAPI) -> None:
    code, _, err = _run(database_url, "--project", "no-such-project", *GPT3)
    assert code == 1
    assert "no-such-project" in err


def test_thermoledger_server_estimate_is_the_same_command(
    database_url: str, client: TestClient, project: Project
) -> None:
    out, err = io.StringIO(), io.StringIO()
    status = server_cli.main(
        ["estimate", "--database-url", database_url, "--project", project.slug, *GPT3],
        out=out,
        err=err,
    )
    assert status == 0, err.getvalue()
    run_id = json.loads(out.getvalue())["run"]["id"]
    run = client.get(f"/api/v1/runs/{run_id}", headers=project.read).json()
    assert run["host_info"]["estimate"]["method"] == "estimate"
