"""``thermoledger report``: a run's report from the local spool, with no server.

One simulated run (``thermoledger run --backend simulated``, no ``--server``, a job that opens
phases and declares work through `Meter`) is metered per module; the report's figures are
checked against the simulated devices' closed-form energy (steady profiles: power × span, so
the unknown offset of the backend's clock does not matter), its JSON against the service's
report schemas section by section, and its HTML with `html.parser` (balanced tags, no script,
no external asset, the hostile run name escaped). The error paths (no spool, an empty one, an
unknown or ambiguous RUN) need no metered run. Nothing asserts on durations.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from thermoledger.meters import cli
from thermoledger.meters.backends.simulated import default_fleet
from thermoledger.meters.local_report import LOCAL_NOTE, UnknownLocalRun, find_run
from thermoledger.meters.spool import Spool

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
HOSTILE = '<script>alert("run")</script> & co'
GPUS = 4
#: Positions of `default_fleet` with a steady profile (steady, idle): closed form P × span.
STEADY = (0, 3)
JOB = """
import time
from thermoledger.meters import Meter
m = Meter("job").start()
with m.phase("warmup <b>"):
    time.sleep(0.25)
with m.phase("train"):
    time.sleep(0.4)
    m.add_tokens(4096)
m.declare_model(params=7e9)
m.declare_model(params=-1)
m.stop()
"""


def run_main(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), env=_env() if env is None else env, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _env() -> dict[str, str]:
    """The environment without ``THERMOLEDGER_*``: a developer's shell must not leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("THERMOLEDGER_")}


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spool holding one simulated run (4 GPUs, two phases, tokens and a model size)."""
    directory = tmp_path_factory.mktemp("spool")
    code, _, err = run_main(
        "run", "--backend", "simulated", "--gpus", ",".join(map(str, range(GPUS))),
        "--interval", "0.01", "--chunk", "0.05", "--spool-dir", str(directory),
        "--name", HOSTILE, "-q", "--", PY, "-c", JOB,
    )  # fmt: skip
    assert code == 0, err
    return directory


def _report_json(spool_dir: Path, *args: str) -> dict[str, Any]:
    code, out, err = run_main("report", "--spool-dir", str(spool_dir), "--json", "-", *args)
    assert code == 0, err
    assert "LOCAL report" in err  # the table goes to stderr when stdout carries the JSON
    report: dict[str, Any] = json.loads(out)
    return report


# -- figures --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_report_matches_the_closed_form_energy_within_its_band(spool_dir: Path) -> None:
    report = _report_json(spool_dir)
    devices = report["energy"]["by_device"]
    assert len(devices) == GPUS
    fleet = default_fleet(GPUS)
    for position in STEADY:
        device = devices[position]
        expected_j = fleet[position].profile.energy_between_j(0.0, device["duration_s"])
        assert device["energy_low_j"] <= expected_j <= device["energy_high_j"], device
        assert device["energy_j"] == pytest.approx(expected_j, rel=1e-6)
    total = report["energy"]["total"]
    assert total["energy_low_j"] <= total["energy_j"] <= total["energy_high_j"]
    assert total["energy_j"] == pytest.approx(sum(d["energy_j"] for d in devices))


@pytest.mark.slow
def test_the_plain_report_says_it_is_local_and_prints_the_figures(spool_dir: Path) -> None:
    report = _report_json(spool_dir)
    code, out, err = run_main("report", "--spool-dir", str(spool_dir))
    assert (code, err) == (0, "")
    assert f"LOCAL report of run {report['run']['id']}" in out
    assert "not ledgered" in out
    assert "SIMULATED DEVICES" in out
    for device in report["energy"]["by_device"]:
        assert f"{device['energy_j']:>12,.0f}" in out
    # no region, no price: not available, never a default
    assert "location-based not available" in out
    assert "not priced" in out
    assert "REFUSED declaration: declare_model(params=-1)" in out


@pytest.mark.slow
def test_co2e_and_cost_only_from_what_was_given(spool_dir: Path) -> None:
    bare = _report_json(spool_dir)
    assert bare["carbon"]["location_based"]["status"] == "not_available"
    assert bare["carbon"]["location_based"]["co2e_g"] is None
    assert bare["cost"]["total_usd"] is None
    assert bare["cost"]["total_status"] == "not_available"
    priced = _report_json(spool_dir, "--grid-intensity", "400", "--tariff", "0.25", "--pue", "1.5")
    facility_kwh = priced["energy"]["total"]["energy_j"] / 3.6e6 * 1.5
    assert priced["carbon"]["location_based"]["co2e_g"] == pytest.approx(facility_kwh * 400)
    assert priced["cost"]["energy_usd"] == pytest.approx(facility_kwh * 0.25)
    assert priced["local"] == {
        "ledgered": False,
        "spool_dir": str(spool_dir),
        "pue": 1.5,
        "grid_intensity_g_per_kwh": 400.0,
        "tariff_usd_per_kwh": 0.25,
        "note": LOCAL_NOTE,
    }


@pytest.mark.slow
def test_the_json_has_the_services_shape(spool_dir: Path) -> None:
    from thermoledger.service.report_schemas import (
        EnergyDecompositionRecord,
        MeasurementQuality,
        ReportCarbonPublic,
        ReportCostPublic,
        ReportEfficiency,
        ReportEnergy,
        ReportRun,
        ReportWork,
    )

    report = _report_json(spool_dir, "--tariff", "0.1")
    assert set(report) == {
        "run", "t0_s", "t1_s", "duration_s", "energy", "work", "efficiency", "bounds", "cost",
        "carbon", "sci", "notes", "local", "quality", "refused_declarations",
        "energy_decomposition",
    }  # fmt: skip
    # each section validates against the service's schema (extra keys forbidden)
    ReportRun.model_validate(report["run"])
    ReportEnergy.model_validate(report["energy"])
    ReportWork.model_validate(report["work"])
    ReportEfficiency.model_validate(report["efficiency"])
    ReportCostPublic.model_validate(report["cost"])
    ReportCarbonPublic.model_validate(report["carbon"])
    MeasurementQuality.model_validate(report["quality"])
    EnergyDecompositionRecord.model_validate(report["energy_decomposition"])
    assert report["run"]["name"] == HOSTILE
    assert report["run"]["simulated"] is True
    assert report["work"]["tokens"] == 4096
    assert report["work"]["model_params"] == 7e9
    assert report["work"]["flops_source"] == "estimated: 6·N·D"
    phases = {p["name"]: p for p in report["energy"]["by_phase"]}
    assert set(phases) == {"warmup <b>", "train"}
    assert phases["train"]["tokens"] == 4096
    for phase in phases.values():
        assert 0 < phase["energy_j"] < report["energy"]["total"]["energy_j"]
        assert phase["energy_low_j"] <= phase["energy_j"] <= phase["energy_high_j"]
    assert report["refused_declarations"] == [
        "declare_model(params=-1) ignored: need a whole count > 0 (e.g. 7e9); no 6·N·D "
        "FLOPs, MFU or bounds from it"
    ]
    assert LOCAL_NOTE in report["notes"]


# -- HTML -----------------------------------------------------------------------------------

_VOID = {"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "source", "wbr"}


class _Checker(HTMLParser):
    """Balanced tags, and every tag, attribute and text seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.extend(attrs)
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.extend(attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.mark.slow
def test_the_html_is_well_formed_self_contained_and_escapes_the_run(spool_dir: Path) -> None:
    target = spool_dir.parent / "report.html"
    code, out, err = run_main(
        "report", "--spool-dir", str(spool_dir), "--html", str(target), "--grid-intensity", "300"
    )
    assert code == 0, err
    assert "LOCAL report" in out
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert "script" not in checker.tags
    assert {"svg", "polyline", "table"} <= checker.tags
    assert not [a for a in checker.attrs if a[0] in ("src", "href") or a[0].startswith("on")]
    assert "url(" not in page
    # the hostile strings are text, escaped in the source
    text = "".join(checker.text)
    assert HOSTILE in text
    assert "warmup <b>" in text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;run&quot;)&lt;/script&gt; &amp; co" in page
    for needle in ("Local report", "not ledgered", "Power over time", "Devices", "Phases"):
        assert needle in text
    assert text.count("SIM-") >= GPUS


