"""The meter's settings: a small frozen dataclass from explicit values, then ``THERMOLEDGER_*``.

Not pydantic-settings (the service's choice): the meter runs inside training pods and must stay
light, so this is the standard library only. Precedence, per field: an explicit value (a CLI
flag, a `meters.api.Meter` argument) > the environment > the default. Built on demand by
`MeterSettings.resolve`, never at import.

Environment variables::

    THERMOLEDGER_SERVER             service base URL, e.g. http://ledger:8000 (unset: offline)
    THERMOLEDGER_TOKEN              API token with the ``ingest`` scope
    THERMOLEDGER_TOKEN_FILE         a file holding that token instead (mode 0600: a file other
                                    users can read gets a warning; missing or empty: an error)
    THERMOLEDGER_SPOOL_DIR          spool directory (default: $XDG_STATE_HOME/thermoledger,
                                    else ~/.local/state/thermoledger)
    THERMOLEDGER_INTERVAL_S         sampling interval, s (default 0.1)
    THERMOLEDGER_CHUNK_S            chunk length, s (default 10)
    THERMOLEDGER_GPUS               GPU selection, comma-separated NVML indices or UUIDs
    THERMOLEDGER_BACKEND            auto | nvml | amdsmi | rapl | hwmon | simulated (default
                                    auto: every real domain found; see
                                    `meters.discovery.open_backend`)
    THERMOLEDGER_POWER_READING      auto | average | instant (default auto): which NVML power
                                    reading to integrate; see below
    THERMOLEDGER_UPLOAD_TIMEOUT_S   how long a finishing meter tries to upload, s (default 30)
    THERMOLEDGER_CPU_TDP_W          where nothing is measurable, meter a labelled estimate:
                                    CPU utilisation × this TDP, W (unset: meter nothing there)
    THERMOLEDGER_SYSFS_ROOT         where sysfs is mounted (default /sys; a node meter in a
                                    container may see the host's at /host/sys): powercap and
                                    hwmon are read under it

Which power reading (``--power-reading``, ``Meter(power_reading=...)``, the variable above)
    Where a GPU has no energy counter (before Volta), or for a chunk in which the counter did
    not answer, energy comes from integrating power readings. NVML offers two: the driver's
    **average** over the last second (``NVML_FI_DEV_POWER_AVERAGE``, or
    ``nvmlDeviceGetPowerUsage`` on Ampere and newer except GA100), which sees all of the time and
    whose lag the accounting core corrects; and the **instantaneous** reading, a point sample
    that aliases loads not in step with the sampling tick (a 60/600 W square wave of duty 0.3
    and period 0.25 s read every 0.1 s: ±24 % over a minute, against ±0.2 % for the average,
    in ``tests/meters/test_accuracy.py``). ``auto`` (the default) takes the average wherever
    the GPU offers one and the instantaneous reading elsewhere; ``average`` does the same but
    warns about every GPU that has no average; ``instant`` takes the instantaneous reading
    wherever there is one. What each GPU got is in its ``DeviceInfo.power_method`` and note.

The wrapper's summary also prices and converts the energy when told how (`FootprintSettings`);
nothing here guesses a region, a grid intensity or a tariff::

    THERMOLEDGER_GRID_INTENSITY_G_PER_KWH   location-based grid intensity, gCO2e/kWh (unset: no
                                            CO2e)
    THERMOLEDGER_PUE                        power usage effectiveness, >= 1 (default 1.0: IT energy
                                            only, and the summary says so)
    THERMOLEDGER_TARIFF_USD_PER_KWH         electricity tariff, USD/kWh (unset: no cost)

How the ``thermoledger`` process itself is observed (`ObserveSettings`; off unless set)::

    THERMOLEDGER_METRICS_PORT   serve Prometheus metrics on this TCP port (`meters.metrics`)
    THERMOLEDGER_METRICS_ADDR   interface for them (default 127.0.0.1: this host only; a pod
                                scraped from outside passes 0.0.0.0 explicitly)
    THERMOLEDGER_LOG_FORMAT     text (default) | json: JSON lines with the run id (`meters.logs`)
    THERMOLEDGER_OTEL           1 | true: export OpenTelemetry metrics over OTLP/HTTP
                                (`meters.otel`), to the endpoint below, else to the standard
                                OTEL_EXPORTER_OTLP_METRICS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT,
                                else http://localhost:4318/v1/metrics
    THERMOLEDGER_OTEL_ENDPOINT  export them to this OTLP/HTTP URL (implies THERMOLEDGER_OTEL)
    THERMOLEDGER_OTEL_INTERVAL_S  seconds between two exports (default 15)

The standard ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables alone never turn the export on: a job's
environment may carry them for its own telemetry.

Where the token comes from (`resolve_token`)
    ``--token``, else ``--token-file`` (not both), else ``THERMOLEDGER_TOKEN``, else
    ``THERMOLEDGER_TOKEN_FILE`` (not both either: which one was meant is not guessed). A token
    on the command line is visible to every user of the host in ``ps``; a file or the
    environment is not. ``thermoledger run`` passes neither the token nor these variables to
    the job it wraps (`meters.cli`).

The run id has its own resolution (`meters.runid`), since it is shared by every node of a job.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeVar
from urllib.parse import urlsplit

from .errors import MeterError
from .logs import LOG_FORMATS, LogFormat

__all__ = [
    "API_PREFIX",
    "BACKENDS",
    "DEFAULT_METRICS_ADDR",
    "DEFAULT_OTEL_ENDPOINT",
    "DEFAULT_OTEL_INTERVAL_S",
    "ENV_PREFIX",
    "POWER_READINGS",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "BackendChoice",
    "FootprintSettings",
    "MeterSettings",
    "ObserveSettings",
    "PowerReading",
    "ResolvedToken",
    "SettingsError",
    "api_base_url",
    "check_power_reading",
    "default_spool_dir",
    "otlp_metrics_url",
    "parse_gpus",
    "read_token_file",
    "resolve_token",
]

ENV_PREFIX: Final = "THERMOLEDGER_"
API_PREFIX: Final = "/api/v1"
DEFAULT_METRICS_ADDR: Final = "127.0.0.1"
"""Where the meter's metrics endpoint listens unless told otherwise: this host only."""
OTLP_METRICS_PATH: Final = "/v1/metrics"
DEFAULT_OTEL_ENDPOINT: Final = "http://localhost:4318" + OTLP_METRICS_PATH
"""Where OpenTelemetry metrics go when the export is asked for with no endpoint (OTLP's own
default: a collector on this host)."""
DEFAULT_OTEL_INTERVAL_S: Final = 15.0
TOKEN_ENV: Final = ENV_PREFIX + "TOKEN"
TOKEN_FILE_ENV: Final = ENV_PREFIX + "TOKEN_FILE"
_MAX_TOKEN_FILE_BYTES: Final = 64 * 1024
"""A token file larger than this is not a token file (a wrong path, not a secret to send)."""
_LOG = logging.getLogger(__name__)
_N = TypeVar("_N", int, float)
BackendChoice = Literal["auto", "nvml", "amdsmi", "rapl", "hwmon", "simulated"]
BACKENDS: Final[tuple[BackendChoice, ...]] = (
    "auto",
    "nvml",
    "amdsmi",
    "rapl",
    "hwmon",
    "simulated",
)
PowerReading = Literal["auto", "average", "instant"]
"""Which NVML power reading to integrate: the driver's 1 s average where the GPU has one
(``auto``, the default), the same with a warning for every GPU without one (``average``), or the
instantaneous reading (``instant``)."""
POWER_READINGS: Final[tuple[PowerReading, ...]] = ("auto", "average", "instant")


