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
  work but does not sample the node a second time).
* ``thermoledger sidecar --run-id ID`` meters until SIGTERM/SIGINT, then flushes, marks the run
  finished, uploads what it can and exits 0: for pods and SLURM prolog/epilog. With
  ``--attribute-pods`` (a Kubernetes node meter) it keeps one run per pod holding GPUs on the
  node and one for the unallocated GPUs, from the kubelet's PodResources API (`meters.pods`).
* ``thermoledger pod-resources-relay --listen PATH`` offers the kubelet's root-only
  PodResources socket on a socket an unprivileged meter may use (`meters.k8s`), until SIGTERM.
* ``thermoledger push`` sends everything pending in the spool (offline runs); exits 1 if
  anything could not be sent, after a summary.
* ``thermoledger status`` lists the spool's runs with pending and acknowledged chunk counts.

Options come from flags, then ``THERMOLEDGER_*`` (`meters.settings`). A metering failure never
stops the job: the wrapper then runs the child unmetered and says so.

With a grid intensity (``--grid-intensity``) and/or a tariff (``--tariff``) configured, the
summary of ``run`` and ``sidecar`` also gives the run's location-based CO2e and energy cost, with
the PUE (``--pue``, default 1.0: IT energy only) applied and stated, and the band carried through
(low energy → low figure). Plain arithmetic, the accounting core's model without pint:
``facility kWh = J / 3.6e6 × PUE``; CO2e g = facility kWh × g/kWh; USD = facility kWh × USD/kWh.
Nothing is guessed: no region, no default intensity, no default price.

