"""The Hugging Face Trainer callback against the real transformers, on a tiny CPU GPT-2.

A one-layer GPT-2 of about a thousand parameters, built from its config (no hub download),
trains two epochs of two steps on random token ids, metered by simulated devices into a spool
(no server). The checks compare what the callback declared with the Trainer's own figures, and
look at what reached a callback placed where ``report_to`` integrations sit in the Trainer's
list (before ours).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.lane import finite_positive, require, spooled_runs
from thermoledger.meters.api import Meter
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.discovery import Sources
from thermoledger.meters.testing.fake_pynvml import FakeNvml

require("torch")
require("transformers")
require("accelerate")

import torch  # noqa: E402
import transformers  # noqa: E402

from thermoledger.integrations import ThermoledgerCallback  # noqa: E402

FIGURES = ("energy_j", "energy_per_token_j", "flop_per_j")
SEQ = 12
VOCAB = 32


class Recorder(transformers.TrainerCallback):  # type: ignore[misc,unused-ignore]
    """Sees the logs where a W&B, MLflow or TensorBoard callback would (before ours)."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.logs.append(dict(logs or {}))


class Tokens(torch.utils.data.Dataset):  # type: ignore[misc,unused-ignore]
    """Random token ids, labels = inputs (causal LM)."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=generator)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_model() -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=8,
        n_layer=1,
        n_head=2,
        bos_token_id=None,
        eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(config)


def make_trainer(tmp_path: Path, *, callbacks: list[Any], **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "num_train_epochs": 2,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "logging_steps": 1,
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "report_to": "none",
        "include_num_input_tokens_seen": True,
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    options.update(overrides)
    return transformers.Trainer(
        model=tiny_model(),
        args=transformers.TrainingArguments(**options),
        train_dataset=Tokens(8, seed=1),
        eval_dataset=Tokens(4, seed=2),
        callbacks=callbacks,
    )


def meter_options(tmp_path: Path) -> dict[str, Any]:
    """The callback's own meter: simulated devices, a spool, no server, no environment."""
    return {"backend": "simulated", "spool_dir": tmp_path / "spool", "env": {}, "interval_s": 0.02}


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """The callback's hooks swallow their failures into one warning: none may be logged here."""
    caplog.set_level(logging.WARNING, logger="thermoledger")
    yield
    failures = [r.getMessage() for r in caplog.records if r.name.startswith("thermoledger")]
    assert failures == []


