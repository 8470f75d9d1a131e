"""The Lightning callback against the real lightning, on a tiny CPU regression net.

A two-layer net of about fifty parameters fits random data for two epochs of four batches,
metered by simulated devices into a spool (no server). Its FLOPs per batch come from
Lightning's own ``measure_flops`` on a meta-device copy, as ``ThroughputMonitor`` expects them
(``flops_per_batch``); a recording logger stands where W&B, MLflow or TensorBoard would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.lane import finite_positive, require, spooled_runs
from thermoledger.meters.api import Meter

require("torch")
require("lightning")

import lightning as L  # noqa: E402, N812 (Lightning's own spelling)
import torch  # noqa: E402
from lightning.fabric.utilities import throughput  # noqa: E402
from lightning.pytorch import loggers  # noqa: E402

from thermoledger.integrations import ThermoledgerLightningCallback  # noqa: E402

FIGURES = ("energy_j", "energy_per_token_j", "flop_per_j")
FEATURES, BATCH = 6, 8
pytestmark = pytest.mark.filterwarnings(
    # a four-batch CPU loader with no workers: Lightning's advice, not ours to follow here
    "ignore:The '\\w+_dataloader' does not have many workers:UserWarning",
    "ignore:The number of training batches .* is smaller than the logging interval:UserWarning",
    "ignore:You defined a `validation_step` but have no `val_dataloader`:UserWarning",
    # lightning 2.6's own use of torch's pytree, deprecated by torch 2.13
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning",
)


def net() -> Any:
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))


class Tiny(L.LightningModule):  # type: ignore[misc,unused-ignore]
    def __init__(self, *, fail_at_step: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = net()
        self.fail_at_step = fail_at_step
        with torch.device("meta"):
            meta, x = net(), torch.empty(BATCH, FEATURES)
        # one training batch: forward and backward, as ThroughputMonitor's docs compute it
        self.flops_per_batch = throughput.measure_flops(
            meta, lambda: meta(x), loss_fn=torch.Tensor.sum
        )

    def forward(self, x: Any) -> Any:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.fail_at_step is not None and self.global_step == self.fail_at_step:
            raise RuntimeError("the job's own failure")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recording(loggers.Logger):  # type: ignore[misc,unused-ignore]
    """What W&B, MLflow or TensorBoard would be handed."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))


