"""The README's demo: a simulated job through meter → embedded service → report.

It runs without a GPU, labels every output simulated, and its measurement agrees with the
simulated backend's closed-form energy over the metered window.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from thermoledger.meters.backends.simulated import SimulatedDevice, Steady
from thermoledger.meters.testing import ManualClock
from thermoledger.service import cli, demo


def test_the_truth_is_the_closed_form_energy_over_the_metered_window() -> None:
    clock = ManualClock()
    backend = demo.RecordingBackend(demo.demo_fleet(), clock=clock)
    clock.advance(0.5)
    backend.read()
    clock.advance(3.0)
    backend.read()
    expected_j = sum(float(d.profile.energy_j(0.5, 3.5)) for d in demo.demo_fleet())
    assert backend.true_energy_j() == pytest.approx(expected_j, rel=1e-12)
    flat = demo.RecordingBackend([SimulatedDevice(Steady(300.0))], clock=clock)
    flat.read()
    clock.advance(10.0)
    flat.read()
    assert flat.true_energy_j() == pytest.approx(3000.0)  # 300 W for 10 s


def test_the_devices_are_simulated_and_catalogued() -> None:
    backend = demo.RecordingBackend(demo.demo_fleet(), clock=ManualClock())
    infos = backend.devices()
    assert len(infos) == 8
    assert all(info.simulated and info.name.startswith("Simulated ") for info in infos)
    assert sum(info.has_energy_counter for info in infos) == 6


@pytest.mark.slow  # a live server and a real-time meter
def test_the_demo_meters_serves_and_reports(tmp_path: Path) -> None:
    out = io.StringIO()
    json_path = tmp_path / "report.json"
    code = demo.main(
        ["--dir", str(tmp_path / "demo"), "--speed", "5", "--json", str(json_path)], out=out
    )
    assert code == 0
    text = out.getvalue()
    assert text.startswith(demo.BANNER)
    assert "[SIMULATED DEVICES: not a measurement]" in text
    assert "covers it" in text, text
    assert "landauer" in text
    assert "location-based" in text
    report = json.loads(json_path.read_text())
    assert report["run"]["simulated"] is True
    assert report["run"]["status"] == "finished"
    devices = report["energy"]["by_device"]
    assert len(devices) == 8
    assert {d["method"] for d in devices} == {"counter", "power_avg", "power_instant"}
    assert [p["name"] for p in report["energy"]["by_phase"]] == ["warmup", "train", "eval"]
    assert report["bounds"] is not None
    assert report["cost"]["total_usd"] is not None
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "simulated devices: not a measurement" in page
    assert "<style>" in page  # one file: it opens offline
    assert "/static/style.css" not in page
    assert report["run"]["id"] in page


@pytest.mark.slow  # a live server and a real-time meter
def test_the_server_cli_runs_the_demo_again_in_the_same_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):  # the second run replaces the first one's database and spool
        assert cli.main(["demo", "--dir", str(tmp_path), "--speed", "10"]) == 0
        out = capsys.readouterr().out
        assert "SIMULATED GPUs" in out
        assert "covers it" in out
