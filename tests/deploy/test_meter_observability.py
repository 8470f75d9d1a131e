"""The meter's Prometheus endpoint and JSON log lines, on simulated devices.

In process: a `Meter` on a steady 300 W simulated GPU, its endpoint on a free port, scraped with
httpx; the power gauge must read 300 W and the energy counter grow. As a command:
``thermoledger sidecar --metrics-port … --log-format json`` against a service that is not there,
so uploads fail and are counted, and every log line is JSON carrying the run id.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.liveserver import ROOT, free_port
from tests.support.waiting import wait_until
from thermoledger.meters import cli
from thermoledger.meters.api import Meter
from thermoledger.meters.backends import SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.logs import JsonFormatter, RunIdFilter, json_handler
from thermoledger.meters.metrics import CountingTransport, MetricsServer, serve_meter_metrics
from thermoledger.meters.runid import canonical_run_id
from thermoledger.meters.settings import ObserveSettings, SettingsError

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

WAIT_S = 30.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=5.0)
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def by_name(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[Meter, MetricsServer]]:
    backend = SimulatedBackend([SimulatedDevice(steady(300.0)), SimulatedDevice(steady(120.0))])
    meter = Meter(
        "metrics-test",
        backend=backend,
        interval_s=0.01,
        chunk_s=0.05,
        spool_dir=tmp_path,
        env={},
        host="node-a",
    ).start()
    server = serve_meter_metrics(meter, port=0, address="127.0.0.1")
    assert server is not None
    try:
        yield meter, server
    finally:
        server.close()
        meter.stop()


def test_the_endpoint_serves_power_energy_and_meter_health(
    metered: tuple[Meter, MetricsServer],
) -> None:
    meter, server = metered
    wait_until(lambda: meter.summary().ticks >= 20, "20 ticks")
    first = scrape(server.url)
    wait_until(lambda: meter.summary().ticks >= 40, "40 ticks")
    second = scrape(server.url)

    power = by_name(second, "thermoledger_gpu_power_watts")
    assert len(power) == 2
    labels = {dict(k)["device"]: dict(k) for k in power}
    gpu0 = labels["node-a/SIM-0"]
    assert gpu0["run_id"] == meter.run_id
    assert gpu0["simulated"] == "true"
    assert gpu0["index"] == "0"
    watts = {dict(k)["device"]: v for k, v in power.items()}
    assert watts["node-a/SIM-0"] == pytest.approx(300.0, rel=1e-6)
    assert watts["node-a/SIM-1"] == pytest.approx(120.0, rel=1e-6)

    energy_1 = {
        dict(k)["device"]: v
        for k, v in by_name(first, "thermoledger_gpu_energy_joules_total").items()
    }
    energy_2 = {
        dict(k)["device"]: v
        for k, v in by_name(second, "thermoledger_gpu_energy_joules_total").items()
    }
    assert energy_2["node-a/SIM-0"] > energy_1["node-a/SIM-0"] > 0
    samples = by_name(second, "thermoledger_meter_samples_total")
    assert all(v >= 40 for v in samples.values())
    run = (("run_id", meter.run_id),)
    assert second[("thermoledger_meter_ticks_total", run)] >= 40
    assert second[("thermoledger_meter_cpu_seconds_total", run)] > 0
    assert ("thermoledger_meter_spool_pending_chunks", run) in second  # offline: all pending
    assert second[("thermoledger_meter_spool_pending_chunks", run)] >= 1
    info = by_name(second, "thermoledger_meter_info")
    ((info_labels, one),) = info.items()
    assert one == 1.0
    assert dict(info_labels)["sampling"] == "true"


def test_a_meter_that_samples_nothing_still_answers(tmp_path: Path) -> None:
    env = {"LOCAL_RANK": "3"}  # not the node's meter: samples nothing
    meter = Meter("idle", env=env, spool_dir=tmp_path, backend="simulated", host="n").start()
    server = serve_meter_metrics(meter, port=0, address="127.0.0.1")
    assert server is not None
    try:
        samples = scrape(server.url)
        assert by_name(samples, "thermoledger_gpu_power_watts") == {}
        ((labels, _),) = by_name(samples, "thermoledger_meter_info").items()
        assert dict(labels)["sampling"] == "false"
    finally:
        server.close()
        meter.stop()


def test_a_port_in_use_is_logged_and_metering_goes_on(
    metered: tuple[Meter, MetricsServer], caplog: pytest.LogCaptureFixture
) -> None:
    meter, server = metered
    log = logging.getLogger("test.metrics")
    with caplog.at_level(logging.WARNING, logger="test.metrics"):
        assert serve_meter_metrics(meter, port=server.port, address="127.0.0.1", logger=log) is None
    assert "not started" in caplog.text
    assert meter.state == "running"


def test_the_counting_transport_counts_failures_by_reason() -> None:
    answers = iter([200, 503, 429, 422, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(next(answers))

    transport = CountingTransport(httpx.MockTransport(handler))
    with httpx.Client(transport=transport, base_url="http://ledger") as client:
        for _ in range(5):
            client.get("/x")
        with pytest.raises(httpx.ConnectError):
            client.get("/down")
    assert transport.failures() == {"transport": 1, "throttled": 1, "server": 1, "refused": 1}


def test_the_sidecar_serves_metrics_counts_failed_uploads_and_logs_json(tmp_path: Path) -> None:
    port = free_port()
    dead = free_port()  # nothing listens there: every upload fails
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOLEDGER_")}
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "thermoledger.meters.cli", "sidecar", "--simulate",
         "--run-id", "obs-1", "--interval", "0.01", "--chunk", "0.05", "--spool-dir", str(tmp_path),
         "--server", f"http://127.0.0.1:{dead}", "--upload-timeout", "1",
         "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--log-format", "json", "-v"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run_id = canonical_run_id("obs-1")
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def failed_uploads() -> float:
            try:
                samples = scrape(url)
            except httpx.TransportError:
                return 0.0
            return samples.get(
                ("thermoledger_meter_upload_failures_total", (("reason", "transport"),)), 0.0
            )

        wait_until(lambda: sidecar.poll() is not None or failed_uploads() >= 1, "a failed upload")
        assert sidecar.poll() is None, sidecar.communicate()
        samples = scrape(url)
        assert samples[("thermoledger_meter_ticks_total", (("run_id", run_id),))] > 0
        sidecar.send_signal(signal.SIGTERM)
        _, err = sidecar.communicate(timeout=WAIT_S)
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
    assert sidecar.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert len(lines) >= 3
    assert all(line["run_id"] == run_id for line in lines), err
    assert any("metrics served at" in line["message"] for line in lines)
    (summary,) = [line for line in lines if line.get("event") == "summary"]
    assert summary["energy_j"] > 0
    assert summary["simulated"] is True
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=1.0)  # the endpoint went with the meter


def test_run_wraps_a_job_with_json_logs(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(
        ["run", "--simulate", "--interval", "0.01", "--chunk", "0.05", "--spool-dir",
         str(tmp_path), "--log-format", "json", "-v", "--", sys.executable, "-c", "pass"],
        env={}, out=out, err=err,
    )  # fmt: skip
    assert code == 0, err.getvalue()
    lines = [json.loads(line) for line in err.getvalue().splitlines() if line.strip()]
    run_ids = {line.get("run_id") for line in lines}
    assert len(run_ids) == 1
    assert uuid.UUID(str(run_ids.pop()))
    assert [line["exit_code"] for line in lines if line.get("event") == "summary"] == [0]


def test_observe_settings_resolve_and_refuse_bad_values() -> None:
    env = {"THERMOLEDGER_METRICS_PORT": "9464", "THERMOLEDGER_LOG_FORMAT": "json"}
    settings = ObserveSettings.resolve(env=env)
    expected = ObserveSettings(metrics_port=9464, metrics_addr="127.0.0.1", log_format="json")
    assert settings == expected  # 127.0.0.1 unless asked: the endpoint has no authentication
    assert ObserveSettings.resolve(env=env, metrics_port=1, log_format="text").metrics_port == 1
    assert ObserveSettings.resolve(env={}).metrics_port is None
    for bad in ({"THERMOLEDGER_METRICS_PORT": "http"}, {"THERMOLEDGER_METRICS_PORT": "70000"}):
        with pytest.raises(SettingsError, match="METRICS_PORT"):
            ObserveSettings.resolve(env=bad)
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        ObserveSettings.resolve(env={"THERMOLEDGER_LOG_FORMAT": "xml"})
    err = io.StringIO()
    assert cli.main(["sidecar", "--metrics-port", "-1"], env={}, err=err) == 2
    assert "--metrics-port" in err.getvalue()


def test_json_lines_carry_extras_exceptions_and_the_run_id() -> None:
    stream = io.StringIO()
    log = logging.getLogger("test.jsonlines")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = json_handler(stream, run_id=lambda: "run-7")
    log.addHandler(handler)
    try:
        log.warning("upload %s", "paused", extra={"status": 503})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
        log.info("explicit", extra={"run_id": "other"})
    finally:
        log.removeHandler(handler)
    first, second, third = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "upload paused"
    assert first["status"] == 503
    assert first["run_id"] == "run-7"
    assert first["level"] == "warning"
    assert first["logger"] == "test.jsonlines"
    assert first["ts"].endswith("+00:00")
    assert "RuntimeError: boom" in second["exc"]
    assert second["run_id"] == "run-7"
    assert third["run_id"] == "other"  # a record's own run id wins
    # An unknown run id (before the meter starts) is left out, not written as null.
    record = logging.makeLogRecord({"msg": "x"})
    RunIdFilter(lambda: "").filter(record)
    assert "run_id" not in json.loads(JsonFormatter().format(record))
