"""The ``thermoledger`` command line: its parser, and one typed, frozen options object per command.

`build_parser` declares the flags; `from_args` turns the parsed `argparse.Namespace` into the
command's options (`RunOptions`, `SidecarOptions`, `RelayOptions`, `PushOptions`,
`StatusOptions`) once, so the commands read typed attributes and nothing writes into the
namespace. A flag not given stays None: `meters.settings` then takes ``THERMOLEDGER_*``, then
the defaults. The metrics (Prometheus, OpenTelemetry) and log settings of ``run`` and ``sidecar``
are resolved here (`ObserveSettings`: a bad value raises `SettingsError`, exit 2); a malformed
``--tag`` or a ``run`` without a command is a usage error (`argparse.ArgumentParser.error`,
exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypedDict, cast

from .api import RUN_KINDS
from .k8s import DEFAULT_SOCKET as DEFAULT_POD_RESOURCES_SOCKET
from .logs import LOG_FORMATS, LogFormat
from .settings import BACKENDS, POWER_READINGS, BackendChoice, ObserveSettings, PowerReading

__all__ = [
    "MeterOptions",
    "Options",
    "PushOptions",
    "RelayOptions",
    "RunOptions",
    "SettingsFlags",
    "SidecarOptions",
    "StatusOptions",
    "add_footprint_arguments",
    "build_parser",
    "from_args",
]


@dataclass(frozen=True, kw_only=True)
class Options:
    """What every command takes.

    Attributes:
        verbose: Log what the command does (INFO), not only warnings.
    """

    verbose: bool = False

    @property
    def log_format(self) -> LogFormat:
        """How log lines are written (only ``run`` and ``sidecar`` offer JSON)."""
        return "text"


class SettingsFlags(TypedDict):
    """Keyword arguments of `MeterSettings.resolve` and `meters.api.Meter` (same names)."""

    server: str | None
    token: str | None
    gpus: str | None
    interval_s: float | None
    chunk_s: float | None
    counter_interval_s: float | None
    spool_dir: str | None
    upload_timeout_s: float | None
    power_reading: PowerReading | None
    cpu_tdp_w: float | None


@dataclass(frozen=True, kw_only=True)
class MeterOptions(Options):
    """The flags of the two metering commands, ``run`` and ``sidecar``.

    Attributes:
        gpus: NVML indices or UUIDs, comma-separated (None: all visible).
        interval_s: Sampling interval, s.
        chunk_s: Chunk length, s.
        counter_interval_s: How often counter-only devices (RAPL, hwmon) are read, s.
        server: Service URL (None: ``THERMOLEDGER_SERVER``, else offline).
        token: API token (visible in ``ps``; `meters.cli.main` replaces it with the token
            `meters.settings.resolve_token` finds, from any source).
        token_file: File holding the API token (read once by `meters.cli.main`).
        run_id: Run id (None: from the environment, SLURM, torchrun, or new).
        name: Run name (None: the command's default).
        kind: Run kind, one of `meters.api.RUN_KINDS`.
        tags: Run tags, from ``--tag KEY=VALUE``.
        simulate: Meter simulated devices.
        backend: Device backend (None: auto).
        power_reading: NVML power reading, ``auto``, ``average`` or ``instant`` (None:
            ``THERMOLEDGER_POWER_READING``, else auto).
        cpu_tdp_w: Where nothing is measurable, meter an estimate: CPU utilisation × this TDP, W.
        spool_dir: Spool directory.
        upload_timeout_s: How long to keep uploading at the end, s.
        grid_intensity_g_per_kwh: Location-based grid intensity, gCO2e/kWh.
        pue: Power usage effectiveness, applied to cost and CO2e.
        tariff_usd_per_kwh: Electricity price, USD/kWh.
        quiet: No status line, no summary.
        observe: The metrics endpoint and the log format, resolved with the environment.
        process_entry: This is the ``thermoledger`` process itself (`main` called without
            argv), not a caller in-process: after the final flush, late signals are ignored.
    """

    gpus: str | None = None
    interval_s: float | None = None
    chunk_s: float | None = None
    counter_interval_s: float | None = None
    server: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    run_id: str | None = None
    name: str | None = None
    kind: str = "training"
    tags: Mapping[str, str] = field(default_factory=dict)
    simulate: bool = False
    backend: BackendChoice | None = None
    power_reading: PowerReading | None = None
    cpu_tdp_w: float | None = None
    spool_dir: str | None = None
    upload_timeout_s: float | None = None
    grid_intensity_g_per_kwh: float | None = None
    pue: float | None = None
    tariff_usd_per_kwh: float | None = None
    quiet: bool = False
    observe: ObserveSettings = field(default_factory=ObserveSettings)
    process_entry: bool = False

    @property
    def log_format(self) -> LogFormat:
        return self.observe.log_format

    def settings_flags(self) -> SettingsFlags:
        """The flags that `MeterSettings.resolve` and `meters.api.Meter` both take."""
        return SettingsFlags(
            server=self.server,
            token=self.token,
            gpus=self.gpus,
            interval_s=self.interval_s,
            chunk_s=self.chunk_s,
            counter_interval_s=self.counter_interval_s,
            spool_dir=self.spool_dir,
            upload_timeout_s=self.upload_timeout_s,
            power_reading=self.power_reading,
            cpu_tdp_w=self.cpu_tdp_w,
        )

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        parser: argparse.ArgumentParser,
        *,
        env: Mapping[str, str],
        process_entry: bool = False,
    ) -> Self:
        """The options of ``args``, with the command's own fields (`_own_fields`)."""
        observe = ObserveSettings.resolve(  # first: a bad value here exits 2 before a bad --tag
            env=env,
            metrics_port=args.metrics_port,
            metrics_addr=args.metrics_addr,
            log_format=args.log_format,
            otel=args.otel,
            otel_endpoint=args.otel_endpoint,
            otel_interval_s=args.otel_interval,
        )
        tags = _tags(args.tag, parser)
        return cls(
            verbose=args.verbose,
            gpus=args.gpus,
            interval_s=args.interval,
            chunk_s=args.chunk,
            counter_interval_s=args.counter_interval,
            server=args.server,
            token=args.token,
            token_file=args.token_file,
            run_id=args.run_id,
            name=args.name,
            kind=args.kind,
            tags=tags,
            simulate=args.simulate,
            backend=cast(BackendChoice | None, args.backend),  # argparse checked the choice
            power_reading=cast(PowerReading | None, args.power_reading),  # argparse checked it
            cpu_tdp_w=args.cpu_tdp_w,
            spool_dir=args.spool_dir,
            upload_timeout_s=args.upload_timeout,
            grid_intensity_g_per_kwh=args.grid_intensity,
            pue=args.pue,
            tariff_usd_per_kwh=args.tariff,
            quiet=args.quiet,
            observe=observe,
            process_entry=process_entry,
            **cls._own_fields(args, parser),
        )

    @classmethod
    def _own_fields(
        cls, args: argparse.Namespace, parser: argparse.ArgumentParser
    ) -> dict[str, Any]:
        """The fields a subclass adds, from ``args``."""
        return {}


@dataclass(frozen=True, kw_only=True)
class RunOptions(MeterOptions):
    """``thermoledger run [options] -- CMD ...``.

    Attributes:
        command: The command to meter (at least its program).
    """

    command: tuple[str, ...]

    @classmethod
    def _own_fields(
        cls, args: argparse.Namespace, parser: argparse.ArgumentParser
    ) -> dict[str, Any]:
        command: list[str] = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            parser.error(
                "run: give the command to meter after --, e.g. thermoledger run -- python x.py"
            )
        return {"command": tuple(command)}


@dataclass(frozen=True, kw_only=True)
class SidecarOptions(MeterOptions):
    """``thermoledger sidecar``: meter this node until SIGTERM.

    Attributes:
        attribute_pods: One run per pod holding GPUs on the node (`meters.pods`).
        pod_resources_socket: The kubelet's PodResources socket, or a relay's.
        pod_poll_s: Seconds between two questions to the kubelet.
        node: The node's name.
    """

    attribute_pods: bool = False
    pod_resources_socket: str | None = None
    pod_poll_s: float | None = None
    node: str | None = None

    @classmethod
    def _own_fields(
        cls, args: argparse.Namespace, parser: argparse.ArgumentParser
    ) -> dict[str, Any]:
        return {
            "attribute_pods": args.attribute_pods,
            "pod_resources_socket": args.pod_resources_socket,
            "pod_poll_s": args.pod_poll,
            "node": args.node,
        }


@dataclass(frozen=True, kw_only=True)
class RelayOptions(Options):
    """``thermoledger pod-resources-relay``.

    Attributes:
        socket: The kubelet's socket.
        listen: The socket to offer.
        mode: Permission bits of ``listen``.
    """

    socket: str
    listen: str
    mode: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        return cls(verbose=args.verbose, socket=args.socket, listen=args.listen, mode=args.mode)


@dataclass(frozen=True, kw_only=True)
class PushOptions(Options):
    """``thermoledger push``.

    Attributes:
        server: Service URL (None: ``THERMOLEDGER_SERVER``).
        token: API token (visible in ``ps``).
        token_file: File holding the API token.
        spool_dir: Spool directory.
        run_id: Only this run (None: all).
        retry_rejected: Try chunks the service refused again.
        timeout_s: Give up after this long, s.
    """

    server: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    spool_dir: str | None = None
    run_id: str | None = None
    retry_rejected: bool = False
    timeout_s: float = 60.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        return cls(
            verbose=args.verbose,
            server=args.server,
            token=args.token,
            token_file=args.token_file,
            spool_dir=args.spool_dir,
            run_id=args.run_id,
            retry_rejected=args.retry_rejected,
            timeout_s=args.timeout,
        )


@dataclass(frozen=True, kw_only=True)
class StatusOptions(Options):
    """``thermoledger status``.

    Attributes:
        spool_dir: Spool directory.
    """

    spool_dir: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        return cls(verbose=args.verbose, spool_dir=args.spool_dir)


def from_args(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    env: Mapping[str, str],
    process_entry: bool = False,
) -> Options:
    """The options of the command ``args`` names (parsed by ``parser``, from `build_parser`).

    Args:
        args: What ``parser.parse_args`` returned.
        parser: For usage errors (exit 2).
        env: The environment, for the metrics and log settings.
        process_entry: This is the ``thermoledger`` process itself.

    Raises:
        SettingsError: A bad metrics or log setting (flag or environment).
    """
    subcommand: str = args.subcommand
    match subcommand:
        case "run":
            return RunOptions.from_args(args, parser, env=env, process_entry=process_entry)
        case "sidecar":
            return SidecarOptions.from_args(args, parser, env=env, process_entry=process_entry)
        case "pod-resources-relay":
            return RelayOptions.from_args(args)
        case "push":
            return PushOptions.from_args(args)
        case "status":
            return StatusOptions.from_args(args)
    raise ValueError(f"no such command: {subcommand!r}")  # argparse refuses it first


def _tags(raw: Sequence[str] | None, parser: argparse.ArgumentParser) -> dict[str, str]:
    tags = {}
    for item in raw or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--tag needs key=value, got {item!r}")
        tags[key] = value
    return tags


# -- parser -------------------------------------------------------------------------------------


def _meter_options(parser: argparse.ArgumentParser, *, job: bool) -> None:
    parser.add_argument("--gpus", help="NVML indices or UUIDs, e.g. 0,1 (default: all visible)")
    parser.add_argument("--interval", type=float, help="sampling interval, s (default 0.1)")
    parser.add_argument("--chunk", type=float, help="chunk length, s (default 10)")
    parser.add_argument(
        "--counter-interval",
        type=float,
        help="how often counter-only devices (RAPL, hwmon energy) are read, s (default 1; their "
        "energy is exact from the counter at any rate; 0: every tick)",
    )
    parser.add_argument(
        "--server", help="service URL (default: THERMOLEDGER_SERVER; none: offline)"
    )
    _token_options(parser, job=job)
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
        "--backend",
        choices=BACKENDS,
        help="device backend (default: auto: every real domain found, NVIDIA GPUs and CPU "
        "packages and DRAM; never simulated devices)",
    )
    parser.add_argument(
        "--cpu-tdp-w",
        type=float,
        metavar="W",
        help="where nothing is measurable, meter a labelled estimate: CPU utilisation × this "
        "TDP (default: THERMOLEDGER_CPU_TDP_W; unset: meter nothing there)",
    )
    parser.add_argument(
        "--power-reading",
        choices=POWER_READINGS,
        help="which NVML power reading to integrate where energy comes from power: auto, the "
        "driver's 1 s average where a GPU has one (else instantaneous); average, the same, "
        "warning about GPUs without one; instant, point samples, which alias loads not in step "
        "with the tick (default: THERMOLEDGER_POWER_READING, else auto)",
    )
    parser.add_argument("--spool-dir", help="spool directory (default: THERMOLEDGER_SPOOL_DIR)")
    parser.add_argument(
        "--upload-timeout", type=float, help="seconds to keep uploading at the end (default 30)"
    )
    add_footprint_arguments(parser)
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
        help="interface for the metrics (default: THERMOLEDGER_METRICS_ADDR, else 127.0.0.1: "
        "this host only; 0.0.0.0 for Prometheus to scrape from outside)",
    )
    parser.add_argument(
        "--otel",
        action="store_true",
        help="export OpenTelemetry metrics (hw.energy, hw.power) over OTLP/HTTP to "
        "--otel-endpoint, else OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, "
        "else localhost:4318 (default: THERMOLEDGER_OTEL; needs the [otel] extra)",
    )
    parser.add_argument(
        "--otel-endpoint",
        metavar="URL",
        help="export OpenTelemetry metrics to this OTLP/HTTP receiver, e.g. "
        "http://otel-collector:4318 (/v1/metrics is appended unless given; default: "
        "THERMOLEDGER_OTEL_ENDPOINT; unset: no export unless --otel)",
    )
    parser.add_argument(
        "--otel-interval",
        type=float,
        metavar="S",
        help="seconds between two OpenTelemetry exports (default: THERMOLEDGER_OTEL_INTERVAL_S, "
        "else 15; the last one is sent when the meter stops)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text, or json: one object per line with the run id "
        "(default: THERMOLEDGER_LOG_FORMAT, else text)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no status line, no summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the meter does")


