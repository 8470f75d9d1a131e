"""What the framework callbacks share, with no framework imported.

A `MeteredJob` is one callback's side of the meter: the `Meter` it uses (its own, opened when
the framework starts and stopped when it ends, or the caller's, used as it is), the phases it
holds open from one framework event to another, the framework's work counters turned into the
meter's declarations (`Meter.add_tokens`, `Meter.add_flops`, `Meter.declare_model`), evaluation
metrics forwarded to `Meter.record_metric`, and the figures it logs back into the framework's
loggers. The figures are cumulative from the start of training (`MeteredJob.start_counting`)::

    energy_j            metered energy of the node's devices, J
    energy_per_token_j  energy_j / tokens the framework counted, J per token
    flop_per_j          FLOPs the framework counted / energy_j, FLOP/J
    co2e_g              energy_j / 3.6e6 × PUE × grid intensity (gCO2e/kWh), g, location-based
    epoch_energy_j      (at the end of an epoch) the energy of that epoch alone, J

The figures are this node's (the meter samples its own node): in a multi-node job the loggers,
which write from global rank 0, get node 0's, and the run's total is the service's report.

A figure that is not known is left out, never logged as 0: no energy where this process
samples nothing (another process meters the node, another rank, nothing measurable), no
``energy_per_token_j`` without a token count, no ``flop_per_j`` without FLOPs, and no
``co2e_g`` without a grid intensity (the ``intensity_g_per_kwh`` argument, else
``THERMOLEDGER_GRID_INTENSITY_G_PER_KWH``; the PUE from ``THERMOLEDGER_PUE``, default 1.0: IT
energy only), as in the wrapper's summary (`meters.settings.FootprintSettings`).

Never disturb the job: a hook that fails logs one warning and the training goes on (the meter
itself never raises either).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, Final, ParamSpec, TypeVar

from thermoledger.meters.api import Meter, PhaseRecord, whole_count
from thermoledger.meters.settings import FootprintSettings, SettingsError

__all__ = [
    "EPOCH_ENERGY",
    "FIGURES",
    "MeteredJob",
    "dtype_name",
    "guarded",
    "is_speed_metric",
    "real_value",
]

_LOG = logging.getLogger("thermoledger.integrations")
_J_PER_KWH: Final = 3.6e6
FIGURES: Final = ("energy_j", "energy_per_token_j", "flop_per_j", "co2e_g")
"""The figures logged back into the framework's loggers (see the module docstring)."""
EPOCH_ENERGY: Final = "epoch_energy_j"
_DTYPE = re.compile(r"^[A-Za-z0-9_]{1,16}$")
_SHORT_DTYPES: Final = {
    "float64": "fp64",
    "double": "fp64",
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
}
# The framework's own speed and bookkeeping figures, not quality metrics: not forwarded.
_SPEED_SUFFIXES: Final = (
    "_runtime",
    "_per_second",
    "_preparation_time",
    "_compilation_time",
)

P = ParamSpec("P")
R = TypeVar("R")


def guarded(hook: Callable[P, R | None]) -> Callable[P, R | None]:
    """A callback hook that never raises into the training loop: a failure is logged once per
    hook (the figures it would have given are missing) and the hook returns None."""
    warned = False

    @functools.wraps(hook)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        nonlocal warned
        try:
            return hook(*args, **kwargs)
        except Exception as e:
            if not warned:
                warned = True
                _LOG.warning(
                    "thermoledger: %s failed (%s: %s); the training goes on",
                    hook.__qualname__,
                    type(e).__name__,
                    e,
                )
            return None

    return wrapper


def dtype_name(dtype: object) -> str | None:
    """The meter's short name of a precision (``torch.bfloat16`` → ``bf16``), or None."""
    text = str(dtype).strip().removeprefix("torch.").lower()
    text = _SHORT_DTYPES.get(text, text)
    return text if _DTYPE.match(text) else None


