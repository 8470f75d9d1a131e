"""OpenTelemetry metrics of a running meter, pushed over OTLP/HTTP (``--otel-endpoint``).

Off by default, beside the Prometheus endpoint (`meters.metrics`) and independent of it. With
``thermoledger run|sidecar --otel-endpoint http://otel-collector:4318`` (or ``--otel``, or
``THERMOLEDGER_OTEL_ENDPOINT``; see `meters.settings.ObserveSettings.resolve`), the meter exports
every ``--otel-interval`` seconds (default 15) through the OpenTelemetry SDK's OTLP/HTTP exporter,
on a `MeterProvider` of its own, never the process-global one. It needs the ``otel`` extra
(``pip install 'thermoledger[otel]'``); nothing here imports the SDK before an export starts.

Instruments (the OpenTelemetry semantic conventions for hardware metrics)::

    hw.energy   observable counter, J, monotonic, cumulative: the energy metered in this run
    hw.power    observable gauge, W: mean power since the previous collection (ΔE / Δt)

Both are computed when the SDK collects, from one `meters.api.Meter.summary` per collection
shared by the two callbacks (`meters.readout`, the Prometheus collector's reading step):
nothing is done per sample. The power is the mean over the samples since the previous
collection, so it agrees with the energy counter and does not alias pulses.

Attributes, per device::

    hw.id        the device's uid (GPU UUID, RAPL zone, SIM-0): unique on its host, which the
                 resource names (host.name)
    hw.type      gpu | cpu | memory (RAPL DRAM)
    hw.name      the device's name as its vendor reports it
    hw.vendor    NVIDIA (NVML), AMD (AMD SMI), or a CPU package's vendor from /proc/cpuinfo;
                 absent where not known (DRAM, simulated and replayed devices)
    hw.model     a GPU's name (the model, e.g. NVIDIA H100 80GB HBM3), or a CPU package's
                 model name from /proc/cpuinfo; absent where not known (DRAM)
    thermoledger.run.id     the run
    thermoledger.simulated  true when the figures are synthetic (simulated or replayed)

A device whose energy another device's figure already includes (the Grace CPU inside a
GH200-class module's counter) is exported too: a sum over every ``hw.energy`` series counts it
twice, as the semantic conventions warn for hosts; the service's reports do not.

Never disturbing the job
    A failed export (no collector, a refusal, a timeout) is logged by this module, the first at
    once and then at most one line every ten minutes with the count, and one line when exports
    work again; the SDK's own line per attempt is not shown. Nothing is lost meanwhile: the
    counter is cumulative, so the next export that arrives carries the whole energy. A failed
    read of the meter leaves that collection without the meter's points. Nothing raises into the
    metering: `export_metrics` returns None when the export cannot start, and `OtelExport.close`
    (the last export, sent when the meter has stopped so the final energy arrives) never raises
    and waits at most its timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .readout import DeviceReading, MeterReader, ReadableMeter
from .settings import DEFAULT_OTEL_INTERVAL_S

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.resources import Resource

    from .api import Meter

__all__ = [
    "ENERGY",
    "HW_TYPES",
    "MISSING_EXTRA",
    "POWER",
    "RUN_ID",
    "SIMULATED",
    "CpuIdentity",
    "FailureLog",
    "OtelExport",
    "cpu_identity",
    "device_attributes",
    "export_meter_metrics",
    "export_metrics",
    "require_sdk",
]

_LOG = logging.getLogger(__name__)
ENERGY: Final = "hw.energy"
POWER: Final = "hw.power"
RUN_ID: Final = "thermoledger.run.id"
SIMULATED: Final = "thermoledger.simulated"
HW_TYPES: Final[Mapping[str, str]] = {"gpu": "gpu", "cpu": "cpu", "dram": "memory"}
"""The meter's device kinds as the semantic conventions' ``hw.type`` values."""
MISSING_EXTRA: Final = (
    "OpenTelemetry export (--otel, --otel-endpoint, THERMOLEDGER_OTEL, "
    "THERMOLEDGER_OTEL_ENDPOINT) needs opentelemetry-sdk and "
    "opentelemetry-exporter-otlp-proto-http: pip install 'thermoledger[otel]'"
)
SERVICE_NAME: Final = "thermoledger-meter"
CPUINFO: Final = Path("/proc/cpuinfo")
_GPU_VENDORS: Final = {"nvml": "NVIDIA", "amdsmi": "AMD"}
_CPU_BACKENDS: Final = frozenset({"rapl", "hwmon", "estimate"})
_SYNTHETIC_BACKENDS: Final = frozenset({"simulated", "replay"})
_CPU_VENDOR_NAMES: Final = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "HygonGenuine": "Hygon"}
# The SDK's loggers for what this module reports itself (`FailureLog`).
_SDK_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk.metrics._internal.export",
)
_REPEAT_S: Final = 600.0
"""A failure that goes on is logged again at most this often, s."""


def require_sdk() -> None:
    """Check that the ``otel`` extra is installed.

    Raises:
        SettingsError: It is not; the message says what to install (``thermoledger`` exits 2).
    """
    try:
        import opentelemetry.exporter.otlp.proto.http.metric_exporter
        import opentelemetry.sdk.metrics  # noqa: F401
    except ImportError as e:
        from .settings import SettingsError

        raise SettingsError(MISSING_EXTRA) from e


# -- what a device is, as attributes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuIdentity:
    """The host's CPU as /proc/cpuinfo names it (None: not said there).

    Attributes:
        vendor: ``Intel``, ``AMD``, ``Hygon``, or the raw ``vendor_id`` of another vendor.
        model: The ``model name`` line, e.g. ``AMD EPYC 9654 96-Core Processor``.
    """

    vendor: str | None = None
    model: str | None = None


def cpu_identity(path: Path = CPUINFO) -> CpuIdentity:
    """The CPU's vendor and model from ``path`` (a /proc/cpuinfo); nothing where unreadable.

    Args:
        path: The file to read (tests pass their own).
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuIdentity()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and value and key in ("vendor_id", "model name"):
            fields.setdefault(key, value)
    vendor = fields.get("vendor_id")
    return CpuIdentity(
        vendor=_CPU_VENDOR_NAMES.get(vendor, vendor) if vendor else None,
        model=fields.get("model name"),
    )