@pytest.mark.slow
def test_dash_writes_the_html_to_stdout(spool_dir: Path) -> None:
    code, out, err = run_main("report", "--spool-dir", str(spool_dir), "--html", "-")
    assert code == 0
    assert out.startswith("<!DOCTYPE html>")
    assert "LOCAL report" in err


def test_a_meter_without_a_server_leaves_its_run_for_the_report(tmp_path: Path) -> None:
    """`Meter` in-process, no server: the run stays in the spool, and the report reads it."""
    from thermoledger.meters import Meter

    meter = Meter(
        "in-process", simulate=True, spool_dir=str(tmp_path), interval_s=0.01, chunk_s=0.05, env={}
    ).start()
    with meter.phase("only"):
        meter.add_flops(1e12)
    meter.stop()
    with Spool.in_directory(tmp_path) as spool:
        record = spool.run_status(meter.run_id)
        assert record is not None
        assert record.status == "finished"
        assert spool.chunks(meter.run_id)
    code, out, err = run_main("report", "--spool-dir", str(tmp_path), "--json", "-")
    assert code == 0, err
    report = json.loads(out)
    assert report["run"]["id"] == meter.run_id
    assert report["run"]["name"] == "in-process"
    assert report["work"]["flops"] == 1e12
    assert [p["name"] for p in report["energy"]["by_phase"]] == ["only"]
    assert report["energy"]["total"]["energy_j"] > 0


