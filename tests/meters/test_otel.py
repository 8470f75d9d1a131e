"""OpenTelemetry export (`meters.otel`): instruments, attributes, the OTLP/HTTP path, settings.

The instruments are read with the SDK's ``InMemoryMetricReader``: on a scripted meter (exact
figures, so the gauge is checked against ΔE / Δt), on a real `Meter` over simulated devices
(the counter against its summary), and on one over the shipped fake NVML and powercap tree (the
vendor and model attributes). The OTLP/HTTP exporter is checked end to end against a tiny HTTP
receiver in this file, which decodes the protobuf with opentelemetry-proto: once through
`export_meter_metrics`, once through ``thermoledger run --otel-endpoint``. Nothing asserts on
durations; waits are bounded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    InMemoryMetricReader,
    Sum,
)

from tests.support.waiting import wait_until
from thermoledger.meters import cli
from thermoledger.meters.api import Meter
from thermoledger.meters.backends import SimulatedBackend, SimulatedDevice, steady
from thermoledger.meters.discovery import Sources
from thermoledger.meters.otel import (
    ENERGY,
    MISSING_EXTRA,
    POWER,
    RUN_ID,
    SIMULATED,
    CpuIdentity,
    FailureLog,
    OtelExport,
    cpu_identity,
    export_meter_metrics,
)
from thermoledger.meters.readout import ReadableMeter
from thermoledger.meters.sampler import MeterSummary
from thermoledger.meters.settings import (
    DEFAULT_OTEL_ENDPOINT,
    DEFAULT_OTEL_INTERVAL_S,
    ObserveSettings,
    SettingsError,
)
from thermoledger.meters.spool import Spool
from thermoledger.meters.testing.fake_powercap import FakePowercap
from thermoledger.meters.testing.fake_pynvml import FakeNvml, h100

ROOT = Path(__file__).resolve().parents[2]
HOST = "node-a"
INTEL = "vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
Attributes = frozenset[tuple[str, Any]]


# -- reading what an in-memory reader collected ------------------------------------------------


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Metric name -> the SDK's metric (one collection)."""
    data = reader.get_metrics_data()
    if data is None:  # no point at all
        return {}
    return {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }


def points(metric: Any) -> dict[str, tuple[float, dict[str, Any]]]:
    """hw.id -> (value, attributes) of one metric's points."""
    out = {}
    for p in metric.data.data_points:
        attributes = dict(p.attributes)
        out[str(attributes["hw.id"])] = (float(p.value), attributes)
    return out


def simulated_meter(tmp_path: Path, *watts: float) -> Meter:
    backend = SimulatedBackend([SimulatedDevice(steady(w)) for w in watts])
    return Meter(
        "otel-test",
        backend=backend,
        interval_s=0.01,
        chunk_s=0.05,
        spool_dir=tmp_path,
        env={},
        host=HOST,
    )


# -- a scripted meter: exact figures -----------------------------------------------------------


class ScriptedMeter:
    """A `meters.readout.ReadableMeter` whose summaries are given: (energy J, duration s) per
    device, one pair per call of `summary`."""

    def __init__(self, template: MeterSummary, script: list[list[tuple[float, float]]]) -> None:
        self.run_id = template.run_id
        self._template = template
        self._script = script
        self.devices = ()
        self.device_infos = ()

    def summary(self) -> MeterSummary:
        figures = self._script.pop(0)
        devices = tuple(
            dataclasses.replace(
                d,
                energy_j=e,
                duration_s=t,
                mean_power_w=e / t if t > 0 else math.nan,
            )
            for d, (e, t) in zip(self._template.devices, figures, strict=True)
        )
        return dataclasses.replace(self._template, devices=devices)


@pytest.fixture
def template(tmp_path: Path) -> MeterSummary:
    """A real summary of two simulated GPUs, whose figures the scripted meter replaces."""
    meter = simulated_meter(tmp_path, 300.0, 120.0).start()
    try:
        wait_until(lambda: all(d.samples >= 2 for d in meter.summary().devices), "2 samples")
    finally:
        summary = meter.stop()
    return summary


