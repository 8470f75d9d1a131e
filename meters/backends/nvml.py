"""NVIDIA GPUs through NVML (the ``pynvml`` module of NVIDIA's ``nvidia-ml-py``).

What is read, per GPU and tick:

- **Energy**: ``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver was last
  loaded (Volta and newer; NotSupported before). Passed on raw in joules: a decrease means the
  driver was reloaded (`DeviceInfo.counter_wrap_j` is None: NVML's counter does not wrap).
- **Power**: chosen per GPU at open, by ``power_reading`` (`meters.settings.PowerReading`):
  the driver's 1 s average where the GPU has one (the default), else the instantaneous
  reading; which call gives which on which chip, and the GA100 exception, are
  `meters.backends.nvml_power`'s. Both in milliwatts.

- **Memory activity** (about once a second, not every tick: `meters.sampler`):
  ``nvmlDeviceGetUtilizationRates(handle).memory``, the "percent of time over the past sample
  period during which global (device) memory was being read or written" (the period is 1/6 s to
  1 s by product), as a fraction (`NvmlBackend.memory_busy_frac`). A GPU that answers
  NOT_SUPPORTED (MIG mode on: "querying device utilization rates is not currently supported")
  or FUNCTION_NOT_FOUND is not asked again; a failed read is NaN for that reading.

One call per GPU and tick where the driver allows: nvml.h documents the field value
``NVML_FI_DEV_ENERGY`` (191) as the same counter as ``nvmlDeviceGetTotalEnergyConsumption``, so
power and energy can come from one ``nvmlDeviceGetFieldValues(handle, [power field, 191])``. That
is trusted per GPU only after a check at open: the field answers, and the counter read right after
it is not below it and not ahead by more than the power limit times the time between the two reads
and one counter update period (100 ms: a counter step may fall between the reads), plus 1 J, so
that the check does not pass or fail by where a step fell (`DeviceInfo.note` and
`NvmlBackend.energy_in_field` say which path each GPU takes).
Otherwise the GPU keeps two calls. Per-field return codes are translated like the errors of the
separate calls, by the same function.

Which GPUs (`meters.backends.nvml_selection`, which has the rules in full): an explicit
``gpus=[...]`` always wins (NVML indices or UUIDs / UUID prefixes; an unknown entry raises); else
Slurm's ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS`` (ids and ranges, matched by
``nvmlDeviceGetMinorNumber``): the job's GPUs on the node; else, for one of several local ranks
whose ``CUDA_VISIBLE_DEVICES`` names fewer GPUs than it can open, every GPU it can open (the node
meter, local rank 0 by `meters.runid.elect`, covers every rank's GPU); else
``CUDA_VISIBLE_DEVICES`` with CUDA's own rules; else every GPU the process may open. Integer
``CUDA_VISIBLE_DEVICES`` entries are CUDA ordinals: read through libcuda where it may be asked
(``cuda_uuids``; `meters.backends.cuda_ordinals`), else by PCI bus id under
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, else in NVML order, warned once on a node of mixed models. The
rule that applied is `Selection.rule`, logged at INFO. A GPU whose handle NVML refuses
(NO_PERMISSION: a device cgroup, as under Slurm or in a container) is not metered and is named,
with the reason, in `Selection.unopened` and once in the log. A MIG entry selects its parent GPU,
metered once however many of its instances are named.

**C2C superchips** (GH200, GB200): the GPU's counter and power cover the whole module, Grace CPU,
GPU and their memory, and the GPU-scope power fields are refused. Such a GPU is told by
``nvmlDeviceGetC2cModeInfoV`` (``isC2cEnabled``), or, where the binding or driver lacks that,
by a Hopper-or-newer GPU whose GPU-scope power fields are all refused while the same fields at
``NVML_POWER_SCOPE_MODULE`` answer. It is described with ``scope="module"`` (so
``covers=("cpu",)``: reports list the host's CPU packages but never add them to a total again)
and its power fields are asked at module scope, so power and counter cover the same thing.

At open, only NOT_SUPPORTED and FUNCTION_NOT_FOUND make a capability absent. A transient code
(TIMEOUT, NO_DATA, ...: `nvml_api.RETRIED_CODES`) is asked again, three times in all, 10 ms apart;
any other refusal, or a transient one that lasts, is named with its code in `DeviceInfo.note` (a
permission error with its fix), and a counter refused that way is kept, each tick saying whether
it answers.

Each read fills a `meters.backends.base.FlatBuffer`, one GPU at a time through
`NvmlBackend.read_device`: `NvmlBackend.read` freezes it into the `Readings`,
`NvmlBackend.read_flat` hands its lists over as they are, and the sampler calls ``read_device``
itself, GPU by GPU, so that a GPU whose calls hang holds up only its own readings (NVML is
thread-safe; each GPU's state here is touched only by the thread reading it).

Failures: NVML errors are translated once, by `translate_nvml_error`. A GPU that falls off the bus
(GPU is lost, reset required, unknown error) is marked `DeviceStatus.LOST` from then on and is not
called again; the other GPUs carry on. A transient failure (timeout, no data, ...), or a field
value that is negative or not finite, makes that figure NaN with `DeviceStatus.ERROR` for that
tick only. `close` waits (1 s at most) for reads still inside NVML before ``nvmlShutdown``.

Where things are: this module is the backend (how each GPU's readings are chosen at open, and read
per tick). NVML's constants, the `NvmlModule` Protocol and `translate_nvml_error` are in
`meters.backends.nvml_api` (constants spelt ``nvml_api.NVML_…``; the other two are re-exported
here), the selection in `meters.backends.nvml_selection`, and ``read``, ``read_flat``, ``close``
and the context manager are `meters.backends.vendor.VendorBackend`'s, shared with AMD SMI.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import (
    DeviceLost,
    DeviceUnavailable,
    MeterError,
    NotSupported,
    PermissionDenied,
    ReadError,
)
from ..settings import PowerReading, check_power_reading
from .base import Clock, DeviceInfo, DeviceStatus, FlatBuffer, Method, UncertaintyHint
from .cuda_ordinals import libcuda_uuids_isolated
from .nvml_api import (
    ABSENT_CODES,
    NVML_DEVICE_ARCH_HOPPER,
    NVML_DEVICE_ARCH_VOLTA,
    NVML_DEVICE_MIG_ENABLE,
    NVML_ERROR_UNKNOWN,
    NVML_FI_DEV_ENERGY,
    NVML_FI_DEV_POWER_AVERAGE,
    NVML_FI_DEV_POWER_INSTANT,
    NVML_POWER_SCOPE_GPU,
    NVML_POWER_SCOPE_MODULE,
    NVML_SUCCESS,
    RETRIED_CODES,
    UNSIGNED_MEMBERS,
    VALUE_MEMBERS,
    NvmlHandle,
    NvmlModule,
    field_number,
    translate_nvml_error,
)
from .nvml_power import (
    AVERAGE_USAGE_WINDOW_S,
    FIELD_CHOICES,
    FieldRequest,
    PowerChoice,
    at_least_ampere,
    is_ga100,
    pci_device_id,
    usage_method,
)
from .nvml_selection import Enumerated, Lookups, Selection, select
from .vendor import TRANSIENT, VendorBackend, status_of

__all__ = ["NvmlBackend", "NvmlModule", "Selection", "is_ga100", "translate_nvml_error"]

_POWER_REL = 0.05  # NVML: "+/- 5% of current power draw"
_POWER_ABS_W = 5.0  # nvidia-smi: "accurate to within +/- 5 W"
_COUNTER_RESOLUTION_J = 1e-3  # the counter counts millijoules
_COUNTER_UPDATE_S = 0.1  # "updated every 20-100 ms" on recent GPUs
# The energy field must trail the counter read after it by at most what the GPU can draw in
# between: its power limit (this when NVML gives none: above any single board today) times the
# gap plus one counter update period (a step of the counter may fall between the two reads and
# carry up to a period's energy at once), plus 1 J for rounding. Below one step's energy the
# check would pass or fail by where the step fell: by chance, from one run to the next.
_UNKNOWN_LIMIT_W = 2000.0
_FIELD_SLACK_J = 1.0

# At open, a query answered by a transient code (`nvml_api.RETRIED_CODES`) is asked again, this
# many times in all, this long apart: at most ~0.03 s per query that keeps failing.
_OPEN_TRIES = 3
_RETRY_WAIT_S = 0.01
# `close` waits at most this long for reads still in NVML before it shuts NVML down.
_CLOSE_WAIT_S = 1.0

_COUNTER = Method.COUNTER  # a global load per GPU and tick instead of an enum lookup

_LOG = logging.getLogger(__name__)

T = TypeVar("T")
# libcuda reads these from the process environment: CUDA is asked only where the selection's
# environment agrees with the process's on both.
_CUDA_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
_MODULE_NOTE = (
    "C2C superchip ({how}): its counter and power cover the whole module (CPU, GPU and their "
    "memory); the host's CPU devices are listed but not added again"
)


@dataclass(slots=True)
class _Gpu:
    info: DeviceInfo
    handle: NvmlHandle
    field_id: int | None  # power through this field value, else through GetPowerUsage
    power_method: Method
    has_counter: bool
    lost: str = ""  # non-empty once the GPU fell off the bus: the reason
    # [power request, NVML_FI_DEV_ENERGY] when one call reads both (checked at open), else None
    combined: list[FieldRequest] | None = None
    # the power field as asked: the id, or (id, NVML_POWER_SCOPE_MODULE) on a C2C superchip
    field_request: FieldRequest | None = None
    other_reading: bool = False  # lacks the kind of power reading asked for: gives the other
    reading: bool = False  # a read of this GPU is in NVML now (`close` waits for it)
    memory_activity: bool = True  # False once utilization rates answered NOT_SUPPORTED


@dataclass(frozen=True, slots=True)
class _Refused:
    """A query NVML did not answer at open: its return code and the translated error."""

    code: int
    error: MeterError

    @property
    def absent(self) -> bool:
        """Whether the code says the GPU or driver lacks it (NOT_SUPPORTED, FUNCTION_NOT_FOUND)."""
        return self.code in ABSENT_CODES

    @property
    def why(self) -> str:
        """The error, with the retries said (a permission error carries its fix)."""
        tries = f" (asked {_OPEN_TRIES} times)" if self.code in RETRIED_CODES else ""
        return f"{self.error}{tries}"


class NvmlBackend(VendorBackend[_Gpu]):
    """A `PowerBackend` over NVIDIA GPUs.

    Args:
        nvml: The NVML module; default ``import pynvml`` (from ``nvidia-ml-py``). Tests pass
            ``meters.testing.fake_pynvml.FakeNvml(...)``.
        gpus: Explicit selection: NVML indices or UUID strings (``GPU-…`` full or a unique prefix,
            ``MIG-…``). Overrides ``CUDA_VISIBLE_DEVICES``; an entry that names no GPU raises.
        env: Environment to take ``CUDA_VISIBLE_DEVICES`` from (default: ``os.environ``, read once
            here).
        clock: Time source for the readings' timestamps (default: the system clocks).
        power_reading: Which power reading to take, per GPU (module docstring): ``"auto"``
            (default: the driver's 1 s average where the GPU has one, else the instantaneous
            reading), ``"average"`` (the same, and a warning naming every GPU without an
            average) or ``"instant"`` (the instantaneous reading where there is one, with a
            warning for the others).
        logger: Where those warnings go (default: this module's logger).
        cuda_uuids: CUDA's devices in CUDA's order, by UUID, for integer
            ``CUDA_VISIBLE_DEVICES`` entries (default: asked of libcuda in a child process,
            `meters.backends.cuda_ordinals`). Asked only where ``env`` agrees with the process
            environment on ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER``, and an integer
            entry is read; a failure falls through to the other rules.

    Raises:
        DeviceUnavailable: ``pynvml`` is not installed, no driver, or an explicit ``gpus`` entry
            names no GPU.
        SettingsError: ``power_reading`` is not one of the three.
    """

    def __init__(
        self,
        *,
        nvml: NvmlModule | None = None,
        gpus: Sequence[int | str] | None = None,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        power_reading: PowerReading = "auto",
        logger: logging.Logger | None = None,
        cuda_uuids: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.power_reading: PowerReading = check_power_reading(power_reading)
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._log = logger if logger is not None else _LOG
        super().__init__(clock)
        self._call(self._nvml.nvmlInit)
        self._open = True
        try:
            enumerated = self._enumerate()
            environment = os.environ if env is None else env
            same_env = all(environment.get(k) == os.environ.get(k) for k in _CUDA_ENV)
            cuda = cuda_uuids if cuda_uuids is not None else libcuda_uuids_isolated
            lookups = Lookups(
                self.mig_parent_uuid,
                minor_number=self._minor_number,
                pci_bus_id=self._pci_bus_id,
                name=self._name,
                cuda_uuids=cuda if same_env else None,
            )
            self.selection = selection = select(enumerated, gpus, environment, lookups)
            self._gpus = tuple(
                self._probe(enumerated[i], i in selection.via_mig) for i in selection.indices
            )
        except BaseException:
            self.close()
            raise
        self._note_selection(selection)
        if self.selection.unopened:
            self._log.warning(
                "NVML lists GPU(s) this process may not open, not metered: %s",
                "; ".join(self.selection.unopened),
            )
        self._warn_other_reading(self._log)

    @property
    def energy_in_field(self) -> tuple[bool, ...]:
        """Per GPU, in array order: whether energy comes with power in one field-values call.

        True where the ``NVML_FI_DEV_ENERGY`` field passed the check against the counter at open;
        False where energy is read by ``nvmlDeviceGetTotalEnergyConsumption`` (or not at all).
        """
        return tuple(gpu.combined is not None for gpu in self._gpus)

    # -- internals ----------------------------------------------------------------------------

    def _shut_down(self) -> None:
        """``nvmlShutdown``, once no read is in NVML (waiting `_CLOSE_WAIT_S` at most).

        A read that started before `close` may still be inside an NVML call on a sampler
        thread; shutting NVML down under it is undefined behaviour in the driver library. After
        the wait NVML is left initialised instead (the process is ending; the driver frees it).
        """
        gpus = getattr(self, "_gpus", ())
        deadline_s = time.monotonic() + _CLOSE_WAIT_S
        while any(gpu.reading for gpu in gpus):
            if time.monotonic() >= deadline_s:
                busy = [gpu.info.uid for gpu in gpus if gpu.reading]
                self._log.warning(
                    "NVML left initialised: a read of %s was still pending after %.1f s",
                    ", ".join(busy),
                    _CLOSE_WAIT_S,
                )
                return
            time.sleep(0.001)
        self._call(self._nvml.nvmlShutdown)

    def _call(self, fn: Callable[..., T], *args: Any, device: str | None = None) -> T:
        try:
            return fn(*args)
        except self._nvml.NVMLError as e:
            code = getattr(e, "value", NVML_ERROR_UNKNOWN)
            name = getattr(fn, "__name__", "NVML call")
            raise translate_nvml_error(int(code), call=name, device=device) from e

    def _ask(self, fn: Callable[..., T], *args: Any, device: str | None = None) -> T:
        """``_call`` at open: a transient code (`RETRIED_CODES`) is asked again, bounded."""
        for _ in range(_OPEN_TRIES - 1):
            try:
                return self._call(fn, *args, device=device)
            except ReadError as e:
                if _code(e) not in RETRIED_CODES:
                    raise
            time.sleep(_RETRY_WAIT_S)
        return self._call(fn, *args, device=device)

    def _query(self, fn: Callable[..., T], *args: Any, device: str) -> T | _Refused:
        """A capability query at open: its answer, or why NVML gave none (a lost GPU raises)."""
        try:
            return self._ask(fn, *args, device=device)
        except DeviceLost:
            raise
        except MeterError as e:
            return _Refused(_code(e), e)

    def _field_values(self, handle: NvmlHandle, uid: str, fields: list[FieldRequest]) -> Any:
        """``nvmlDeviceGetFieldValues`` at open, asked again while a field answers a transient code.

        Returns:
            The field values (each with its own ``nvmlReturn``), or `_Refused` for the call.
        """
        for _ in range(_OPEN_TRIES - 1):
            values = self._query(self._nvml.nvmlDeviceGetFieldValues, handle, fields, device=uid)
            if isinstance(values, _Refused) or not any(
                int(value.nvmlReturn) in RETRIED_CODES for value in values
            ):
                return values
            time.sleep(_RETRY_WAIT_S)
        return self._query(self._nvml.nvmlDeviceGetFieldValues, handle, fields, device=uid)

    def _enumerate(self) -> list[Enumerated]:
        found = []
        for index in range(self._call(self._nvml.nvmlDeviceGetCount)):
            entry = Enumerated(index)
            try:
                entry.handle = self._ask(self._nvml.nvmlDeviceGetHandleByIndex, index)
                entry.uuid = self._ask(self._nvml.nvmlDeviceGetUUID, entry.handle)
            except PermissionDenied as e:
                # a device cgroup (Slurm, a container) hides this GPU: not this process's GPU
                entry.error, entry.refused = str(e), True
            except (DeviceLost, ReadError, DeviceUnavailable, NotSupported) as e:
                entry.error = str(e)
            found.append(entry)
        return found

    def mig_parent_uuid(self, mig_uuid: str) -> str:
        """The UUID of the GPU that hosts the MIG device ``mig_uuid``.

        Raises:
            MeterError: NVML knows no such MIG device (translated NVML error).
        """
        mig = self._call(self._nvml.nvmlDeviceGetHandleByUUID, mig_uuid, device=mig_uuid)
        parent = self._call(
            self._nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, mig, device=mig_uuid
        )
        return self._call(self._nvml.nvmlDeviceGetUUID, parent, device=mig_uuid)

    def _lookup(self, fn: Callable[..., T], entry: Enumerated) -> T | None:
        """One question the selection asks of an opened GPU; None where NVML gives no answer."""
        try:
            got = self._query(fn, entry.handle, device=entry.uuid or f"GPU {entry.index}")
        except DeviceLost:
            return None
        return None if isinstance(got, _Refused) else got

    def _minor_number(self, entry: Enumerated) -> int | None:
        got = self._lookup(self._nvml.nvmlDeviceGetMinorNumber, entry)
        return None if got is None else int(got)

    def _pci_bus_id(self, entry: Enumerated) -> str | None:
        bus_id = getattr(self._lookup(self._nvml.nvmlDeviceGetPciInfo, entry), "busId", None)
        if isinstance(bus_id, bytes):
            bus_id = bus_id.decode(errors="replace")
        return bus_id if isinstance(bus_id, str) and bus_id else None

    def _name(self, entry: Enumerated) -> str | None:
        got = self._lookup(self._nvml.nvmlDeviceGetName, entry)
        return None if got is None else str(got)

    def _note_selection(self, selection: Selection) -> None:
        """Say which rule chose the GPUs: in the log, and on the GPUs where it matters."""
        self._log.info("NVML: metering GPU(s) %s: %s", list(selection.indices), selection.rule)
        for warning in selection.warnings:
            self._log.warning("NVML: %s", warning)
        if selection.source in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
            for ignored in selection.ignored:
                self._log.warning("NVML: not metered: %s", ignored)
        for gpu in self._gpus:
            notes = [gpu.info.note] if gpu.info.note else []
            if selection.source in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "local_ranks"):
                notes.append(f"metered as one of the job's GPUs on this node ({selection.source})")
            if selection.warnings and gpu.info.index in selection.by_ordinal:
                notes.append(
                    "chosen by a CUDA ordinal on a node of mixed GPU models: may not be the GPU "
                    "CUDA calls by that number"
                )
            if len(notes) > (1 if gpu.info.note else 0):
                gpu.info = dataclasses.replace(gpu.info, note="; ".join(notes))

    def _c2c_mode(self, handle: NvmlHandle, uid: str, problems: list[str]) -> bool | None:
        """Whether the GPU is half of a C2C superchip (GH200, GB200); None: NVML cannot say.

        ``nvmlDeviceGetC2cModeInfoV`` (``isC2cEnabled``), where the binding has it and the
        driver answers. An older binding or driver leaves it to the field probe at module
        scope (`_choose_power`).
        """
        fn = getattr(self._nvml, "nvmlDeviceGetC2cModeInfoV", None)
        if fn is None:
            return None
        got = self._query(fn, handle, device=uid)
        if isinstance(got, _Refused):
            if not got.absent:
                problems.append(got.why)
            return None
        return bool(getattr(got, "isC2cEnabled", 0))

    def _probe(self, entry: Enumerated, via_mig: bool) -> _Gpu:
        """Describe one GPU and choose how to read it (module docstring).

        Only NOT_SUPPORTED and FUNCTION_NOT_FOUND make a capability absent. A transient code is
        asked again a few times (`_ask`); any other refusal is named, code and all (a permission
        error with its fix), in the GPU's note, and a counter refused that way is kept: each
        tick then says whether it reads.
        """
        if entry.uuid is None:
            return self._unreachable(entry, via_mig)
        handle, uid = entry.handle, entry.uuid
        problems: list[str] = []  # refusals at open that are not "absent"

        def answer(fn: Callable[..., T]) -> T | None:
            got = self._query(fn, handle, device=uid)
            if not isinstance(got, _Refused):
                return got
            if not got.absent:
                problems.append(got.why)
            return None

        try:
            name = answer(self._nvml.nvmlDeviceGetName)
            limit_mw = answer(self._nvml.nvmlDeviceGetPowerManagementLimit)
            arch = answer(self._nvml.nvmlDeviceGetArchitecture)
            mig_mode = answer(self._nvml.nvmlDeviceGetMigMode)
            counter = self._query(
                self._nvml.nvmlDeviceGetTotalEnergyConsumption, handle, device=uid
            )
            c2c = self._c2c_mode(handle, uid, problems)
            power = self._choose_power(handle, uid, name or "", arch, problems, c2c)
            combined, energy_note = None, ""
            request = power.request
            if request is not None and not isinstance(counter, _Refused):
                combined, energy_note = self._probe_energy_field(handle, uid, request, limit_mw)
        except DeviceLost as e:
            entry.error = str(e)
            return self._unreachable(entry, via_mig)

        notes = [] if name is not None else ["NVML gave no name"]
        module = c2c is True or power.scope == NVML_POWER_SCOPE_MODULE
        if module:
            how = (
                "nvmlDeviceGetC2cModeInfoV: C2C on"
                if c2c
                else "its power fields answer at module scope only"
            )
            notes.append(_MODULE_NOTE.format(how=how))
        method = power.method
        notes.append(power.note)
        has_counter = not isinstance(counter, _Refused) or not counter.absent
        if not has_counter:
            before_volta = arch is not None and arch < NVML_DEVICE_ARCH_VOLTA
            why = "before Volta" if before_volta else "NVML: Not Supported"
            notes.append(f"no energy counter ({why}): energy must come from power")
        elif isinstance(counter, _Refused):
            notes.append(
                f"energy counter kept although it did not answer at open ({counter.why}): "
                "each reading says whether it answers"
            )
        notes.append(energy_note)
        mig = via_mig or (mig_mode is not None and mig_mode[0] == NVML_DEVICE_MIG_ENABLE)
        if mig:
            notes.append("MIG: power and energy are for the whole GPU, shared by its instances")
        if method == Method.POWER_INSTANT and arch is not None and at_least_ampere(arch):
            notes.append(
                "instantaneous samples may cover only part of the runtime "
                "(about 25 % on A100/H100, Yang et al. SC24): prefer the counter"
            )
        if problems:
            notes.append("at open: " + "; ".join(dict.fromkeys(problems)))
        hint_note = (
            "NVML module power (CPU, GPU and their memory); ±5 % or ±5 W"
            if module
            else "NVML board power (GPU and its memory); ±5 % or ±5 W"
        )
        info = DeviceInfo(
            backend="nvml",
            index=entry.index,
            uid=uid,
            name=name or "",
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            has_energy_counter=has_counter,
            power_method=method,
            counter_wrap_j=None,
            scope="module" if module else "gpu",
            mig=mig,
            uncertainty=UncertaintyHint(
                power_rel=_POWER_REL,
                power_abs_w=_POWER_ABS_W,
                power_window_s=power.window_s,
                counter_resolution_j=_COUNTER_RESOLUTION_J if has_counter else None,
                counter_update_s=_COUNTER_UPDATE_S if has_counter else None,
                note=f"{hint_note}; power: {power.source}" if power.source else hint_note,
            ),
            note="; ".join(note for note in notes if note),
        )
        return _Gpu(
            info,
            handle,
            power.field_id,
            method,
            has_counter,
            combined=combined,
            other_reading=power.other,
            field_request=request,
        )

    def _choose_power(
        self,
        handle: NvmlHandle,
        uid: str,
        name: str,
        arch: int | None,
        problems: list[str],
        c2c: bool | None = False,
    ) -> PowerChoice:
        """Which power reading this GPU gives for ``power_reading`` (module docstring).

        One field-values call asks for both power fields. ``nvmlDeviceGetPowerUsage`` (and, on
        Ampere and newer, the PCI id that says what it returns) is asked only when the field of
        the wanted kind does not answer. Refusals that are not "absent" go to ``problems``.

        On a C2C superchip (``c2c``; or, where NVML cannot say, a Hopper or newer GPU whose
        GPU-scope power fields are all refused) the fields are asked at module scope: the whole
        module's power, as its counter counts it. A superchip whose module-scope fields are
        refused falls back to the GPU-scope ones, said in the note.
        """
        scope = NVML_POWER_SCOPE_GPU
        answered = frozenset() if c2c else self._probe_fields(handle, uid, problems)
        maybe_module = (
            c2c is None and not answered and (arch is None or arch >= NVML_DEVICE_ARCH_HOPPER)
        )
        scope_note = ""
        if c2c or maybe_module:
            at_module = self._probe_fields(handle, uid, problems, NVML_POWER_SCOPE_MODULE)
            if at_module:
                answered, scope = at_module, NVML_POWER_SCOPE_MODULE
            elif c2c:
                answered = self._probe_fields(handle, uid, problems)
                if answered:
                    scope_note = (
                        "power fields at GPU scope only (the CPU's share is not in the power "
                        "readings, only in the counter)"
                    )
        choice = self._power_of(handle, uid, name, arch, problems, answered)
        if scope != NVML_POWER_SCOPE_GPU and choice.field_id is not None:
            choice = dataclasses.replace(
                choice, scope=scope, source=f"{choice.source}, at module scope"
            )
        if scope_note:
            note = f"{choice.note}; {scope_note}" if choice.note else scope_note
            choice = dataclasses.replace(choice, note=note)
        return choice

    def _power_of(
        self,
        handle: NvmlHandle,
        uid: str,
        name: str,
        arch: int | None,
        problems: list[str],
        answered: frozenset[int],
    ) -> PowerChoice:
        """The reading among the answered power fields and ``nvmlDeviceGetPowerUsage``."""
        want_average = self.power_reading != "instant"
        wanted, other = (
            (NVML_FI_DEV_POWER_AVERAGE, NVML_FI_DEV_POWER_INSTANT)
            if want_average
            else (NVML_FI_DEV_POWER_INSTANT, NVML_FI_DEV_POWER_AVERAGE)
        )
        if wanted in answered:
            return FIELD_CHOICES[wanted]
        usage = self._usage_choice(handle, uid, name, arch, problems)
        wanted_method = Method.POWER_AVG if want_average else Method.POWER_INSTANT
        if usage is not None and usage.method == wanted_method:
            return usage
        fallback = FIELD_CHOICES[other] if other in answered else usage
        if fallback is None:
            return PowerChoice(None, Method.NONE, None, "", "no power reading on this GPU")
        if want_average:
            why = usage.note if usage is not None else ""
            if not why and arch is not None and not at_least_ampere(arch):
                why = "before Ampere"
            said = "no averaged power on this GPU" + (f" ({why})" if why else "")
            said += ": instantaneous readings, which alias loads not in step with the tick"
        else:
            said = "no instantaneous power on this GPU: its 1 s average instead"
        return PowerChoice(
            fallback.field_id, fallback.method, fallback.window_s, fallback.source, said, True
        )

    def _usage_choice(
        self, handle: NvmlHandle, uid: str, name: str, arch: int | None, problems: list[str]
    ) -> PowerChoice | None:
        """``nvmlDeviceGetPowerUsage`` as a reading, or None where the GPU lacks it.

        Refused by any code but NOT_SUPPORTED / FUNCTION_NOT_FOUND, it is kept (the refusal in
        ``problems``): each tick then says whether it answers.
        """
        usage = self._query(self._nvml.nvmlDeviceGetPowerUsage, handle, device=uid)
        if isinstance(usage, _Refused):
            if usage.absent:
                return None
            problems.append(usage.why)
        device_id = None
        if arch is not None and at_least_ampere(arch):
            pci = self._query(self._nvml.nvmlDeviceGetPciInfo, handle, device=uid)
            if isinstance(pci, _Refused):
                if not pci.absent:
                    problems.append(pci.why)
                pci = None
            device_id = pci_device_id(pci)
        method, why = usage_method(name, arch, device_id)
        if method == Method.POWER_AVG:
            source = (
                "nvmlDeviceGetPowerUsage, the mean of the last 1 s (NVML API reference: "
                "'averaged over 1 sec interval' on Ampere except GA100 and newer)"
            )
            return PowerChoice(None, method, AVERAGE_USAGE_WINDOW_S, source, why)
        return PowerChoice(None, method, None, "nvmlDeviceGetPowerUsage, instantaneous", why)

    def _warn_other_reading(self, log: logging.Logger) -> None:
        """One log line naming the GPUs that lack the reading asked for (not under ``auto``)."""
        if self.power_reading == "auto":
            return
        others = [gpu.info for gpu in self._gpus if gpu.other_reading]
        if not others:
            return
        names = ", ".join(f"{info.index} ({info.name or info.uid})" for info in others)
        if self.power_reading == "average":
            log.warning(
                "power_reading=average: GPU(s) %s offer no averaged power; they are read "
                "instantaneously, which aliases loads not in step with the sampling tick "
                "(their energy counter, where they have one, is unaffected)",
                names,
            )
        else:
            log.warning(
                "power_reading=instant: GPU(s) %s offer no instantaneous power; their 1 s "
                "average is read instead",
                names,
            )

    def _probe_energy_field(
        self, handle: NvmlHandle, uid: str, field_id: FieldRequest, limit_mw: int | None
    ) -> tuple[list[FieldRequest] | None, str]:
        """Whether ``NVML_FI_DEV_ENERGY`` agrees with the counter here: the fields, and a note.

        The field is read first and the counter right after, so a field that is the counter shows
        0 <= counter - field <= limit x (gap + one counter update period) + 1 J, wherever a
        counter step falls between the two reads; any other answer keeps the two-call path.
        """
        fields: list[FieldRequest] = [field_id, NVML_FI_DEV_ENERGY]
        fallback = "energy by nvmlDeviceGetTotalEnergyConsumption (a second call per tick): "
        t0_s = self._clock.monotonic_s()
        values = self._field_values(handle, uid, fields)
        if isinstance(values, _Refused):
            return None, fallback + f"nvmlDeviceGetFieldValues refused ({values.why})"
        try:
            field_mj = field_number(values[1], NVML_FI_DEV_ENERGY, uid)
        except DeviceLost:
            raise
        except MeterError as e:
            return None, fallback + f"NVML_FI_DEV_ENERGY unusable ({e})"
        counter_mj = self._query(self._nvml.nvmlDeviceGetTotalEnergyConsumption, handle, device=uid)
        gap_s = self._clock.monotonic_s() - t0_s
        if isinstance(counter_mj, _Refused):
            return None, fallback + f"the counter did not answer the check ({counter_mj.why})"
        limit_w = _UNKNOWN_LIMIT_W if limit_mw is None else limit_mw / 1000.0
        slack_mj = 1000.0 * (limit_w * (gap_s + _COUNTER_UPDATE_S) + _FIELD_SLACK_J)
        ahead_mj = counter_mj - field_mj
        if not 0.0 <= ahead_mj <= slack_mj:
            return None, fallback + (
                f"NVML_FI_DEV_ENERGY ({field_mj:.0f} mJ) disagrees with the counter "
                f"({counter_mj} mJ)"
            )
        return fields, "power and energy in one nvmlDeviceGetFieldValues call (NVML_FI_DEV_ENERGY)"

    def _probe_fields(
        self, handle: NvmlHandle, uid: str, problems: list[str], scope: int = NVML_POWER_SCOPE_GPU
    ) -> frozenset[int]:
        """The power fields (average, instant) the driver answers at ``scope``, in one call.

        A field refused by any code but NOT_SUPPORTED / FUNCTION_NOT_FOUND is named in
        ``problems`` (with the fix, for a permission error).
        """
        fields = [NVML_FI_DEV_POWER_AVERAGE, NVML_FI_DEV_POWER_INSTANT]
        requests: list[FieldRequest] = (
            list(fields) if scope == NVML_POWER_SCOPE_GPU else [(f, scope) for f in fields]
        )
        values = self._field_values(handle, uid, requests)
        if isinstance(values, _Refused):
            if not values.absent:
                problems.append(values.why)
            return frozenset()
        answered = set()
        for field_id, value in zip(fields, values, strict=True):
            code = int(value.nvmlReturn)
            if code == NVML_SUCCESS and int(value.valueType) in VALUE_MEMBERS:
                answered.add(field_id)
            elif code != NVML_SUCCESS and code not in ABSENT_CODES:
                call = f"nvmlDeviceGetFieldValues({field_id})"
                refused = _Refused(code, translate_nvml_error(code, call=call, device=uid))
                problems.append(refused.why)
        return frozenset(answered)

    def _unreachable(self, entry: Enumerated, via_mig: bool) -> _Gpu:
        """A GPU that NVML lists but that did not answer while opening: metered as lost."""
        info = DeviceInfo(
            backend="nvml",
            index=entry.index,
            uid=entry.uuid or f"NVML-INDEX-{entry.index}",
            name="",
            power_limit_w=None,
            has_energy_counter=False,
            power_method=Method.NONE,
            mig=via_mig,
            note=f"did not answer while opening: {entry.error}",
        )
        return _Gpu(info, entry.handle, None, Method.NONE, False, lost=entry.error or "lost")

    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        """Read GPU ``i`` (array order) into slot ``i`` of ``buffer``, timed at the call's middle.

        `meters.backends.base.DeviceReader`: the sampler reads GPU by GPU, so that a GPU whose
        calls hang holds up only its own slot. Safe on several threads at once for different
        GPUs; one GPU must not be read on two threads at once.

        The common case is handled here, inline: a GPU whose power and energy come in one
        field-values call, both fields answered, as unsigned integers (finite and non-negative
        by type, so the buffer's checks cannot fail and are skipped). At 10 Hz the helper calls
        of the general path cost about as much as the NVML call itself. Anything else (the call
        or a field failed, another value type, a GPU read with two calls, a lost one) goes the
        general way, with the result of the same call.
        """
        self.read_device_at(buffer, i, i)

    def read_device_at(self, buffer: FlatBuffer, slot: int, i: int) -> None:
        """GPU ``i`` into ``slot`` of a larger buffer (`base.SlotReader`, as a node reads)."""
        gpu = self._gpus[i]
        monotonic_s = self._monotonic_s
        t0_s = monotonic_s()
        fields = gpu.combined
        # Marked before `_open` is looked at, and `close` clears `_open` before it looks at the
        # marks: a read either sees the backend closed or is waited for (`_shut_down`).
        gpu.reading = True
        try:
            if fields is None or gpu.lost or not self._open:
                self._read_one(buffer, slot, gpu)
            else:
                try:
                    values = self._nvml.nvmlDeviceGetFieldValues(gpu.handle, fields)
                except self._nvml.NVMLError as e:
                    self._read_combined(buffer, slot, gpu, e)
                else:
                    power, energy = values
                    p_member = (
                        UNSIGNED_MEMBERS.get(power.valueType) if not power.nvmlReturn else None
                    )
                    e_member = (
                        UNSIGNED_MEMBERS.get(energy.valueType) if not energy.nvmlReturn else None
                    )
                    if p_member is not None and e_member is not None:
                        buffer.power_w[slot] = getattr(power.value, p_member) / 1000.0
                        buffer.power_method[slot] = gpu.power_method
                        buffer.energy_j[slot] = getattr(energy.value, e_member) / 1000.0
                        buffer.energy_method[slot] = _COUNTER
                    else:
                        self._read_combined(buffer, slot, gpu, values)
        finally:
            gpu.reading = False
        buffer.t_mono_s[slot] = 0.5 * (t0_s + monotonic_s())  # wall time follows from the tick's

    def memory_busy_frac(self, i: int) -> float:
        """GPU ``i``'s memory-busy fraction over the driver's last sample period
        (`base.ActivityReader`): ``nvmlDeviceGetUtilizationRates(handle).memory`` / 100.

        NaN where the GPU has no such counter (NOT_SUPPORTED or FUNCTION_NOT_FOUND: it is not
        asked again), the call failed, the answer is not a percentage, or the GPU is lost or the
        backend closed. Never raises for the GPU's failure.
        """
        gpu = self._gpus[i]
        if gpu.lost or not gpu.memory_activity:
            return math.nan
        gpu.reading = True  # marked before `_open` is looked at, as in `read_device_at`
        try:
            if not self._open:
                return math.nan
            rates = self._nvml.nvmlDeviceGetUtilizationRates(gpu.handle)
        except self._nvml.NVMLError as e:
            if int(getattr(e, "value", NVML_ERROR_UNKNOWN)) in ABSENT_CODES:
                gpu.memory_activity = False
            return math.nan
        finally:
            gpu.reading = False
        percent = getattr(rates, "memory", None)
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            return math.nan
        return percent / 100.0 if 0 <= percent <= 100 else math.nan

    def _read_one(self, buffer: FlatBuffer, i: int, gpu: _Gpu) -> None:
        """A GPU that is lost, offers nothing, or is read with two calls."""
        if gpu.lost:
            buffer.fail(i, DeviceStatus.LOST, gpu.lost)
            return
        if not self._open:
            buffer.fail(i, DeviceStatus.ERROR, "the NVML backend is closed")
            return
        if gpu.power_method == Method.NONE and not gpu.has_counter:
            buffer.fail(i, DeviceStatus.NOT_SUPPORTED, "this GPU offers neither power nor energy")
            return
        uid = gpu.info.uid
        try:
            if gpu.power_method != Method.NONE:
                try:
                    buffer.set_power(i, self._power_mw(gpu) / 1000.0, gpu.power_method)
                except TRANSIENT as e:
                    buffer.fail(i, status_of(e), str(e))
            if gpu.has_counter:
                try:
                    energy_mj = self._call(
                        self._nvml.nvmlDeviceGetTotalEnergyConsumption, gpu.handle, device=uid
                    )
                    buffer.set_energy(i, energy_mj / 1000.0)
                except TRANSIENT as e:
                    buffer.fail(i, status_of(e), str(e))
        except DeviceLost as e:
            gpu.lost = str(e)
            buffer.fail(i, DeviceStatus.LOST, gpu.lost)

    def _read_combined(self, buffer: FlatBuffer, i: int, gpu: _Gpu, result: Any) -> None:
        """The general handling of one field-values call for power and counter.

        Args:
            result: What the call gave: the field values, or the NVML error it raised.
        """
        uid = gpu.info.uid
        fields = gpu.combined
        assert fields is not None
        try:
            if isinstance(result, Exception):
                code = getattr(result, "value", NVML_ERROR_UNKNOWN)
                call = "nvmlDeviceGetFieldValues"
                raise translate_nvml_error(int(code), call=call, device=uid) from result
            power, energy = result
            try:
                assert gpu.field_id is not None
                power_w = field_number(power, gpu.field_id, uid) / 1000.0
                buffer.set_power(i, power_w, gpu.power_method)
            except TRANSIENT as e:
                buffer.fail(i, status_of(e), str(e))
            try:
                buffer.set_energy(i, field_number(energy, NVML_FI_DEV_ENERGY, uid) / 1000.0)
            except TRANSIENT as e:
                buffer.fail(i, status_of(e), str(e))
        except DeviceLost as e:
            gpu.lost = str(e)
            buffer.fail(i, DeviceStatus.LOST, gpu.lost)
        except TRANSIENT as e:
            # the one call carried both figures: both are missing this tick
            buffer.fail(i, status_of(e), str(e))

    def _power_mw(self, gpu: _Gpu) -> float:
        uid = gpu.info.uid
        if gpu.field_id is None:
            return float(self._call(self._nvml.nvmlDeviceGetPowerUsage, gpu.handle, device=uid))
        values = self._call(
            self._nvml.nvmlDeviceGetFieldValues, gpu.handle, [gpu.field_request], device=uid
        )
        return field_number(values[0], gpu.field_id, uid)


def _code(error: MeterError) -> int:
    """The NVML return code behind a translated error (`NvmlBackend._call` raises from it)."""
    return int(getattr(error.__cause__, "value", NVML_ERROR_UNKNOWN))


def _import_pynvml() -> NvmlModule:
    try:
        import pynvml
    except ImportError as e:
        raise DeviceUnavailable(
            "the NVML backend needs nvidia-ml-py: pip install 'thermoledger[nvml]'"
        ) from e
    module: NvmlModule = pynvml
    return module