def loader(n: int, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


def make_trainer(logger: Any, callback: Any, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": logger,
        "log_every_n_steps": 2,
        "num_sanity_val_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "callbacks": [callback],
    }
    options.update(overrides)
    return L.Trainer(**options)


def own_meter(tmp_path: Path, **options: Any) -> Any:
    return ThermoledgerLightningCallback(
        backend="simulated", spool_dir=tmp_path / "spool", env={}, interval_s=0.02, **options
    )


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """The callback's hooks swallow their failures into one warning: none may be logged here."""
    caplog.set_level(logging.WARNING, logger="thermoledger")
    yield
    failures = [r.getMessage() for r in caplog.records if r.name.startswith("thermoledger")]
    assert failures == []


def test_fit_records_phases_work_metrics_and_logs_energy(tmp_path: Path) -> None:
    logger = Recording()
    callback = own_meter(tmp_path, run="pl-tiny", tokens_fn=lambda batch: batch[0].numel())
    model = Tiny()
    trainer = make_trainer(logger, callback)
    trainer.fit(model, loader(32, seed=1), loader(16, seed=2))

    (run,) = spooled_runs(tmp_path / "spool")
    assert run.record.metadata["name"] == "pl-tiny"
    assert run.record.metadata["kind"] == "training"
    assert run.record.status == "finished"
    assert not callback.job.active
    # the sanity check, then per epoch its validation, inside the epoch
    assert run.phase_names() == ["eval", "train", "epoch-0", "eval", "epoch-1", "eval"]
    stages = [p["tags"].get("stage") for p in run.phases if p["name"] == "eval"]
    assert sorted(stages) == ["sanity_check", "validate", "validate"]

    batches = trainer.global_step
    assert batches == 8
    assert model.flops_per_batch > 0
    assert run.work["flops"] == {"value": pytest.approx(batches * model.flops_per_batch),
                                 "unit": "FLOP"}  # fmt: skip
    assert run.work["dtype"] == "fp32"
    assert run.work["tokens"] == 32 * FEATURES * 2
    assert run.work["model_params"] == sum(p.numel() for p in model.parameters()) == 49

    # val_loss at the end of each epoch's validation, not the sanity check's
    assert {key for key in run.metrics if key[0] == "val_loss"} == {
        ("val_loss", 4),
        ("val_loss", 8),
    }
    assert run.metrics[("val_loss", 8)] == pytest.approx(
        float(trainer.callback_metrics["val_loss"])
    )
    assert not any(name.startswith("train") for name, _ in run.metrics)

    # the logger got the figures at the log steps and at each epoch's end
    energy = [(step, m) for step, m in logger.metrics if "energy_j" in m]
    for _, metrics in energy:
        finite_positive(metrics, FIGURES)
        assert "co2e_g" not in metrics  # no grid intensity: no figure, never 0
    per_epoch = [m for _, m in energy if "epoch_energy_j" in m]
    assert len(per_epoch) == 2
    # at the trainer's own log steps (log_every_n_steps=2), on its own step count
    loss_steps = [step for step, m in logger.metrics if "train_loss" in m]
    assert [step for step, m in energy if "epoch_energy_j" not in m] == loss_steps
    assert len(loss_steps) == 4
    for metrics in per_epoch:
        finite_positive(metrics, ("epoch_energy_j",))
    finite_positive(dict(trainer.callback_metrics), (*FIGURES, "epoch_energy_j"))


def test_validate_test_and_predict_are_runs_of_their_kind(tmp_path: Path) -> None:
    callback = own_meter(tmp_path, intensity_g_per_kwh=250.0)
    model = Tiny()
    trainer = make_trainer(Recording(), callback)
    trainer.validate(model, loader(16, seed=2))
    trainer.test(model, loader(16, seed=3))
    trainer.predict(model, loader(16, seed=4))

    runs = spooled_runs(tmp_path / "spool")
    assert [r.record.metadata["kind"] for r in runs] == ["eval", "eval", "inference"]
    assert [r.phase_names() for r in runs] == [["eval"], ["eval"], ["predict"]]
    assert [r.phases[0]["tags"].get("stage") for r in runs[:2]] == ["validate", "test"]
    assert ("val_loss", 0) in runs[0].metrics
    assert list(runs[1].metrics) == [("test_loss", 0)]
    assert all(r.work["model_params"] == 49 for r in runs)
    assert all(r.record.status == "finished" for r in runs)


def test_a_failing_fit_ends_its_run_as_failed(tmp_path: Path) -> None:
    callback = own_meter(tmp_path)
    trainer = make_trainer(Recording(), callback, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match="the job's own failure"):
        trainer.fit(Tiny(fail_at_step=2), loader(32, seed=1))
    (run,) = spooled_runs(tmp_path / "spool")
    assert run.record.status == "failed"
    assert all("t1_s" in p for p in run.phases)  # train and epoch-0 closed with the run
    assert run.phase_names() == ["train", "epoch-0"]
    assert not callback.job.active


def test_a_given_meter_is_used_and_left_running(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    logger = Recording()
    with Meter("pl-given", backend="simulated", spool_dir=spool, env={}) as meter:
        trainer = make_trainer(logger, ThermoledgerLightningCallback(meter), max_epochs=1)
        trainer.fit(Tiny(), loader(32, seed=1))
        assert meter.state == "running"
        assert meter.work.flops > 0
    (run,) = spooled_runs(spool)
    assert run.phase_names() == ["train", "epoch-0"]
    assert "tokens" not in run.work  # no tokens_fn: no tokens declared, not 0
    assert any("energy_per_token_j" not in m and "energy_j" in m for _, m in logger.metrics)