def _token_options(parser: argparse.ArgumentParser, *, job: bool) -> None:
    """``--token`` and ``--token-file``, one or the other (`meters.settings.resolve_token`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--token",
        help="API token. Visible to every user of the host in `ps` while the command runs: "
        "prefer --token-file or THERMOLEDGER_TOKEN (default: THERMOLEDGER_TOKEN, else the file "
        "THERMOLEDGER_TOKEN_FILE)",
    )
    hidden = "; the job never sees the token" if job else ""
    group.add_argument(
        "--token-file",
        metavar="PATH",
        help="read the API token from this file (mode 0600; one readable by other users gets a "
        f"warning, a missing or empty one is an error){hidden} "
        "(default: THERMOLEDGER_TOKEN_FILE)",
    )


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


def add_footprint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--grid-intensity``, ``--pue`` and ``--tariff``: what turns a run's energy into CO2e and
    cost in a summary or a local report (nothing is assumed without them)."""
    parser.add_argument(
        "--grid-intensity",
        type=float,
        metavar="G_PER_KWH",
        help="location-based grid intensity of your region, gCO2e/kWh, for a CO2e figure "
        "(default: THERMOLEDGER_GRID_INTENSITY_G_PER_KWH; unset: none)",
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
        help="electricity price, USD/kWh, for a cost figure "
        "(default: THERMOLEDGER_TARIFF_USD_PER_KWH; unset: none)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thermoledger",
        description="Meter the energy of ML jobs and send it to a thermoledger service.",
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="meter a command: thermoledger run [options] -- CMD ...")
    _meter_options(run, job=True)
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    sidecar = sub.add_parser("sidecar", help="meter this node until SIGTERM (pods, SLURM)")
    _meter_options(sidecar, job=False)
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
    _token_options(push, job=False)
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
