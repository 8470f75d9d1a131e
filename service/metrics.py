"""Prometheus metrics and request logs of the service: one registry per app, one middleware.

`create_app` builds a `ServiceMetrics` (its own `CollectorRegistry`, never the process-global
one, so tests that build many apps never collide) and wraps the application in
`ObservabilityMiddleware`, which times every HTTP request and writes one access-log record for
it. ``GET /metrics`` serves the registry in the Prometheus text format; with
``THERMOLEDGER_METRICS_TOKEN`` set it asks for ``Authorization: Bearer <that token>``
(otherwise it is open, like ``/healthz``: keep the port off the internet, or set the token).

Several worker processes (``thermoledger-server serve --workers N``)
    A scrape reaches one worker, so per-process counts would jump between workers and miss the
    others' requests. The server therefore runs prometheus_client's multiprocess mode: before
    the workers start, `multiprocess_directory` sets ``PROMETHEUS_MULTIPROC_DIR`` (a private
    temporary directory, or the operator's, wiped of stale files), each worker's metric values
    live in memory-mapped files there, and the worker that answers ``/metrics`` merges all of
    them (`prometheus_client.multiprocess.MultiProcessCollector`): counters and histograms are
    summed over the workers, dead ones included, so they never go backwards. Gauges say how
    they merge: the in-flight and thread-pool gauges are summed over the *live* workers (a
    worker marks itself dead at shutdown, `ServiceMetrics.stopped`, and a scrape forgets
    workers that died without one, `forget_dead_workers`); ``service_info`` is the maximum.
    Names and labels are the same in both modes; the multiprocess text just has no
    ``_created`` series.

Metrics::

    thermoledger_http_requests_total{method, route, status_class}   counter
    thermoledger_http_request_duration_seconds{method, route}       histogram, s
    thermoledger_http_requests_in_flight                            gauge
    thermoledger_threadpool_tasks_waiting                           gauge (queue depth)
    thermoledger_threadpool_threads_busy / _threads_limit           gauges
    thermoledger_ingest_batches_total                               counter
    thermoledger_ingest_chunks_total{status="stored"|"duplicate"}   counter
    thermoledger_ingest_samples_total                               counter
    thermoledger_service_info{version}                              gauge (1)

Cardinality stays bounded: ``route`` is the route's *template*
(``/api/v1/runs/{run_id}/chunks``), never the raw path; a path that matches no route is
``unmatched``, as is a request refused before routing (a body over the size limit); ``method``
is one of the HTTP methods or ``other``; ``status_class`` is ``2xx`` … ``5xx``. Routes are plain
``def`` functions that run in anyio's thread pool, so a request that waits for a thread is
queued there: the ``threadpool`` gauges show that queue, read when ``/metrics`` is scraped
(with several workers, also by each worker after each of its requests, since a scrape can only
read the pool of the worker that answers it).

Ingest counters
    The ingest route reports what it stored with `record_ingest` (one call, no app argument: the
    middleware puts a per-request tally in a context variable, which anyio carries into the
    route's worker thread). The counters move only when the response is a success, so a batch
    whose transaction is rolled back is not counted.

Request logs
    One record per request on the ``service.access`` logger (uvicorn's own access log is off):
    method, route, path, status, duration_ms, client, and ``run_id`` when the route has one,
    as fields for `meters.logs.JsonFormatter` (``THERMOLEDGER_LOG_FORMAT=json``) and in the text.
    A client that disconnected before its body was complete is status 499 (`mark_client_gone`,
    set by `service.guard`): a client error in the counts, one info line in the log.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as prometheus_values
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import Unauthenticated
from .settings import Settings

__all__ = [
    "LATENCY_BUCKETS_S",
    "MULTIPROC_ENV",
    "ObservabilityMiddleware",
    "ServiceMetrics",
    "forget_dead_workers",
    "mark_client_gone",
    "multiprocess_directory",
    "record_ingest",
    "router",
]

ACCESS_LOGGER: Final = "thermoledger.service.access"
#: Where prometheus_client's multiprocess mode keeps each process's values (read at its import).
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED: Final = "unmatched"
#: The status a request is logged and counted with when its client disconnected before its
#: body was complete (nginx's "client closed request"; nothing is sent, nobody is listening).
CLIENT_CLOSED_REQUEST: Final = 499
_CLIENT_GONE: Final = "thermoledger.client_gone"
#: Request latency buckets, s: 1 ms … 30 s (an ingest batch of 2,000 chunks takes ~1 s).
LATENCY_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_access_log = logging.getLogger(ACCESS_LOGGER)


@dataclass
class _Tally:
    """What one request ingested (`record_ingest`), applied by the middleware on success."""

    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    samples: int = 0


_TALLY: contextvars.ContextVar[_Tally | None] = contextvars.ContextVar(
    "thermoledger_ingest_tally", default=None
)


def record_ingest(*, stored: int, duplicates: int, samples: int) -> None:
    """Count one ingested batch for the metrics of the app serving this request.

    Call it from the ingest route once `db.chunks.ingest_chunks` has acknowledged the batch; the
    counters move when the response is sent with a success status. Outside a request it does
    nothing.

    Args:
        stored: Chunks stored.
        duplicates: Chunks acknowledged as identical repeats.
        samples: Raw samples in the batch's chunks.
    """
    tally = _TALLY.get()
    if tally is not None:
        tally.batches += 1
        tally.stored += stored
        tally.duplicates += duplicates
        tally.samples += samples


@dataclass
class ServiceMetrics:
    """The metric objects of one app, and the registry that ``/metrics`` serves.

    Args:
        version: The service version, the ``version`` label of ``thermoledger_service_info``.
        multiprocess_dir: None: the metrics live on a registry of this app's own (one process,
            and every in-process test app). A directory: multiprocess mode (see the module
            docstring); the values go to this process's files there, and `registry` merges
            the files of every worker. ``PROMETHEUS_MULTIPROC_DIR`` must name it already when
            prometheus_client is first imported, as `multiprocess_directory` arranges.

    Raises:
        RuntimeError: ``multiprocess_dir`` is given but prometheus_client was imported without
            ``PROMETHEUS_MULTIPROC_DIR``, so its values would never reach the directory.
    """

    version: str = "0"
    multiprocess_dir: Path | None = None
    registry: CollectorRegistry = field(init=False)
    requests: Counter = field(init=False)
    latency: Histogram = field(init=False)
    in_flight: Gauge = field(init=False)
    waiting: Gauge = field(init=False)
    busy: Gauge = field(init=False)
    limit: Gauge = field(init=False)
    batches: Counter = field(init=False)
    chunks: Counter = field(init=False)
    samples: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry()
        r: CollectorRegistry | None = self.registry
        if self.multiprocess_dir is not None:
            if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
                raise RuntimeError(
                    f"multiprocess metrics need {MULTIPROC_ENV} set before prometheus_client is "
                    f"first imported (it was not); start the workers with it set to "
                    f"{str(self.multiprocess_dir)!r}"
                )
            # The metric objects go on no registry: their values reach /metrics only through
            # the collector, which reads this process's files with everyone else's (registering
            # them as well would export this worker's share a second time).
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.registry, path=str(self.multiprocess_dir)
            )
            r = None
        self.requests = Counter(
            "thermoledger_http_requests",
            "HTTP requests answered, by route template and status class",
            ["method", "route", "status_class"],
            registry=r,
        )
        self.latency = Histogram(
            "thermoledger_http_request_duration_seconds",
            "Time from request to the end of the response, s, by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        # multiprocess_mode says how the workers' values merge (ignored in one process).
        self.in_flight = Gauge(
            "thermoledger_http_requests_in_flight",
            "HTTP requests being served now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            "thermoledger_threadpool_tasks_waiting",
            "Requests queued for a worker thread (read at scrape time)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.busy = Gauge(
            "thermoledger_threadpool_threads_busy",
            "Worker threads running a request (read at scrape time)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.limit = Gauge(
            "thermoledger_threadpool_threads_limit",
            "Most worker threads at once",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batches = Counter("thermoledger_ingest_batches", "Chunk batches ingested", registry=r)
        self.chunks = Counter(
            "thermoledger_ingest_chunks",
            "Chunks acknowledged by ingest, stored or duplicate",
            ["status"],
            registry=r,
        )
        self.samples = Counter(
            "thermoledger_ingest_samples", "Raw samples in ingested chunks", registry=r
        )
        for status in ("stored", "duplicate"):
            self.chunks.labels(status=status)
        Gauge(
            "thermoledger_service_info",
            "The service (value 1)",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        ).labels(version=self.version).set(1)

    @property
    def multiprocess(self) -> bool:
        """Whether this app is one of several worker processes sharing its metrics."""
        return self.multiprocess_dir is not None

    def observe(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        """Count one answered request."""
        self.requests.labels(method, route, f"{status // 100}xx").inc()
        self.latency.labels(method, route).observe(elapsed_s)

    def apply(self, tally: _Tally) -> None:
        """Add a successful request's ingest tally to the counters."""
        if tally.batches:
            self.batches.inc(tally.batches)
            self.chunks.labels(status="stored").inc(tally.stored)
            self.chunks.labels(status="duplicate").inc(tally.duplicates)
            self.samples.inc(tally.samples)

    def read_threadpool(self) -> None:
        """Set the thread-pool gauges from anyio's default thread limiter, now.

        Must run on the event loop's thread.
        """
        stats = anyio.to_thread.current_default_thread_limiter().statistics()
        self.waiting.set(stats.tasks_waiting)
        self.busy.set(stats.borrowed_tokens)
        self.limit.set(stats.total_tokens)

    def started(self) -> None:
        """The app has started (its lifespan): a worker publishes its thread limit at once,
        since a scrape answered by another worker cannot read this one's pool."""
        if self.multiprocess:
            self.read_threadpool()

    def stopped(self) -> None:
        """The app is shutting down (its lifespan): a worker marks itself dead, so its live
        gauges (in flight, thread pool) leave the sums; its counters stay in them."""
        if self.multiprocess_dir is not None:
            _mark_dead(os.getpid(), self.multiprocess_dir)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, with the thread pool read now.

        Must run on the event loop's thread (it reads anyio's default thread limiter).
        """
        self.read_threadpool()
        if self.multiprocess_dir is not None:
            forget_dead_workers(self.multiprocess_dir)
        return generate_latest(self.registry)


def _mark_dead(pid: int, directory: Path) -> None:
    """Remove a process's live-gauge files (prometheus_client's own bookkeeping)."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def forget_dead_workers(
    directory: Path, *, alive: Callable[[int], bool] = _process_alive
) -> list[int]:
    """Mark dead the workers whose live-gauge files remain although their process is gone.

    A worker that shuts down marks itself dead (`ServiceMetrics.stopped`); one that is killed
    (out of memory, SIGKILL) cannot, and uvicorn starts a replacement under a new process id.
    Without this its last in-flight count would stay in the sum for good. Counter and
    histogram files are left alone: a dead worker's counts still belong to the totals.

    Args:
        directory: The multiprocess directory.
        alive: Whether a process id is running (injected by tests).

    Returns:
        The process ids marked dead, ascending.
    """
    pids: set[int] = set()
    for path in directory.glob("gauge_live*_*.db"):
        pid_text = path.stem.rpartition("_")[2]
        if pid_text.isdigit() and int(pid_text) > 0:
            pids.add(int(pid_text))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not alive(pid))
    for pid in dead:
        _mark_dead(pid, directory)
    return dead


