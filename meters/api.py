"""The in-process meter: ``with Meter(run="llama-ft") as m:`` around a job, phases and work inside.

::

    from .api import Meter

    with Meter(run="llama-ft", kind="training", server="http://ledger:8000", token=TOKEN) as m:
        with m.phase("epoch-3"):
            loss = train_one_epoch()
            m.add_tokens(tokens_seen)
            m.add_flops(6 * n_params * tokens_seen, dtype="bf16")
            m.record_metric("eval_loss", evaluate(), step=step, tokens=tokens_seen)
        print(m.summary().energy_j)

What it does
    `Meter.start` resolves the run id (`meters.runid`), decides whether this process samples
    (one meter per node) and records work (rank 0), opens the devices (`open_backend`: every
    real domain of the node, NVIDIA GPUs, CPU packages and DRAM; simulated devices only when
    asked for), and starts the sampler thread (`meters.sampler.Sampler`), which seals chunks
    into the durable spool. With a ``server`` an uploader thread (`meters.uploader.Uploader`)
    sends them as they are sealed; without one the run stays in the spool for ``thermoledger
    push``. Phases and declared work go to the control outbox (`meters.control`) and travel the
    same way.

Nothing measurable
    Where the node offers nothing the meter can read (no GPU, RAPL root-only or absent, no
    hwmon counter), the meter says so in one warning and records nothing: no sampler thread, no
    run in the spool, nothing in the outbox or uploaded, every call a no-op (state
    ``unmetered``; `summary` has no devices and NaN energies, never 0 J). A run that was
    measured by nobody has no place in totals that add measurements. With ``cpu_tdp_w`` it
    meters a labelled estimate instead (`meters.backends.estimate`).

Never disturb the job
    Nothing the meter does raises into the job: a failure to start leaves a disabled meter (an
    error in the log, every call a no-op), and a failure later is logged once and skipped. An
    exception from the job body is the job's: the run is marked failed (exit code 1, or the
    ``SystemExit`` code) and the exception propagates unchanged.

Ranks
    Under torchrun / SLURM with several processes per node, only local rank 0 samples; only
    global rank 0 records phases and work; the other ranks' meters do nothing (one log line).
    Under ``thermoledger run`` the wrapper samples the node and the meter in the job records
    phases and work into the wrapper's spool directory; the wrapper declares the run (name it
    with ``--name``). Declared work is a run total: declare the job's global figures from rank 0.

Durability
    Sealed chunks are fsync'd before anything else sees them. Declared work is written to the
    control outbox at most every `WORK_SAVE_S` seconds (and at every phase end and at stop), so
    a ``kill -9`` loses at most the unsealed chunk tail and a few seconds of work counts. The
    meter installs no signal handlers (the job owns them): an unhandled SIGTERM ends the
    process without ``atexit``, losing the open chunk; ``thermoledger run`` or the sidecar
    handle signals for you.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import numbers
import operator
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    ParamSpec,
    SupportsFloat,
    SupportsIndex,
    TypeVar,
    cast,
    overload,
)

from .backends.base import DeviceInfo, PowerBackend
from .control import ControlStore
from .discovery import Sources, open_backend
from .errors import NothingMeasurable
from .runid import Election, RunIdentity, elect, resolve_run_id
from .sampler import MeterSummary, Sampler
from .settings import BackendChoice, MeterSettings, PowerReading
from .spool import MetricConflict, RunStatus, Spool
from .uploader import PushResult, Uploader, push_later
from .wire import ChunkPayload, DevicePayload, MetricPayload

if TYPE_CHECKING:
    import httpx


__all__ = [
    "REFUSED_DECLARATIONS",
    "RUN_KINDS",
    "WORK_SAVE_S",
    "Meter",
    "PhaseRecord",
    "RunSummary",
    "Sources",
    "WorkTotals",
    "empty_summary",
    "meter",
    "open_backend",
    "whole_count",
]

_LOG = logging.getLogger(__name__)
RUN_KINDS: Final = ("training", "inference", "eval", "other")
WORK_SAVE_S: Final = 5.0
"""Declared work is written to the control outbox at most this often, s (and at phase ends)."""
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_DTYPE = re.compile(r"^[A-Za-z0-9_]{1,16}$")
_MAX_NAME = 200
_INT64_MAX: Final = 2**63 - 1
REFUSED_DECLARATIONS: Final = "refused_declarations"
"""The key, in a meter's entry of the run's ``host_info``, of the declarations it refused: a list
of lines such as ``declare_model(params=-1) ignored: need a whole count > 0`` (the service's
report lists them, so a figure lost to a bad argument is not silently missing)."""
_MAX_REFUSED: Final = 16
_MAX_REFUSED_CHARS: Final = 300

State = Literal["new", "running", "recording", "idle", "unmetered", "disabled", "stopped"]
P = ParamSpec("P")
R = TypeVar("R")


def empty_summary(run_id: str) -> MeterSummary:
    """The summary of a meter that samples nothing (another process meters this node, or
    nothing on it is measurable): no devices, and NaN energies, never a measured 0 J."""
    return MeterSummary(
        run_id=run_id,
        devices=(),
        energy_j=math.nan,
        energy_low_j=math.nan,
        energy_high_j=math.nan,
        ticks=0,
        overruns=0,
        read_errors=0,
        spool_errors=0,
        unspooled=0,
        dropped=0,
        cpu_s=0.0,
    )


def whole_count(value: object, *, minimum: int = 0) -> int | None:
    """A count the meter API accepts, as an int; None when it is not one.

    Any finite real number that is whole is a count: ``7_000_000_000``, ``7e9``, numpy integers
    and floats, ``Fraction``, ``Decimal``. Text (``"7e9"``), booleans, NaN, infinities,
    fractions of a unit and counts past a signed 64-bit integer (what the service stores) are
    not.

    Args:
        value: What the caller passed.
        minimum: The smallest count accepted (0 for tokens, 1 for a model size).
    """
    if isinstance(value, bool | str | bytes):
        return None
    try:
        count = operator.index(cast(SupportsIndex, value))  # int, numpy ints (numpy's bool refuses)
    except TypeError:
        if not isinstance(value, numbers.Real | Decimal):
            return None
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if not (math.isfinite(as_float) and as_float.is_integer()):
            return None
        count = int(as_float)
    return count if minimum <= count <= _INT64_MAX else None


@dataclass(frozen=True, slots=True)
class RunSummary(MeterSummary):
    """A meter's `MeterSummary` with what its table needs: ``print(m.summary())`` prints the
    same table as ``thermoledger run`` (`meters.summary.render_summary`), not a repr.

    Attributes:
        name: The run's name.
        backend_label: What read the devices.
        simulated: The devices are simulated (the figures are not measurements).
        ended: The meter has stopped (the figures are final).
        exit_code: The job's exit code, once ended.
        upload: What the final upload did (None: offline, or still running).
        server: The service it uploads to (None: offline).
        spool_dir: Where the run waits when not uploaded.
        refused_declarations: Declarations the meter refused (`Meter.declare_model`,
            `Meter.add_tokens`, `Meter.add_flops`), one line each: the figures they would have
            given are missing from the report.
    """

    name: str = ""
    backend_label: str = "none"
    simulated: bool = False
    ended: bool = False
    exit_code: int | None = None
    upload: PushResult | None = None
    server: str | None = None
    spool_dir: str = ""
    refused_declarations: tuple[str, ...] = ()

    def __str__(self) -> str:
        from .summary import render_run_summary  # the table imports this module

        return render_run_summary(self)


@dataclass(slots=True)
class WorkTotals:
    """Work declared so far.

    Attributes:
        flops_by_dtype: FLOPs per precision (``"bf16"`` → FLOP).
        tokens: Tokens processed.
        model_params: Model size N (parameters), when declared.
    """

    flops_by_dtype: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    model_params: int | None = None

    @property
    def flops(self) -> float:
        """All FLOPs, whatever the precision."""
        return math.fsum(self.flops_by_dtype.values())

    @property
    def dtype(self) -> str | None:
        """The precision with the most FLOPs (the run's declared dtype), or None."""
        if not self.flops_by_dtype:
            return None
        return max(self.flops_by_dtype.items(), key=lambda item: item[1])[0]


@dataclass(slots=True)
class PhaseRecord:
    """A phase window (unix seconds) and the work added while it was open."""

    name: str
    t0_s: float
    tags: dict[str, str]
    t1_s: float | None = None
    work: WorkTotals = field(default_factory=WorkTotals)

    @property
    def key(self) -> str:
        """Its identity in the control outbox (the service identifies it by name and t0)."""
        return f"{self.name}@{self.t0_s!r}"

    def body(self) -> dict[str, Any]:
        """The ``POST /runs/{id}/phases`` body (work only once the phase is closed)."""
        out: dict[str, Any] = {"name": self.name, "t0_s": self.t0_s, "tags": self.tags}
        if self.t1_s is not None:
            out["t1_s"] = self.t1_s
            if self.work.flops_by_dtype:
                out["flops"] = {"value": self.work.flops, "unit": "FLOP"}
                out["dtype"] = self.work.dtype
            if self.work.tokens:
                out["tokens"] = self.work.tokens
        return out


class _SeqGuard:
    """The sampler's sink: the spool, with chunk numbering that never reuses an acked seq."""

    def __init__(self, spool: Spool, control: ControlStore) -> None:
        self._spool = spool
        self._control = control

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        self._spool.open_run(run_id, metadata)

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        self._spool.put_devices(run_id, devices)

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        return self._spool.put_chunks(run_id, chunks)

    def next_seqs(self, run_id: str) -> dict[str, int]:
        seqs = self._spool.next_seqs(run_id)
        for key, seq in self._control.next_seqs(run_id).items():
            seqs[key] = max(seqs.get(key, 0), seq)
        return seqs

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        self._spool.set_run_status(run_id, status, exit_code)


def _default_name() -> str:
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script or "python"


def _exit_code_of(error: BaseException) -> int:
    if isinstance(error, SystemExit):
        code = error.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(error, KeyboardInterrupt):
        return 130  # as a shell reports SIGINT
    return 1  # what the interpreter exits with on an uncaught exception


class Meter:
    """Meters the devices of this node while a job runs (see the module docstring).

    Args:
        run: The run's name (default: the script's file name).
        kind: ``training``, ``inference``, ``eval`` or ``other``.
        run_id: Explicit run id (UUID, or any text mapped to one); default: `meters.runid`.
        server: Service URL (default: ``THERMOLEDGER_SERVER``; none: offline).
        token: Token with the ``ingest`` scope (default: ``THERMOLEDGER_TOKEN``, else the file
            named by ``THERMOLEDGER_TOKEN_FILE``).
        backend: Devices to read: a `PowerBackend` (not closed by the meter), or a choice
            (``"auto"``: every real domain found, GPUs, CPU packages and DRAM, see
            `open_backend`; ``"nvml"``, ``"rapl"``, ``"hwmon"``, ``"simulated"``). Default:
            ``THERMOLEDGER_BACKEND``, else ``"auto"``. Where ``auto`` finds nothing it can
            read, the meter records nothing (state ``unmetered``, one warning) and the job runs.
        gpus: NVML selection (indices or UUIDs) for the default backend.
        power_reading: Which NVML power reading to take: ``"auto"`` (the driver's 1 s average
            where a GPU has one, else instantaneous), ``"average"`` or ``"instant"``. Default:
            ``THERMOLEDGER_POWER_READING``, else ``"auto"`` (`meters.settings`).
        interval_s: Sampling interval, s (default 0.1).
        chunk_s: Chunk length, s (default 10).
        counter_interval_s: How often counter-only devices (RAPL, hwmon energy) are read, s
            (default: ``THERMOLEDGER_COUNTER_INTERVAL_S``, else 1; their energy is exact from
            the counter at any rate; 0: every tick). Edges (phases, `summary`) read them too.
        spool_dir: Spool directory (default: ``THERMOLEDGER_SPOOL_DIR`` or the user's state
            directory).
        tags: Run tags (``key=value``; keys ``[A-Za-z0-9_.:/-]{1,64}``).
        simulate: Meter simulated devices even where GPUs exist (demos, tests); the only way,
            with ``backend="simulated"``, that simulated devices are metered.
        upload_timeout_s: How long `stop` keeps trying to upload, s (default 30).
        cpu_tdp_w: Where ``auto`` finds nothing measurable, meter an estimate instead: CPU
            utilisation × this TDP, W, labelled ``estimate`` (default:
            ``THERMOLEDGER_CPU_TDP_W``; unset: record nothing there).
        env: Environment to read (default: ``os.environ``).
        host: Host name in device keys (default: ``socket.gethostname()``).
        logger: Where the meter logs.
        upload_transport: httpx transport the uploader sends through (default: httpx's own);
            ``thermoledger --metrics-port`` passes a `meters.metrics.CountingTransport`.
        sources: Where ``auto`` and the named choices look for devices (default: the real
            library and ``THERMOLEDGER_SYSFS_ROOT``, else ``/sys``); tests pass fakes.
    """

    def __init__(
        self,
        run: str | None = None,
        *,
        kind: str = "training",
        run_id: str | None = None,
        server: str | None = None,
        token: str | None = None,
        backend: PowerBackend | BackendChoice | None = None,
        gpus: str | Sequence[int | str] | None = None,
        power_reading: PowerReading | None = None,
        interval_s: float | None = None,
        chunk_s: float | None = None,
        counter_interval_s: float | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        tags: Mapping[str, str] | None = None,
        simulate: bool = False,
        upload_timeout_s: float | None = None,
        cpu_tdp_w: float | None = None,
        env: Mapping[str, str] | None = None,
        host: str | None = None,
        logger: logging.Logger | None = None,
        upload_transport: httpx.BaseTransport | None = None,
        sources: Sources | None = None,
    ) -> None:
        self.name = (run or _default_name()).strip()[:_MAX_NAME] or "python"
        self.kind = kind
        self._explicit_run_id = run_id
        self._options: dict[str, Any] = {
            "server": server,
            "token": token,
            "gpus": gpus,
            "power_reading": power_reading,
            "interval_s": interval_s,
            "chunk_s": chunk_s,
            "counter_interval_s": counter_interval_s,
            "spool_dir": spool_dir,
            "upload_timeout_s": upload_timeout_s,
            "cpu_tdp_w": cpu_tdp_w,
            "backend": "simulated" if simulate else backend if isinstance(backend, str) else None,
        }
        self._given_backend = None if isinstance(backend, str) else backend
        self._sources = sources
        self._tags = dict(tags or {})
        self._env: Mapping[str, str] = os.environ if env is None else env
        self.host = host or socket.gethostname()
        self._log = logger if logger is not None else _LOG
        self._upload_transport = upload_transport
        self._lock = threading.RLock()
        self.state: State = "new"
        self.run_id: str = ""
        self.identity: RunIdentity | None = None
        self.election: Election | None = None
        self.settings: MeterSettings | None = None
        self.backend_label = "none"
        self.simulated = False
        self.upload: PushResult | None = None
        self.work = WorkTotals()
        self._backend: PowerBackend | None = None
        self._owns_backend = False
        self._sampler: Sampler | None = None
        self._spool: Spool | None = None
        self._metric_spool: Spool | None = None  # where a meter that does not sample spools
        self._control: ControlStore | None = None
        self._uploader: Uploader | None = None
        self._upload_stores: tuple[Spool, ControlStore] | None = None
        self._phases: list[PhaseRecord] = []
        self._work_dirty = False
        self._work_saved_s = -math.inf
        self._final: RunSummary | None = None
        self._started_s = math.nan
        self._warned: set[str] = set()
        self._refused: list[str] = []  # this process's refused declarations
        self._refused_run: tuple[str, ...] = ()  # every meter's of the run, read at stop

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def sampling(self) -> bool:
        """Whether this meter reads devices (it is the node's one meter)."""
        return self._sampler is not None

    @property
    def devices(self) -> tuple[DevicePayload, ...]:
        """The devices this meter samples, as sent to the service (empty when it samples none)."""
        sampler = self._sampler
        return sampler.devices if sampler is not None else ()

    @property
    def device_infos(self) -> tuple[DeviceInfo, ...]:
        """The backend's description of each device, in `devices` order (empty when it samples
        none): which backend reads it, hence its vendor, for exporters (`meters.otel`)."""
        sampler = self._sampler
        return sampler.infos if sampler is not None else ()

    @property
    def recording(self) -> bool:
        """Whether phases and work are recorded here (rank 0, meter running)."""
        return self.state in ("running", "recording") and bool(
            self.election and self.election.record_work
        )

    def start(self) -> Meter:
        """Start metering; never raises (a failure leaves a disabled meter, logged)."""
        with self._lock:
            if self.state != "new":
                self._warn_once("start", "Meter.start: a meter starts once (state %s)", self.state)
                return self
            try:
                self._start()
            except Exception as e:
                self._log.error(
                    "thermoledger: metering disabled for this run (%s: %s); the job goes on",
                    type(e).__name__,
                    e,
                )
                if self._sampler is not None:
                    # Started before the failure: keep what it sealed, stop it from sampling.
                    with contextlib.suppress(Exception):
                        self._sampler.stop()
                    self._sampler = None
                self._teardown()
                self.state = "disabled"
            return self

    def _start(self) -> None:
        options = {k: v for k, v in self._options.items() if k != "backend"}
        self.settings = settings = MeterSettings.resolve(
            env=self._env, backend=self._options["backend"], **options
        )
        if self.kind not in RUN_KINDS:
            raise ValueError(f"kind must be one of {RUN_KINDS}, got {self.kind!r}")
        self.identity = resolve_run_id(self._explicit_run_id, self._env)
        self.run_id = self.identity.run_id
        self.election = election = elect(self._env, host=self.host)
        if not (election.sample or election.record_work):
            self._log.info(
                "thermoledger: run %s: %s; this meter does nothing", self.run_id, election.reason
            )
            self.state = "idle"
            return
        if not election.sample:
            self._log.info("thermoledger: run %s: %s", self.run_id, election.reason)
        if election.sample and not self._open_devices(settings):
            return  # nothing measurable: the job runs unmetered, nothing is recorded
        self._control = ControlStore.in_directory(settings.spool_dir)
        started_s = self._started_s = time.time()
        if election.sample:
            assert self._backend is not None
            devices = self._backend.devices()
            self.simulated = any(d.simulated for d in devices)
            self._spool = Spool.in_directory(settings.spool_dir)
            self._sampler = Sampler(
                self._backend,
                run_id=self.run_id,
                spool=_SeqGuard(self._spool, self._control),
                interval_s=settings.interval_s,
                chunk_s=settings.chunk_s,
                counter_interval_s=settings.counter_interval_s,
                host=self.host,
                metadata={
                    "name": self.name,
                    "kind": self.kind,
                    "tags": self._valid_tags(self._tags),
                    "backend": self.backend_label,
                    "simulated": self.simulated,
                },
                logger=self._log,
            )
        # Where another process meters the node (``thermoledger run``, a sidecar), that
        # process's declaration of the run stands: this one only fills in when it is first.
        self._control.put(
            self.run_id, "run", self._run_body(started_s), if_absent=not election.sample
        )
        if self._refused and election.record_work:
            self._put_refusals()  # declarations refused before `start`
        if settings.api_url is not None:
            stores = (
                Spool.in_directory(settings.spool_dir),
                ControlStore.in_directory(settings.spool_dir),
            )
            self._upload_stores = stores
            self._uploader = Uploader(
                stores[0],
                stores[1],
                api_url=settings.api_url,
                token=settings.token,
                run_ids=[self.run_id],
                transport=self._upload_transport,
                logger=self._log,
            )
            self._uploader.start()
        if self._sampler is not None:
            # Last: the opening edge (every device read now) is the run's first sample, after
            # all the startup work above and just before the job's own work begins.
            self._sampler.start()
        self.state = "running" if self._sampler is not None else "recording"
        atexit.register(self._at_exit)
        where = settings.server or f"the spool {settings.spool_dir} (offline)"
        self._log.info(
            "thermoledger: run %s (%s) metering %d device(s) via %s every %g s into %s",
            self.run_id,
            self.identity.source,
            len(self._backend.devices()) if self._backend is not None else 0,
            self.backend_label if self._sampler is not None else "another process",
            settings.interval_s,
            where,
        )

    def _open_devices(self, settings: MeterSettings) -> bool:
        """Open the devices to sample; False (state ``unmetered``, logged once) when none.

        Nothing measurable is not an error: the job runs, and nothing is recorded, not even
        the run (a run without a single figure would read as 0 J in every total).
        """
        if self._given_backend is not None:
            self._backend = self._given_backend
            self.backend_label = type(self._given_backend).__name__
        else:
            try:
                self._backend, self.backend_label = open_backend(
                    settings.backend,
                    gpus=settings.gpus,
                    cpu_tdp_w=settings.cpu_tdp_w,
                    logger=self._log,
                    sources=self._sources or Sources.under(settings.sysfs_root),
                    power_reading=settings.power_reading,
                )
            except NothingMeasurable as e:
                self._log.warning("thermoledger: run %s: %s", self.run_id, e)
                self.backend_label = "nothing measurable"
                self.state = "unmetered"
                return False
            self._owns_backend = True
        if not self._backend.devices():
            self._log.warning(
                "thermoledger: run %s: %s has no device: nothing measurable, nothing recorded",
                self.run_id,
                self.backend_label,
            )
            self._teardown()
            self._backend = None
            self.state = "unmetered"
            return False
        return True

    def _run_body(self, started_s: float) -> dict[str, Any]:
        assert self.identity is not None
        assert self.settings is not None
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "run_id_source": self.identity.source,
            "run_id_given": self.identity.given,
            "sampling": self._sampler is not None,
        }
        if self._sampler is not None and self._backend is not None:
            info.update(
                backend=self.backend_label,
                devices=len(self._backend.devices()),
                interval_s=self.settings.interval_s,
                chunk_s=self.settings.chunk_s,
            )
        if self._refused:
            info[REFUSED_DECLARATIONS] = list(self._refused)
        return {
            "name": self.name,
            "kind": self.kind,
            "started_at": datetime.fromtimestamp(started_s, UTC).isoformat(),
            "tags": self._valid_tags(self._tags),
            "host_info": {f"{'meter' if self._sampler else 'job'}@{self.host}": info},
            "simulated": self.simulated,
        }

    def _send_quality(self, summary: MeterSummary) -> None:
        """The run's declaration again, with the measurement's grade in its host info (the
        service merges it into the run, and the report shows it)."""
        if self._control is None or summary.quality is None:
            return
        body = self._run_body(self._started_s)
        for info in body["host_info"].values():
            info["quality"] = summary.quality.to_dict()
        # Keep what other processes of the run added (the job's refused declarations), as the
        # service's merge would: this message replaces the stored one.
        existing = self._control.get(self.run_id, "run")
        if existing is not None and isinstance(existing.body.get("host_info"), Mapping):
            body["host_info"] = {**existing.body["host_info"], **body["host_info"]}
        self._control.put(self.run_id, "run", body)

    def _refuse(self, kind: str, call: str, reason: str) -> None:
        """Ignore a declaration, visibly: one warning, a line in the summary, and a line in the
        run's host info (`REFUSED_DECLARATIONS`), which the service's report shows."""
        text = f"{call} ignored: {reason}"
        if len(text) > _MAX_REFUSED_CHARS:
            text = text[: _MAX_REFUSED_CHARS - 1] + "…"
        self._warn_once(kind, "thermoledger: %s", text)
        with self._lock:
            if text in self._refused or len(self._refused) >= _MAX_REFUSED:
                return
            self._refused.append(text)
            if self.recording:
                try:
                    self._put_refusals()
                except Exception as e:
                    self._warn_once("refused", "thermoledger: recording a refusal failed: %s", e)

    def _put_refusals(self) -> None:
        """Add this process's refusals to the run's declaration in the outbox, under its own
        host-info entry, leaving the rest of the declaration (perhaps the wrapper's) as it is."""
        if self._control is None:
            return
        existing = self._control.get(self.run_id, "run")
        body = dict(existing.body) if existing is not None else self._run_body(self._started_s)
        host_info = dict(body.get("host_info") or {})
        key = f"{'meter' if self._sampler else 'job'}@{self.host}"
        entry = host_info.get(key)
        entry = dict(entry) if isinstance(entry, Mapping) else {}
        entry[REFUSED_DECLARATIONS] = list(self._refused)
        host_info[key] = entry
        body["host_info"] = host_info
        self._control.put(self.run_id, "run", body)
        if self._uploader is not None:
            self._uploader.nudge()

    def _run_refusals(self) -> tuple[str, ...]:
        """This process's refusals and those the run's other processes recorded in the outbox
        (the job's, under ``thermoledger run``), each once."""
        lines = list(self._refused)
        message = self._control.get(self.run_id, "run") if self._control is not None else None
        host_info = message.body.get("host_info") if message is not None else None
        for info in host_info.values() if isinstance(host_info, Mapping) else ():
            refused = info.get(REFUSED_DECLARATIONS) if isinstance(info, Mapping) else None
            for line in refused if isinstance(refused, list) else ():
                if isinstance(line, str) and line not in lines:
                    lines.append(line)
        return tuple(lines)

    def _with_context(
        self, summary: MeterSummary, *, ended: bool, exit_code: int | None = None
    ) -> RunSummary:
        """``summary`` as a `RunSummary`: the meter's context, for its table."""
        settings = self.settings
        return RunSummary(
            **{f.name: getattr(summary, f.name) for f in fields(MeterSummary)},
            name=self.name,
            backend_label=self.backend_label,
            simulated=self.simulated,
            ended=ended,
            exit_code=exit_code,
            upload=self.upload,
            server=settings.server if settings is not None else None,
            spool_dir=str(settings.spool_dir) if settings is not None else "",
            refused_declarations=self._refused_run or tuple(self._refused),
        )

    def _valid_tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        out = {}
        for key, value in tags.items():
            text = str(value)
            if _TAG_KEY.match(str(key)) and len(text) <= 200 and "\x00" not in text:
                out[str(key)] = text
            else:
                self._warn_once(
                    f"tag:{key}", "thermoledger: tag %r=%r dropped (invalid)", key, value
                )
        return out

    def stop(self, *, exit_code: int | None = 0, failed: bool | None = None) -> RunSummary:
        """Stop metering: flush, record how the run ended, upload for a bounded time.

        Never raises. Returns the final summary (also after a second call).

        Args:
            exit_code: The job's exit code (0: success).
            failed: Mark the run failed (default: when ``exit_code`` is not 0 or None).
        """
        with self._lock:
            if self._final is not None:
                return self._final
            if self.state == "new":
                self.state = "stopped"
            failed = failed if failed is not None else exit_code not in (0, None)
            status: RunStatus = "failed" if failed else "finished"
            summary = empty_summary(self.run_id)
            try:
                end_s = time.time()
                if self._sampler is not None:
                    summary = self._sampler.stop(status=status, exit_code=exit_code)
                    if math.isfinite(self._sampler.closed_at_s):
                        end_s = self._sampler.closed_at_s
                    self._send_quality(summary)
                # Phases still open end with the run, at its closing edge.
                for phase in list(reversed(self._phases)):
                    if phase.t1_s is None:
                        phase.t1_s = max(end_s, phase.t0_s)
                    self._close_phase(phase)
                self._save_work(force=True)
            except Exception as e:
                self._warn_once("stop", "thermoledger: stopping the meter failed: %s", e)
            try:
                if self._uploader is not None and self.settings is not None:
                    self.upload = self._uploader.stop(
                        drain_timeout_s=self.settings.upload_timeout_s
                    )
                    self._report_upload(self.upload)
            except Exception as e:
                self._warn_once("upload", "thermoledger: the final upload failed: %s", e)
            try:
                self._refused_run = self._run_refusals()
            except Exception as e:
                self._warn_once("refused", "thermoledger: reading refusals failed: %s", e)
            self._teardown()
            if self.state in ("running", "recording"):
                self.state = "stopped"
            self._final = final = self._with_context(summary, ended=True, exit_code=exit_code)
            atexit.unregister(self._at_exit)
            return final

    def abort_upload(self) -> None:
        """Cut the final upload of `stop` short (what is left stays in the spool).

        Safe to call from a signal handler (it sets a flag, takes no lock): ``thermoledger
        run`` calls it when a signal arrives while it finishes.
        """
        uploader = self._uploader
        if uploader is not None:
            uploader.abort_drain()

    def _report_upload(self, result: PushResult) -> None:
        if result.complete:
            self._log.info(
                "thermoledger: run %s uploaded (%d chunks stored, %d duplicates)",
                self.run_id,
                result.stored,
                result.duplicates,
            )
            return
        assert self.settings is not None
        if result.token_refused:
            self._log.warning(
                "thermoledger: run %s not uploaded: %s; it is kept in the spool: push it later "
                "with `%s`",
                self.run_id,
                result.error,
                push_later(self.settings.server, self.settings.spool_dir),
            )
            return
        self._log.warning(
            "thermoledger: run %s: %d chunk(s) and %d message(s) not uploaded (%s); they are "
            "safe in %s: run `thermoledger push` later",
            self.run_id,
            result.remaining + result.refused,
            result.messages_pending,
            result.error or "; ".join(result.blocked) or "refused by the service",
            self.settings.spool_dir,
        )

    def _teardown(self) -> None:
        for close in (
            self._uploader.close if self._uploader is not None else None,
            self._backend.close if self._backend is not None and self._owns_backend else None,
            self._spool.close if self._spool is not None else None,
            self._metric_spool.close if self._metric_spool is not None else None,
            self._control.close if self._control is not None else None,
            *((s.close for s in self._upload_stores) if self._upload_stores else ()),
        ):
            if close is None:
                continue
            try:
                close()
            except Exception as e:
                self._warn_once(f"close:{type(e).__name__}", "thermoledger: closing failed: %s", e)
        self._uploader = None
        self._upload_stores = None

    def _at_exit(self) -> None:
        # The interpreter is exiting with the meter still running: keep what was measured.
        self.stop(exit_code=None, failed=False)

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        code = 0 if exc is None else _exit_code_of(exc)
        self.stop(exit_code=code, failed=code != 0)

    # -- phases and work ----------------------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, name: str, **tags: str) -> Iterator[PhaseRecord]:
        """A named window of the run (``with m.phase("epoch-3"):``), sent as a phase.

        Work added while it is open (`add_flops`, `add_tokens`) counts for it and for the run.
        Nested phases are fine. The job's exceptions pass through; the phase is closed anyway.

        Args:
            name: The phase's name (``epoch-3``, ``eval``, ``inference``).
            tags: Phase tags.

        Yields:
            The phase record (``t0_s``; ``t1_s`` after the block, unix seconds).
        """
        record = PhaseRecord(
            name=str(name).strip()[:_MAX_NAME] or "phase", t0_s=self._edge_s(), tags={}
        )
        opened = False
        if self.recording:
            try:
                with self._lock:
                    record.tags = self._valid_tags(tags)
                    self._phases.append(record)
                    opened = True
                    self._put_phase(record)
            except Exception as e:
                self._warn_once("phase", "thermoledger: recording a phase failed: %s", e)
        try:
            yield record
        finally:
            record.t1_s = max(self._edge_s(), record.t0_s)
            if opened:
                try:
                    self._close_phase(record)
                except Exception as e:
                    self._warn_once("phase", "thermoledger: recording a phase failed: %s", e)

    def record_phase(self, name: str, *, t0_s: float, **tags: str) -> PhaseRecord | None:
        """Record a phase that began at ``t0_s`` and ends now, once it is known what it was.

        For frameworks whose events mark a window's end but not its start (the Hugging Face
        Trainer says an ``evaluate()`` or a ``predict()`` ended; its first prediction step is
        the first it says of either). The end is an edge read now, as for `phase`; the start is
        a past time, so the service shares the chunk around it out by time. Work added before
        the call does not count for this phase. Never raises; a ``t0_s`` that is not a finite
        time before now is refused visibly (a warning, a line in `summary`).

        Args:
            name: The phase's name (``eval``, ``predict``).
            t0_s: When it began, unix s (``time.time()`` then).
            tags: Phase tags.

        Returns:
            The phase record, or None where nothing is recorded (refused, or not rank 0).
        """
        start = math.nan
        if isinstance(t0_s, numbers.Real) and not isinstance(t0_s, bool):
            start = float(t0_s)
        if not (math.isfinite(start) and 0 < start <= time.time()):
            self._refuse(
                "record_phase",
                f"record_phase({name!r}, t0_s={t0_s!r})",
                "need a unix time before now",
            )
            return None
        if not self.recording:
            return None
        record = PhaseRecord(
            name=str(name).strip()[:_MAX_NAME] or "phase",
            t0_s=start,
            tags={},
            t1_s=max(self._edge_s(), start),
        )
        try:
            with self._lock:
                record.tags = self._valid_tags(tags)
                self._put_phase(record)
        except Exception as e:
            self._warn_once("phase", "thermoledger: recording a phase failed: %s", e)
            return None
        return record

    def _edge_s(self) -> float:
        """A phase's edge: every device read now (`Sampler.mark`), its chunks cut there.

        Where this process samples, the edge is a synchronous reading: the phase's energy is
        the counter's difference at its edges. Elsewhere (another process meters the node,
        another rank) it is the time now, and the service shares the chunks around it out.
        """
        sampler = self._sampler
        if sampler is not None and self.state == "running":
            try:
                return sampler.mark(cut=True)
            except Exception as e:
                self._warn_once("mark", "thermoledger: reading a phase's edge failed: %s", e)
        return time.time()

    def _close_phase(self, record: PhaseRecord) -> None:
        with self._lock:
            if record not in self._phases:
                return
            self._phases.remove(record)
            if record.t1_s is None:
                record.t1_s = max(time.time(), record.t0_s)
            self._put_phase(record)
            self._save_work(force=True)

    def _put_phase(self, record: PhaseRecord) -> None:
        if self._control is not None:
            self._control.put(self.run_id, "phase", record.body(), key=record.key)
            if self._uploader is not None:
                self._uploader.nudge()

    def add_flops(self, flops: float, dtype: str = "bf16") -> None:
        """Declare FLOPs done (adds to the run and to every open phase).

        A refused argument is ignored visibly: a warning, a line in `summary` and in the
        run's report (`REFUSED_DECLARATIONS`).

        Args:
            flops: Floating-point operations, FLOP (finite, >= 0; a numpy number is fine).
            dtype: Their precision (``bf16``, ``fp8``, ``fp32`` …), for the hardware bound.
        """
        value = math.nan
        if isinstance(flops, numbers.Real | Decimal) and not isinstance(flops, bool):
            try:
                value = float(flops)
            except (TypeError, ValueError, OverflowError):
                value = math.nan
        if not (math.isfinite(value) and value >= 0 and _DTYPE.match(str(dtype))):
            self._refuse(
                "flops",
                f"add_flops({flops!r}, dtype={dtype!r})",
                "need a finite FLOP count >= 0 and a short dtype ([A-Za-z0-9_]{1,16})",
            )
            return
        if not self.recording:
            return
        with self._lock:
            for target in (self.work, *(p.work for p in self._phases)):
                target.flops_by_dtype[dtype] = target.flops_by_dtype.get(dtype, 0.0) + value
            self._work_dirty = True
            self._save_work(force=False)

    def add_tokens(self, tokens: int | float) -> None:
        """Declare tokens processed (adds to the run and to every open phase).

        A refused argument is ignored visibly: a warning, a line in `summary` and in the
        run's report (`REFUSED_DECLARATIONS`).

        Args:
            tokens: A count of tokens: any whole number >= 0 (``4096``, ``4.096e3``, a numpy
                integer; see `whole_count`).
        """
        count = whole_count(tokens, minimum=0)
        if count is None:
            self._refuse("tokens", f"add_tokens({tokens!r})", "need a whole count >= 0")
            return
        if not self.recording:
            return
        with self._lock:
            for target in (self.work, *(p.work for p in self._phases)):
                target.tokens += count
            self._work_dirty = True
            self._save_work(force=False)

    def declare_model(self, *, params: int | float) -> None:
        """Declare the model size N (parameters), so reports can estimate 6·N·D FLOPs.

        A refused argument is ignored visibly: a warning, a line in `summary` and in the
        run's report (`REFUSED_DECLARATIONS`); without N there is no 6·N·D estimate.

        Args:
            params: Parameters: any whole number > 0 (``7e9``, ``7_000_000_000``, a numpy
                number; see `whole_count`).
        """
        count = whole_count(params, minimum=1)
        if count is None:
            self._refuse(
                "params",
                f"declare_model(params={params!r})",
                "need a whole count > 0 (e.g. 7e9); no 6·N·D FLOPs, MFU or bounds from it",
            )
            return
        if not self.recording:
            return
        with self._lock:
            self.work.model_params = count
            self._work_dirty = True
            self._save_work(force=True)

    #: The metric ``record_metric(..., tokens=N)`` records the tokens seen under.
    TOKENS_SEEN: Final = "tokens_seen"

    def record_metric(
        self,
        name: str,
        value: SupportsFloat,
        *,
        step: SupportsIndex | float,
        tokens: SupportsIndex | float | None = None,
    ) -> bool:
        """Record an evaluation metric at a training step (``record_metric("eval_loss", 2.31,
        step=1200)``), for joules-to-quality figures.

        The point is stamped with the meter's clock now (unix s, the chunks' clock, so the
        service finds the run's cumulative energy at it), spooled durably beside the chunks
        (`meters.spool.Spool.put_metric`) and uploaded like them; ``(name, step)`` is its key,
        so recording the same value again is harmless. Tokens seen at a checkpoint are a metric
        like any other: pass ``tokens=`` (recorded as `TOKENS_SEEN` at the same step) or record
        ``"tokens_seen"`` yourself. Only the job's rank 0 records (as for phases and work).

        Never raises: a refused argument (a name outside 1-64 of ``[A-Za-z0-9_.:/-]``, a value
        that is not a finite real, a step that is not a whole count >= 0, or a step already
        recorded with another value) is ignored visibly: a warning, a line in `summary` and in
        the run's report (`REFUSED_DECLARATIONS`).

        Args:
            name: The metric (``eval_loss``, ``accuracy``), as a tag key.
            value: Its value (a Python or numpy real, finite), in the metric's own unit.
            step: The training step, a whole count >= 0.
            tokens: Tokens seen so far, a whole count >= 0 (optional).

        Returns:
            Whether the point was recorded (False: refused, or nothing is recorded here).
        """
        try:
            return self._record_metric(name, value, step, tokens)
        except Exception as e:
            self._warn_once("metric", "thermoledger: recording a metric failed: %s", e)
            return False

    def _record_metric(self, name: object, value: object, step: object, tokens: object) -> bool:
        number = math.nan
        if isinstance(value, numbers.Real | Decimal) and not isinstance(value, bool):
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                number = math.nan
        count = whole_count(step, minimum=0)
        seen = None if tokens is None else whole_count(tokens, minimum=0)
        extra = "" if tokens is None else f", tokens={tokens!r}"
        call = f"record_metric({name!r}, {value!r}, step={step!r}{extra})"
        needs = []
        if not (isinstance(name, str) and _TAG_KEY.match(name)):
            needs.append("a name of 1-64 [A-Za-z0-9_.:/-]")
        if not (math.isfinite(number) and abs(number) <= 1e300):
            needs.append("a finite real value")
        if count is None:
            needs.append("a whole step >= 0")
        if tokens is not None and seen is None:
            needs.append("tokens as a whole count >= 0")
        if needs or not isinstance(name, str) or count is None:
            self._refuse("metric", call, "need " + ", ".join(needs))
            return False
        if not self.recording:
            return False
        t_s = time.time()
        points = [MetricPayload(name=name, step=count, value=number, t_s=t_s)]
        if seen is not None:
            points.append(
                MetricPayload(name=self.TOKENS_SEEN, step=count, value=float(seen), t_s=t_s)
            )
        with self._lock:
            spool = self._spool or self._metric_spool
            if spool is None:
                assert self.settings is not None
                spool = self._metric_spool = Spool.in_directory(self.settings.spool_dir)
            for point in points:
                try:
                    spool.put_metric(self.run_id, point)
                except MetricConflict as e:
                    self._refuse("metric", call, f"{e}; a step's value cannot change")
                    return False
        if self._uploader is not None:
            self._uploader.nudge()
        return True

    def _save_work(self, *, force: bool) -> None:
        """Write the work totals to the outbox (throttled to `WORK_SAVE_S` unless forced)."""
        if not self._work_dirty or self._control is None or not self.recording:
            return
        now_s = time.monotonic()
        if not force and now_s - self._work_saved_s < WORK_SAVE_S:
            return
        try:
            body: dict[str, Any] = {}
            if self.work.flops_by_dtype:
                body["flops"] = {"value": self.work.flops, "unit": "FLOP"}
                body["dtype"] = self.work.dtype
                if len(self.work.flops_by_dtype) > 1:
                    self._warn_once(
                        "dtypes",
                        "thermoledger: FLOPs in several precisions %s; the run declares the "
                        "total under the largest share (%s)",
                        sorted(self.work.flops_by_dtype),
                        self.work.dtype,
                    )
            if self.work.tokens:
                body["tokens"] = self.work.tokens
            if self.work.model_params is not None:
                body["model_params"] = self.work.model_params
            self._control.put(self.run_id, "work", body)
            self._work_dirty = False
            self._work_saved_s = now_s
            if self._uploader is not None:
                self._uploader.nudge()
        except Exception as e:
            self._warn_once("work", "thermoledger: recording work failed: %s", e)

    # -- figures ------------------------------------------------------------------------------

    def summary(self) -> RunSummary:
        """Energy so far per device (sealed chunks plus the open one), method and band.

        While metering, every device is read first, so the figures reach the moment of the
        call (with an energy counter: exactly). ``print(m.summary())`` prints the table
        ``thermoledger run`` prints, with any refused declaration.

        A meter that samples nothing (another process meters this node, or it is disabled)
        has no devices: look at `sampling` before reading an empty summary as zero energy.
        """
        if self._final is not None:
            return self._final
        sampler = self._sampler
        summary = empty_summary(self.run_id)
        if sampler is not None:
            try:
                if self.state == "running":
                    sampler.mark(cut=False)  # the figures reach this instant, not the last tick
                summary = sampler.summary()
            except Exception as e:
                self._warn_once("summary", "thermoledger: summary failed: %s", e)
        return self._with_context(summary, ended=False)

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self._log.warning(message, *args)


@overload
def meter(run: Callable[P, R]) -> Callable[P, R]: ...
@overload
def meter(run: str | None = None, **options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def meter(run: Any = None, **options: Any) -> Any:
    """Decorator: each call of the function is metered as one run (``@meter`` or ``@meter(...)``).

    Args:
        run: The run's name (default: the function's qualified name).
        options: Any other `Meter` argument.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        name = run if isinstance(run, str) else func.__qualname__

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with Meter(name, **options):
                return func(*args, **kwargs)

        return wrapper

    return decorate(run) if callable(run) else decorate
