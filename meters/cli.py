"""``thermoledger``: the client command line (the light side; no web stack, no database).

Commands:

* ``thermoledger run [options] -- python train.py ...`` meters a job. The child runs in its own
  process group (given the terminal's foreground when the wrapper has it, so Ctrl-C, ``input()``
  and debuggers reach it as without the wrapper); SIGINT, SIGTERM and SIGHUP sent to the wrapper
  are forwarded to that group. The wrapper returns the child's exit code, 128 + N when a signal
  N killed it (like a shell). On a terminal it shows one status line (power, energy, elapsed,
  refreshed about once a second, on stderr); at the end it prints a summary table on stderr
  and marks the run finished (exit 0) or failed (the exit code). The child's environment gets
  ``THERMOLEDGER_RUN_ID`` (so a `meters.api.Meter` inside joins the run),
  ``THERMOLEDGER_SPOOL_DIR`` and ``THERMOLEDGER_NODE_METER`` (so that Meter records phases and
  work but does not sample the node a second time). It does not get the token, however it was
  given, nor ``THERMOLEDGER_TOKEN``, ``THERMOLEDGER_TOKEN_FILE``, ``THERMOLEDGER_SERVER`` or
  another credential (`meters.child.withheld`): a Meter in the job records into the wrapper's
  spool and the wrapper uploads what it records. The wrapper is non-dumpable meanwhile
  (`meters.child.guard_secrets`). Where nothing on the node is measurable
  (no GPU, no readable CPU counter, no ``--cpu-tdp-w``), the wrapper says so in one warning,
  records nothing (no run in the spool) and returns the child's exit code as always.
* ``thermoledger sidecar --run-id ID`` meters until SIGTERM/SIGINT, then flushes, marks the run
  finished, uploads what it can and exits 0: for pods and SLURM prolog/epilog. With
  ``--attribute-pods`` (a Kubernetes node meter) it keeps one run per pod holding GPUs on the
  node and one for the unallocated GPUs, from the kubelet's PodResources API (`meters.pods`).
* ``thermoledger pod-resources-relay --listen PATH`` offers the kubelet's root-only
  PodResources socket on a socket an unprivileged meter may use (`meters.k8s`), until SIGTERM.
* ``thermoledger push`` sends everything pending in the spool (offline runs); exits 1 if
  anything could not be sent, after a summary.
* ``thermoledger status`` lists the spool's runs with pending and acknowledged chunk counts.
* ``thermoledger import codecarbon FILE --project SLUG`` records CodeCarbon's ``emissions.csv``
  runs on the server as estimates with their provenance (`meters.codecarbon`, imported only by
  this command); ``--dry-run`` prints what would be imported, sending nothing.
* ``thermoledger report [RUN]`` prints a run's report from the local spool, no server needed
  (`meters.local_report`: the accounting core's report, not ledgered): RUN is an id, a unique
  prefix of one, or a name (default: the newest run); ``--json FILE`` and ``--html FILE``
  (``-``: stdout) write it as the service's JSON and as one self-contained HTML page; CO2e and
  cost only with ``--grid-intensity`` / ``--tariff`` (and ``--pue``). Exit 1 with nothing to
  report, 2 for a RUN the spool does not hold (the message lists its runs).

Options come from flags (parsed once into typed options, `meters.options`), then
``THERMOLEDGER_*`` (`meters.settings`). The token is read once, before anything runs:
``--token`` (visible in ``ps``), ``--token-file PATH``, ``THERMOLEDGER_TOKEN`` or
``THERMOLEDGER_TOKEN_FILE`` (`meters.settings.resolve_token`); a token file other users can read
gets a warning, a missing or empty one exits 2 naming the flag or variable. A metering failure
never stops the job: the wrapper then runs the child unmetered and says so. The child's
supervision is `meters.child`, the summary and the status line `meters.summary`, and every
signal handler goes through `meters.signals`.

With a grid intensity (``--grid-intensity``) and/or a tariff (``--tariff``) configured, the
summary of ``run`` and ``sidecar`` also gives the run's location-based CO2e and energy cost, with
the PUE (``--pue``, default 1.0: IT energy only) applied and stated, and the band carried through
(`meters.summary` gives the arithmetic). Nothing is guessed: no region, no default intensity, no
default price.

Observing the meter itself (``run`` and ``sidecar``): ``--metrics-port PORT`` serves Prometheus
metrics (`meters.metrics`: power, energy, samples, spool depth, upload failures), computed only
when scraped, on 127.0.0.1 unless ``--metrics-addr`` says otherwise (0.0.0.0 for a pod that
Prometheus scrapes); ``--otel-endpoint URL`` (or ``--otel``) pushes OpenTelemetry ``hw.energy`` and
``hw.power`` over OTLP/HTTP (`meters.otel`), the last export after the meter stops;
``--log-format json`` writes every log line, and the summary, as one JSON object per line with
the run id (`meters.logs`). All are off by default (`ObserveSettings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from thermoledger._cli_suggest import suggest_close

from .api import Meter
from .child import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    FORWARDED_SIGNALS,
    Child,
    finishing,
    guard_secrets,
    job_environment,
)
from .logs import LogFormat, RunIdFilter, json_handler
from .options import (
    MeterOptions,
    Options,
    PushOptions,
    RelayOptions,
    RunOptions,
    SidecarOptions,
    StatusOptions,
    add_footprint_arguments,
)
from .options import build_parser as _meter_parser
from .options import from_args as _meter_from_args
from .runid import (
    NODE_METER_ENV,
    RUN_ID_ENV,
    canonical_run_id,
    node_meter_mark,
    resolve_run_id,
)
from .settings import (
    ENV_PREFIX,
    FootprintSettings,
    MeterSettings,
    SettingsError,
    resolve_token,
)
from .signals import Caught
from .summary import (
    StatusLine,
    emit_summary,
    format_energy,
    render_footprint,
    render_summary,
    write_summary,
)

if TYPE_CHECKING:
    from .metrics import CountingTransport
    from .otel import OtelExport

__all__ = [
    "FORWARDED_SIGNALS",
    "ReportOptions",
    "build_parser",
    "format_energy",
    "from_args",
    "main",
    "render_footprint",
    "render_summary",
]

_EXIT_USAGE: Final = 2


class _Prefixed(logging.Formatter):
    """Log lines start with ``thermoledger:`` exactly once."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if text.startswith("thermoledger") else f"thermoledger: {text}"