@contextmanager
def multiprocess_directory(
    environ: MutableMapping[str, str], *, temp_root: Path | None = None
) -> Iterator[Path]:
    """The directory where a server's worker processes keep their metrics, named in ``environ``.

    Enter it before the workers start: they inherit ``PROMETHEUS_MULTIPROC_DIR`` and
    prometheus_client reads it when they import it. An operator's ``PROMETHEUS_MULTIPROC_DIR``
    is honoured: the directory is created if missing, and the ``*.db`` files a previous run
    left there are deleted now (their counts are not this run's, and a worker that reuses an
    old process id, as pid 1 in a container does, would carry them on); it stays after exit,
    with this run's files, until the next start wipes them. Without it a private directory is
    made with `tempfile.mkdtemp` and removed at exit, along with the variable.

    Args:
        environ: The environment the workers inherit (`os.environ`).
        temp_root: Where the private directory goes (default: the system's temporary folder).

    Yields:
        The directory.

    Raises:
        NotADirectoryError: ``PROMETHEUS_MULTIPROC_DIR`` names something that is not a folder.
    """
    given = environ.get(MULTIPROC_ENV, "").strip()
    if given:
        directory = Path(given)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{MULTIPROC_ENV}={given!r} is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        environ[MULTIPROC_ENV] = str(directory)
        yield directory
        return
    directory = Path(
        tempfile.mkdtemp(prefix="thermoledger-metrics-", dir=str(temp_root) if temp_root else None)
    )
    environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def route_template(scope: Scope) -> str:
    """The template of the route that served this request, e.g. ``/api/v1/runs/{run_id}``.

    The router leaves the matched route in the scope; its template lacks the prefixes of the
    routers it was included through (``/api/v1``), which are the part of the request path in
    front of the route's own. Path parameter values are put back as ``{name}`` wherever they
    appear, so no raw id reaches a label. A request answered before routing (a body over the
    size limit, a path no route matches) is `UNMATCHED`.
    """
    route = scope.get("route")
    own = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(own, str) or not own:
        return UNMATCHED
    params = {str(k): str(v) for k, v in scope.get("path_params", {}).items()}
    rendered = own
    for name, value in params.items():
        rendered = rendered.replace("{" + name + "}", value)
    path = str(scope.get("path", ""))
    prefix = path[: -len(rendered)] if rendered and path.endswith(rendered) else ""
    if params and prefix:
        values = {value: name for name, value in params.items()}
        prefix = "/".join(
            "{" + values[part] + "}" if part in values else part for part in prefix.split("/")
        )
    return prefix + own


