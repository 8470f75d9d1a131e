"""The PyTorch Lightning callback: ``L.Trainer(callbacks=[ThermoledgerLightningCallback()])``.

::

    import lightning as L
    from thermoledger.integrations import ThermoledgerLightningCallback

    trainer = L.Trainer(max_epochs=3, callbacks=[ThermoledgerLightningCallback()])
    trainer.fit(model, train_loader, val_loader)

What it records (see `integrations._common` for the meter's side)
    * A run per ``fit``, ``validate``, ``test`` or ``predict`` on the callback's own `Meter`
      (opened at ``setup``, kind ``training``, ``eval`` or ``inference``, with the usual
      settings: ``THERMOLEDGER_SERVER``, ``THERMOLEDGER_TOKEN``, the spool; stopped at
      ``teardown``, or as failed on an exception), or on the meter you pass (used as it is,
      never stopped here).
    * Phases with exact edges, from Lightning's own start and end hooks: ``train``,
      ``epoch-<n>`` (``trainer.current_epoch``, 0-based) inside it, ``eval`` for validation
      (tag ``stage=validate``, or ``sanity_check`` for the check before training) and for
      testing (``stage=test``), and ``predict``.
    * Work: the model size N (the parameters' elements), FLOPs from the module's
      ``flops_per_batch`` (the attribute Lightning's ``ThroughputMonitor`` reads, which
      ``lightning.fabric.utilities.throughput.measure_flops`` computes) for each training
      batch, in the trainer's precision (``bf16-mixed`` → bf16, …; ``dtype=`` overrides it), and
      tokens from ``tokens_fn(batch)`` when you pass one (Lightning does not count tokens; its
      ``ThroughputMonitor`` takes a ``length_fn`` the same way). Without them nothing is
      declared for them, never a guess.
    * Validation and test metrics from ``trainer.callback_metrics`` (those whose name starts
      with ``val`` or ``test``, or the names in ``metrics=``) with `Meter.record_metric`.

What it logs back
    ``energy_j``, ``energy_per_token_j``, ``flop_per_j`` and ``co2e_g`` (cumulative since
    training began; each only when known) at each of the trainer's log steps
    (``log_every_n_steps``, on its step count, as Lightning's ``ThroughputMonitor`` logs), and
    with ``epoch_energy_j`` at the end of each epoch through ``pl_module.log_dict``, so they
    reach every logger (W&B, MLflow, TensorBoard, CSV) and ``trainer.callback_metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as e:
    raise ImportError(
        "thermoledger.integrations.ThermoledgerLightningCallback needs PyTorch Lightning "
        f"({e}); install the extra: pip install 'thermoledger[lightning]'"
    ) from e

from thermoledger.meters.api import Meter, whole_count

from ._common import MeteredJob, guarded, real_value

__all__ = ["ThermoledgerLightningCallback"]

# Lightning's entry points (TrainerFn) -> the run kind of the callback's own meter.
_KINDS = {"fit": "training", "validate": "eval", "test": "eval", "predict": "inference"}


def _parameters(module: Any) -> int:
    return sum(int(p.numel()) for p in module.parameters())


def _precision(trainer: Any, module: Any) -> str | None:
    """The trainer's precision (``bf16-mixed`` → ``bf16``), else the module's dtype."""
    precision = str(getattr(trainer, "precision", ""))
    for prefix, name in (("bf16", "bf16"), ("16", "fp16"), ("64", "fp64"), ("transformer", "fp8")):
        if precision.startswith(prefix):
            return name
    dtype = getattr(module, "dtype", None)
    return None if dtype is None else str(dtype)


class ThermoledgerLightningCallback(Callback):  # type: ignore[misc,unused-ignore]
    """Meters a Lightning ``Trainer``'s jobs and logs their energy (module docstring).

    Args:
        meter: Your `Meter` (used as it is, never stopped here), or None: the callback opens
            its own for each ``fit``/``validate``/``test``/``predict`` and stops it at its end.
        run: The own meter's run name (default: the script's name).
        intensity_g_per_kwh: Grid intensity for ``co2e_g``, gCO2e/kWh (default:
            ``THERMOLEDGER_GRID_INTENSITY_G_PER_KWH``; neither: no ``co2e_g``).
        dtype: The precision of the FLOPs (default: from the trainer and the module).
        tokens_fn: Tokens in a training batch (``lambda batch: batch["input_ids"].numel()``);
            None: no tokens declared.
        metrics: Names of the validation/test metrics to record (default: those starting
            with ``val`` or ``test``).
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
        run: str | None = None,
        intensity_g_per_kwh: float | None = None,
        dtype: str | None = None,
        tokens_fn: Callable[[Any], int] | None = None,
        metrics: Iterable[str] | None = None,
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
        if tokens_fn is not None and not callable(tokens_fn):
            raise TypeError(f"tokens_fn must be a function of a batch, got {tokens_fn!r}")
        self._tokens_fn = tokens_fn
        self._metrics = None if metrics is None else frozenset(metrics)

    # -- a whole fit / validate / test / predict ----------------------------------------------

    @guarded
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        entry = str(getattr(stage, "value", stage))  # a TrainerFn, or its value
        self.job.begin(kind=_KINDS.get(entry, "other"))
        self.job.set_dtype(_precision(trainer, pl_module))

    @guarded
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.job.end()

    @guarded
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.job.end(failed=True)

    def _started(self, pl_module: Any) -> None:
        self.job.declare_model(_parameters(pl_module))

    # -- training -----------------------------------------------------------------------------

    @guarded
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._started(pl_module)
        self.job.start_counting(
            tokens_total=0 if self._tokens_fn is not None else None, flops_total=None
        )
        self.job.open_phase("train", "train")

    @guarded
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.job.open_phase("epoch", f"epoch-{trainer.current_epoch}")
        self.job.start_epoch()

    @guarded
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        job = self.job
        if self._tokens_fn is not None:
            tokens = whole_count(self._tokens_fn(batch))
            if tokens is not None:
                job.add_tokens(tokens)
        flops = real_value(getattr(pl_module, "flops_per_batch", None))
        if flops is not None:
            job.add_flops(flops)
        # At the trainer's log steps, through its logger connector, as Lightning's own
        # ThroughputMonitor and LearningRateMonitor log: every logger, Lightning's step.
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None and getattr(connector, "should_update_logs", False):
            figures = job.figures()
            if figures:
                connector.log_metrics(figures)

    @guarded
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        job = self.job
        figures = job.epoch_figures() if job.is_open("epoch") else {}
        job.close_phase("epoch")
        if figures:
            pl_module.log_dict(figures, on_step=False, on_epoch=True)

    @guarded
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.job.close_phase("epoch")
        self.job.close_phase("train")

    # -- validation, test, prediction ---------------------------------------------------------

    @guarded
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._started(pl_module)
        stage = "sanity_check" if trainer.sanity_checking else "validate"
        self.job.open_phase("eval", "eval", stage=stage)

    @guarded
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.job.close_phase("eval")
        if not trainer.sanity_checking:
            self._record(trainer, "val")

    @guarded
    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._started(pl_module)
        self.job.open_phase("eval", "eval", stage="test")

    @guarded
    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self.job.close_phase("eval")
        self._record(trainer, "test")

    @guarded
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._started(pl_module)
        self.job.open_phase("predict", "predict")

    @guarded
    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self.job.close_phase("predict")

    def _record(self, trainer: Any, prefix: str) -> None:
        names = self._metrics

        def keep(name: str) -> bool:
            return name in names if names is not None else name.startswith(prefix)

        self.job.record_metrics(
            dict(trainer.callback_metrics), step=int(trainer.global_step), keep=keep
        )
