"""The run page's energy decomposition (issue 15 §5), through the app on SQLite and PostgreSQL.

The seeded training run's GPUs report memory activity (`tests.pages.seed.fleet`): its page
shows every part with its band, the stacked bar against the measured energy, and where each
device's π0 and Q came from, with the JSON report's figures. The constant-power run's GPUs
have no memory-activity counter: its memory part says so instead of showing 0.
"""

from __future__ import annotations

import re

import pytest

from tests.pages.seed import CONSTANT_W, Fleet, States
from tests.support.client import Project, TestClient
from tests.support.signin import HTML


def _section(html: str) -> str:
    match = re.search(r'<section id="decomposition".*?</section>', html, re.S)
    assert match, "no decomposition section"
    return match.group(0)


def test_the_run_page_splits_the_energy_and_names_the_sources(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    run = fleet.train
    section = _section(client.get(f"/runs/{run.id}", headers={**project.read, **HTML}).text)
    report = client.get(f"/api/v1/runs/{run.id}/report", headers=project.read).json()
    decomposition = report["energy_decomposition"]
    parts = decomposition["components"]
    for name in ("constant", "compute", "memory", "unexplained"):
        assert parts[name]["status"] == "available", parts[name]
        assert f'data-part="{name}" data-status="available"' in section
    # the stacked bar: the positive parts, drawn in the axis unit, and the measured line
    values = [
        float(v) for v in re.findall(r'class="bar segment"[^>]*data-value="([^"]+)"', section)
    ]
    drawn = [parts[n]["energy_j"] for n in ("constant", "compute", "memory", "unexplained")]
    drawn = [v for v in drawn if v > 0]
    scale = decomposition["measured_j"] / float(
        re.search(r'class="total"[^>]*data-value="([^"]+)"', section).group(1)  # type: ignore[union-attr]
    )
    assert values == pytest.approx([v / scale for v in drawn])
    # each device: π0 measured as its lowest sustained power, Q from the counter
    for device in decomposition["devices"]:
        assert device["pi0_provenance"] == "measured_lowest_sustained"
        assert device["bytes_provenance"] == "memory_activity_counter"
        assert f'data-device="{device["key"]}"' in section
    assert section.count('data-provenance="measured_lowest_sustained"') == run.devices
    assert section.count('data-provenance="memory_activity_counter"') == run.devices


def test_a_run_without_memory_counters_says_why_not_0(
    client: TestClient, states: tuple[Project, States]
) -> None:
    project, state = states
    run = state.constant
    section = _section(client.get(f"/runs/{run.id}", headers={**project.read, **HTML}).text)
    report = client.get(f"/api/v1/runs/{run.id}/report", headers=project.read).json()
    parts = report["energy_decomposition"]["components"]
    assert parts["memory"]["energy_j"] is None
    assert 'data-part="memory" data-status="not_available"' in section
    assert "no memory-activity counter readings" in section
    assert 'data-part="unexplained" data-status="not_available"' in section
    # a constant draw: π0 is that power, and the constant part is the whole measurement
    devices = report["energy_decomposition"]["devices"]
    assert [d["pi0_w"] for d in devices] == pytest.approx([CONSTANT_W] * run.devices, rel=1e-6)
    assert parts["constant"]["share"] == pytest.approx(1.0, rel=1e-6)
