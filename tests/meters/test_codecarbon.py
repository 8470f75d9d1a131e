"""`meters.codecarbon`: reading CodeCarbon's emissions.csv of three versions' column sets (the
last row per run, refusals with their line), the band, the estimate bodies, and the command's
offline paths (dry run, malformed files: exit 2 with the line and column, never a traceback).

The service side (imports, repeats, conflicts, the ledger): tests/service/test_codecarbon_import.py.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from thermoledger.meters.cli import main
from thermoledger.meters.codecarbon import (
    MalformedFile,
    band_rel,
    estimate_body,
    read_emissions_csv,
    run_uuid,
)
from thermoledger.meters.codecarbon import timezone as parse_zone

DATA = Path(__file__).parent / "data" / "codecarbon"
V1, V2, V3 = (DATA / f"emissions_v{n}.csv" for n in (1, 2, 3))
RUN_A = "6f1d2c3e-0a4b-4c8d-9e2f-3a4b5c6d7e8f"  # GPU box, machine mode, flushed once
RUN_B = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"  # CPU only, process mode, PUE 1.2


def test_the_last_row_of_a_run_is_its_total_and_refusals_keep_their_line() -> None:
    runs = read_emissions_csv(V2.read_text())
    assert [(r.run_id[:8], r.line, r.rows) for r in runs] == [
        ("6f1d2c3e", 4, 2),  # first seen on line 2 (a flush); its total is line 4
        ("11111111", 3, 1),
        ("9a8b7c6d", 5, 1),
        ("22222222", 6, 1),
    ]
    a = runs[0]
    assert a.refused is None
    assert a.numbers["duration"] == 3600.0
    assert a.energy_kwh == pytest.approx(0.3238125)
    assert a.ended_at == datetime(2024, 5, 27, 10, 49, 55, tzinfo=UTC)
    assert a.version == "CodeCarbon 2.4.2"
    assert a.text["tracking_mode"] == "machine"
    assert runs[1].refused is not None
    assert "energy_consumed is 0 kWh" in runs[1].refused
    assert runs[3].refused is not None
    assert "energy_consumed is empty" in runs[3].refused


def test_a_1x_file_is_identified_by_experiment_id_and_has_no_split() -> None:
    runs = read_emissions_csv(V1.read_text())
    assert [r.run_id for r in runs] == [
        "7d0c51a2-4e2b-4f6a-9c1d-2b3e4f5a6b7c",
        "c2d3e4f5-a6b7-4c8d-9e0f-a1b2c3d4e5f6",
    ]
    assert all(r.refused is None for r in runs)
    assert runs[0].pue is None
    assert runs[0].version == "CodeCarbon (version not recorded)"
    rel, assumed = band_rel(runs[0])
    assert rel == 0.5
    assert "no CPU/GPU/RAM split" in assumed


def test_a_3x_file_with_its_extra_columns_is_read() -> None:
    (run,) = read_emissions_csv(V3.read_text())
    assert run.refused is None
    assert run.version == "CodeCarbon 3.0.1"
    assert run.pue == 1.1
    assert run.text["cloud_region"] == "us-east-1"


def test_the_band_adds_each_parts_range() -> None:
    (a, _, b, _) = read_emissions_csv(V2.read_text())
    n = a.numbers
    expected = (n["cpu_energy"] * 0.5 + n["gpu_energy"] * 0.05 + n["ram_energy"] * 0.5) / (
        a.energy_kwh
    )
    rel, assumed = band_rel(a)
    assert rel == pytest.approx(expected)
    assert 0.15 < rel < 0.16
    assert "GPU ±5 % (NVML)" in assumed
    assert "the file does not say" in assumed
    # read CPU figures narrow the CPU part to ±10 %
    measured, said = band_rel(a, cpu_measured=True)
    assert measured == pytest.approx(
        (n["cpu_energy"] * 0.1 + n["gpu_energy"] * 0.05 + n["ram_energy"] * 0.5) / a.energy_kwh
    )
    assert "--cpu-measured" in said
    # in process mode the CPU figure is an attributed share: the wide band whatever was read
    assert band_rel(b, cpu_measured=True)[0] == pytest.approx(0.5)


def test_the_body_states_codecarbons_energy_intensity_pue_and_provenance() -> None:
    (_, _, b, _) = read_emissions_csv(V2.read_text())
    body = estimate_body(b, project="ml-lab", file_name="emissions_v2.csv", kind="training")
    # energy_consumed holds CodeCarbon's PUE: IT energy = 0.06 kWh / 1.2
    value, unit = body["energy"].split()
    assert float(value) == pytest.approx(0.05)
    assert unit == "kWh"
    assert body["pue"] == 1.2
    grams, per = body["intensity"].split()
    assert float(grams) == pytest.approx(0.00336 * 1000 / 0.06)
    assert per == "gCO2e/kWh"
    assert body["project"] == "ml-lab"
    assert body["supersede"] is False
    assert body["kind"] == "training"
    assert body["ended_at"] == "2024-05-28T08:00:00+00:00"
    assert body["started_at"] == "2024-05-28T06:00:00+00:00"
    assert body["tags"] == {
        "source": "codecarbon",
        "codecarbon.project": "llm-finetune",
        "codecarbon.run_id": RUN_B,
    }
    provenance = body["provenance"]
    assert provenance["source"] == "CodeCarbon 2.4.2"
    assert provenance["document"] == "emissions_v2.csv"
    assert provenance["page"] == f"line 5, run_id {RUN_B}"
    for said in ("tracking_mode process", "France, FRA, ile-de-france", "PUE 1.2", "band ±50.0%"):
        assert said in provenance["note"]
    assert "device" not in body  # no GPU on that machine


def test_a_timestamp_is_read_in_the_zone_given() -> None:
    zone = parse_zone("+02:00")
    (run, *_) = read_emissions_csv(V2.read_text(), zone=zone)
    assert run.ended_at == datetime(2024, 5, 27, 10, 49, 55, tzinfo=timezone(timedelta(hours=2)))
    body = estimate_body(run, project="p", file_name="f.csv", zone_name="+02:00")
    assert body["ended_at"] == "2024-05-27T08:49:55+00:00"
    assert "timestamp read as +02:00" in body["provenance"]["note"]
    assert parse_zone("Europe/Paris").utcoffset(datetime(2024, 7, 1)) == timedelta(hours=2)
    with pytest.raises(ValueError, match="--timezone"):
        parse_zone("Mars/Olympus")


def test_the_run_id_is_the_same_on_every_import_and_per_project() -> None:
    (a, *_) = read_emissions_csv(V2.read_text())
    (again, *_) = read_emissions_csv(V2.read_text())
    assert run_uuid("ml-lab", a) == run_uuid("ml-lab", again)
    assert run_uuid("ml-lab", a) != run_uuid("other", a)
    # pinned: ids that changed between releases would make a re-import duplicate every run
    assert run_uuid("ml-lab", a) == uuid.UUID("e3ad6203-24a6-5320-9f29-cc90008295e9")


_HEADER = "timestamp,project_name,run_id,duration,emissions,energy_consumed"
_GOOD = f"2024-05-27T10:49:55,p,{RUN_A},3600,0.1,0.25"


@pytest.mark.parametrize(
    ("text", "line", "column", "says"),
    [
        ("", 1, None, "empty"),
        ("timestamp,project_name,run_id,duration,emissions\n", 1, "energy_consumed", "lacks"),
        ("timestamp,project_name,duration,emissions,energy_consumed\n", 1, "run_id", "neither"),
        (f"{_HEADER},run_id\n", 1, "run_id", "twice"),
        (f"{_HEADER}\n{_GOOD}\n2024-05-27T11:00:00,p,x,abc,0.1,0.2\n", 3, "duration", "'abc'"),
        (
            f"{_HEADER}\n{_GOOD}\n2024-05-27T11:00:00,p,x,1,0.1,inf\n",
            3,
            "energy_consumed",
            "finite",
        ),
        (f"{_HEADER}\nyesterday,p,x,1,0.1,0.2\n", 2, "timestamp", "not a time"),
        (f"{_HEADER}\n{_GOOD}\n\n2024-05-27T11:00:00,p,x,1,0.2\n", 4, None, "5 fields"),
        (f'{_HEADER}\n2024-05-27T11:00:00,"p,x,1,0.1,0.2\n', 2, None, "not CSV"),
    ],
)
def test_a_malformed_file_names_its_line_and_column(
    text: str, line: int, column: str | None, says: str
) -> None:
    with pytest.raises(MalformedFile) as info:
        read_emissions_csv(text)
    assert (info.value.line, info.value.column) == (line, column)
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2024-05-27T10:49:55,p,x,3600,0.1,0", "energy_consumed is 0 kWh"),
        ("2024-05-27T10:49:55,p,x,3600,0.1,", "energy_consumed is empty"),
        ("2024-05-27T10:49:55,p,x,3600,0.1,nan", "energy_consumed is empty"),
        ("2024-05-27T10:49:55,p,x,3600,0.1,-0.2", "negative"),
        ("2024-05-27T10:49:55,p,,3600,0.1,0.2", "run id is empty"),
        (",p,x,3600,0.1,0.2", "cannot be dated"),
        ("2024-05-27T10:49:55,p,x,0,0.1,0.2", "duration"),
        ("2024-05-27T10:49:55,p,x,3600,-1,0.2", "emissions is negative"),
    ],
)
def test_a_row_without_a_usable_energy_is_refused_with_its_reason(row: str, reason: str) -> None:
    (run,) = read_emissions_csv(f"{_HEADER}\n{row}\n")
    assert run.refused is not None
    assert reason in run.refused
    assert run.line == 2


def test_parts_above_the_total_and_a_pue_below_one_are_refused() -> None:
    header = f"{_HEADER},cpu_energy,gpu_energy,ram_energy,pue"
    (over,) = read_emissions_csv(f"{header}\n{_GOOD},0.2,0.1,0.0,1.0\n")
    assert over.refused is not None
    assert "exceeds energy_consumed" in over.refused
    (low,) = read_emissions_csv(f"{header}\n{_GOOD},0.1,0.1,0.05,0.9\n")
    assert low.refused is not None
    assert "below 1" in low.refused


# --------------------------------------------------------------------------- the command


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), env={}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_dry_run_prints_the_plan_and_sends_nothing() -> None:
    code, out, err = _cli("import", "codecarbon", str(V3), "--project", "ml-lab", "--dry-run")
    assert code == 0, err
    (run,) = read_emissions_csv(V3.read_text())
    assert "1 run(s) in 1 row(s) → project ml-lab" in out
    assert "dry run: would import 1 run(s), nothing sent" in out
    assert f"→ run {run_uuid('ml-lab', run)}" in out
    assert "PUE 1.1" in out


def test_a_dry_run_lists_the_refused_runs_and_exits_1() -> None:
    code, out, _ = _cli("import", "codecarbon", str(V2), "--project", "p", "--dry-run")
    assert code == 1
    assert "would import 2 run(s)" in out
    assert "refused: 2" in out
    assert "line 3 (run_id 11111111-2222-4333-8444-555555555555): energy_consumed is 0" in out
    assert "line 6 (run_id 22222222-3333-4444-8555-666666666666)" in out


def test_a_malformed_file_exits_2_with_the_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "emissions.csv"
    bad.write_text(f"{_HEADER}\n{_GOOD}\n2024-05-27T11:00:00,p,y,12 min,0.1,0.2\n")
    code, out, err = _cli("import", "codecarbon", str(bad), "--project", "p", "--dry-run")
    assert code == 2
    assert "line 3, column duration: '12 min' is not a number" in err
    assert "Traceback" not in err + out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--timezone", "Mars/Olympus"], "--timezone 'Mars/Olympus'"),
        ([], "no server: pass --server URL"),
    ],
)
def test_options_refused_before_sending(argv: list[str], says: str) -> None:
    code, _, err = _cli("import", "codecarbon", str(V3), "--project", "p", *argv)
    assert code == 2
    assert says in err
    assert "Traceback" not in err


def test_an_unreachable_service_stops_the_import_and_says_nothing_is_lost() -> None:
    with socket.socket() as bound:  # bound, never listening: a connection is refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        code, out, err = _cli(
            "import", "codecarbon", str(V3), "--project", "p",
            "--server", f"http://127.0.0.1:{port}", "--token", "tl_x",
        )  # fmt: skip
    assert code == 1
    assert "stopped after 0 of 1 run(s)" in out
    assert "import the file again (runs already imported are recognised)" in err
    assert "Traceback" not in err


def test_unreadable_files_exit_2(tmp_path: Path) -> None:
    code, _, err = _cli("import", "codecarbon", str(tmp_path / "nope.csv"), "--project", "p")
    assert code == 2
    assert "cannot read" in err
    latin = tmp_path / "latin.csv"
    latin.write_bytes(f"{_HEADER}\n{_GOOD}\n".encode() + b"2024-05-27,caf\xe9,x,1,1,1\n")
    code, _, err = _cli("import", "codecarbon", str(latin), "--project", "p", "--dry-run")
    assert code == 2
    assert "line 3: not UTF-8 text" in err


def test_the_cli_loads_the_importer_only_for_the_command() -> None:
    code = (
        "import json, sys\n"
        "from thermoledger.meters.cli import build_parser\n"
        "build_parser().parse_args(['import', 'codecarbon', 'f.csv', '--project', 'p'])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "thermoledger.meters.codecarbon" not in json.loads(done.stdout)
    # control: the probe does see the module when something imports it
    probe = "import thermoledger.meters.codecarbon\n" + code
    control = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "thermoledger.meters.codecarbon" in json.loads(control.stdout)
