"""`Meter.record_metric`: points spooled durably with the meter's clock, uploaded after a restart,
refused visibly (never an exception into the training loop); the uploader's metric batches."""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from thermoledger.meters.api import Meter
from thermoledger.meters.backends import SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.control import ControlStore
from thermoledger.meters.runid import NODE_METER_ENV, node_meter_mark
from thermoledger.meters.spool import MetricConflict, Spool
from thermoledger.meters.testing.fake_service import FakeService
from thermoledger.meters.uploader import Backoff, Uploader

HOST = "unit-host"
API = "http://ledger.test/api/v1"
_METRICS_PATH = re.compile(r"^/api/v1/runs/([0-9a-f-]{36})/metrics$")


def make(tmp_path: Path, env: dict[str, str] | None = None, **options: Any) -> Meter:
    return Meter(
        options.pop("run", "unit"),
        spool_dir=tmp_path,
        env={} if env is None else env,
        host=HOST,
        backend=SimulatedBackend([SimulatedDevice(steady(300.0))]),
        interval_s=0.01,
        chunk_s=0.05,
        **options,
    )


class MetricService:
    """The fake service plus a metrics route keyed like the real one: (run, name, step)."""

    def __init__(self) -> None:
        self.inner = FakeService()
        self.points: dict[tuple[str, str, int], tuple[float, float]] = {}
        self.posts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        match = _METRICS_PATH.match(request.url.path)
        if match is None:
            return self.inner(request)
        run_id = match.group(1)
        if run_id not in self.inner.runs:
            return httpx.Response(404, json={"detail": "no run", "field": None})
        self.posts += 1
        points = json.loads(request.content)["points"]
        for i, p in enumerate(points):
            stored = self.points.get((run_id, p["name"], p["step"]))
            if stored is not None and stored[0] != p["value"]:
                return httpx.Response(
                    409, json={"detail": "changed", "field": f"points[{i}].value"}
                )
        for p in points:
            self.points[(run_id, p["name"], p["step"])] = (p["value"], p["t_s"])
        return httpx.Response(201, json={"stored": len(points), "duplicates": 0})


def uploader(spool: Spool, control: ControlStore, service: MetricService) -> Uploader:
    return Uploader(
        spool,
        control,
        api_url=API,
        token="tl_test",
        transport=httpx.MockTransport(service),
        backoff=Backoff(rng=random.Random(7)),
    )


def test_points_are_spooled_with_the_meters_clock(tmp_path: Path) -> None:
    before = time.time()
    with make(tmp_path) as m:
        assert m.record_metric("eval_loss", 2.31, step=100)
        assert m.record_metric("eval_loss", np.float32(2.0), step=np.int64(200), tokens=4.096e3)
        assert m.record_metric("eval_loss", 2.31, step=100)  # the same point again: harmless
    after = time.time()
    with Spool.in_directory(tmp_path) as spool:
        points = spool.metrics(m.run_id)
    assert [(p["name"], p["step"], p["value"]) for p in points] == [
        ("eval_loss", 100, 2.31),
        ("eval_loss", 200, 2.0),
        ("tokens_seen", 200, 4096.0),
    ]
    assert all(before <= p["t_s"] <= after for p in points)
    assert m.summary().refused_declarations == ()


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        (("eval_loss", float("nan")), {"step": 1}, "a finite real value"),
        (("eval_loss", float("inf")), {"step": 1}, "a finite real value"),
        (("eval_loss", "2.3"), {"step": 1}, "a finite real value"),
        (("eval_loss", True), {"step": 1}, "a finite real value"),
        (("eval loss", 2.3), {"step": 1}, "a name of 1-64"),
        (("x" * 65, 2.3), {"step": 1}, "a name of 1-64"),
        (("eval_loss", 2.3), {"step": -1}, "a whole step >= 0"),
        (("eval_loss", 2.3), {"step": 1.5}, "a whole step >= 0"),
        (("eval_loss", 2.3), {"step": 1, "tokens": -4}, "tokens as a whole count >= 0"),
    ],
)
def test_bad_points_are_refused_visibly_never_raised(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    with caplog.at_level(logging.WARNING), make(tmp_path) as m:
        assert m.record_metric(*args, **kwargs) is False
        assert m.state == "running"
    assert reason in caplog.text
    (line,) = m.summary().refused_declarations
    assert line.startswith("record_metric(")
    assert reason in line
    with Spool.in_directory(tmp_path) as spool:
        assert spool.metrics(m.run_id) == []


def test_another_value_for_a_recorded_step_is_refused(tmp_path: Path) -> None:
    with make(tmp_path) as m:
        assert m.record_metric("eval_loss", 2.5, step=10)
        assert m.record_metric("eval_loss", 2.4, step=10) is False
    (line,) = m.summary().refused_declarations
    assert "already recorded as 2.5" in line
    with Spool.in_directory(tmp_path) as spool:
        assert [p["value"] for p in spool.metrics(m.run_id)] == [2.5]
        with pytest.raises(MetricConflict):
            spool.put_metric(m.run_id, {"name": "eval_loss", "step": 10, "value": 1.0, "t_s": 0.0})


def test_a_spool_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), make(tmp_path) as m:
        assert m._spool is not None
        m._spool.close()  # the spool breaks under the job
        assert m.record_metric("eval_loss", 2.0, step=1) is False
    assert "recording a metric failed" in caplog.text


