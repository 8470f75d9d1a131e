"""A declaration the meter refused is in the run's report, not only in the meter's log (issue 14,
item 1): a real `Meter` uploads to the in-process service, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run, in_process
from thermoledger.meters.api import Meter
from thermoledger.meters.backends import SimulatedBackend, SimulatedDevice, steady


def _report(client: TestClient, project: Project, run_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_refused_model_size_reaches_the_report(
    client: TestClient, project: Project, tmp_path: Path
) -> None:
    token = project.ingest["Authorization"].removeprefix("Bearer ")
    with Meter(
        "refusals",
        backend=SimulatedBackend([SimulatedDevice(steady(200.0))]),
        interval_s=0.01,
        chunk_s=0.05,
        spool_dir=tmp_path,
        env={},
        host="node-r",
        server="http://ledger.test",
        token=token,
        upload_transport=in_process(client),
        upload_timeout_s=20.0,
    ) as m:
        m.declare_model(params="7e9")  # type: ignore[arg-type]
        m.add_tokens(1000)
    assert m.upload is not None
    assert m.upload.complete, m.upload
    report = _report(client, project, m.run_id)
    assert report["refused_declarations"] == [
        "declare_model(params='7e9') ignored: need a whole count > 0 (e.g. 7e9); no 6·N·D "
        "FLOPs, MFU or bounds from it"
    ]
    assert any("refused_declarations" in note for note in report["notes"])
    assert report["work"]["tokens"] == 1000


def test_7e9_is_a_model_size_end_to_end(
    client: TestClient, project: Project, tmp_path: Path
) -> None:
    token = project.ingest["Authorization"].removeprefix("Bearer ")
    with Meter(
        "seven-billion",
        backend=SimulatedBackend([SimulatedDevice(steady(200.0))]),
        interval_s=0.01,
        chunk_s=0.05,
        spool_dir=tmp_path,
        env={},
        host="node-s",
        server="http://ledger.test",
        token=token,
        upload_transport=in_process(client),
        upload_timeout_s=20.0,
    ) as m:
        m.declare_model(params=7e9)
        m.add_tokens(1e6)
    assert m.upload is not None
    assert m.upload.complete, m.upload
    run = client.get(f"/api/v1/runs/{m.run_id}", headers=project.read).json()
    assert run["declared"]["model_params"] == 7_000_000_000
    report = _report(client, project, m.run_id)
    assert report["refused_declarations"] == []
    assert not any("refused" in note for note in report["notes"])


def test_only_well_formed_refusals_are_listed(client: TestClient, project: Project) -> None:
    run_id = create_run(
        client,
        project,
        host_info={
            "meter@a": {"refused_declarations": ["add_tokens(-1) ignored: x", 5]},
            "job@a": {"refused_declarations": ["add_tokens(-1) ignored: x", "other"]},
            "job@b": {"refused_declarations": "not a list"},
            "pid": 7,
        },
    )
    posted = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
    )
    assert posted.status_code == 200, posted.text
    assert _report(client, project, run_id)["refused_declarations"] == [
        "add_tokens(-1) ignored: x",
        "other",
    ]