Observing the meter itself (``run`` and ``sidecar``): ``--metrics-port PORT`` serves Prometheus
metrics (`meters.metrics`: power, energy, samples, spool depth, upload failures), computed only
when scraped; ``--log-format json`` writes every log line, and the summary, as one JSON object
per line with the run id (`meters.logs`). Both are off by default (`ObserveSettings`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final, TextIO

from .api import RUN_KINDS, Meter
from .child import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, FORWARDED_SIGNALS, Child, finishing
from .k8s import DEFAULT_SOCKET as DEFAULT_POD_RESOURCES_SOCKET
from .logs import LOG_FORMATS, LogFormat, RunIdFilter, json_handler
from .runid import (
    NODE_METER_ENV,
    RUN_ID_ENV,
    canonical_run_id,
    node_meter_mark,
    resolve_run_id,
)
from .settings import (
    BACKENDS,
    ENV_PREFIX,
    FootprintSettings,
    MeterSettings,
    ObserveSettings,
    SettingsError,
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

__all__ = ["FORWARDED_SIGNALS", "format_energy", "main", "render_footprint", "render_summary"]

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


# -- the run command ----------------------------------------------------------------------------


def _child_env(
    env: Mapping[str, str], meter: Meter, settings: MeterSettings | None
) -> dict[str, str]:
    out = dict(env)
    if meter.run_id:
        out[RUN_ID_ENV] = meter.run_id
    if settings is not None:
        out[ENV_PREFIX + "SPOOL_DIR"] = str(settings.spool_dir)
    if meter.sampling:
        out[NODE_METER_ENV] = node_meter_mark(meter.host)
    return out


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


# -- commands -----------------------------------------------------------------------------------


def _tags(raw: Sequence[str] | None, parser: argparse.ArgumentParser) -> dict[str, str]:
    tags = {}
    for item in raw or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--tag needs key=value, got {item!r}")
        tags[key] = value
    return tags


def _meter(
    args: argparse.Namespace, env: Mapping[str, str], log: logging.Logger, name: str
) -> Meter:
    meter = Meter(
        name,
        kind=args.kind,
        run_id=args.run_id,
        server=args.server,
        token=args.token,
        gpus=args.gpus,
        interval_s=args.interval,
        chunk_s=args.chunk,
        spool_dir=args.spool_dir,
        tags=args.tags,
        simulate=args.simulate,
        backend=args.backend,
        upload_timeout_s=args.upload_timeout,
        env=env,
        logger=log,
        upload_transport=args.upload_transport,
    )
    for handler in log.handlers:
        for f in handler.filters:
            if isinstance(f, RunIdFilter):
                f.run_id = lambda: meter.run_id  # resolved as the meter starts
    return meter


def _observe(args: argparse.Namespace, env: Mapping[str, str]) -> ObserveSettings:
    """The metrics and log settings of ``run`` / ``sidecar`` (defaults for other commands)."""
    if not hasattr(args, "metrics_port"):
        return ObserveSettings()
    return ObserveSettings.resolve(
        env=env,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        log_format=args.log_format,
    )


@contextlib.contextmanager
def _metrics(args: argparse.Namespace, meter: Meter, log: logging.Logger) -> Iterator[None]:
    """Serve the meter's metrics while the block runs, when a port is configured."""
    observe: ObserveSettings = args.observe
    server = None
    if observe.metrics_port is not None and meter.state not in ("new", "disabled"):
        from .metrics import serve_meter_metrics

        server = serve_meter_metrics(
            meter,
            port=observe.metrics_port,
            address=observe.metrics_addr,
            transport=args.upload_transport,
            logger=log,
        )
    try:
        yield
    finally:
        if server is not None:
            server.close()


def _footprint(args: argparse.Namespace, env: Mapping[str, str]) -> FootprintSettings:
    return FootprintSettings.resolve(
        env=env,
        grid_intensity_g_per_kwh=args.grid_intensity,
        pue=args.pue,
        tariff_usd_per_kwh=args.tariff,
    )


def _cmd_run(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    env: Mapping[str, str],
    err: TextIO,
    log: logging.Logger,
) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error(
            "run: give the command to meter after --, e.g. thermoledger run -- python x.py"
        )
    MeterSettings.resolve(  # refuse bad flags before anything runs (exit 2)
        env=env,
        server=args.server,
        token=args.token,
        spool_dir=args.spool_dir,
        interval_s=args.interval,
        chunk_s=args.chunk,
        gpus=args.gpus,
        backend=args.backend,
        upload_timeout_s=args.upload_timeout,
    )
    footprint = _footprint(args, env)
    with Child() as child:
        meter = _meter(args, env, log, args.name or _default_name(command)).start()
        if meter.state == "disabled":
            log.error("the job runs unmetered")
        try:
            child.spawn(command, _child_env(env, meter, meter.settings))
        except OSError as e:
            code = EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else EXIT_NOT_EXECUTABLE
            err.write(f"thermoledger: cannot run {command[0]!r}: {e.strerror or e}\n")
            meter.stop(exit_code=code, failed=True)
            return code
        status = StatusLine(err, meter, wanted=not args.quiet and args.observe.log_format == "text")
        with _metrics(args, meter, log):
            code = child.wait(tick=status.refresh)
    status.clear()
    with finishing(meter.abort_upload, log, linger=args.process_entry):
        summary = meter.stop(exit_code=code, failed=code != 0)
    if not args.quiet and meter.state != "disabled":
        verb = "finished" if code == 0 else "failed"
        write_summary(err, log, meter, summary, verb, code, footprint, args.verbose)
    return code


def _cmd_sidecar(
    args: argparse.Namespace, env: Mapping[str, str], err: TextIO, log: logging.Logger
) -> int:
    if args.attribute_pods:
        return _cmd_sidecar_pods(args, env, err, log)
    footprint = _footprint(args, env)  # a bad value exits 2 before anything is metered
    meter = _meter(args, env, log, args.name or "sidecar")
    # Only record the signal: see meters.sampler.sample_until_signalled.
    with Caught() as stop:
        meter.start()
        if meter.state in ("idle", "disabled"):
            log.warning("sidecar: this process meters nothing; waiting for SIGTERM anyway")
        with _metrics(args, meter, log):
            stop.wait()
    with finishing(meter.abort_upload, log, linger=args.process_entry):
        summary = meter.stop(exit_code=None, failed=False)
    if not args.quiet and meter.sampling:
        verb = f"stopped by {stop.first}"
        write_summary(err, log, meter, summary, verb, None, footprint, args.verbose)
    return 0


def _cmd_sidecar_pods(
    args: argparse.Namespace, env: Mapping[str, str], err: TextIO, log: logging.Logger
) -> int:
    """``sidecar --attribute-pods``: `meters.pods.PodAttribution` until SIGTERM/SIGINT."""
    from .errors import MeterError
    from .pods import (
        PodAttribution,
        PodSettings,
        render_attribution,
        serve_attribution_metrics,
    )

    settings = MeterSettings.resolve(
        env=env,
        server=args.server,
        token=args.token,
        spool_dir=args.spool_dir,
        interval_s=args.interval,
        chunk_s=args.chunk,
        gpus=args.gpus,
        backend="simulated" if args.simulate else args.backend,
        upload_timeout_s=args.upload_timeout,
    )
    pods = PodSettings.resolve(
        env=env, socket_path=args.pod_resources_socket, poll_s=args.pod_poll, node=args.node
    )
    identity = resolve_run_id(args.run_id, env)
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
            name=args.name,
            kind=args.kind,
            tags=args.tags,
            env=env,
            logger=log,
            upload_transport=args.upload_transport,
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
    with Caught(then=cut_upload, ignore_after=args.process_entry) as stop:
        try:
            attribution.start()
        except MeterError as e:
            log.error("pod attribution disabled: %s; waiting for SIGTERM", e)
            stop.wait()
            attribution.stop()
            return 0
        observe: ObserveSettings = args.observe
        server = (
            serve_attribution_metrics(
                attribution,
                port=observe.metrics_port,
                address=observe.metrics_addr,
                transport=args.upload_transport,
                logger=log,
            )
            if observe.metrics_port is not None
            else None
        )
        try:
            attribution.run(lambda: bool(stop))
        finally:
            if server is not None:
                server.close()
        finishing_.append(True)
        totals = attribution.stop()
    if not args.quiet:
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


def _cmd_relay(args: argparse.Namespace, err: TextIO, log: logging.Logger) -> int:
    """``pod-resources-relay``: `meters.k8s.PodResourcesRelay` until SIGTERM/SIGINT."""
    from .k8s import PodResourcesError, PodResourcesRelay

    with Caught() as stop:
        try:
            relay = PodResourcesRelay(args.socket, args.listen, mode=args.mode, logger=log)
            relay.start()
        except PodResourcesError as e:
            err.write(f"thermoledger: {e}\n")
            return 1
        try:
            stop.wait()
        finally:
            relay.close()
    return 0


def _cmd_push(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    from .control import CONTROL_FILENAME, ControlStore
    from .spool import SPOOL_FILENAME, Spool
    from .uploader import Uploader

    settings = MeterSettings.resolve(
        env=env, server=args.server, token=args.token, spool_dir=args.spool_dir
    )
    if settings.api_url is None:
        err.write("thermoledger push: no server: pass --server URL or set THERMOLEDGER_SERVER\n")
        return _EXIT_USAGE
    directory = settings.spool_dir
    if not (directory / SPOOL_FILENAME).exists() and not (directory / CONTROL_FILENAME).exists():
        out.write(f"nothing to push: no spool in {directory}\n")
        return 0
    run_ids = None if args.run_id is None else [canonical_run_id(args.run_id)]
    with Spool.in_directory(directory) as spool, ControlStore.in_directory(directory) as control:
        if args.retry_rejected:
            freed = control.clear_rejections(run_ids[0] if run_ids else None)
            out.write(f"retrying {freed} rejected chunk(s)\n")
        with Uploader(
            spool, control, api_url=settings.api_url, token=settings.token, run_ids=run_ids
        ) as uploader:
            result = uploader.drain(timeout_s=args.timeout)
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
    if result.refused:
        out.write("  rejected chunks stay in the spool; see the log, then --retry-rejected\n")
    return 0 if result.complete else 1


def _cmd_status(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from .control import CONTROL_FILENAME, ControlStore
    from .spool import SPOOL_FILENAME, Spool

    settings = MeterSettings.resolve(env=env, spool_dir=args.spool_dir)
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


# -- parser -------------------------------------------------------------------------------------


def _meter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", help="NVML indices or UUIDs, e.g. 0,1 (default: all visible)")
    parser.add_argument("--interval", type=float, help="sampling interval, s (default 0.1)")
    parser.add_argument("--chunk", type=float, help="chunk length, s (default 10)")
    parser.add_argument(
        "--server", help="service URL (default: THERMOLEDGER_SERVER; none: offline)"
    )
    parser.add_argument("--token", help="API token (default: THERMOLEDGER_TOKEN)")
    parser.add_argument(
        "--run-id", help="run id (default: THERMOLEDGER_RUN_ID, SLURM, torchrun, new)"
    )
    parser.add_argument("--name", help="run name (default: from the command)")
    parser.add_argument("--kind", default="training", choices=RUN_KINDS, help="default: training")
    parser.add_argument("--tag", action="append", metavar="KEY=VALUE", help="run tag (repeatable)")
    parser.add_argument(
        "--simulate", action="store_true", help="meter simulated devices (labelled)"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, help="device backend (default: auto: NVML, else simulated)"
    )
    parser.add_argument("--spool-dir", help="spool directory (default: THERMOLEDGER_SPOOL_DIR)")
    parser.add_argument(
        "--upload-timeout", type=float, help="seconds to keep uploading at the end (default 30)"
    )
    parser.add_argument(
        "--grid-intensity",
        type=float,
        metavar="G_PER_KWH",
        help="location-based grid intensity of your region, gCO2e/kWh, for a CO2e line in the "
        "summary (default: THERMOLEDGER_GRID_INTENSITY_G_PER_KWH; unset: none)",
    )
    parser.add_argument(
        "--pue",
        type=float,
        help="power usage effectiveness, >= 1, applied to cost and CO2e "
        "(default: THERMOLEDGER_PUE, else 1.0: IT energy only)",
    )
    parser.add_argument(
        "--tariff",
        type=float,
        metavar="USD_PER_KWH",
        help="electricity price, USD/kWh, for a cost line in the summary "
        "(default: THERMOLEDGER_TARIFF_USD_PER_KWH; unset: none)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port, 0 for any free one "
        "(default: THERMOLEDGER_METRICS_PORT; unset: none)",
    )
    parser.add_argument(
        "--metrics-addr",
        metavar="ADDR",
        help="interface for the metrics (default: THERMOLEDGER_METRICS_ADDR, else 0.0.0.0)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text, or json: one object per line with the run id "
        "(default: THERMOLEDGER_LOG_FORMAT, else text)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no status line, no summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the meter does")


def _pod_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kubernetes node meter")
    group.add_argument(
        "--attribute-pods",
        action="store_true",
        help="one run per pod holding GPUs on this node and one for the unallocated GPUs, from "
        "the kubelet's PodResources API (run ids derived from --run-id)",
    )
    group.add_argument(
        "--pod-resources-socket",
        metavar="PATH",
        help="the kubelet's PodResources socket, or a relay's (default: "
        f"THERMOLEDGER_POD_RESOURCES_SOCKET, else {DEFAULT_POD_RESOURCES_SOCKET})",
    )
    group.add_argument(
        "--pod-poll",
        type=float,
        metavar="S",
        help="seconds between two questions to the kubelet (default: THERMOLEDGER_POD_POLL_S, "
        "else 5)",
    )
    group.add_argument(
        "--node",
        metavar="NAME",
        help="the node's name (default: THERMOLEDGER_NODE_NAME, else the host name)",
    )


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"not a permission mode: {text!r}")
    return mode


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thermoledger",
        description="Meter the energy of ML jobs and send it to a thermoledger service.",
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="meter a command: thermoledger run [options] -- CMD ...")
    _meter_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    sidecar = sub.add_parser("sidecar", help="meter this node until SIGTERM (pods, SLURM)")
    _meter_options(sidecar)
    _pod_options(sidecar)
    relay = sub.add_parser(
        "pod-resources-relay",
        help="offer the kubelet's root-only PodResources socket to an unprivileged meter",
    )
    relay.add_argument(
        "--socket",
        default=DEFAULT_POD_RESOURCES_SOCKET,
        help="the kubelet's socket (default: %(default)s)",
    )
    relay.add_argument(
        "--listen", required=True, help="the socket to offer (its directory must exist)"
    )
    relay.add_argument(
        "--mode",
        type=_octal_mode,
        default=0o660,
        help="permission bits of --listen, octal (default 0660: owner and group)",
    )
    relay.add_argument("-v", "--verbose", action="store_true", help="log connection problems")
    push = sub.add_parser("push", help="send everything pending in the spool")
    push.add_argument("--server", help="service URL (default: THERMOLEDGER_SERVER)")
    push.add_argument("--token", help="API token (default: THERMOLEDGER_TOKEN)")
    push.add_argument("--spool-dir", help="spool directory (default: THERMOLEDGER_SPOOL_DIR)")
    push.add_argument("--run-id", help="only this run")
    push.add_argument(
        "--retry-rejected", action="store_true", help="try chunks the service refused again"
    )
    push.add_argument("--timeout", type=float, default=60.0, help="give up after s (default 60)")
    push.add_argument("-v", "--verbose", action="store_true", help="log each problem")
    status = sub.add_parser("status", help="what the spool holds")
    status.add_argument("--spool-dir", help="spool directory (default: THERMOLEDGER_SPOOL_DIR)")
    status.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    return parser


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
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.process_entry = process_entry
    try:
        args.observe = _observe(args, env)
    except SettingsError as e:
        err.write(f"thermoledger: {e}\n")
        return _EXIT_USAGE
    log = _logger(err, getattr(args, "verbose", False), args.observe.log_format)
    args.upload_transport = None
    if args.observe.metrics_port is not None:
        from .metrics import CountingTransport

        args.upload_transport = CountingTransport()
    if hasattr(args, "tag"):
        args.tags = _tags(args.tag, parser)
    commands: dict[str, Callable[[], int]] = {
        "run": lambda: _cmd_run(args, parser, env, err, log),
        "sidecar": lambda: _cmd_sidecar(args, env, err, log),
        "pod-resources-relay": lambda: _cmd_relay(args, err, log),
        "push": lambda: _cmd_push(args, env, out, err),
        "status": lambda: _cmd_status(args, env, out),
    }
    try:
        return commands[args.subcommand]()
    except SettingsError as e:
        err.write(f"thermoledger: {e}\n")
        return _EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