class SettingsError(ValueError, MeterError):
    """A setting has a value the meter cannot use; the message names the setting and its source."""


def default_spool_dir(env: Mapping[str, str] | None = None) -> Path:
    """The spool directory: ``$THERMOLEDGER_SPOOL_DIR``, else the user's XDG state directory.

    Args:
        env: Environment to read (default: ``os.environ``).

    Returns:
        ``$THERMOLEDGER_SPOOL_DIR``, else ``$XDG_STATE_HOME/thermoledger``, else
        ``~/.local/state/thermoledger`` (the XDG default; no platformdirs needed).
    """
    env = os.environ if env is None else env
    explicit = env.get(ENV_PREFIX + "SPOOL_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    state = env.get("XDG_STATE_HOME", "").strip()
    # XDG: a relative XDG_STATE_HOME is invalid and must be ignored.
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "thermoledger"


def api_base_url(server: str) -> str:
    """The API root for a service URL: ``http://h:8000`` → ``http://h:8000/api/v1``.

    Raises:
        SettingsError: Not an http(s) URL with a host.
    """
    text = server.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"server must be an http(s) URL such as http://ledger:8000: {server!r}")
    return text if text.endswith(API_PREFIX) else text + API_PREFIX


@dataclass(frozen=True, slots=True)
class ResolvedToken:
    """The API token and where it came from.

    Attributes:
        token: The token (None: none configured; the meter sends no ``Authorization``).
        source: Where it came from, for messages (``--token-file /etc/tl/token``,
            ``THERMOLEDGER_TOKEN``, ...); never the token itself. None when there is none.
        warning: Why that source is unsafe (a token file other users can read), else None.
    """

    token: str | None = field(default=None, repr=False)
    source: str | None = None
    warning: str | None = None