def real_value(value: object) -> float | None:
    """A finite real from a metric value (a Python, numpy or decimal number, or a one-element
    tensor or array), else None."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, numbers.Real | Decimal):
        numel = getattr(value, "numel", None)  # torch; numpy says size
        size = numel() if callable(numel) else getattr(value, "size", None)
        item = getattr(value, "item", None)
        if size != 1 or not callable(item):
            return None
        value = item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None
    number = float(value)
    return number if math.isfinite(number) else None


def is_speed_metric(name: str) -> bool:
    """The framework's own timing and bookkeeping figures (``eval_runtime``, ``epoch``, …) and
    ours, which are not quality metrics to forward to `Meter.record_metric`."""
    return (
        name in ("epoch", "step", "total_flos", EPOCH_ENERGY, *FIGURES)
        or name.endswith(_SPEED_SUFFIXES)
        or "_mem_" in name
    )


class MeteredJob:
    """One callback's meter, open phases, work counters and figures (framework-free).

    Args:
        meter: The caller's meter (used as it is; started here if it is not yet, never
            stopped here), or None: the job opens its own in `begin` and stops it in `end`.
        run: The run's name for its own meter (default: the framework's, else the script's).
        intensity_g_per_kwh: Grid intensity for ``co2e_g``, gCO2e/kWh (default:
            ``THERMOLEDGER_GRID_INTENSITY_G_PER_KWH``; neither: no ``co2e_g``).
        dtype: The precision FLOPs are declared in (default: what the framework says).
        meter_options: Any other `Meter` argument, for its own meter (``server``, ``token``,
            ``spool_dir``, ``backend``, ``tags``, ``env``, …).
        owner: The callback's name, for messages.

    Raises:
        TypeError: Both a meter and options for one were given.
        ValueError: ``intensity_g_per_kwh`` or ``dtype`` is not one (the message names it).
    """

    def __init__(
        self,
        meter: Meter | None,
        *,
        run: str | None,
        intensity_g_per_kwh: float | None,
        dtype: str | None,
        meter_options: Mapping[str, Any],
        owner: str,
    ) -> None:
        if meter is not None and meter_options:
            raise TypeError(
                f"{owner}: pass either meter= (a Meter you opened) or options for the "
                f"callback's own Meter ({', '.join(sorted(meter_options))}), not both"
            )
        if "kind" in meter_options:
            raise TypeError(
                f"{owner}: the run's kind comes from what the framework runs (training, eval, "
                "inference); kind= is not an option here"
            )
        if meter is not None and not isinstance(meter, Meter):
            raise TypeError(
                f"{owner}: meter= must be a thermoledger Meter, got {type(meter).__name__}"
            )
        if intensity_g_per_kwh is not None:
            number = real_value(intensity_g_per_kwh)
            if number is None or number < 0:
                raise ValueError(
                    f"{owner}: intensity_g_per_kwh must be a finite number >= 0 (gCO2e/kWh), "
                    f"got {intensity_g_per_kwh!r}"
                )
            intensity_g_per_kwh = number
        if dtype is not None and dtype_name(dtype) is None:
            raise ValueError(
                f"{owner}: dtype must be a precision such as 'bf16', 'fp16' or 'fp32', "
                f"got {dtype!r}"
            )
        self.owner = owner
        self._given = meter
        self._run = run
        self._intensity = intensity_g_per_kwh
        self._dtype = None if dtype is None else dtype_name(dtype)
        self._options = dict(meter_options)
        self.meter: Meter | None = None
        self.owns_meter = False
        self._phases: dict[str, AbstractContextManager[PhaseRecord]] = {}
        self._footprint: FootprintSettings | None = None
        self._energy0_j = math.nan
        self._epoch0_j = math.nan
        self._model_declared = False
        self.flops_dtype: str | None = self._dtype
        self.tokens = 0
        self.tokens_counted = False
        self.flops = 0.0
        self._tokens_total: int | None = None
        self._flops_total: float | None = None
        self._warned: set[str] = set()

    # -- the meter ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether a meter is in use (between `begin` and `end`)."""
        return self.meter is not None

    @property
    def has_given_meter(self) -> bool:
        """Whether the caller passed a meter (then evaluation outside training is metered)."""
        return self._given is not None

    def begin(self, *, kind: str, run: str | None = None) -> None:
        """Use the caller's meter, or open this job's own (a no-op when one is in use).

        Args:
            kind: The own meter's run kind (``training``, ``eval``, ``inference``).
            run: The framework's name for the run (the ``run`` argument comes first).
        """
        if self.meter is not None:
            return
        if self._given is not None:
            if self._given.state == "new":
                self._given.start()  # the caller stops it (or the interpreter's exit does)
            self.meter = self._given
        else:
            self.meter = Meter(self._run or run, kind=kind, **self._options).start()
            self.owns_meter = True
        self._footprint = self._resolve_footprint()
        self._energy0_j = self._epoch0_j = self.energy_now_j()

    def end(self, *, failed: bool = False) -> None:
        """Close the phases still open and stop this job's own meter (not the caller's)."""
        meter, self.meter = self.meter, None
        for key in reversed(list(self._phases)):
            self._close(key)
        if meter is not None and self.owns_meter:
            summary = meter.stop(exit_code=1 if failed else 0, failed=failed)
            _LOG.info("thermoledger: %s\n%s", self.owner, summary)
        self.owns_meter = False
        self._model_declared = False
        self._tokens_total = self._flops_total = None
        self.tokens, self.tokens_counted, self.flops = 0, False, 0.0

    def _resolve_footprint(self) -> FootprintSettings | None:
        env = self._options.get("env")
        try:
            return FootprintSettings.resolve(
                env=env if isinstance(env, Mapping) else None,
                grid_intensity_g_per_kwh=self._intensity,
            )
        except SettingsError as e:
            _LOG.warning("thermoledger: %s: co2e_g is not logged: %s", self.owner, e)
            return None

    # -- phases -------------------------------------------------------------------------------

    def open_phase(self, key: str, name: str, **tags: str) -> None:
        """Open the phase ``name`` under ``key`` until `close_phase` (a no-op when open)."""
        if self.meter is None or key in self._phases:
            return
        phase = self.meter.phase(name, **tags)
        phase.__enter__()
        self._phases[key] = phase

    def close_phase(self, key: str) -> bool:
        """Close the phase open under ``key``; False when none was."""
        return self._close(key)

    def is_open(self, key: str) -> bool:
        """Whether a phase is open under ``key``."""
        return key in self._phases

    def _close(self, key: str) -> bool:
        phase = self._phases.pop(key, None)
        if phase is None:
            return False
        phase.__exit__(None, None, None)
        return True

    def record_phase(self, name: str, *, t0_s: float, **tags: str) -> None:
        """A phase that began at ``t0_s`` and ends now (`Meter.record_phase`)."""
        if self.meter is not None:
            self.meter.record_phase(name, t0_s=t0_s, **tags)

    # -- work ---------------------------------------------------------------------------------

    def declare_model(self, params: int | None) -> None:
        """Declare the model size N once per run (None: not known, nothing declared)."""
        if self.meter is None or self._model_declared or params is None:
            return
        self.meter.declare_model(params=params)
        self._model_declared = True

    def start_counting(self, *, tokens_total: int | None, flops_total: float | None) -> None:
        """The framework's running totals when training starts (None: it does not count them);
        the figures' energy starts here too."""
        self._tokens_total = tokens_total
        self._flops_total = flops_total
        self.tokens_counted = tokens_total is not None
        self._energy0_j = self._epoch0_j = self.energy_now_j()

    def count_tokens_total(self, total: object) -> None:
        """The framework's running token total now: the increase is declared."""
        count = whole_count(total)
        if self._tokens_total is None or count is None:
            return
        delta, self._tokens_total = count - self._tokens_total, count
        self.add_tokens(delta)

    def count_flops_total(self, total: object) -> None:
        """The framework's running FLOP total now: the increase is declared."""
        number = real_value(total)
        if self._flops_total is None or number is None:
            return
        delta, self._flops_total = number - self._flops_total, number
        self.add_flops(delta)

    def add_tokens(self, tokens: int) -> None:
        """Declare tokens processed (a count > 0; anything else is nothing to add)."""
        if self.meter is None or tokens <= 0:
            return
        self.tokens_counted = True
        self.tokens += tokens
        self.meter.add_tokens(tokens)

    def add_flops(self, flops: float) -> None:
        """Declare FLOPs done, in `flops_dtype` (not declared where the precision is unknown)."""
        if self.meter is None or not flops > 0 or not math.isfinite(flops):
            return
        if self.flops_dtype is None:
            self.warn_once(
                "dtype",
                "thermoledger: %s: FLOPs not declared: the precision is unknown (pass dtype=)",
                self.owner,
            )
            return
        self.flops += flops
        self.meter.add_flops(flops, dtype=self.flops_dtype)

    def set_dtype(self, dtype: object) -> None:
        """The framework's precision, unless the caller gave one."""
        if self._dtype is None:
            self.flops_dtype = dtype_name(dtype)

    def record_metrics(
        self,
        metrics: Mapping[str, object],
        *,
        step: int,
        keep: Callable[[str], bool] = lambda name: True,
        tokens_seen: int | None = None,
    ) -> list[str]:
        """Forward evaluation metrics to `Meter.record_metric` (energy to quality).

        Args:
            metrics: The framework's metrics (numbers or one-element tensors; others skipped).
            step: The training step they were taken at.
            keep: Which names to forward (speed and bookkeeping figures never are).
            tokens_seen: Tokens seen so far (default: the count declared, where counted).

        Returns:
            The names recorded.
        """
        if self.meter is None:
            return []
        if tokens_seen is None and self.tokens_counted:
            tokens_seen = self.tokens
        recorded = []
        for name, value in metrics.items():
            number = real_value(value)
            if number is None or is_speed_metric(name) or not keep(name):
                continue
            if self.meter.record_metric(name, number, step=step, tokens=tokens_seen):
                recorded.append(name)
        return recorded

    # -- figures ------------------------------------------------------------------------------

    def energy_now_j(self) -> float:
        """The meter's energy so far, J (NaN where this process samples nothing)."""
        if self.meter is None or not self.meter.sampling:
            return math.nan
        return float(self.meter.summary().energy_j)

    def start_epoch(self) -> None:
        """An epoch starts: `epoch_figures` counts its energy from here."""
        self._epoch0_j = self.energy_now_j()

    def figures(self) -> dict[str, float]:
        """The figures known now (module docstring); empty where there is no energy."""
        return self._figures(self.energy_now_j())

    def epoch_figures(self) -> dict[str, float]:
        """`figures`, and ``epoch_energy_j`` since `start_epoch`."""
        now_j = self.energy_now_j()
        out = self._figures(now_j)
        epoch_j = now_j - self._epoch0_j
        if out and math.isfinite(epoch_j) and epoch_j >= 0:
            out[EPOCH_ENERGY] = epoch_j
        self._epoch0_j = now_j
        return out

    def _figures(self, now_j: float) -> dict[str, float]:
        energy_j = now_j - self._energy0_j
        if not (math.isfinite(energy_j) and energy_j >= 0):
            return {}
        out = {"energy_j": energy_j}
        if self.tokens_counted and self.tokens > 0:
            out["energy_per_token_j"] = energy_j / self.tokens
        if self.flops > 0 and energy_j > 0:
            out["flop_per_j"] = self.flops / energy_j
        footprint = self._footprint
        if footprint is not None and footprint.grid_intensity_g_per_kwh is not None:
            out["co2e_g"] = (
                energy_j / _J_PER_KWH * footprint.pue * footprint.grid_intensity_g_per_kwh
            )
        return out

    def warn_once(self, kind: str, message: str, *args: object) -> None:
        """Log a warning once per ``kind`` for this callback."""
        if kind not in self._warned:
            self._warned.add(kind)
            _LOG.warning(message, *args)