def mark_client_gone(scope: Scope) -> None:
    """Record that this request's client disconnected before its body was complete.

    The request is then a client error (`CLIENT_CLOSED_REQUEST`) in the metrics and one
    info-level line in the request log, never a 500 with a traceback.
    """
    scope[_CLIENT_GONE] = True


class ObservabilityMiddleware:
    """Times, counts and logs every HTTP request (see the module docstring).

    Args:
        app: The application inside.
        metrics: Where the figures go.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        tally = _Tally()
        token = _TALLY.set(tally)
        metrics = self.metrics
        metrics.in_flight.inc()
        start_s = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed_s = time.perf_counter() - start_s
            if scope.get(_CLIENT_GONE):
                status = CLIENT_CLOSED_REQUEST
            metrics.in_flight.dec()
            _TALLY.reset(token)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = route_template(scope)
            metrics.observe(method, route, status, elapsed_s)
            if status < 400:
                metrics.apply(tally)
            if metrics.multiprocess:
                metrics.read_threadpool()
            _log_request(scope, method, route, status, elapsed_s)


def _log_request(scope: Scope, method: str, route: str, status: int, elapsed_s: float) -> None:
    if not _access_log.isEnabledFor(logging.INFO):
        return
    run_id = scope.get("path_params", {}).get("run_id")
    client = scope.get("client")
    path = scope.get("path", "")
    duration_ms = round(elapsed_s * 1e3, 3)
    _access_log.info(
        "%s %s %d %.1f ms%s%s",
        method,
        path,
        status,
        duration_ms,
        f" run {run_id}" if run_id else "",
        " (client disconnected before its body was complete)"
        if status == CLIENT_CLOSED_REQUEST
        else "",
        extra={
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "client": f"{client[0]}:{client[1]}" if client else None,
            "run_id": str(run_id) if run_id else None,
        },
    )


router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        401: {"description": "THERMOLEDGER_METRICS_TOKEN is set and was not presented"},
    },
)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics of this service, all its worker processes (see `service.metrics`)."""
    settings: Settings = request.app.state.settings
    expected = settings.metrics_token
    if expected is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.get_secret_value().encode()
        ):
            raise Unauthenticated("GET /metrics needs the metrics token (Bearer)")
    metrics: ServiceMetrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
