"""The callbacks' framework-free side (`integrations._common`) and what importing them costs.

No framework needed: these run wherever thermoledger does (the lane runs them with the rest).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integrations.lane import spooled_runs
from thermoledger.integrations._common import (
    MeteredJob,
    dtype_name,
    is_speed_metric,
    real_value,
)
from thermoledger.meters.api import Meter


def own(tmp_path: Path, env: dict[str, str] | None = None, **options: Any) -> MeteredJob:
    return MeteredJob(
        None,
        run="job",
        intensity_g_per_kwh=options.pop("intensity_g_per_kwh", None),
        dtype=options.pop("dtype", None),
        meter_options={
            "backend": "simulated",
            "spool_dir": tmp_path / "spool",
            "env": env or {},
            "interval_s": 0.02,
        },
        owner="Test",
    )


def test_values_and_names() -> None:
    assert real_value(2) == 2.0
    assert real_value(np.float32(0.5)) == 0.5
    assert real_value(Decimal("1.5")) == 1.5
    assert real_value(np.array([3.0])) == 3.0  # one element, as a tensor's item()
    assert real_value(np.array([1.0, 2.0])) is None
    for bad in (True, "1", None, float("nan"), float("inf"), np.array([np.nan])):
        assert real_value(bad) is None
    assert dtype_name("torch.bfloat16") == "bf16"
    assert dtype_name("torch.float32") == "fp32"
    assert dtype_name("fp8") == "fp8"
    assert dtype_name("bf16 mixed") is None
    assert all(is_speed_metric(n) for n in ("eval_runtime", "eval_samples_per_second", "epoch"))
    assert all(is_speed_metric(n) for n in ("energy_j", "eval_mem_cpu_alloc_delta"))
    assert not any(is_speed_metric(n) for n in ("eval_loss", "val_acc", "test_f1"))


def test_figures_are_left_out_until_known(tmp_path: Path) -> None:
    job = own(tmp_path, dtype="bf16")
    job.begin(kind="training")
    job.start_counting(tokens_total=None, flops_total=None)
    time.sleep(0.02)  # some energy to divide
    assert set(job.figures()) == {"energy_j"}  # no tokens, no FLOPs, no intensity: no figure
    job.end()

    job = own(tmp_path, dtype="bf16", intensity_g_per_kwh=300.0)
    job.begin(kind="training")
    job.start_counting(tokens_total=1000, flops_total=5e9)
    job.count_tokens_total(1400)
    job.count_flops_total(8e9)
    time.sleep(0.02)
    figures = job.figures()
    energy_j = figures["energy_j"]
    assert energy_j > 0
    assert figures["energy_per_token_j"] == pytest.approx(energy_j / 400)
    assert figures["flop_per_j"] == pytest.approx(3e9 / energy_j)
    assert figures["co2e_g"] == pytest.approx(energy_j / 3.6e6 * 300.0)
    job.end()
    runs = spooled_runs(tmp_path / "spool")
    assert runs[-1].work["tokens"] == 400  # the increase since training began, not the total
    assert runs[-1].work["flops"]["value"] == pytest.approx(3e9)
    assert runs[-1].work["dtype"] == "bf16"


def test_co2e_takes_the_environment_pue_and_intensity(tmp_path: Path) -> None:
    env = {"THERMOLEDGER_GRID_INTENSITY_G_PER_KWH": "300", "THERMOLEDGER_PUE": "1.5"}
    job = own(tmp_path, env)
    job.begin(kind="training")
    time.sleep(0.02)
    figures = job.epoch_figures()
    assert figures["co2e_g"] == pytest.approx(figures["energy_j"] / 3.6e6 * 1.5 * 300)
    assert 0 < figures["epoch_energy_j"] <= figures["energy_j"]
    job.end()


def test_a_bad_environment_intensity_loses_co2e_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = own(tmp_path, {"THERMOLEDGER_GRID_INTENSITY_G_PER_KWH": "a lot"})
    with caplog.at_level(logging.WARNING, logger="thermoledger"):
        job.begin(kind="training")
    assert "THERMOLEDGER_GRID_INTENSITY_G_PER_KWH" in caplog.text
    assert "co2e_g is not logged" in caplog.text
    time.sleep(0.01)
    assert set(job.figures()) == {"energy_j"}
    job.end()


def test_metrics_forwarded_without_the_speed_figures(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with Meter("m", backend="simulated", spool_dir=spool, env={}) as meter:
        job = MeteredJob(
            meter, run=None, intensity_g_per_kwh=None, dtype=None, meter_options={}, owner="T"
        )
        job.begin(kind="eval")
        recorded = job.record_metrics(
            {
                "eval_loss": np.float64(2.5),
                "eval_acc": np.array([0.75]),
                "eval_runtime": 0.1,
                "eval_samples_per_second": 40.0,
                "epoch": 1.0,
                "eval_note": "text",
                "eval_nan": float("nan"),
                "other": 1.0,
            },
            step=7,
            keep=lambda name: name.startswith("eval"),
            tokens_seen=96,
        )
        job.end()
        assert meter.state == "running"  # the caller's meter: not stopped by the job
    assert recorded == ["eval_loss", "eval_acc"]
    (run,) = spooled_runs(spool)
    assert run.metrics == {("eval_loss", 7): 2.5, ("eval_acc", 7): 0.75, ("tokens_seen", 7): 96}


def test_arguments_are_checked_with_the_field_named(tmp_path: Path) -> None:
    def make(**kw: Any) -> MeteredJob:
        options: dict[str, Any] = {
            "run": None,
            "intensity_g_per_kwh": None,
            "dtype": None,
            "meter_options": {},
        }
        options.update(kw)
        return MeteredJob(options.pop("meter", None), owner="Cb", **options)

    with pytest.raises(ValueError, match=r"Cb: intensity_g_per_kwh must be a finite number"):
        make(intensity_g_per_kwh=float("nan"))
    with pytest.raises(ValueError, match=r"Cb: dtype must be a precision"):
        make(dtype="?")
    with pytest.raises(TypeError, match=r"meter= must be a thermoledger Meter"):
        make(meter="m")
    with pytest.raises(TypeError, match=r"kind= is not an option"):
        make(meter_options={"kind": "training"})
    with (
        Meter("x", backend="simulated", spool_dir=tmp_path, env={}) as meter,
        pytest.raises(TypeError, match=r"not both"),
    ):
        make(meter=meter, meter_options={"spool_dir": tmp_path})


def _python(code: str) -> Any:
    """What ``code`` printed last, as JSON, run by a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_package_imports_no_framework() -> None:
    result = _python(
        "import json, sys\n"
        "import thermoledger.integrations\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'lightning', 'accelerate', 'numpy'))\n"
        "print(json.dumps(heavy))\n"
    )
    assert result == []


@pytest.mark.parametrize(
    ("name", "blocked", "extra"),
    [
        ("ThermoledgerCallback", "transformers", "thermoledger[hf]"),
        ("ThermoledgerLightningCallback", "lightning", "thermoledger[lightning]"),
    ],
)
def test_a_missing_framework_names_its_extra(name: str, blocked: str, extra: str) -> None:
    result = _python(
        "import json, sys\n"
        f"sys.modules[{blocked!r}] = None  # as if not installed\n"
        "try:\n"
        f"    from thermoledger.integrations import {name}\n"
        "except ImportError as e:\n"
        "    print(json.dumps(str(e)))\n"
        "else:\n"
        "    print(json.dumps('imported'))\n"
    )
    assert f"pip install '{extra}'" in result
    assert name in result