def read_token_file(path: str | os.PathLike[str], *, source: str) -> ResolvedToken:
    """The token held in ``path``: its one line, surrounding whitespace stripped.

    Pipes are fine (``--token-file <(pass show ledger)``). A regular file that its group or
    other users can read gives a `ResolvedToken.warning`, not an error: the token is already
    exposed, and refusing to run the job would not undo that.

    Args:
        path: The file (``~`` is expanded).
        source: The flag or variable that named it (``--token-file``, ``THERMOLEDGER_TOKEN_FILE``),
            which every message names.

    Raises:
        SettingsError: The file is missing, unreadable, empty, too large, or holds more than one
            word; the message names ``source`` and the path, never the file's content.
    """
    where = Path(path).expanduser()
    named = f"{source} {where}" if source.startswith("-") else f"{source}={where}"
    try:
        with open(where, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(_MAX_TOKEN_FILE_BYTES + 1)
    except OSError as e:
        raise SettingsError(f"{named}: cannot read the token: {e.strerror or e}") from None
    if len(data) > _MAX_TOKEN_FILE_BYTES:
        raise SettingsError(
            f"{named}: over {_MAX_TOKEN_FILE_BYTES // 1024} KiB, not a token file (wrong path?)"
        )
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SettingsError(f"{named}: not a text file (wrong path?)") from None
    if not token:
        raise SettingsError(f"{named}: the file is empty; put the API token in it")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise SettingsError(f"{named}: must hold the token alone, on one line")
    warning = None
    if stat.S_ISREG(mode) and mode & (stat.S_IRGRP | stat.S_IROTH):
        warning = (
            f"{named} can be read by other users (mode {stat.S_IMODE(mode):04o}): chmod 600 {where}"
        )
    return ResolvedToken(token, source=named, warning=warning)


def resolve_token(
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedToken:
    """The API token: ``--token``, else ``--token-file``, else ``$THERMOLEDGER_TOKEN``, else
    ``$THERMOLEDGER_TOKEN_FILE``.

    Args:
        token: An explicit token (``--token``, ``Meter(token=...)``).
        token_file: An explicit token file (``--token-file``).
        env: Environment to read (default: ``os.environ``).

    Raises:
        SettingsError: Both an explicit token and a token file, or both variables set; or the
            token file cannot be used (`read_token_file`).
    """
    if token is not None and token_file is not None:
        raise SettingsError("--token and --token-file: give one of them")
    if token is not None:
        return ResolvedToken(token, source="--token")
    if token_file is not None:
        return read_token_file(token_file, source="--token-file")
    env = os.environ if env is None else env
    from_env = env.get(TOKEN_ENV, "").strip()
    file_env = env.get(TOKEN_FILE_ENV, "").strip()
    if from_env and file_env:
        raise SettingsError(f"{TOKEN_ENV} and {TOKEN_FILE_ENV} are both set: unset one of them")
    if from_env:
        return ResolvedToken(from_env, source=TOKEN_ENV)
    if file_env:
        return read_token_file(file_env, source=TOKEN_FILE_ENV)
    return ResolvedToken()


def parse_gpus(text: str | Sequence[int | str] | None) -> tuple[int | str, ...] | None:
    """A GPU selection: ``"0,1"`` → ``(0, 1)``; UUIDs (``GPU-…``, ``MIG-…``) stay strings.

    Returns:
        None for no selection (every GPU, or ``CUDA_VISIBLE_DEVICES``).

    Raises:
        SettingsError: An empty entry or a negative index.
    """
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if isinstance(text, str) and not text.strip():
        return None
    out: list[int | str] = []
    for item in items:
        if isinstance(item, int):
            value: int | str = item
        elif item == "":
            raise SettingsError(f"gpus: empty entry in {text!r}")
        else:
            value = int(item) if item.lstrip("-").isdigit() else item
        if isinstance(value, int) and value < 0:
            raise SettingsError(f"gpus: an index must be >= 0, got {value}")
        out.append(value)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MeterSettings:
    """What one meter process needs to know.

    Attributes:
        server: Service base URL (None: offline; chunks wait in the spool for ``push``).
        token: Bearer token for the service (``ingest`` scope).
        spool_dir: Directory of the spool and control files.
        interval_s: Sampling interval, s.
        chunk_s: Chunk length, s.
        counter_interval_s: How often counter-only devices (RAPL, hwmon energy) are read, s
            (their energy is exact from the counter at any rate; at most ``chunk_s``; 0: every
            tick, as the other devices).
        gpus: NVML indices or UUIDs to meter (None: ``CUDA_VISIBLE_DEVICES`` or every GPU).
        backend: ``auto`` (every real domain found: NVIDIA GPUs, CPU packages and DRAM; never
            simulated devices), ``nvml``, ``rapl``, ``hwmon`` or ``simulated``.
        upload_timeout_s: How long a finishing meter keeps trying to upload, s.
        power_reading: Which NVML power reading to integrate (`PowerReading`): ``auto`` (the
            driver's 1 s average where the GPU has one), ``average`` or ``instant``.
        cpu_tdp_w: Where nothing is measurable, meter an estimate of the CPUs instead (their
            utilisation × this TDP, W; labelled ``estimate``); None: meter nothing there.
        sysfs_root: Where sysfs is mounted (``/sys``): RAPL is read under
            ``class/powercap``, hwmon under ``class/hwmon``.
    """

    server: str | None = None
    token: str | None = field(default=None, repr=False)  # no token in a logged repr
    spool_dir: Path = field(default_factory=default_spool_dir)
    interval_s: float = 0.1
    chunk_s: float = 10.0
    counter_interval_s: float = 1.0
    gpus: tuple[int | str, ...] | None = None
    backend: BackendChoice = "auto"
    upload_timeout_s: float = 30.0
    power_reading: PowerReading = "auto"
    cpu_tdp_w: float | None = None
    sysfs_root: Path = Path("/sys")

    def __post_init__(self) -> None:
        for name in ("interval_s", "chunk_s", "upload_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SettingsError(f"{name} must be a positive number of seconds, got {value!r}")
        counter_s = self.counter_interval_s
        if not (
            isinstance(counter_s, int | float)
            and not isinstance(counter_s, bool)
            and math.isfinite(counter_s)
            and counter_s >= 0
        ):
            raise SettingsError(
                f"counter_interval_s must be a number of seconds >= 0, got {counter_s!r}"
            )
        if self.chunk_s < self.interval_s:
            raise SettingsError(
                f"chunk_s ({self.chunk_s} s) must be at least interval_s ({self.interval_s} s)"
            )
        if self.backend not in BACKENDS:
            raise SettingsError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_power_reading(self.power_reading)
        tdp_w = self.cpu_tdp_w
        if tdp_w is not None and not _positive(tdp_w):
            raise SettingsError(
                f"--cpu-tdp-w / {ENV_PREFIX}CPU_TDP_W must be a positive number of watts, "
                f"got {tdp_w!r}"
            )
        if self.server is not None:
            api_base_url(self.server)

    @property
    def api_url(self) -> str | None:
        """The API root (``…/api/v1``), or None offline."""
        return None if self.server is None else api_base_url(self.server)

    @classmethod
    def resolve(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        server: str | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        interval_s: float | None = None,
        chunk_s: float | None = None,
        counter_interval_s: float | None = None,
        gpus: str | Sequence[int | str] | None = None,
        backend: str | None = None,
        upload_timeout_s: float | None = None,
        power_reading: str | None = None,
        cpu_tdp_w: float | None = None,
    ) -> MeterSettings:
        """Settings from explicit values (None: not given), then ``THERMOLEDGER_*``, then defaults.

        The token comes from `resolve_token` (``token``, ``token_file``, then the two
        variables); a token file other users can read is logged as a warning.

        Raises:
            SettingsError: A value (explicit or from the environment) is unusable; the message
                names the variable.
        """
        env = os.environ if env is None else env
        resolved = resolve_token(token=token, token_file=token_file, env=env)
        if resolved.warning:
            _LOG.warning("thermoledger: %s", resolved.warning)

        def text(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name, "").strip()
            return value or None

        def number(name: str, given: float | None, default: float) -> float:
            if given is not None:
                return float(given)
            raw = text(name)
            if raw is None:
                return default
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None

        def optional_number(name: str) -> float | None:
            return None if text(name) is None else number(name, None, math.nan)

        chosen_backend = backend if backend is not None else (text("BACKEND") or "auto")
        if chosen_backend not in BACKENDS:
            raise SettingsError(f"backend must be one of {BACKENDS}, got {chosen_backend!r}")
        if power_reading is not None:
            chosen_reading = check_power_reading(power_reading)
        else:
            raw_reading = text("POWER_READING")
            chosen_reading = (
                "auto"
                if raw_reading is None
                else check_power_reading(raw_reading, source=ENV_PREFIX + "POWER_READING")
            )
        return cls(
            server=server if server is not None else text("SERVER"),
            token=resolved.token,
            spool_dir=Path(spool_dir).expanduser()
            if spool_dir is not None
            else default_spool_dir(env),
            interval_s=number("INTERVAL_S", interval_s, 0.1),
            chunk_s=number("CHUNK_S", chunk_s, 10.0),
            counter_interval_s=number("COUNTER_INTERVAL_S", counter_interval_s, 1.0),
            gpus=parse_gpus(gpus if gpus is not None else text("GPUS")),
            backend=chosen_backend,
            upload_timeout_s=number("UPLOAD_TIMEOUT_S", upload_timeout_s, 30.0),
            power_reading=chosen_reading,
            cpu_tdp_w=cpu_tdp_w if cpu_tdp_w is not None else optional_number("CPU_TDP_W"),
            sysfs_root=Path(text("SYSFS_ROOT") or "/sys"),
        )


def _positive(value: object) -> bool:
    """Whether ``value`` is a finite number > 0 (not a bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def check_power_reading(value: object, *, source: str = "power_reading") -> PowerReading:
    """``value`` as a `PowerReading`.

    Args:
        value: What was given (a flag, an argument, an environment variable's text).
        source: Where it came from, for the message.

    Raises:
        SettingsError: Not one of `POWER_READINGS`; the message names ``source`` and the choices.
    """
    readings: dict[object, PowerReading] = {r: r for r in POWER_READINGS}
    if value not in readings:
        raise SettingsError(f"{source} must be one of {', '.join(POWER_READINGS)}, got {value!r}")
    return readings[value]


# field -> (flag, environment variable, lower bound, unit): one table so that every message
# names both places a value can come from.
_FOOTPRINT_FIELDS: Final[dict[str, tuple[str, str, float, str]]] = {
    "grid_intensity_g_per_kwh": (
        "--grid-intensity",
        ENV_PREFIX + "GRID_INTENSITY_G_PER_KWH",
        0.0,
        "gCO2e/kWh",
    ),
    "pue": ("--pue", ENV_PREFIX + "PUE", 1.0, "(facility energy / IT energy)"),
    "tariff_usd_per_kwh": ("--tariff", ENV_PREFIX + "TARIFF_USD_PER_KWH", 0.0, "USD/kWh"),
}


@dataclass(frozen=True, slots=True)
class FootprintSettings:
    """How the wrapper's summary turns joules into CO2e and dollars; nothing is assumed.

    Separate from `MeterSettings` on purpose: an in-process `meters.api.Meter` never uses these,
    so a bad value here must not stop it from metering. The arithmetic is the accounting core's
    (``kWh = J / 3.6e6``; facility kWh = IT kWh × PUE) without pint, which the meter must not load.

    Attributes:
        grid_intensity_g_per_kwh: Location-based grid intensity, gCO2e/kWh, of the region the
            user configured (None: no CO2e figure; no default and no geolocation).
        pue: Power usage effectiveness (facility / IT energy), >= 1; 1.0 prices the metered IT
            energy only.
        tariff_usd_per_kwh: Electricity price, USD/kWh (None: no cost figure).
    """

    grid_intensity_g_per_kwh: float | None = None
    pue: float = 1.0
    tariff_usd_per_kwh: float | None = None

    def __post_init__(self) -> None:
        for name, (flag, variable, minimum, unit) in _FOOTPRINT_FIELDS.items():
            value = getattr(self, name)
            if value is None and name != "pue":
                continue
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= minimum
            ):
                raise SettingsError(
                    f"{flag} / {variable} must be a finite number >= {minimum:g} {unit}, "
                    f"got {value!r}"
                )

    @property
    def configured(self) -> bool:
        """Whether there is anything to show: a grid intensity or a tariff (a PUE alone is not)."""
        return self.grid_intensity_g_per_kwh is not None or self.tariff_usd_per_kwh is not None

    @classmethod
    def resolve(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        grid_intensity_g_per_kwh: float | None = None,
        pue: float | None = None,
        tariff_usd_per_kwh: float | None = None,
    ) -> FootprintSettings:
        """Explicit values (None: not given), then ``THERMOLEDGER_*``, then the defaults.

        Args:
            env: Environment to read (default: ``os.environ``).
            grid_intensity_g_per_kwh: gCO2e/kWh, location-based.
            pue: Facility / IT energy, >= 1.
            tariff_usd_per_kwh: USD/kWh.

        Raises:
            SettingsError: A value is not a finite number in range; the message names the flag
                and the environment variable.
        """
        env = os.environ if env is None else env

        def number(name: str, given: float | None) -> float | None:
            if given is not None:
                return float(given)
            variable = _FOOTPRINT_FIELDS[name][1]
            raw = env.get(variable, "").strip()
            if not raw:
                return None
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"{variable} must be a number, got {raw!r}") from None

        chosen_pue = number("pue", pue)
        return cls(
            grid_intensity_g_per_kwh=number("grid_intensity_g_per_kwh", grid_intensity_g_per_kwh),
            pue=1.0 if chosen_pue is None else chosen_pue,
            tariff_usd_per_kwh=number("tariff_usd_per_kwh", tariff_usd_per_kwh),
        )


@dataclass(frozen=True, slots=True)
class ObserveSettings:
    """How the ``thermoledger`` process is observed: its metrics endpoint and its log lines.

    Separate from `MeterSettings`: an in-process `meters.api.Meter` lives in the job's process,
    whose logging and ports are the job's, so only the command line uses these.

    Attributes:
        metrics_port: TCP port of the Prometheus endpoint (None: no endpoint; 0: any free port).
        metrics_addr: Interface it binds: ``127.0.0.1`` (the default) keeps the endpoint on
            this host, since it names the runs and the devices of the node without any
            authentication; ``0.0.0.0`` (all interfaces) is for a pod or node that Prometheus
            scrapes from outside, and must be asked for.
        log_format: ``text`` (for people) or ``json`` (one object per line, with the run id).
        otel_endpoint: OTLP/HTTP URL the OpenTelemetry metrics are exported to (`meters.otel`;
            None: no export).
        otel_interval_s: Seconds between two OpenTelemetry exports.
    """

    metrics_port: int | None = None
    metrics_addr: str = DEFAULT_METRICS_ADDR
    log_format: LogFormat = "text"
    otel_endpoint: str | None = None
    otel_interval_s: float = DEFAULT_OTEL_INTERVAL_S

    def __post_init__(self) -> None:
        port = self.metrics_port
        if port is not None and (isinstance(port, bool) or not 0 <= port <= 65535):
            raise SettingsError(
                f"--metrics-port / {ENV_PREFIX}METRICS_PORT must be a TCP port 0-65535, "
                f"got {port!r}"
            )
        if not self.metrics_addr.strip():
            raise SettingsError(f"--metrics-addr / {ENV_PREFIX}METRICS_ADDR must not be empty")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(
                f"--log-format / {ENV_PREFIX}LOG_FORMAT must be one of {LOG_FORMATS}, "
                f"got {self.log_format!r}"
            )
        if self.otel_endpoint is not None:
            otlp_metrics_url(self.otel_endpoint, source="otel_endpoint")
        interval_s = self.otel_interval_s
        if not _positive(interval_s):
            raise SettingsError(
                f"--otel-interval / {ENV_PREFIX}OTEL_INTERVAL_S must be a number of seconds > 0, "
                f"got {interval_s!r}"
            )

    @classmethod
    def resolve(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
        metrics_addr: str | None = None,
        log_format: str | None = None,
        otel: bool = False,
        otel_endpoint: str | None = None,
        otel_interval_s: float | None = None,
    ) -> ObserveSettings:
        """Explicit values (None: not given), then ``THERMOLEDGER_*``, then the defaults.

        The OpenTelemetry export is on when asked for: ``otel``, ``THERMOLEDGER_OTEL``, or an
        endpoint (``otel_endpoint``, ``THERMOLEDGER_OTEL_ENDPOINT``). Only then are the standard
        ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` (used as it is) and
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/metrics`` appended) read for an endpoint, then
        `DEFAULT_OTEL_ENDPOINT`.

        Raises:
            SettingsError: A value is unusable; the message names the flag and the variable. Also
                when the OpenTelemetry export is asked for and the ``otel`` extra is not
                installed (the message says what to install).
        """
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            return env.get(ENV_PREFIX + name, "").strip() or None

        def given_or_env(
            name: str, given: _N | None, parse: Callable[[str], _N], what: str
        ) -> _N | None:
            raw = text(name)
            if given is not None or raw is None:
                return given
            try:
                return parse(raw)
            except ValueError:
                raise SettingsError(f"{ENV_PREFIX}{name} must be {what}, got {raw!r}") from None

        port = given_or_env("METRICS_PORT", metrics_port, int, "a TCP port")
        chosen_format = log_format if log_format is not None else text("LOG_FORMAT") or "text"
        formats: dict[str, LogFormat] = {f: f for f in LOG_FORMATS}
        if chosen_format not in formats:
            raise SettingsError(
                f"--log-format / {ENV_PREFIX}LOG_FORMAT must be one of {LOG_FORMATS}, "
                f"got {chosen_format!r}"
            )
        interval_s = given_or_env("OTEL_INTERVAL_S", otel_interval_s, float, "a number of seconds")
        endpoint = _otel_endpoint(env, asked=otel, given=otel_endpoint)
        if endpoint is not None:
            from .otel import require_sdk  # a missing extra exits 2 before anything runs

            require_sdk()
        return cls(
            metrics_port=port,
            metrics_addr=metrics_addr or text("METRICS_ADDR") or DEFAULT_METRICS_ADDR,
            log_format=formats[chosen_format],
            otel_endpoint=endpoint,
            otel_interval_s=DEFAULT_OTEL_INTERVAL_S if interval_s is None else interval_s,
        )


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _otel_endpoint(env: Mapping[str, str], *, asked: bool, given: str | None) -> str | None:
    """Where OpenTelemetry metrics go (None: not asked for); see `ObserveSettings.resolve`."""
    if given is not None:
        return otlp_metrics_url(given, source="--otel-endpoint")
    variable = ENV_PREFIX + "OTEL_ENDPOINT"
    raw = env.get(variable, "").strip()
    if raw:
        return otlp_metrics_url(raw, source=variable)
    switch = env.get(ENV_PREFIX + "OTEL", "").strip().lower()
    if switch and switch not in _TRUE | _FALSE:
        raise SettingsError(f"{ENV_PREFIX}OTEL must be 1 or 0 (true or false), got {switch!r}")
    if not (asked or switch in _TRUE):
        return None  # the standard variables alone may be the job's own, not a request
    for variable, append in (
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", False),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", True),
    ):
        raw = env.get(variable, "").strip()
        if raw:
            return otlp_metrics_url(raw, source=variable, append=append)
    return DEFAULT_OTEL_ENDPOINT


def otlp_metrics_url(url: str, *, source: str, append: bool | None = None) -> str:
    """``url`` as the full URL of an OTLP/HTTP metrics endpoint.

    Args:
        url: ``http(s)://host[:port][/path]``.
        source: Where it came from, for the message.
        append: Append ``/v1/metrics`` to the path (True: always, as for
            ``OTEL_EXPORTER_OTLP_ENDPOINT``; False: never, as for
            ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``; None: unless the path already ends in it).

    Raises:
        SettingsError: Not an http(s) URL with a host; the message names ``source``.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (a port out of range raises here)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"{source} must be an http(s) URL of an OTLP/HTTP receiver such as "
            f"http://otel-collector:4318, got {url!r}"
        )
    path = parts.path.rstrip("/")
    if append or (append is None and not path.endswith(OTLP_METRICS_PATH)):
        path += OTLP_METRICS_PATH
    return parts._replace(path=path).geturl()