def test_train_records_phases_work_metrics_and_logs_energy(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = make_trainer(tmp_path, callbacks=[recorder])
    callback = ThermoledgerCallback.attach(trainer, run="hf-tiny", **meter_options(tmp_path))
    trainer.train()
    state, model = trainer.state, trainer.model

    (run,) = spooled_runs(tmp_path / "spool")
    assert run.record.metadata["name"] == "hf-tiny"
    assert run.record.metadata["kind"] == "training"
    assert run.record.status == "finished"
    assert not callback.job.active  # its own meter, stopped at the end of training
    # train, then per epoch: the epoch and the evaluation the Trainer ran after it
    assert run.phase_names() == ["train", "epoch-0", "eval", "epoch-1", "eval"]
    assert all(p["t1_s"] >= p["t0_s"] for p in run.phases)

    # N, D and FLOPs are the Trainer's own: total_flos is 6·N·D over non-embedding parameters
    assert run.work["model_params"] == model.num_parameters()
    assert run.work["tokens"] == state.num_input_tokens_seen == 2 * 8 * SEQ
    assert state.total_flos == 6 * state.num_input_tokens_seen * model.num_parameters(
        exclude_embeddings=True
    )
    assert run.work["flops"] == {"value": pytest.approx(state.total_flos), "unit": "FLOP"}
    assert run.work["dtype"] == "fp32"
    epochs = [p for p in run.phases if p["name"].startswith("epoch-")]
    assert [p["tokens"] for p in epochs] == [8 * SEQ, 8 * SEQ]

    # eval_loss reached record_metric at the steps the Trainer evaluated, with tokens seen
    evals = [h for h in state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4]
    for entry in evals:
        assert run.metrics[("eval_loss", entry["step"])] == pytest.approx(entry["eval_loss"])
        assert run.metrics[("tokens_seen", entry["step"])] == entry["step"] * 4 * SEQ
    assert not any(name.endswith("_runtime") for name, _ in run.metrics)

    # a callback in the reporters' place got the figures through trainer.log
    energy = [logs for logs in recorder.logs if "energy_j" in logs]
    assert len(energy) >= 4  # each of the 4 training steps' logs, the epochs', the evals'
    for logs in energy:
        finite_positive(logs, FIGURES)
        assert "co2e_g" not in logs  # no grid intensity anywhere: not a 0
    per_epoch = [logs for logs in energy if "epoch_energy_j" in logs]
    assert len(per_epoch) == 2
    for logs in per_epoch:
        finite_positive(logs, ("epoch_energy_j",))
        assert logs["epoch_energy_j"] <= logs["energy_j"]
    assert per_epoch[1]["energy_j"] > per_epoch[0]["energy_j"]
    last = per_epoch[-1]
    assert last["energy_per_token_j"] == pytest.approx(last["energy_j"] / (2 * 8 * SEQ))
    assert any("energy_j" in h for h in state.log_history)


def test_co2e_from_the_given_intensity(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = make_trainer(tmp_path, callbacks=[recorder], num_train_epochs=1)
    ThermoledgerCallback.attach(trainer, intensity_g_per_kwh=400.0, **meter_options(tmp_path))
    trainer.train()
    logs = [entry for entry in recorder.logs if "energy_j" in entry]
    assert logs
    for entry in logs:
        finite_positive(entry, (*FIGURES, "co2e_g"))
        assert entry["co2e_g"] == pytest.approx(entry["energy_j"] / 3.6e6 * 400.0)


def test_in_the_callbacks_list_the_logs_carry_the_figures(tmp_path: Path) -> None:
    """Without the trainer: the callbacks after ours and log_history get them."""
    callback = ThermoledgerCallback(**meter_options(tmp_path))
    after = Recorder()
    trainer = make_trainer(tmp_path, callbacks=[callback, after], num_train_epochs=1)
    trainer.train()
    logged = [entry for entry in after.logs if "energy_j" in entry]
    assert logged
    for entry in logged:
        finite_positive(entry, FIGURES)
    history = [h for h in trainer.state.log_history if "energy_j" in h]
    assert any("loss" in h for h in history)  # added to the step's own entry
    assert any("epoch_energy_j" in h for h in history)
    (run,) = spooled_runs(tmp_path / "spool")
    assert run.phase_names() == ["train", "epoch-0", "eval"]


def test_evaluate_and_predict_outside_training_on_a_given_meter(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with Meter("hf-eval", kind="eval", backend="simulated", spool_dir=spool, env={}) as meter:
        trainer = make_trainer(tmp_path, callbacks=[ThermoledgerCallback(meter)])
        metrics = trainer.evaluate()
        prediction = trainer.predict(Tokens(4, seed=3))
        assert meter.state == "running"  # the caller's meter: not stopped by the callback
    (run,) = spooled_runs(spool)
    assert run.phase_names() == ["eval", "predict"]
    assert all(p["t1_s"] >= p["t0_s"] for p in run.phases)
    assert run.metrics[("eval_loss", 0)] == pytest.approx(metrics["eval_loss"])
    assert run.metrics[("test_loss", 0)] == pytest.approx(prediction.metrics["test_loss"])


def test_nothing_measurable_logs_no_figures_and_training_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node where the meter finds nothing to read: no figure at all (never a 0), and the
    training runs."""
    (tmp_path / "powercap").mkdir()
    (tmp_path / "hwmon").mkdir()
    nothing = Sources(
        nvml=FakeNvml([], init_error=codes.NVML_ERROR_LIBRARY_NOT_FOUND),
        powercap=tmp_path / "powercap",
        hwmon=tmp_path / "hwmon",
    )
    recorder = Recorder()
    trainer = make_trainer(tmp_path, callbacks=[recorder], num_train_epochs=1)
    callback = ThermoledgerCallback.attach(
        trainer, sources=nothing, spool_dir=tmp_path / "spool", env={}
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert not callback.job.active
    assert not any(key in logs for logs in recorder.logs for key in (*FIGURES, "co2e_g"))
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith("thermoledger")]
    assert "nothing measurable" in warning
    caplog.clear()  # the one expected warning


def test_bad_arguments_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="intensity_g_per_kwh"):
        ThermoledgerCallback(intensity_g_per_kwh=-1)
    with pytest.raises(ValueError, match="dtype"):
        ThermoledgerCallback(dtype="bf16 mixed!")
    with (
        Meter("x", backend="simulated", spool_dir=tmp_path, env={}) as meter,
        pytest.raises(TypeError, match="not both"),
    ):
        ThermoledgerCallback(meter, spool_dir=tmp_path)