# -- choosing the run ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_run_by_id_prefix_and_name(spool_dir: Path) -> None:
    newest = _report_json(spool_dir)["run"]["id"]
    for selector in (newest, newest[:8], HOSTILE):
        code, out, err = run_main("report", selector, "--spool-dir", str(spool_dir))
        assert code == 0, err
        assert f"LOCAL report of run {newest}" in out


@pytest.mark.slow
def test_an_unknown_run_exits_2_listing_the_spools_runs(spool_dir: Path) -> None:
    newest = _report_json(spool_dir)["run"]["id"]
    code, out, err = run_main("report", "no-such-run", "--spool-dir", str(spool_dir))
    assert code == 2
    assert out == ""
    assert "no run 'no-such-run' in the spool" in err
    assert newest in err
    assert HOSTILE in err


def test_no_spool_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    code, out, err = run_main("report", "--spool-dir", str(tmp_path / "none"))
    assert (code, out) == (1, "")
    assert f"no spool in {tmp_path / 'none'}" in err
    assert "thermoledger run" in err


def test_an_empty_spool_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    Spool.in_directory(tmp_path).close()
    code, out, err = run_main("report", "--spool-dir", str(tmp_path))
    assert (code, out) == (1, "")
    assert "holds no run" in err


def test_a_run_without_chunks_exits_1_saying_why(tmp_path: Path) -> None:
    with Spool.in_directory(tmp_path) as spool:
        spool.open_run("r-1", {"name": "unsealed"})
    code, _, err = run_main("report", "r-1", "--spool-dir", str(tmp_path))
    assert code == 1
    assert "run r-1 has no chunks in the spool" in err


def test_an_ambiguous_prefix_lists_the_candidates(tmp_path: Path) -> None:
    clock = iter(range(100, 200))
    with Spool(tmp_path / "spool.sqlite3", now=lambda: float(next(clock))) as spool:
        for run_id, name in (("abc-1", "one"), ("abc-2", "two"), ("xyz", "one")):
            spool.open_run(run_id, {"name": name})
        runs = spool.runs()
    with pytest.raises(UnknownLocalRun, match="start of 2 runs") as caught:
        find_run(runs, "abc")
    assert "abc-1" in str(caught.value)
    assert "abc-2" in str(caught.value)
    assert find_run(runs, None).run_id == "xyz"  # the newest
    assert find_run(runs, "abc-2").run_id == "abc-2"
    assert find_run(runs, "one").run_id == "xyz"  # a name: its newest run


@pytest.mark.slow
def test_the_report_command_keeps_pint_and_the_service_out(spool_dir: Path) -> None:
    """The meter's report uses the core's report module without its pint edge."""
    code = (
        "import io, sys\n"
        "from thermoledger.meters import cli\n"
        f"rc = cli.main(['report', '--spool-dir', {str(spool_dir)!r}, '--json', '-',"
        " '--tariff', '0.2', '--grid-intensity', '300'], env={}, out=io.StringIO(),"
        " err=io.StringIO())\n"
        "assert rc == 0, rc\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pint', 'fastapi', 'sqlalchemy', 'alembic') or m.startswith('thermoledger.service'))\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [PY, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=_env()
    )
    assert done.stdout.strip() == "[]"