def test_the_gauge_is_energy_over_time_since_the_last_collection(template: MeterSummary) -> None:
    script = [
        [(100.0, 1.0), (50.0, 1.0)],  # first: the mean since the start
        [(400.0, 2.0), (50.0, 1.0)],  # (400 - 100) / (2 - 1); no new sample: 50 W again
        [(400.0, 2.0), (80.0, 3.0)],  # no new sample: 300 W again; (80 - 50) / (3 - 1)
    ]
    meter = ScriptedMeter(template, script)
    reader = InMemoryMetricReader()
    export = OtelExport(lambda: (meter,), metric_reader=reader, host=HOST, cpu=CpuIdentity())
    try:
        seen = [collect(reader) for _ in range(3)]
    finally:
        export.close()
    assert script == []  # one summary per collection, shared by the two instruments
    sim0, sim1 = (d.uid for d in template.devices)
    power = [{k: v for k, (v, _) in points(c[POWER]).items()} for c in seen]
    energy = [{k: v for k, (v, _) in points(c[ENERGY]).items()} for c in seen]
    assert power == [
        {sim0: 100.0, sim1: 50.0},
        {sim0: 300.0, sim1: 50.0},
        {sim0: 300.0, sim1: 15.0},
    ]
    assert energy == [
        {sim0: 100.0, sim1: 50.0},
        {sim0: 400.0, sim1: 50.0},
        {sim0: 400.0, sim1: 80.0},
    ]


def collect_once(meter: ReadableMeter) -> dict[str, Any]:
    """One collection of ``meter`` by an in-memory export, closed after it."""
    reader = InMemoryMetricReader()
    export = OtelExport(lambda: (meter,), metric_reader=reader, host=HOST, cpu=CpuIdentity())
    try:
        return collect(reader)
    finally:
        export.close()


def test_a_figure_not_available_is_no_point_never_a_zero(template: MeterSummary) -> None:
    """Before two samples a device has no mean power: no hw.power point, not 0 W."""
    metrics = collect_once(ScriptedMeter(template, [[(0.0, 0.0), (0.0, 0.0)]]))
    assert POWER not in metrics or points(metrics[POWER]) == {}
    assert {v for v, _ in points(metrics[ENERGY]).values()} == {0.0}  # a measured 0 J is a 0


# -- a real meter over simulated devices --------------------------------------------------------


def test_names_units_attributes_and_the_counter_against_the_summary(tmp_path: Path) -> None:
    meter = simulated_meter(tmp_path, 300.0, 120.0).start()
    reader = InMemoryMetricReader()
    export = OtelExport(lambda: (meter,), metric_reader=reader, host=meter.host)
    try:
        wait_until(lambda: meter.summary().ticks >= 10, "10 ticks")
        first = collect(reader)
        wait_until(lambda: meter.summary().ticks >= 30, "30 ticks")
        second = collect(reader)
        final = meter.stop()
        last = collect(reader)
    finally:
        meter.stop()
        export.close()

    energy, power = last[ENERGY], last[POWER]
    assert (energy.unit, power.unit) == ("J", "W")
    assert isinstance(energy.data, Sum)
    assert energy.data.is_monotonic
    assert energy.data.aggregation_temporality == AggregationTemporality.CUMULATIVE
    assert isinstance(power.data, Gauge)

    by_uid = {d.uid: d for d in final.devices}
    assert set(points(energy)) == set(by_uid) == {"SIM-0", "SIM-1"}
    for uid, (joules, attributes) in points(energy).items():
        assert joules == by_uid[uid].energy_j  # the run's energy, as the summary has it
        assert attributes == {
            "hw.id": uid,
            "hw.type": "gpu",
            "hw.name": by_uid[uid].name,
            "hw.model": by_uid[uid].name,  # no hw.vendor: a simulated device has none
            RUN_ID: meter.run_id,
            SIMULATED: True,
        }
    assert points(power)["SIM-0"][1] == points(energy)["SIM-0"][1]
    # Monotonic, collection after collection, and the power of a steady device is its power.
    for uid in by_uid:
        series = [points(c[ENERGY])[uid][0] for c in (first, second, last)]
        assert 0 < series[0] < series[1] <= series[2]
    assert points(second[POWER])["SIM-0"][0] == pytest.approx(300.0, rel=1e-6)
    assert points(second[POWER])["SIM-1"][0] == pytest.approx(120.0, rel=1e-6)


def test_a_meter_that_samples_nothing_exports_no_points(tmp_path: Path) -> None:
    meter = Meter("idle", env={"LOCAL_RANK": "3"}, spool_dir=tmp_path, backend="simulated")
    meter.start()
    try:
        metrics = collect_once(meter)
    finally:
        meter.stop()
    assert all(points(m) == {} for m in metrics.values())  # no devices: no point, no 0 J