def test_a_job_beside_the_node_meter_records_into_its_spool(tmp_path: Path) -> None:
    env = {NODE_METER_ENV: node_meter_mark(HOST, 1), "THERMOLEDGER_RUN_ID": "job-9"}
    with make(tmp_path, env=env) as m:
        assert m.state == "recording"
        assert m.record_metric("eval_loss", 3.0, step=0)
    with Spool.in_directory(tmp_path) as spool:
        assert [p["step"] for p in spool.metrics(m.run_id)] == [0]


def test_points_survive_a_restart_and_are_uploaded_once(tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    with make(tmp_path, run_id=run_id) as m:  # offline: no server
        for step, loss in enumerate((3.0, 2.5, 2.0)):
            m.record_metric("eval_loss", loss, step=step)
    service = MetricService()
    # A later process (``thermoledger push``) opens the files afresh.
    with Spool.in_directory(tmp_path) as spool, ControlStore.in_directory(tmp_path) as control:
        assert spool.pending_metric_count(run_id) == 3
        result = uploader(spool, control, service).drain(timeout_s=5.0)
        assert result.complete, result
        assert spool.pending_metric_count(run_id) == 0
        again = uploader(spool, control, service).drain(timeout_s=5.0)
        assert again.complete
    assert service.posts == 1
    assert {k[1:]: v[0] for k, v in service.points.items()} == {
        ("eval_loss", 0): 3.0,
        ("eval_loss", 1): 2.5,
        ("eval_loss", 2): 2.0,
    }


def test_a_refused_point_is_kept_with_its_reason_and_the_rest_is_sent(tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    with make(tmp_path, run_id=run_id) as m:
        for step in range(3):
            m.record_metric("eval_loss", 1.0 + step, step=step)
    service = MetricService()
    service.inner.runs[run_id] = {}
    service.points[(run_id, "eval_loss", 1)] = (9.0, 0.0)  # the service holds another value
    with Spool.in_directory(tmp_path) as spool, ControlStore.in_directory(tmp_path) as control:
        result = uploader(spool, control, service).drain(timeout_s=5.0)
        refused = spool.rejected_metrics(run_id)
        assert result.messages_pending == 0
    assert list(refused) == [("eval_loss", 1)]
    assert "HTTP 409" in refused[("eval_loss", 1)]
    assert service.points[(run_id, "eval_loss", 2)][0] == 3.0
    assert service.points[(run_id, "eval_loss", 1)][0] == 9.0