def device_attributes(
    reading: DeviceReading, *, run_id: str, cpu: CpuIdentity
) -> dict[str, str | bool]:
    """The attributes of one device's points (module docstring): nothing guessed.

    Args:
        reading: The device, as `meters.readout.MeterReader` read it.
        run_id: Its run.
        cpu: The host's CPU, for CPU packages read through RAPL, hwmon or the estimate.
    """
    figures, info = reading.figures, reading.info
    kind = reading.kind
    backend = info.backend if info is not None else None
    simulated = bool(
        (reading.device is not None and reading.device["simulated"])
        or (info is not None and info.simulated)
        or backend in _SYNTHETIC_BACKENDS
    )
    attributes: dict[str, str | bool] = {
        "hw.id": figures.uid,
        "hw.type": HW_TYPES[kind],
        "hw.name": figures.name,
        RUN_ID: run_id,
        SIMULATED: simulated,
    }
    vendor: str | None = None
    model: str | None = None
    if kind == "gpu":
        vendor = None if simulated or backend is None else _GPU_VENDORS.get(backend)
        model = figures.name or None
    elif kind == "cpu" and not simulated and backend in _CPU_BACKENDS:
        vendor, model = cpu.vendor, cpu.model
    if vendor:
        attributes["hw.vendor"] = vendor
    if model:
        attributes["hw.model"] = model
    return attributes


# -- one reading per collection, for both instruments -----------------------------------------


@dataclass(frozen=True, slots=True)
class _Point:
    attributes: Mapping[str, str | bool]
    energy_j: float
    power_w: float


class _Observer:
    """Reads the meters once per collection and hands the points to both callbacks.

    The SDK calls each instrument's callback once per collection, in an order of its own: the
    first callback of a collection (one that has already taken the current points) reads anew,
    the other takes the same points, so the counter and the gauge agree and the meter is read
    once. After `finish`, the meters of the last reading are read again even if the source no
    longer lists them (a node's pod runs leave it as they stop), for the final export.
    """

    def __init__(
        self,
        meters: Callable[[], Iterable[ReadableMeter]],
        *,
        cpu: CpuIdentity,
        problems: FailureLog,
    ) -> None:
        self._meters = meters
        self._cpu = cpu
        self._problems = problems
        self._lock = threading.Lock()
        self._readers: dict[ReadableMeter, MeterReader] = {}
        self._points: tuple[_Point, ...] = ()
        self._taken: set[str] = {ENERGY, POWER}
        self._final = False

    def finish(self) -> None:
        """The meters have stopped: the next collection is the last one."""
        with self._lock:
            self._final = True

    def points(self, instrument: str) -> tuple[_Point, ...]:
        """This collection's points (read now when ``instrument`` already had the current ones)."""
        with self._lock:
            if instrument in self._taken:
                self._points = self._read()
                self._taken = set()
            self._taken.add(instrument)
            return self._points

    def _read(self) -> tuple[_Point, ...]:
        try:
            meters = list(self._meters())
        except Exception as e:
            self._problems.failed("read", f"listing the meters failed: {e}")
            meters = []
        if self._final:
            meters += [m for m in self._readers if m not in meters]
        self._readers = {m: self._readers.get(m) or MeterReader(m) for m in meters}
        points: list[_Point] = []
        for meter, reader in self._readers.items():
            try:
                _, readings = reader.read()
                points.extend(
                    _Point(
                        device_attributes(r, run_id=meter.run_id, cpu=self._cpu),
                        r.figures.energy_j,
                        r.power_w,
                    )
                    for r in readings
                )
            except Exception as e:  # one meter's trouble must not cost the others their points
                self._problems.failed("read", f"reading run {meter.run_id} failed: {e}")
        return tuple(points)


# -- failures, reported once in a while -------------------------------------------------------


class FailureLog(logging.Filter):
    """Failures of the export, logged the first time at once, then at most one line every
    `_REPEAT_S` seconds with how many went unlogged, and one line when it works again.

    Also a `logging.Filter` for the SDK's loggers: it keeps their last message (the reason of a
    failed export, which the exporter's result does not carry) and drops the record.

    Args:
        log: Where the lines go.
        endpoint: The receiver, for the messages.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        log: logging.Logger,
        endpoint: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._log = log
        self._endpoint = endpoint
        self._clock = clock
        self._lock = threading.Lock()
        self.sdk_message: str | None = None
        # kind -> (when last logged, failures not logged since, failures in a row)
        self._failing: dict[str, tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        with contextlib.suppress(Exception):  # a malformed record: nothing to keep
            self.sdk_message = record.getMessage()
        return False

    def failed(self, kind: str, what: str | None = None) -> None:
        """A failure of ``kind`` (``export``, ``read``, ``close``); ``what`` says which."""
        reason = what or self.sdk_message or "no reason given"
        now = self._clock()
        with self._lock:
            last, unlogged, in_a_row = self._failing.get(kind, (-math.inf, 0, 0))
            in_a_row += 1
            if now - last < _REPEAT_S:
                self._failing[kind] = (last, unlogged + 1, in_a_row)
                return
            self._failing[kind] = (now, 0, in_a_row)
        more = f" ({unlogged} more since the last line)" if unlogged else ""
        self._log.warning(
            "OpenTelemetry %s (%s) failed: %s%s; metering goes on",
            kind,
            self._endpoint,
            reason,
            more,
        )

    def succeeded(self, kind: str) -> None:
        """``kind`` worked: say so once if it had failed."""
        with self._lock:
            state = self._failing.pop(kind, None)
        if state is not None:
            self._log.warning(
                "OpenTelemetry %s (%s) works again after %d failure(s)",
                kind,
                self._endpoint,
                state[2],
            )


# -- the export ---------------------------------------------------------------------------------


class OtelExport:
    """The meters' ``hw.energy`` and ``hw.power`` on a `MeterProvider` of their own.

    `export_metrics` builds one that pushes over OTLP/HTTP; tests pass the SDK's
    ``InMemoryMetricReader`` and collect when they like.

    Args:
        meters: The meters to read at each collection (called each time: a node's pod runs
            come and go).
        metric_reader: The SDK reader that collects (and exports).
        host: The host the devices are on (resource attribute ``host.name``; default: this
            host's name).
        cpu: The host's CPU (default: read from /proc/cpuinfo).
        logger: Where failures are logged.
        endpoint: Where the points go, for the messages.
        problems: Where failures are reported (default: a new `FailureLog` on ``logger``).
    """

    def __init__(
        self,
        meters: Callable[[], Iterable[ReadableMeter]],
        *,
        metric_reader: MetricReader,
        host: str | None = None,
        cpu: CpuIdentity | None = None,
        logger: logging.Logger | None = None,
        endpoint: str = "in memory",
        problems: FailureLog | None = None,
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider

        log = logger if logger is not None else _LOG
        self.endpoint = endpoint
        self._problems = problems if problems is not None else FailureLog(log, endpoint)
        self._observer = _Observer(
            meters, cpu=cpu if cpu is not None else cpu_identity(), problems=self._problems
        )
        self._lock = threading.Lock()
        self._closed = False
        self._filtered = [logging.getLogger(name) for name in _SDK_LOGGERS]
        for sdk_logger in self._filtered:
            sdk_logger.addFilter(self._problems)
        self._provider = MeterProvider(
            metric_readers=[metric_reader],
            resource=_resource(host if host is not None else socket.gethostname()),
            shutdown_on_exit=False,  # `close` sends the last export, after the meter's flush
        )
        instruments = self._provider.get_meter("thermoledger.meters", _version())
        instruments.create_observable_counter(
            ENERGY,
            callbacks=[self._energy],
            unit="J",
            description="Energy consumed by the component, metered in this run",
        )
        instruments.create_observable_gauge(
            POWER,
            callbacks=[self._power],
            unit="W",
            description="Mean power of the component since the previous collection",
        )

    def _energy(self, options: CallbackOptions) -> Iterable[Observation]:
        return _observations(self._observer.points(ENERGY), "energy_j")

    def _power(self, options: CallbackOptions) -> Iterable[Observation]:
        return _observations(self._observer.points(POWER), "power_w")

    def close(self, timeout_s: float = 15.0) -> None:
        """Send the last export (the meters' final figures) and stop; idempotent, never raises.

        Call it after the meters have stopped, so that the final energy is the one sent.

        Args:
            timeout_s: The longest it waits for the last export, s.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._observer.finish()
        try:
            self._provider.shutdown(timeout_millis=timeout_s * 1000.0)
        except Exception as e:
            self._problems.failed("shutdown", str(e))
        finally:
            for sdk_logger in self._filtered:
                sdk_logger.removeFilter(self._problems)


def _observations(points: Iterable[_Point], field: str) -> list[Observation]:
    from opentelemetry.metrics import Observation

    out = []
    for point in points:
        value: float = getattr(point, field)
        if math.isfinite(value):  # not available yet: no point, never a 0
            out.append(Observation(value, dict(point.attributes)))
    return out


def _resource(host: str) -> Resource:
    """``host.name`` and ``service.name`` (unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
    name the service), with what the SDK reads from the environment."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"host.name": host})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    return resource


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thermoledger")
    except PackageNotFoundError:
        return None


def _otlp_exporter(endpoint: str, timeout_s: float, problems: FailureLog) -> MetricExporter:
    """The SDK's OTLP/HTTP exporter, whose results are reported through ``problems``."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData

    class ReportingExporter(OTLPMetricExporter):
        def export(
            self,
            metrics_data: MetricsData,
            timeout_millis: float | None = 10_000,
            **kwargs: Any,
        ) -> MetricExportResult:
            problems.sdk_message = None
            try:
                result = super().export(metrics_data, timeout_millis, **kwargs)
            except Exception as e:
                problems.failed("export", f"{type(e).__name__}: {e}")
                return MetricExportResult.FAILURE
            if result is MetricExportResult.SUCCESS:
                problems.succeeded("export")
            else:
                problems.failed("export")
            return result

    return ReportingExporter(endpoint=endpoint, timeout=timeout_s)


def export_metrics(
    meters: Callable[[], Iterable[ReadableMeter]],
    *,
    endpoint: str,
    interval_s: float = DEFAULT_OTEL_INTERVAL_S,
    host: str | None = None,
    timeout_s: float = 10.0,
    logger: logging.Logger | None = None,
) -> OtelExport | None:
    """Push the meters' ``hw.energy`` and ``hw.power`` to ``endpoint`` every ``interval_s``.

    Never raises: an export that cannot start is logged and None returned; metering goes on.

    Args:
        meters: The meters to read at each collection.
        endpoint: The OTLP/HTTP metrics URL (``…/v1/metrics``; `meters.settings.otlp_metrics_url`).
        interval_s: Seconds between two exports.
        host: The devices' host (resource ``host.name``; default: this host's name).
        timeout_s: How long one export may take, retries included, s.
        logger: Where the start and the failures are logged.
    """
    log = logger if logger is not None else _LOG
    try:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        problems = FailureLog(log, endpoint)
        reader = PeriodicExportingMetricReader(
            _otlp_exporter(endpoint, timeout_s, problems),
            export_interval_millis=interval_s * 1000.0,
            export_timeout_millis=timeout_s * 1000.0,
        )
        export = OtelExport(
            meters,
            metric_reader=reader,
            host=host,
            logger=log,
            endpoint=endpoint,
            problems=problems,
        )
    except Exception as e:
        log.warning("OpenTelemetry export to %s not started (%s); metering goes on", endpoint, e)
        return None
    log.info("OpenTelemetry metrics exported to %s every %g s", endpoint, interval_s)
    return export


def export_meter_metrics(
    meter: Meter,
    *,
    endpoint: str,
    interval_s: float = DEFAULT_OTEL_INTERVAL_S,
    timeout_s: float = 10.0,
    logger: logging.Logger | None = None,
) -> OtelExport | None:
    """`export_metrics` for one meter (its host named in the resource); never raises."""
    return export_metrics(
        lambda: (meter,),
        endpoint=endpoint,
        interval_s=interval_s,
        host=meter.host,
        timeout_s=timeout_s,
        logger=logger,
    )