def _logger(err: TextIO, verbose: bool, log_format: LogFormat = "text") -> logging.Logger:
    log = logging.getLogger("thermoledger.cli")
    for old in list(log.handlers):
        log.removeHandler(old)
    handler: logging.Handler
    if log_format == "json":
        # The run id is not known yet; `_meter` points the filter at the meter's.
        handler = json_handler(err, run_id=lambda: None)
    else:
        handler = logging.StreamHandler(err)
        handler.setFormatter(_Prefixed("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False
    return log


# -- metering: run and sidecar ------------------------------------------------------------------


def _child_env(
    env: Mapping[str, str], meter: Meter, settings: MeterSettings | None
) -> dict[str, str]:
    """The job's environment: the wrapper's without credentials (`meters.child.withheld`), with
    the run id, the spool directory and the node mark."""
    extra = {}
    if meter.run_id:
        extra[RUN_ID_ENV] = meter.run_id
    if settings is not None:
        extra[ENV_PREFIX + "SPOOL_DIR"] = str(settings.spool_dir)
    if meter.sampling:
        extra[NODE_METER_ENV] = node_meter_mark(meter.host)
    return job_environment(env, extra)


def _default_name(command: Sequence[str]) -> str:
    """``python train.py --lr 3`` → ``train.py``; ``python -m pkg.train`` → ``pkg.train``.

    The first ``*.py`` argument names the run (also behind ``torchrun`` and friends), then a
    ``-m`` module; else the program's name. Arguments are not used otherwise: they may hold
    secrets, and the name travels to the service.
    """
    program = os.path.basename(command[0])
    rest = list(command[1:])
    for i, arg in enumerate(rest):
        if arg == "-m" and i + 1 < len(rest):
            return rest[i + 1]
        if arg == "-c" and program.startswith("python"):
            return f"{program} -c"
        if arg.endswith(".py") and not arg.startswith("-"):
            return os.path.basename(arg)
    return program


def _upload_transport(options: MeterOptions) -> CountingTransport | None:
    """With a metrics port, the uploads go through a transport that counts their failures."""
    if options.observe.metrics_port is None:
        return None
    from .metrics import CountingTransport

    return CountingTransport()


def _meter(
    options: MeterOptions,
    env: Mapping[str, str],
    log: logging.Logger,
    name: str,
    transport: CountingTransport | None,
) -> Meter:
    meter = Meter(
        name,
        kind=options.kind,
        run_id=options.run_id,
        tags=options.tags,
        simulate=options.simulate,
        backend=options.backend,
        env=env,
        logger=log,
        upload_transport=transport,
        **options.settings_flags(),
    )
    for handler in log.handlers:
        for f in handler.filters:
            if isinstance(f, RunIdFilter):
                f.run_id = lambda: meter.run_id  # resolved as the meter starts
    return meter


def _meter_settings(
    options: MeterOptions, env: Mapping[str, str], *, backend: str | None
) -> MeterSettings:
    return MeterSettings.resolve(env=env, backend=backend, **options.settings_flags())


@contextmanager
def _metrics(
    options: MeterOptions,
    meter: Meter,
    log: logging.Logger,
    transport: CountingTransport | None,
) -> Iterator[None]:
    """Serve the meter's metrics while the block runs, when a port is configured."""
    observe = options.observe
    server = None
    if observe.metrics_port is not None and meter.state not in ("new", "disabled"):
        from .metrics import serve_meter_metrics

        server = serve_meter_metrics(
            meter,
            port=observe.metrics_port,
            address=observe.metrics_addr,
            transport=transport,
            logger=log,
        )
    try:
        yield
    finally:
        if server is not None:
            server.close()


def _otel(
    options: MeterOptions, meters: Callable[[], Iterable[Meter]], host: str, log: logging.Logger
) -> OtelExport | None:
    """Export OpenTelemetry metrics when asked for (`meters.otel`; closed after the meters stop,
    so that the last export carries the final energy)."""
    endpoint = options.observe.otel_endpoint
    if endpoint is None:
        return None
    from .otel import export_metrics

    return export_metrics(
        meters,
        endpoint=endpoint,
        interval_s=options.observe.otel_interval_s,
        host=host,
        logger=log,
    )


def _footprint(options: MeterOptions, env: Mapping[str, str]) -> FootprintSettings:
    return FootprintSettings.resolve(
        env=env,
        grid_intensity_g_per_kwh=options.grid_intensity_g_per_kwh,
        pue=options.pue,
        tariff_usd_per_kwh=options.tariff_usd_per_kwh,
    )


def _cmd_run(options: RunOptions, env: Mapping[str, str], err: TextIO, log: logging.Logger) -> int:
    command = options.command
    _meter_settings(options, env, backend=options.backend)  # bad flags: exit 2 before the child
    footprint = _footprint(options, env)
    transport = _upload_transport(options)
    if options.token and options.process_entry and guard_secrets():
        log.info("the job cannot read this process's token: it is not dumpable")
    with Child() as child:
        name = options.name or _default_name(command)
        meter = _meter(options, env, log, name, transport).start()
        if meter.state == "disabled":
            log.error("the job runs unmetered")
        try:
            child.spawn(command, _child_env(env, meter, meter.settings))
        except OSError as e:
            code = EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else EXIT_NOT_EXECUTABLE
            err.write(f"thermoledger: cannot run {command[0]!r}: {e.strerror or e}\n")
            meter.stop(exit_code=code, failed=True)
            return code
        status = StatusLine(
            err, meter, wanted=not options.quiet and options.observe.log_format == "text"
        )
        otel = _otel(options, lambda: (meter,), meter.host, log) if meter.sampling else None
        with _metrics(options, meter, log, transport):
            code = child.wait(tick=status.refresh)
    status.clear()
    with finishing(meter.abort_upload, log, linger=options.process_entry):
        summary = meter.stop(exit_code=code, failed=code != 0)
        if otel is not None:
            otel.close()
    # Unmetered (nothing measurable): the one warning at the start said it all, no table of 0 J.
    if not options.quiet and meter.state not in ("disabled", "unmetered"):
        verb = "finished" if code == 0 else "failed"
        write_summary(err, log, meter, summary, verb, code, footprint, options.verbose)
    return code


def _cmd_sidecar(
    options: SidecarOptions, env: Mapping[str, str], err: TextIO, log: logging.Logger
) -> int:
    transport = _upload_transport(options)
    if options.attribute_pods:
        return _cmd_sidecar_pods(options, env, err, log, transport)
    footprint = _footprint(options, env)  # a bad value exits 2 before anything is metered
    meter = _meter(options, env, log, options.name or "sidecar", transport)
    # Only record the signal: see meters.sampler.sample_until_signalled.
    with Caught() as stop:
        meter.start()
        if meter.state in ("idle", "unmetered", "disabled"):
            log.warning("sidecar: this process meters nothing; waiting for SIGTERM anyway")
        otel = _otel(options, lambda: (meter,), meter.host, log) if meter.sampling else None
        with _metrics(options, meter, log, transport):
            stop.wait()
    with finishing(meter.abort_upload, log, linger=options.process_entry):
        summary = meter.stop(exit_code=None, failed=False)
        if otel is not None:
            otel.close()
    if not options.quiet and meter.sampling:
        verb = f"stopped by {stop.first}"
        write_summary(err, log, meter, summary, verb, None, footprint, options.verbose)
    return 0


def _cmd_sidecar_pods(
    options: SidecarOptions,
    env: Mapping[str, str],
    err: TextIO,
    log: logging.Logger,
    transport: CountingTransport | None,
) -> int:
    """``sidecar --attribute-pods``: `meters.pods.PodAttribution` until SIGTERM/SIGINT."""
    from .errors import MeterError
    from .metrics import serve_attribution_metrics
    from .pods import PodAttribution, PodSettings
    from .summary import render_attribution

    backend = "simulated" if options.simulate else options.backend
    settings = _meter_settings(options, env, backend=backend)
    pods = PodSettings.resolve(
        env=env,
        socket_path=options.pod_resources_socket,
        poll_s=options.pod_poll_s,
        node=options.node,
    )
    identity = resolve_run_id(options.run_id, env)
    if identity.source == "new":
        log.warning(
            "no --run-id: the runs of this node get new ids at every start, so a restarted "
            "meter does not resume them (the DaemonSet passes k8s-node:<node>:<pod uid>)"
        )
    try:
        attribution = PodAttribution.for_node(
            settings,
            pods,
            base_run_id=identity.run_id,
            name=options.name,
            kind=options.kind,
            tags=options.tags,
            env=env,
            logger=log,
            upload_transport=transport,
        )
    except SettingsError:
        raise  # exit 2 from `main`, like every other bad setting
    except MeterError as e:  # grpcio / protobuf missing
        err.write(f"thermoledger: {e}\n")
        return _EXIT_USAGE
    finishing_: list[bool] = []

    def cut_upload(signum: int) -> None:
        if finishing_:
            attribution.abort_upload()  # a second signal cuts the final upload short

    # As `meters.child.finishing` does: once the work is done, a late signal must not change
    # the exit status of the command itself.
    with Caught(then=cut_upload, ignore_after=options.process_entry) as stop:
        try:
            attribution.start()
        except MeterError as e:
            log.error("pod attribution disabled: %s; waiting for SIGTERM", e)
            stop.wait()
            attribution.stop()
            return 0
        observe = options.observe
        server = (
            serve_attribution_metrics(
                attribution,
                port=observe.metrics_port,
                address=observe.metrics_addr,
                transport=transport,
                logger=log,
            )
            if observe.metrics_port is not None
            else None
        )
        otel = _otel(options, lambda: attribution.meters().values(), pods.node, log)
        try:
            attribution.run(lambda: bool(stop))
        finally:
            if server is not None:
                server.close()
        finishing_.append(True)
        totals = attribution.stop()
        if otel is not None:
            otel.close()  # the pod runs' last figures: `meters.otel` keeps the last ones read
    if not options.quiet:
        why = stop.first or "request"
        table = render_attribution(
            totals,
            title=f"thermoledger: node {pods.node}: pod attribution stopped by {why}",
            spool_dir=str(settings.spool_dir),
        )
        runs = {t.run_id: {"name": t.name, "energy_j": t.energy_j} for t in totals.values()}
        energy_j = math.fsum(t.energy_j for t in totals.values())
        emit_summary(err, log, table, {"energy_j": energy_j, "runs": runs})
    return 0


# -- the other commands -------------------------------------------------------------------------


def _cmd_relay(options: RelayOptions, err: TextIO, log: logging.Logger) -> int:
    """``pod-resources-relay``: `meters.k8s.PodResourcesRelay` until SIGTERM/SIGINT."""
    from .k8s import PodResourcesError, PodResourcesRelay

    with Caught() as stop:
        try:
            relay = PodResourcesRelay(options.socket, options.listen, mode=options.mode, logger=log)
            relay.start()
        except PodResourcesError as e:
            err.write(f"thermoledger: {e}\n")
            return 1
        try:
            stop.wait()
        finally:
            relay.close()
    return 0


def _cmd_push(options: PushOptions, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    from .control import CONTROL_FILENAME, ControlStore
    from .spool import SPOOL_FILENAME, Spool
    from .uploader import Uploader, push_later

    settings = MeterSettings.resolve(
        env=env,
        server=options.server,
        token=options.token,
        token_file=options.token_file,
        spool_dir=options.spool_dir,
    )
    if settings.api_url is None:
        err.write("thermoledger push: no server: pass --server URL or set THERMOLEDGER_SERVER\n")
        return _EXIT_USAGE
    directory = settings.spool_dir
    if not (directory / SPOOL_FILENAME).exists() and not (directory / CONTROL_FILENAME).exists():
        out.write(f"nothing to push: no spool in {directory}\n")
        return 0
    run_ids = None if options.run_id is None else [canonical_run_id(options.run_id)]
    with Spool.in_directory(directory) as spool, ControlStore.in_directory(directory) as control:
        if options.retry_rejected:
            freed = control.clear_rejections(run_ids[0] if run_ids else None)
            out.write(f"retrying {freed} rejected chunk(s)\n")
        with Uploader(
            spool, control, api_url=settings.api_url, token=settings.token, run_ids=run_ids
        ) as uploader:
            result = uploader.drain(timeout_s=options.timeout_s)
    out.write(
        f"pushed to {settings.server}: {result.acknowledged} chunk(s) sent "
        f"({result.stored} stored, {result.duplicates} duplicates), "
        f"{result.messages_sent} run/phase/work message(s); remaining: {result.remaining} "
        f"chunk(s), {result.messages_pending} message(s); rejected: {result.refused} chunk(s)\n"
    )
    for blocked in result.blocked:
        out.write(f"  blocked run {blocked}\n")
    if result.error:
        out.write(f"  stopped by: {result.error}\n")
    if result.token_refused:
        out.write(
            "  not retried: everything stays in the spool; push again with a token that has "
            f"the ingest scope: {push_later(settings.server, directory)}\n"
        )
    if result.refused:
        out.write("  rejected chunks stay in the spool; see the log, then --retry-rejected\n")
    return 0 if result.complete else 1


def _cmd_status(options: StatusOptions, env: Mapping[str, str], out: TextIO) -> int:
    from .control import CONTROL_FILENAME, ControlStore
    from .spool import SPOOL_FILENAME, Spool

    settings = MeterSettings.resolve(env=env, spool_dir=options.spool_dir)
    directory = settings.spool_dir
    if not (directory / SPOOL_FILENAME).exists():
        out.write(f"no spool in {directory}\n")
        return 0
    with Spool.in_directory(directory) as spool:
        runs = spool.runs()
        control = (
            ControlStore.in_directory(directory)
            if (directory / CONTROL_FILENAME).exists()
            else None
        )
        try:
            out.write(f"spool {directory}: {len(runs)} run(s)\n")
            if runs:
                out.write(
                    f"  {'run id':<36}  {'status':<8} {'exit':>4} {'started (UTC)':<19} "
                    f"{'pending':>7} {'acked':>7} {'refused':>7} {'msgs':>4}  name\n"
                )
            totals = [0, 0, 0]
            for run in runs:
                counts = spool.counts(run.run_id)
                refused = len(control.rejected_chunks(run.run_id)) if control else 0
                messages = len(control.messages(run.run_id, pending_only=True)) if control else 0
                started = datetime.fromtimestamp(run.created_at_s, UTC).strftime(
                    "%Y-%m-%d %H:%M:%S"
                )
                exit_code = "" if run.exit_code is None else str(run.exit_code)
                name = str(run.metadata.get("name", ""))
                out.write(
                    f"  {run.run_id:<36}  {run.status:<8} {exit_code:>4} {started:<19} "
                    f"{counts.pending:>7} {counts.acked:>7} {refused:>7} {messages:>4}  {name}\n"
                )
                totals[0] += counts.pending
                totals[1] += counts.acked
                totals[2] += refused
            out.write(
                f"  total: {totals[0]} pending, {totals[1]} acknowledged (not yet purged), "
                f"{totals[2]} refused\n"
            )
        finally:
            if control is not None:
                control.close()
    return 0


# -- report: a run's report from the local spool -----------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReportOptions(Options):
    """``thermoledger report [RUN]``.

    Attributes:
        run: An id, a unique prefix of one, or a name (None: the newest run).
        spool_dir: Spool directory.
        json_path: Write the JSON report here (``-``: stdout).
        html_path: Write the HTML report here (``-``: stdout).
        grid_intensity_g_per_kwh: Location-based grid intensity, gCO2e/kWh.
        pue: Facility / IT energy.
        tariff_usd_per_kwh: Electricity price, USD/kWh.
    """

    run: str | None = None
    spool_dir: str | None = None
    json_path: str | None = None
    html_path: str | None = None
    grid_intensity_g_per_kwh: float | None = None
    pue: float | None = None
    tariff_usd_per_kwh: float | None = None


def _add_report_parser(parser: argparse.ArgumentParser) -> None:
    """The ``report`` subcommand, beside those `meters.options.build_parser` declares."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    report = subparsers.add_parser(
        "report",
        help="a run's report from the local spool, no server (not ledgered)",
        description="Print a run's report from the local spool, computed by the same "
        "accounting core as the service's, and optionally write it as JSON and HTML. A local "
        "report is not ledgered: CO2e and cost appear only with --grid-intensity / --tariff.",
    )
    report.add_argument(
        "run",
        nargs="?",
        metavar="RUN",
        help="run id, a unique prefix of one, or a run name (default: the newest run)",
    )
    report.add_argument("--spool-dir", help="spool directory (default: THERMOLEDGER_SPOOL_DIR)")
    report.add_argument(
        "--json", dest="json_path", metavar="FILE", help="write the JSON report (- for stdout)"
    )
    report.add_argument(
        "--html",
        dest="html_path",
        metavar="FILE",
        help="write a self-contained HTML report (- for stdout)",
    )
    add_footprint_arguments(report)
    report.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)


# -- import: another tool's history, as estimated runs ------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ImportOptions(Options):
    """``thermoledger import codecarbon FILE --project SLUG`` (`meters.codecarbon`).

    Attributes:
        file: CodeCarbon's ``emissions.csv``.
        project: The project's slug (the token's; the service refuses another).
        server: Service URL (None: ``THERMOLEDGER_SERVER``).
        token: API token with the ``ingest`` scope.
        token_file: File holding the API token.
        dry_run: Print what would be imported; send nothing.
        timezone: The zone of the file's timestamps (CodeCarbon writes local time).
        kind: The runs' kind (CodeCarbon does not say what a run did).
        cpu_measured: The CPU figures were read (RAPL, powermetrics), not modelled from a TDP.
        replace: Supersede an earlier import of a run whose figures changed.
    """

    file: str
    project: str
    server: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    token_file: str | None = None
    dry_run: bool = False
    timezone: str = "UTC"
    kind: str = "other"
    cpu_measured: bool = False
    replace: bool = False


def _add_import_parser(parser: argparse.ArgumentParser) -> None:
    """The ``import`` subcommand (one tool so far: ``codecarbon``)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = subparsers.add_parser(
        "import", help="bring another tool's history in as estimated runs (codecarbon)"
    )
    tools = command.add_subparsers(dest="tool", required=True, metavar="TOOL")
    codecarbon = tools.add_parser(
        "codecarbon",
        help="CodeCarbon's emissions.csv",
        description="Record the runs of CodeCarbon's emissions.csv (its last row per run) on "
        "the server as estimated runs: CodeCarbon's energy with a band for its method, its "
        "grid intensity and PUE, and the file, line and run id as provenance. Importing the "
        "same file again stores nothing new.",
    )
    codecarbon.add_argument("file", metavar="FILE", help="CodeCarbon's emissions.csv")
    codecarbon.add_argument(
        "--project", required=True, help="the project's slug: the token's own project"
    )
    codecarbon.add_argument("--server", help="service URL (default: THERMOLEDGER_SERVER)")
    codecarbon.add_argument("--token", help="API token with the ingest scope (visible in ps)")
    codecarbon.add_argument("--token-file", help="file holding the API token")
    codecarbon.add_argument(
        "--dry-run", action="store_true", help="print what would be imported; send nothing"
    )
    codecarbon.add_argument(
        "--timezone",
        default="UTC",
        help="zone of the file's timestamps, which CodeCarbon writes in local time without "
        "one: UTC, +02:00 or Europe/Paris (default: UTC)",
    )
    codecarbon.add_argument(
        "--kind",
        choices=("training", "inference", "eval", "other"),
        default="other",
        help="what the runs did; CodeCarbon does not record it (default: other)",
    )
    codecarbon.add_argument(
        "--cpu-measured",
        action="store_true",
        help="the CPU figures were read from RAPL or powermetrics, not modelled from a TDP "
        "(the file does not say): a ±10 %% CPU band instead of ±50 %%",
    )
    codecarbon.add_argument(
        "--replace",
        action="store_true",
        help="supersede an earlier import of a run whose figures changed (else a conflict)",
    )
    codecarbon.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The ``thermoledger`` parser: `meters.options.build_parser`, ``report`` and ``import``."""
    parser = _meter_parser()
    _add_report_parser(parser)
    _add_import_parser(parser)
    return parser


def from_args(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    env: Mapping[str, str],
    process_entry: bool = False,
) -> Options:
    """`meters.options.from_args`, `ReportOptions` for ``report``, `ImportOptions` for
    ``import``."""
    if args.subcommand == "import":
        return ImportOptions(
            verbose=args.verbose,
            file=args.file,
            project=args.project,
            server=args.server,
            token=args.token,
            token_file=args.token_file,
            dry_run=args.dry_run,
            timezone=args.timezone,
            kind=args.kind,
            cpu_measured=args.cpu_measured,
            replace=args.replace,
        )
    if args.subcommand == "report":
        return ReportOptions(
            verbose=args.verbose,
            run=args.run,
            spool_dir=args.spool_dir,
            json_path=args.json_path,
            html_path=args.html_path,
            grid_intensity_g_per_kwh=args.grid_intensity,
            pue=args.pue,
            tariff_usd_per_kwh=args.tariff,
        )
    return _meter_from_args(args, parser, env=env, process_entry=process_entry)


def _cmd_report(options: ReportOptions, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    # Imported here: the report loads the accounting core's report module, which
    # `thermoledger run` has no use for.
    from .local_report import report_command

    settings = MeterSettings.resolve(env=env, spool_dir=options.spool_dir)
    footprint = FootprintSettings.resolve(
        env=env,
        grid_intensity_g_per_kwh=options.grid_intensity_g_per_kwh,
        pue=options.pue,
        tariff_usd_per_kwh=options.tariff_usd_per_kwh,
    )
    return report_command(
        Path(settings.spool_dir),
        options.run,
        footprint,
        json_path=options.json_path,
        html_path=options.html_path,
        out=out,
        err=err,
    )


def _cmd_import(options: ImportOptions, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    # Imported here: the importer is for this command only.
    from .codecarbon import import_codecarbon

    settings = MeterSettings.resolve(env=env, server=options.server, token=options.token)
    return import_codecarbon(
        Path(options.file),
        project=options.project,
        api_url=settings.api_url,
        token=settings.token,
        out=out,
        err=err,
        dry_run=options.dry_run,
        zone_name=options.timezone,
        cpu_measured=options.cpu_measured,
        kind=options.kind,
        replace=options.replace,
    )


def _with_token(options: Options, env: Mapping[str, str], log: logging.Logger) -> Options:
    """The options with the token resolved from every source, once (one warning at most).

    Downstream settings then see an explicit token and never read a token file again.

    Raises:
        SettingsError: The token file is missing or empty, or two sources conflict.
    """
    if not isinstance(options, MeterOptions | PushOptions | ImportOptions):
        return options
    resolved = resolve_token(token=options.token, token_file=options.token_file, env=env)
    if resolved.warning:
        log.warning("%s", resolved.warning)
    return dataclasses.replace(options, token=resolved.token, token_file=None)


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``thermoledger <command> ...``; returns the exit status.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).
        env: Environment (default: ``os.environ``).
        out: Where results go (default: stdout).
        err: Where status, summaries and logs go (default: stderr).
    """
    process_entry = argv is None  # the `thermoledger` command itself, not a caller in-process
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    parser = suggest_close(build_parser())  # an unknown flag suggests the close one
    try:
        options = from_args(parser.parse_args(argv), parser, env=env, process_entry=process_entry)
    except SettingsError as e:
        err.write(f"thermoledger: {e}\n")
        return _EXIT_USAGE
    log = _logger(err, options.verbose, options.log_format)
    try:
        options = _with_token(options, env, log)
        match options:
            case RunOptions():
                return _cmd_run(options, env, err, log)
            case SidecarOptions():
                return _cmd_sidecar(options, env, err, log)
            case RelayOptions():
                return _cmd_relay(options, err, log)
            case PushOptions():
                return _cmd_push(options, env, out, err)
            case StatusOptions():
                return _cmd_status(options, env, out)
            case ReportOptions():
                return _cmd_report(options, env, out, err)
            case ImportOptions():
                return _cmd_import(options, env, out, err)
    except SettingsError as e:
        err.write(f"thermoledger: {e}\n")
        return _EXIT_USAGE
    raise AssertionError(f"no command for {options!r}")


if __name__ == "__main__":
    raise SystemExit(main())
