"""The README's demo: runs without a GPU, labels itself simulated, and matches its ground truth."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from thermoledger.service import cli, demo


def test_demo_matches_closed_form_truth_within_band() -> None:
    result = demo.run_demo()
    report = result.report
    assert report.simulated
    truth = result.true_energy_j
    # the only loss is the 5 s gap excluded by policy: well under 1 %
    assert abs(report.total.energy_j - truth) / truth < 0.01
    assert report.total.energy_low_j <= truth <= report.total.energy_high_j
    methods = {d.method for d in report.devices}
    assert methods == {"counter", "power_avg", "power_instant"}
    assert sum(d.reset_count for d in report.devices) == 1
    assert sum(d.gap_count for d in report.devices) == 1
    phase_sum = sum(p.energy_j for p in report.phases)
    assert abs(phase_sum - report.total.energy_j) / report.total.energy_j < 1e-9


def test_demo_cli_prints_and_writes_json(tmp_path: Path) -> None:
    out = io.StringIO()
    path = tmp_path / "report.json"
    assert demo.main(["--json", str(path)], out=out) == 0
    text = out.getvalue()
    assert "SIMULATED" in text
    assert "landauer" in text
    assert "covers it" in text
    data = json.loads(path.read_text())
    assert data["run"]["simulated"] is True
    assert data["energy"]["total"]["energy_j"] > 0


def test_server_cli_dispatches_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 0
    assert "SIMULATED GPUs" in capsys.readouterr().out
