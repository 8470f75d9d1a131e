"""A whole node in the report: GPU, CPU and DRAM subtotals, node totals, nothing counted twice.

On SQLite and on PostgreSQL (the service fixtures). Chunks are the builders' constant-power ones,
so every figure is exact: energy = power × 10 s per chunk, sensor term 2 % of it per device
(root-sum-square across devices, the report's default).
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.support.builders import batch, chunk, device
from tests.support.client import Project, TestClient, create_run
from tests.support.ledger import finish_run, ledger_items
from thermoledger.db import models
from thermoledger.db.selection import run_energies

CHUNK_S = 10.0  # the builders' chunk: n = 10 samples × 1 s
ENDED = datetime(2099, 1, 1, tzinfo=UTC)  # after the run's start (now)
# (host, kind, index, uid, power W, covers)
NODE: list[tuple[str, str, int, str, float, list[str]]] = [
    ("n1", "gpu", 0, "GPU-n1-0", 300.0, []),
    ("n1", "gpu", 1, "GPU-n1-1", 200.0, []),
    ("n1", "cpu", 0, "intel-rapl:0", 100.0, []),
    ("n1", "dram", 0, "intel-rapl:0:1", 10.0, []),
    ("n1", "cpu", 1, "intel-rapl:1", 80.0, []),
    ("n1", "dram", 1, "intel-rapl:1:1", 12.0, []),
    ("n2", "gpu", 0, "GPU-n2-0", 400.0, []),
]
# a GH200-class host: the module's figure includes the Grace CPU (scope module: covers cpu)
MODULE: list[tuple[str, str, int, str, float, list[str]]] = [
    ("gh", "gpu", 0, "GPU-gh-0", 900.0, ["cpu"]),
    ("gh", "cpu", 0, "grace:0", 150.0, []),
    ("gh", "dram", 0, "grace:0:dram", 20.0, []),
]


def _device(host: str, kind: str, index: int, uid: str, covers: list[str]) -> dict[str, Any]:
    out = device(index, host=host)
    out.update(
        key=f"{host}/{uid}",
        kind=kind,
        uid=uid,
        name="NVIDIA H100 80GB HBM3" if kind == "gpu" else f"{kind}-{index}",
        power_method="power_avg" if kind == "gpu" else "counter",
    )
    if covers:
        out["covers"] = covers
    return out


def _post(client: TestClient, project: Project, run_id: str, spec: list[Any]) -> None:
    devices, chunks = [], []
    for host, kind, index, uid, power_w, covers in spec:
        devices.append(_device(host, kind, index, uid, covers))
        for seq in range(2):
            c = chunk(seq, host=host, power_w=power_w)
            c["device_key"] = f"{host}/{uid}"
            chunks.append(c)
    response = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch(chunks, devices), headers=project.ingest
    )
    assert response.status_code == 200, response.text


def _report(client: TestClient, project: Project, run_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _j(power_w: float) -> float:
    return power_w * 2 * CHUNK_S  # two chunks


def _band(powers: list[float]) -> tuple[float, float, float]:
    """(energy, low, high): sensor terms 2 % per device, root-sum-square across devices."""
    energy = sum(_j(p) for p in powers)
    sensor = math.sqrt(sum((0.02 * _j(p)) ** 2 for p in powers))
    return energy, energy - sensor, energy + sensor


def _assert_band(line: dict[str, Any], powers: list[float]) -> None:
    energy, low, high = _band(powers)
    assert line["energy_j"] == pytest.approx(energy, rel=1e-12)
    assert line["energy_low_j"] == pytest.approx(low, rel=1e-12)
    assert line["energy_high_j"] == pytest.approx(high, rel=1e-12)


def _powers(spec: list[Any], **match: Any) -> list[float]:
    keys = ("host", "kind")
    return [
        s[4]
        for s in spec
        if all(s[keys.index(k)] == v for k, v in match.items())
        and not (s[1] == "cpu" and any("cpu" in t[5] for t in spec if t[0] == s[0]))
    ]


def test_the_report_gives_gpu_cpu_and_dram_subtotals_and_node_totals(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    _post(client, project, run_id, NODE)
    energy = _report(client, project, run_id)["energy"]
    assert [(d["key"], d["kind"], d["counted"]) for d in energy["by_device"]] == [
        (f"{h}/{u}", k, True) for h, k, _, u, _, _ in sorted(NODE, key=lambda s: (s[0], s[1], s[2]))
    ]
    assert list(energy["by_kind"]) == ["gpu", "cpu", "dram"]
    _assert_band(energy["by_kind"]["gpu"], [300.0, 200.0, 400.0])
    _assert_band(energy["by_kind"]["cpu"], [100.0, 80.0])
    _assert_band(energy["by_kind"]["dram"], [10.0, 12.0])
    _assert_band(energy["total"], [s[4] for s in NODE])
    assert energy["total"]["energy_j"] == pytest.approx(
        sum(line["energy_j"] for line in energy["by_kind"].values()), rel=1e-12
    )
    n1, n2 = energy["by_node"]
    assert n1["host"] == "n1"
    assert list(n1["by_kind"]) == ["gpu", "cpu", "dram"]
    _assert_band(n1["total"], [300.0, 200.0, 100.0, 10.0, 80.0, 12.0])
    _assert_band(n1["by_kind"]["cpu"], [100.0, 80.0])
    assert n1["by_kind"]["cpu"]["devices"] == 2
    assert all(k["counted"] and k["covered_by"] == [] for k in n1["by_kind"].values())
    assert n2["host"] == "n2"
    assert list(n2["by_kind"]) == ["gpu"]
    _assert_band(n2["total"], [400.0])
    assert energy["by_host"] == {"n1": n1["total"], "n2": n2["total"]}

    response = client.get(f"/api/v1/runs/{run_id}/report.csv", headers=project.read)
    rows = list(csv.DictReader(io.StringIO(response.text)))
    kinds = {r["key"]: float(r["energy_j"]) for r in rows if r["section"] == "kind"}
    assert kinds == pytest.approx({k: v["energy_j"] for k, v in energy["by_kind"].items()})
    node_kinds = [(r["key"], r["counted"]) for r in rows if r["section"] == "node_kind"]
    assert node_kinds == [
        ("n1/gpu", "true"),
        ("n1/cpu", "true"),
        ("n1/dram", "true"),
        ("n2/gpu", "true"),
    ]
    assert {r["kind"] for r in rows if r["section"] == "device"} == {"gpu", "cpu", "dram"}

    page = client.get(f"/runs/{run_id}", headers={**project.read, "Accept": "text/html"})
    assert page.status_code == 200
    assert "Energy by kind and node" in page.text
    assert "node total" in page.text


def test_a_module_that_covers_its_cpu_is_not_counted_twice_anywhere(
    app: FastAPI, client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    _post(client, project, run_id, MODULE)
    response = client.post(
        f"/api/v1/runs/{run_id}/phases",
        json={"name": "all", "t0_s": 1e9, "t1_s": 4e9},
        headers=project.ingest,
    )
    assert response.status_code in (200, 201), response.text
    report = _report(client, project, run_id)
    energy = report["energy"]
    counted_j = _j(900.0) + _j(20.0)  # the module (CPU inside) and the DRAM
    _assert_band(energy["total"], [900.0, 20.0])
    devices = {d["kind"]: d for d in energy["by_device"]}
    assert devices["gpu"]["covers"] == ["cpu"]
    assert devices["gpu"]["counted"] is True
    assert devices["cpu"]["counted"] is False
    assert devices["cpu"]["covered_by"] == "gh/GPU-gh-0"
    assert devices["cpu"]["energy_j"] == pytest.approx(_j(150.0))  # still shown
    assert list(energy["by_kind"]) == ["gpu", "dram"]  # the run-wide kinds add up to the total
    (node,) = energy["by_node"]
    assert node["by_kind"]["cpu"]["counted"] is False
    assert node["by_kind"]["cpu"]["covered_by"] == ["gpu"]
    _assert_band(node["by_kind"]["cpu"], [150.0])
    _assert_band(node["total"], [900.0, 20.0])
    (phase,) = energy["by_phase"]
    assert phase["energy_j"] == pytest.approx(counted_j, rel=1e-12)
    assert any("inside gh/GPU-gh-0's figure" in note for note in report["notes"])

    finish_run(client, project, run_id, ENDED)
    (it,) = [
        e
        for e in ledger_items(client, project, run_id=run_id)
        if e["figure"] == "it_energy" and e["superseded_by"] is None
    ]
    assert it["value_si"] == pytest.approx(counted_j, rel=1e-12)  # the ledger agrees
    with app.state.sessionmaker() as session:
        project_id = session.scalar(
            sa.select(models.Project.id).where(models.Project.slug == project.slug)
        )
        assert project_id is not None
        (listed,) = run_energies(
            session, project_id=project_id, run_ids=[uuid.UUID(run_id)]
        ).values()
    assert listed.energy_j == pytest.approx(counted_j, rel=1e-12)  # and the runs list
    assert listed.devices == 2


def test_a_gpu_only_run_has_no_kind_rows_and_the_same_total(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project)
    _post(client, project, run_id, [s for s in NODE if s[1] == "gpu" and s[0] == "n1"])
    energy = _report(client, project, run_id)["energy"]
    _assert_band(energy["total"], [300.0, 200.0])
    assert list(energy["by_kind"]) == ["gpu"]
    assert energy["by_kind"]["gpu"] == energy["total"]
    response = client.get(f"/api/v1/runs/{run_id}/report.csv", headers=project.read)
    sections = [r["section"] for r in csv.DictReader(io.StringIO(response.text))]
    assert sections == ["total", "device", "device", "host"]