def test_a_meter_that_fails_to_read_costs_only_its_own_points(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = simulated_meter(tmp_path / "a", 300.0).start()

    class Broken:
        run_id = "broken-run"
        devices = ()
        device_infos = ()

        def summary(self) -> MeterSummary:
            raise RuntimeError("the sampler is gone")

    reader = InMemoryMetricReader()
    log = logging.getLogger("test.otel.read")
    export = OtelExport(
        lambda: (Broken(), good), metric_reader=reader, host=HOST, cpu=CpuIdentity(), logger=log
    )
    try:
        wait_until(lambda: good.summary().ticks >= 5, "5 ticks")
        with caplog.at_level(logging.WARNING, logger="test.otel.read"):
            metrics = collect(reader)
    finally:
        good.stop()
        export.close()
    assert set(points(metrics[ENERGY])) == {"SIM-0"}
    assert any("the sampler is gone" in r.getMessage() for r in caplog.records)


# -- vendor and model: the fake NVML and powercap tree ------------------------------------------


def test_vendor_and_model_come_from_the_backend_and_the_cpu(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_package(0)
    (tmp_path / "hwmon").mkdir()
    sources = Sources(
        nvml=FakeNvml([h100(name="NVIDIA H100 80GB HBM3")]),
        powercap=tree.root,
        hwmon=tmp_path / "hwmon",
        read_text=tree.read_text,
        env={},
    )
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(INTEL + "\n" + INTEL)
    meter = Meter(
        "vendors",
        sources=sources,
        backend="auto",
        interval_s=0.01,
        chunk_s=0.05,
        spool_dir=tmp_path / "spool",
        env={},
        host=HOST,
    ).start()
    reader = InMemoryMetricReader()
    export = OtelExport(
        lambda: (meter,), metric_reader=reader, host=HOST, cpu=cpu_identity(cpuinfo)
    )
    try:
        assert meter.sampling
        meter.stop()
        metrics = collect(reader)
    finally:
        export.close()
    by_type: dict[str, dict[str, Any]] = {}
    for _, attributes in points(metrics[ENERGY]).values():
        by_type[str(attributes["hw.type"])] = attributes
    assert set(by_type) == {"gpu", "cpu", "memory"}
    gpu, cpu, memory = by_type["gpu"], by_type["cpu"], by_type["memory"]
    assert (gpu["hw.vendor"], gpu["hw.model"]) == ("NVIDIA", "NVIDIA H100 80GB HBM3")
    assert str(gpu["hw.id"]).startswith("GPU-")
    assert (cpu["hw.vendor"], cpu["hw.model"]) == ("Intel", "Intel(R) Xeon(R) Platinum 8480+")
    assert cpu["hw.name"] == "package-0"
    assert "hw.vendor" not in memory  # not known: not made up
    assert "hw.model" not in memory
    assert not any(a[SIMULATED] for a in by_type.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (INTEL, CpuIdentity("Intel", "Intel(R) Xeon(R) Platinum 8480+")),
        (
            "processor : 0\nvendor_id : AuthenticAMD\n"
            "model name : AMD EPYC 9654 96-Core Processor\n",
            CpuIdentity("AMD", "AMD EPYC 9654 96-Core Processor"),
        ),
        ("processor : 0\nCPU implementer : 0x41\nCPU part : 0xd4f\n", CpuIdentity()),
        ("vendor_id : SomeNewVendor\n", CpuIdentity("SomeNewVendor", None)),
    ],
    ids=["intel", "amd", "arm-no-names", "other-vendor"],
)
def test_cpu_identity_reads_cpuinfo(tmp_path: Path, text: str, expected: CpuIdentity) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu_identity(path) == expected


def test_an_unreadable_cpuinfo_names_nothing(tmp_path: Path) -> None:
    assert cpu_identity(tmp_path / "absent") == CpuIdentity()


# -- OTLP/HTTP, end to end ------------------------------------------------------------------------


class Receiver:
    """A tiny OTLP/HTTP metrics receiver on 127.0.0.1: keeps every request it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[ExportMetricsServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                receiver.paths.append(self.path)
                receiver.requests.append(request)
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5.0)

    def energy_points(self) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
        """Every hw.energy point received: (value, attributes, resource attributes)."""
        found = []
        for request in self.requests:
            for rm in request.resource_metrics:
                resource = {kv.key: _value(kv.value) for kv in rm.resource.attributes}
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name != ENERGY:
                            continue
                        assert metric.unit == "J"
                        assert metric.sum.is_monotonic
                        for p in metric.sum.data_points:
                            attributes = {kv.key: _value(kv.value) for kv in p.attributes}
                            found.append((p.as_double, attributes, resource))
        return found


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.mark.slow  # a real HTTP server, a child process or an interpreter
def test_the_last_export_carries_the_final_energy_over_otlp_http(
    tmp_path: Path, receiver: Receiver
) -> None:
    meter = simulated_meter(tmp_path, 300.0).start()
    # An interval far beyond the test: the only export is the last one, sent by close().
    export = export_meter_metrics(meter, endpoint=receiver.url + "/v1/metrics", interval_s=3600.0)
    assert export is not None
    wait_until(lambda: meter.summary().ticks >= 10, "10 ticks")
    final = meter.stop()
    export.close()
    export.close()  # idempotent
    assert receiver.paths == ["/v1/metrics"]
    ((joules, attributes, resource),) = receiver.energy_points()
    assert joules == final.devices[0].energy_j > 0
    assert attributes["hw.id"] == "SIM-0"
    assert attributes["hw.type"] == "gpu"
    assert attributes[RUN_ID] == meter.run_id
    assert resource["host.name"] == HOST
    assert resource["service.name"] == "thermoledger-meter"


@pytest.mark.slow  # a real HTTP server, a child process or an interpreter
def test_thermoledger_run_exports_to_the_otel_endpoint(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("THERMOLEDGER_", "OTEL_", "LOCAL_RANK", "RANK", "SLURM_")):
            monkeypatch.delenv(name)
    err = io.StringIO()
    code = cli.main(
        [
            "run", "--simulate", "--interval", "0.01", "--chunk", "0.05",
            "--spool-dir", str(tmp_path), "--otel-endpoint", receiver.url,
            "--otel-interval", "3600", "-q",
            "--", sys.executable, "-c", "import time; time.sleep(0.2)",
        ],
        env=dict(os.environ),
        out=io.StringIO(),
        err=err,
    )  # fmt: skip
    assert code == 0, err.getvalue()
    with Spool.in_directory(tmp_path) as spool:
        (run,) = spool.runs()
    received = receiver.energy_points()
    assert received
    assert {a[RUN_ID] for _, a, _ in received} == {run.run_id}
    assert all(v > 0 for v, _, _ in received)
    assert receiver.paths[0] == "/v1/metrics"  # appended to the base URL given


@pytest.mark.slow  # a real HTTP server, a child process or an interpreter
def test_a_failing_receiver_is_logged_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = Receiver(status=400)
    log = logging.getLogger("test.otel.fail")
    meter = simulated_meter(tmp_path, 300.0).start()
    try:
        export = export_meter_metrics(
            meter, endpoint=refusing.url + "/v1/metrics", interval_s=3600.0, logger=log
        )
        assert export is not None
        meter.stop()
        with caplog.at_level(logging.DEBUG):
            export.close()
    finally:
        meter.stop()
        refusing.close()
    assert refusing.requests  # it was sent, and refused
    ours = [r for r in caplog.records if r.name == "test.otel.fail"]
    assert len(ours) == 1
    assert "OpenTelemetry export" in ours[0].getMessage()
    assert "400" in ours[0].getMessage()  # the SDK's reason, in our one line
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


def test_failures_are_logged_once_in_a_while_and_the_recovery_once() -> None:
    now = [0.0]
    stream = io.StringIO()
    log = logging.getLogger("test.otel.ratelimit")
    log.handlers = [logging.StreamHandler(stream)]
    log.propagate = False
    log.setLevel(logging.INFO)
    failures = FailureLog(log, "http://collector:4318/v1/metrics", clock=lambda: now[0])
    for t in (0.0, 1.0, 2.0, 599.0):
        now[0] = t
        failures.failed("export", "connection refused")
    now[0] = 600.0
    failures.failed("export", "connection refused")
    failures.succeeded("export")
    failures.succeeded("export")  # nothing failed since: nothing to say
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert "connection refused" in lines[0]
    assert "more" not in lines[0]
    assert "(3 more since the last line)" in lines[1]
    assert "works again after 5 failure(s)" in lines[2]


# -- settings, the command line and the extra ---------------------------------------------------


def resolve(env: Mapping[str, str] | None = None, **given: Any) -> ObserveSettings:
    return ObserveSettings.resolve(env=dict(env or {}), **given)


def test_the_export_is_off_unless_asked_even_with_the_standard_variables() -> None:
    standard = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://job-collector:4318",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://job-collector:4318/v1/metrics",
    }
    assert resolve(standard).otel_endpoint is None
    assert resolve({"THERMOLEDGER_OTEL": "0", **standard}).otel_endpoint is None
    assert resolve().otel_interval_s == DEFAULT_OTEL_INTERVAL_S


@pytest.mark.parametrize(
    ("env", "given", "endpoint"),
    [
        ({}, {"otel": True}, DEFAULT_OTEL_ENDPOINT),
        ({"THERMOLEDGER_OTEL": "true"}, {}, DEFAULT_OTEL_ENDPOINT),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
            {"otel": True},
            "http://c:4318/v1/metrics",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://m:4318/custom",
            },
            {"otel": True},
            "https://m:4318/custom",  # the per-signal variable is used as it is
        ),
        ({}, {"otel_endpoint": "http://c:4318"}, "http://c:4318/v1/metrics"),
        ({}, {"otel_endpoint": "http://c:4318/v1/metrics"}, "http://c:4318/v1/metrics"),
        (
            {"THERMOLEDGER_OTEL_ENDPOINT": "http://t:4318", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"},
            {},
            "http://t:4318/v1/metrics",
        ),
        (
            {"THERMOLEDGER_OTEL_ENDPOINT": "http://t:4318"},
            {"otel_endpoint": "http://flag:4318"},
            "http://flag:4318/v1/metrics",
        ),
    ],
    ids=[
        "flag-default",
        "env-switch-default",
        "standard-base",
        "standard-per-signal",
        "endpoint-base",
        "endpoint-full",
        "env-endpoint",
        "flag-wins",
    ],
)
def test_where_the_metrics_go(env: dict[str, str], given: dict[str, Any], endpoint: str) -> None:
    assert resolve(env, **given).otel_endpoint == endpoint


@pytest.mark.parametrize(
    ("env", "given", "named"),
    [
        ({}, {"otel_endpoint": "collector:4318"}, "--otel-endpoint"),
        ({}, {"otel_endpoint": "ftp://collector"}, "--otel-endpoint"),
        ({"THERMOLEDGER_OTEL_ENDPOINT": "http://"}, {}, "THERMOLEDGER_OTEL_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost"}, {"otel": True}, "OTEL_EXPORTER_OTLP"),
        ({"THERMOLEDGER_OTEL": "maybe"}, {}, "THERMOLEDGER_OTEL must be 1 or 0"),
        ({"THERMOLEDGER_OTEL_INTERVAL_S": "soon"}, {}, "THERMOLEDGER_OTEL_INTERVAL_S"),
        ({}, {"otel_interval_s": 0.0}, "--otel-interval"),
        ({}, {"otel_interval_s": math.nan}, "--otel-interval"),
        ({"THERMOLEDGER_OTEL_INTERVAL_S": "-5"}, {}, "--otel-interval"),
    ],
)
def test_bad_otel_settings_name_the_flag_or_variable(
    env: dict[str, str], given: dict[str, Any], named: str
) -> None:
    with pytest.raises(SettingsError, match=named.replace("-", r"\-")):
        resolve(env, **given)


def test_a_bad_endpoint_exits_2_before_the_job_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    err = io.StringIO()
    code = cli.main(
        ["run", "--simulate", "--spool-dir", str(tmp_path), "--otel-endpoint", "collector",
         "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
        env={},
        out=io.StringIO(),
        err=err,
    )  # fmt: skip
    assert code == 2
    assert "--otel-endpoint" in err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert not marker.exists()


def test_without_the_extra_the_command_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.metrics", None)  # import fails
    err = io.StringIO()
    code = cli.main(
        ["run", "--simulate", "--spool-dir", str(tmp_path), "--otel",
         "--", sys.executable, "-c", "pass"],
        env={},
        out=io.StringIO(),
        err=err,
    )  # fmt: skip
    assert code == 2
    assert "pip install 'thermoledger[otel]'" in err.getvalue()
    assert err.getvalue().strip() == f"thermoledger: {MISSING_EXTRA}"


@pytest.mark.slow  # a real HTTP server, a child process or an interpreter
def test_importing_the_module_does_not_import_the_sdk() -> None:
    code = (
        "import json, sys\n"
        "import thermoledger.meters.otel, thermoledger.meters.cli\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []
