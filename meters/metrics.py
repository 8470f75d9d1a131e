"""Prometheus metrics of a running meter, computed when scraped (``--metrics-port``).

Off by default. With a port (``thermoledger run|sidecar --metrics-port 9464``,
``THERMOLEDGER_METRICS_PORT``), the meter serves the Prometheus text format at
``http://ADDR:PORT/metrics`` from a daemon thread (prometheus_client's HTTP server on a
registry of its own, never the process-global one). ADDR is ``127.0.0.1`` unless
``--metrics-addr`` / ``THERMOLEDGER_METRICS_ADDR`` says otherwise: the endpoint has no
authentication and names the node's runs, so listening on every interface (``0.0.0.0``, as a
scraped pod needs) is asked for, never the default.

Cost
    Nothing is updated per sample. A `MeterCollector` reads the meter's figures when Prometheus
    scrapes (typically every 15-60 s): one `meters.api.Meter.summary` (the sealed-chunk totals
    plus each device's open chunk integrated on the spot) and one COUNT query on the spool.
    Between scrapes the sampler does no extra work at all, so the meter's CPU budget (0.5 % of a
    core at 10 Hz × 8 GPUs) is untouched; a scrape of 8 GPUs with full 10 s open chunks took
    about 10 ms on a busy 2-core machine, under 0.1 % of a core at a 15 s scrape interval.

Power
    ``thermoledger_gpu_power_watts`` is the **mean power since the previous scrape**, from the
    integrated energy (ΔE / Δt over the samples taken in between), so it agrees with the energy
    counter and does not alias pulses the way one instantaneous reading would. The first scrape
    gives the mean since the meter started; a scrape with no new sample repeats the last value.
    The reading step (`meters.readout`) is the OpenTelemetry export's too (`meters.otel`).

Metrics (labels: ``run_id``; per device also ``device`` (the device key ``host/uid``),
``index``, ``model`` and ``simulated``)::

    thermoledger_gpu_power_watts                   gauge    mean power since the last scrape, W
    thermoledger_gpu_energy_joules_total           counter  energy metered in this run, J
    thermoledger_cpu_power_watts, thermoledger_cpu_energy_joules_total    (RAPL package)
    thermoledger_dram_power_watts, thermoledger_dram_energy_joules_total  (RAPL DRAM)
    thermoledger_meter_samples_total               counter  readings kept as samples
    thermoledger_meter_missed_readings_total       counter  readings that were not samples {reason}
    thermoledger_meter_chunks_sealed_total         counter  chunks sealed
    thermoledger_meter_ticks_total                 counter  sampler ticks
    thermoledger_meter_overruns_total              counter  ticks skipped (a tick overran)
    thermoledger_meter_read_errors_total           counter  ticks whose device read raised
    thermoledger_meter_spool_pending_chunks        gauge    sealed chunks not yet acknowledged
    thermoledger_meter_upload_failures_total       counter  failed upload requests {reason}
    thermoledger_meter_cpu_seconds_total           counter  CPU time of the sampler threads, s
    thermoledger_meter_info                        gauge    1 {backend, sampling, simulated}

Upload failures are counted by a transport wrapper (`CountingTransport`) the meter's uploader
sends through, by reason: ``transport`` (no answer), ``throttled`` (429), ``server`` (5xx),
``refused`` (another 4xx; the chunk is kept and marked, see `meters.uploader`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIServer

import httpx
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .readout import MeterReader
from .settings import DEFAULT_METRICS_ADDR

if TYPE_CHECKING:
    from pathlib import Path

    from .api import Meter
    from .pods import PodAttribution
    from .spool import Spool

__all__ = [
    "FAILURE_REASONS",
    "AttributionCollector",
    "CountingTransport",
    "MeterCollector",
    "MetricsServer",
    "serve_attribution_metrics",
    "serve_collector",
    "serve_meter_metrics",
    "upload_failures",
]

_LOG = logging.getLogger(__name__)
FAILURE_REASONS: Final = ("transport", "throttled", "server", "refused")
_DEVICE_LABELS: Final = ["run_id", "device", "index", "model", "simulated"]
_KINDS: Final = ("gpu", "cpu", "dram")


@dataclass
class _FailureCounts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_reason: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))

    def add(self, reason: str) -> None:
        with self.lock:
            self.by_reason[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.by_reason)


class CountingTransport(httpx.BaseTransport):
    """An httpx transport that counts failed upload requests, by reason, and passes them on.

    Args:
        inner: The transport that sends (default: a plain `httpx.HTTPTransport`).
    """

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner if inner is not None else httpx.HTTPTransport()
        self._failures = _FailureCounts()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError:
            self._failures.add("transport")
            raise
        status = response.status_code
        if status == 429:
            self._failures.add("throttled")
        elif status >= 500:
            self._failures.add("server")
        elif status >= 400:
            self._failures.add("refused")
        return response

    def failures(self) -> dict[str, int]:
        """Failed requests so far, by reason (every reason present, zeros included)."""
        return self._failures.snapshot()

    def close(self) -> None:
        self._inner.close()


class MeterCollector(Collector):
    """Reads a running `meters.api.Meter` at scrape time (see the module docstring).

    Args:
        meter: The started meter.
        spool: A spool object on the meter's spool file, for the pending-chunk count (None:
            the gauge counts only chunks held in memory).
        transport: The uploader's `CountingTransport` (None: no upload-failure counter).
    """

    def __init__(
        self,
        meter: Meter,
        *,
        spool: Spool | None = None,
        transport: CountingTransport | None = None,
    ) -> None:
        self._meter = meter
        self._reader = MeterReader(meter)
        self._spool = spool
        self._transport = transport

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        meter = self._meter
        run_id = meter.run_id
        summary, readings = self._reader.read()
        power = {
            k: GaugeMetricFamily(
                f"thermoledger_{k}_power_watts",
                f"Mean {k.upper()} power since the previous scrape, W",
                labels=_DEVICE_LABELS,
            )
            for k in _KINDS
        }
        energy = {
            k: CounterMetricFamily(
                f"thermoledger_{k}_energy_joules",
                f"{k.upper()} energy metered in this run, J",
                labels=_DEVICE_LABELS,
            )
            for k in _KINDS
        }
        samples = CounterMetricFamily(
            "thermoledger_meter_samples",
            "Readings kept as samples",
            labels=["run_id", "device"],
        )
        missed = CounterMetricFamily(
            "thermoledger_meter_missed_readings",
            "Readings that were not samples, by reason",
            labels=["run_id", "device", "reason"],
        )
        sealed = CounterMetricFamily(
            "thermoledger_meter_chunks_sealed", "Chunks sealed", labels=["run_id", "device"]
        )
        for reading in readings:
            d, info = reading.figures, reading.device
            labels = [
                run_id,
                d.key,
                str(info["index"]) if info is not None else "",
                d.name,
                "true" if info is not None and info["simulated"] else "false",
            ]
            power[reading.kind].add_metric(labels, reading.power_w)
            energy[reading.kind].add_metric(labels, d.energy_j)
            samples.add_metric([run_id, d.key], d.samples)
            sealed.add_metric([run_id, d.key], d.chunks_sealed)
            for reason, count in sorted(d.missed.items()):
                missed.add_metric([run_id, d.key, reason], count)
        yield from power.values()
        yield from energy.values()
        yield from (samples, missed, sealed)
        for name, help_text, value in (
            ("ticks", "Sampler ticks", summary.ticks),
            ("overruns", "Ticks skipped because a tick overran its slot", summary.overruns),
            ("read_errors", "Ticks whose device read raised", summary.read_errors),
            ("spool_errors", "Failed writes of sealed chunks to the spool", summary.spool_errors),
            ("cpu_seconds", "CPU time of the sampler threads, s", summary.cpu_s),
        ):
            family = CounterMetricFamily(f"thermoledger_meter_{name}", help_text, labels=["run_id"])
            family.add_metric([run_id], value)
            yield family
        pending = GaugeMetricFamily(
            "thermoledger_meter_spool_pending_chunks",
            "Sealed chunks not yet acknowledged by the service (spool and memory)",
            labels=["run_id"],
        )
        pending.add_metric([run_id], self._pending(run_id) + summary.unspooled)
        yield pending
        if self._transport is not None:
            yield upload_failures(self._transport)
        info_family = GaugeMetricFamily(
            "thermoledger_meter_info",
            "The meter: its run, backend, and whether it samples (value 1)",
            labels=["run_id", "backend", "sampling", "simulated"],
        )
        info_family.add_metric(
            [
                run_id,
                meter.backend_label,
                "true" if meter.sampling else "false",
                "true" if meter.simulated else "false",
            ],
            1.0,
        )
        yield info_family

    def _pending(self, run_id: str) -> int:
        if self._spool is None or not run_id:
            return 0
        try:
            return self._spool.counts(run_id).pending
        except Exception:  # a scrape must not fail over the spool; the gauge shows memory only
            return 0


@dataclass
class MetricsServer:
    """A running metrics endpoint; `close` stops it and releases the spool it reads.

    Attributes:
        registry: The collectors it serves.
        address: The interface its socket is bound to, as the socket reports it.
        port: The TCP port it listens on (the one picked, when asked for 0).
    """

    registry: CollectorRegistry
    address: str
    port: int
    _server: WSGIServer | None
    _thread: threading.Thread
    _spool: Spool | None

    @property
    def url(self) -> str:
        """Where Prometheus scrapes, e.g. ``http://127.0.0.1:9464/metrics``."""
        return f"http://{self.address}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5.0)
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def upload_failures(transport: CountingTransport) -> CounterMetricFamily:
    """The uploader's failed requests by reason, as a counter family."""
    failures = CounterMetricFamily(
        "thermoledger_meter_upload_failures",
        "Upload requests that failed, by reason",
        labels=["reason"],
    )
    for reason, count in transport.failures().items():
        failures.add_metric([reason], count)
    return failures


def serve_meter_metrics(
    meter: Meter,
    *,
    port: int,
    address: str = DEFAULT_METRICS_ADDR,
    transport: CountingTransport | None = None,
    logger: logging.Logger | None = None,
) -> MetricsServer | None:
    """Serve ``meter``'s metrics on ``address:port`` (0: any free port) from a daemon thread.

    Never raises: the meter must not take the job down over its metrics (a port in use, a
    spool that cannot be opened); the problem is logged and None returned.

    Args:
        meter: A started meter.
        port: TCP port (0 picks a free one; see `MetricsServer.port`).
        address: Interface to bind (default ``127.0.0.1``: this host only, since the endpoint
            has no authentication; ``0.0.0.0``: every interface, for a pod or node that
            Prometheus scrapes from outside).
        transport: The uploader's counting transport, for the upload-failure counter.
        logger: Where problems and the endpoint's address are logged.
    """
    spool_dir = meter.settings.spool_dir if meter.sampling and meter.settings is not None else None
    return serve_collector(
        lambda spool: MeterCollector(meter, spool=spool, transport=transport),
        spool_dir=spool_dir,
        port=port,
        address=address,
        logger=logger,
    )


def serve_collector(
    make_collector: Callable[[Spool | None], Collector],
    *,
    spool_dir: Path | None,
    port: int,
    address: str = DEFAULT_METRICS_ADDR,
    logger: logging.Logger | None = None,
) -> MetricsServer | None:
    """Serve one collector on ``address:port`` from a daemon thread, never raising.

    Args:
        make_collector: Builds the collector, given the spool it may read (None: no spool).
        spool_dir: The spool to open for the collector (None: none).
        port: TCP port (0 picks a free one).
        address: Interface to bind.
        logger: Where problems and the endpoint's address are logged.
    """
    from .spool import Spool

    log = logger if logger is not None else _LOG
    spool: Spool | None = None
    try:
        if spool_dir is not None:
            spool = Spool.in_directory(spool_dir)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(make_collector(spool))
        server, thread = start_http_server(port, addr=address, registry=registry)
    except Exception as e:
        if spool is not None:
            spool.close()
        log.warning(
            "metrics endpoint on %s:%s not started (%s); metering goes on", address, port, e
        )
        return None
    bound = MetricsServer(
        registry=registry,
        address=str(server.server_address[0]),  # as the socket has it, not as asked
        port=int(server.server_port),
        _server=server,
        _thread=thread,
        _spool=spool,
    )
    log.info("metrics served at %s", bound.url)
    return bound


# -- a node's per-pod attribution ------------------------------------------------------------


class AttributionCollector:
    """Every running meter of a node's per-pod attribution in one exposition (`meters.pods`).

    Families are merged by name, so a scrape sees one ``thermoledger_gpu_power_watts`` with a
    series per GPU whichever pod's run holds it, plus whether the kubelet answered.
    """

    def __init__(
        self,
        attribution: PodAttribution,
        *,
        spool: Spool | None,
        transport: CountingTransport | None,
    ) -> None:
        self._attribution = attribution
        self._spool = spool
        self._transport = transport
        self._lock = threading.Lock()
        self._collectors: dict[Meter, Collector] = {}

    def collect(self) -> Iterator[Any]:
        meters = list(self._attribution.meters().values())
        with self._lock:
            self._collectors = {
                m: self._collectors.get(m) or MeterCollector(m, spool=self._spool) for m in meters
            }
            collectors = list(self._collectors.values())
        merged: dict[str, Any] = {}
        for collector in collectors:
            for family in collector.collect():
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()
        if self._transport is not None:
            yield upload_failures(self._transport)
        up = GaugeMetricFamily(
            "thermoledger_k8s_pod_resources_up",
            "Whether the kubelet's PodResources API answered the last question (1) or not (0)",
            labels=["node"],
        )
        up.add_metric([self._attribution.node], 1.0 if self._attribution.kubelet_up else 0.0)
        yield up


def serve_attribution_metrics(
    attribution: PodAttribution,
    *,
    port: int,
    address: str = DEFAULT_METRICS_ADDR,
    transport: CountingTransport | None = None,
    logger: logging.Logger | None = None,
) -> MetricsServer | None:
    """Serve the metrics of every run of the node (`meters.metrics`, one exposition).

    Never raises: a port in use is logged and None returned; metering goes on.
    """
    return serve_collector(
        lambda spool: AttributionCollector(attribution, spool=spool, transport=transport),
        spool_dir=attribution.settings.spool_dir,
        port=port,
        address=address,
        logger=logger if logger is not None else logging.getLogger("thermoledger.meters.pods"),
    )
