"""The Hugging Face ``Trainer`` callback: ``ThermoledgerCallback.attach(trainer)``.

::

    from thermoledger.integrations import ThermoledgerCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    ThermoledgerCallback.attach(trainer)  # or Trainer(..., callbacks=[ThermoledgerCallback()])
    trainer.train()

What it records (see `integrations._common` for the meter's side)
    * A run per ``train()`` on the callback's own `Meter` (opened at ``on_train_begin`` with
      the usual settings: ``THERMOLEDGER_SERVER``, ``THERMOLEDGER_TOKEN``, the spool; stopped at
      ``on_train_end``), or on the meter you pass (``ThermoledgerCallback(meter=m)``, used as it
      is and never stopped here; with it, ``evaluate()`` and ``predict()`` outside ``train()``
      are metered too).
    * Phases ``train``, ``epoch-<n>`` (the Trainer's 0-based epoch) inside it, ``eval`` and
      ``predict``. An evaluation the Trainer starts during training (``eval_strategy``) is
      opened at the step or epoch end that decides it, so its edges are exact. The Trainer
      has no event before a standalone ``evaluate()`` or ``predict()``: that phase runs from
      the end of its first prediction step to its end (`Meter.record_phase`), so its first
      batch falls outside it.
    * Work: the model size N (``model.num_parameters()``), the FLOPs the Trainer counts
      (``state.total_flos``, the sum of ``model.floating_point_ops(inputs)``), in the
      precision of the run (``bf16``/``fp16`` from the arguments, else the model's dtype;
      ``dtype=`` overrides it), and the tokens it counts (``state.num_input_tokens_seen``,
      with ``include_num_input_tokens_seen`` on; otherwise no tokens are declared).
    * Evaluation metrics (``eval_loss``, ``eval_accuracy``, … and ``test_*`` from
      ``predict()``, not the timing figures) with `Meter.record_metric`, at the global step.

What it logs back
    ``energy_j``, ``energy_per_token_j``, ``flop_per_j`` and ``co2e_g`` (cumulative since
    ``train()`` began; each only when known, never a 0 in its place) at every log step, and
    with ``epoch_energy_j`` at the end of each epoch. With the trainer known (`attach`, or
    ``trainer=``) they go through ``trainer.log``, so every ``report_to`` integration (W&B,
    MLflow, TensorBoard, …) and ``state.log_history`` get them. Without it they are added to
    the logs the callbacks after this one see (the progress printer) and to
    ``state.log_history``: the ``report_to`` integrations come first in the Trainer's list and
    have logged by then, which the callback says once where any is configured.

Known limits: the Trainer has no event for an exception in ``train()``: the callback's own
meter is then stopped when the interpreter exits, and the run is marked ended, not failed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as e:
    raise ImportError(
        "thermoledger.integrations.ThermoledgerCallback needs the Hugging Face transformers "
        f"package ({e}); install the extra: pip install 'thermoledger[hf]'"
    ) from e

from thermoledger.meters.api import Meter

from ._common import EPOCH_ENERGY, FIGURES, MeteredJob, guarded

__all__ = ["ThermoledgerCallback"]

_OURS = frozenset((*FIGURES, EPOCH_ENERGY))


def _parameters(model: Any) -> int | None:
    """N: ``model.num_parameters()`` for a Transformers model, else the tensors' elements."""
    if model is None:
        return None
    count = getattr(model, "num_parameters", None)
    if callable(count):
        return int(count())
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        return sum(int(p.numel()) for p in parameters())
    return None


def _precision(args: Any, model: Any) -> str | None:
    """The run's precision: mixed bf16/fp16 from the arguments, else the model's dtype."""
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    dtype = getattr(model, "dtype", None)
    if dtype is None:
        return None
    name = str(dtype)
    if name.endswith("float32") and getattr(args, "tf32", None):
        return "tf32"
    return name


def _counts_tokens(args: Any) -> bool:
    """Whether the Trainer counts input tokens (a bool before transformers 4.46, then a
    string, ``"no"`` by default)."""
    flag = getattr(args, "include_num_input_tokens_seen", False)
    return flag not in (False, None, "no")


def _reporters(args: Any) -> list[str]:
    report_to = getattr(args, "report_to", None)
    if isinstance(report_to, str):
        report_to = [report_to]
    return [str(r) for r in report_to or () if str(r) not in ("none", "")]


class ThermoledgerCallback(TrainerCallback):  # type: ignore[misc,unused-ignore]
    """Meters a Hugging Face ``Trainer``'s jobs and logs their energy (module docstring).

    Args:
        meter: Your `Meter` (used as it is, never stopped here), or None: the callback opens
            its own for each ``train()`` and stops it when training ends.
        trainer: The Trainer, so that the figures go through ``trainer.log`` to every
            ``report_to`` integration (`attach` passes it).
        run: The own meter's run name (default: ``args.run_name``, else the script's name).
        intensity_g_per_kwh: Grid intensity for ``co2e_g``, gCO2e/kWh (default:
            ``THERMOLEDGER_GRID_INTENSITY_G_PER_KWH``; neither: no ``co2e_g``).
        dtype: The precision of the FLOPs (default: from the arguments and the model).
        meter_options: Any other `Meter` argument for the own meter (``server``, ``token``,
            ``spool_dir``, ``backend``, ``tags``, …).

    Raises:
        TypeError: Both ``meter`` and options for the own meter.
        ValueError: A bad ``intensity_g_per_kwh`` or ``dtype`` (the message names it).
    """

    def __init__(
        self,
        meter: Meter | None = None,
        *,
        trainer: Any = None,
        run: str | None = None,
        intensity_g_per_kwh: float | None = None,
        dtype: str | None = None,
        **meter_options: Any,
    ) -> None:
        self.job = MeteredJob(
            meter,
            run=run,
            intensity_g_per_kwh=intensity_g_per_kwh,
            dtype=dtype,
            meter_options=meter_options,
            owner=type(self).__name__,
        )
        self._trainer = trainer
        self._first_step_s: float | None = None  # a standalone evaluate/predict's first step

    @classmethod
    def attach(
        cls, trainer: Any, meter: Meter | None = None, **options: Any
    ) -> ThermoledgerCallback:
        """Add a callback that knows ``trainer`` to it (``trainer.add_callback``) and return it.

        Args:
            trainer: The ``transformers.Trainer``.
            meter: Your `Meter`, or None (see the class).
            options: The class's other arguments.
        """
        callback = cls(meter, trainer=trainer, **options)
        trainer.add_callback(callback)
        return callback

    # -- training -----------------------------------------------------------------------------

    @guarded
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        job = self.job
        run_name = getattr(args, "run_name", None)
        job.begin(kind="training", run=run_name if isinstance(run_name, str) else None)
        model = kwargs.get("model")
        job.declare_model(_parameters(model))
        job.set_dtype(_precision(args, model))
        job.start_counting(
            tokens_total=state.num_input_tokens_seen if _counts_tokens(args) else None,
            flops_total=state.total_flos,
        )
        job.open_phase("train", "train")
        reporters = _reporters(args)
        if reporters and self._trainer is None:
            job.warn_once(
                "reporters",
                "thermoledger: %s: the energy figures reach %s only when the callback knows "
                "the trainer: ThermoledgerCallback.attach(trainer) instead of callbacks=[…]",
                job.owner,
                ", ".join(reporters),
            )

    @guarded
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # state.epoch is a whole number here (a fraction when resumed inside an epoch)
        self.job.open_phase("epoch", f"epoch-{math.floor((state.epoch or 0) + 1e-9)}")
        self.job.start_epoch()

    @guarded
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.job.count_tokens_total(state.num_input_tokens_seen)
        if control.should_evaluate:  # DefaultFlowCallback, first in the list, decided it
            self.job.open_phase("eval", "eval")

    @guarded
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        job = self.job
        job.count_tokens_total(state.num_input_tokens_seen)
        job.count_flops_total(state.total_flos)
        figures = job.epoch_figures() if job.is_open("epoch") else {}
        job.close_phase("epoch")
        self._log(figures, state)
        if control.should_evaluate:
            job.open_phase("eval", "eval")

    @guarded
    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        logs = kwargs.get("logs")
        if not isinstance(logs, dict) or _OURS.intersection(logs):
            return  # our own figures, logged through trainer.log
        job = self.job
        job.count_tokens_total(state.num_input_tokens_seen)
        job.count_flops_total(state.total_flos)  # the Trainer stores its FLOPs before a log
        figures = job.figures()
        if not figures:
            return
        if self._trainer is not None:
            self._trainer.log(dict(figures))
            return
        logs.update(figures)
        if state.log_history and isinstance(state.log_history[-1], dict):
            state.log_history[-1].update(figures)

    @guarded
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        job = self.job
        job.count_tokens_total(state.num_input_tokens_seen)
        job.count_flops_total(state.total_flos)
        job.close_phase("eval")
        job.close_phase("epoch")
        job.close_phase("train")
        job.end()
        self._first_step_s = None

    def _log(self, figures: Mapping[str, float], state: Any) -> None:
        if not figures:
            return
        if self._trainer is not None:
            self._trainer.log(dict(figures))
        else:
            state.log_history.append({**figures, "epoch": state.epoch, "step": state.global_step})

    # -- evaluation and prediction ------------------------------------------------------------

    @guarded
    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        job = self.job
        if not job.active and job.has_given_meter:
            job.begin(kind="eval")
        if job.active and not job.is_open("eval") and self._first_step_s is None:
            self._first_step_s = time.time()

    @guarded
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_loop("eval", args, state, kwargs.get("metrics"))

    @guarded
    def on_predict(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_loop("predict", args, state, kwargs.get("metrics"))

    def _end_loop(self, name: str, args: Any, state: Any, metrics: object) -> None:
        job = self.job
        first_s, self._first_step_s = self._first_step_s, None
        if not job.close_phase(name) and first_s is not None:
            job.record_phase(name, t0_s=first_s)
        if isinstance(metrics, Mapping):
            job.record_metrics(
                metrics,
                step=int(state.global_step),
                tokens_seen=state.num_input_tokens_seen if _counts_tokens(args) else None,
            )
