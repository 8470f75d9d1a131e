"""``bench/accuracy.py --real`` against the fake NVML: its logic here, its figures on a GPU.

The fake's counter and its averaged power come from the same power profile, so what the real
mode reports here is known: small errors against the counter on steady loads, bands that cover
it, the counter's grid found, and a one-line refusal (exit 2) where NVML cannot be used.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

from thermoledger.meters.backends import Bursty, steady
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.testing.fake_pynvml import FakeNvml, a100, h100

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
accuracy = importlib.import_module("accuracy")
_real_nvml = importlib.import_module("_real_nvml")

REAL_LINE = re.compile(
    r"^accuracy \(real NVML\): averaged vs counter max \|error\| (\S+) %, "
    r"instant max \|error\| (\S+) %, band coverage (\S+) %, (\d+) GPUs$"
)
SIMULATED_LINE = re.compile(
    r"^accuracy: counter max \|error\| (\S+) %, gridded counter max \|error\| (\S+) %, "
    r"averaged max \|error\| (\S+) %, band coverage (\S+) %$"
)


def _fleet() -> FakeNvml:
    """GPUs whose counters move on a grid of their own, as real ones do, on a driver loaded a
    while ago (in its first second the 1 s average still holds the time before the load)."""
    fake = FakeNvml(
        [
            h100(profile=steady(72.0), counter_update_s=0.05, counter_update_phase_s=0.013),
            h100(
                profile=Bursty(110.0, 640.0, period_s=0.25, duty=0.3, phase_s=0.037),
                counter_update_s=0.1,
            ),
            a100(profile=steady(60.0), counter_update_s=0.02),
        ]
    )
    fake.loaded_mono_s -= 5.0
    return fake


def test_each_window_compares_both_readings_with_the_counter_over_the_same_samples() -> None:
    tap = _real_nvml.open_taps(_fleet())
    try:
        cases = _real_nvml.measure(tap, 0.6)
    finally:
        tap.close()
    steady_h100, pulsed_h100, ga100 = cases
    for case in cases:
        assert case.measured, case.note
        assert case.note == ""
        assert case.duration_s >= 0.6  # the window holds the job
        assert case.counter_j == pytest.approx(case.counter_diff_j, abs=1e-9)
        assert case.instant is not None
        assert case.instant.covers(case.counter_j)
    # The period is learnt from when reads see the counter move: a read delayed by a busy
    # machine (the whole suite beside it) shifts it by a few ms, so this checks the plumbing,
    # within 20 %; the energy is the counter's difference whatever the period.
    assert [c.counter_update_s for c in cases] == [
        pytest.approx(0.05, rel=0.2),
        pytest.approx(0.1, rel=0.2),
        pytest.approx(0.02, rel=0.2),
    ]
    # steady: both readings give the counter's energy, to the fake's mW/mJ rounding
    assert steady_h100.averaged is not None
    assert steady_h100.instant is not None
    assert abs(steady_h100.averaged.error_percent(steady_h100.counter_j)) < 0.05
    assert abs(steady_h100.instant.error_percent(steady_h100.counter_j)) < 0.05
    assert steady_h100.averaged.method == "power_avg"
    assert steady_h100.instant.method == "power_instant"
    # a 0.25 s square wave: finite errors, inside the averaged reading's band
    assert pulsed_h100.averaged is not None
    assert pulsed_h100.instant is not None
    assert math.isfinite(pulsed_h100.averaged.error_percent(pulsed_h100.counter_j))
    assert pulsed_h100.averaged.covers(pulsed_h100.counter_j)
    # a GA100 has no averaged reading: said, not invented
    assert ga100.averaged is None
    assert abs(ga100.instant.error_percent(ga100.counter_j)) < 0.05


def test_real_mode_prints_each_gpu_and_a_machine_read_last_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--real", "--windows", "0.4", "--repeats", "2", "--load", "idle"]
    assert accuracy.main(argv, nvml=_fleet()) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    last = REAL_LINE.match(lines[-1])
    assert last is not None, lines[-1]
    worst_avg, worst_inst, coverage, gpus = last.groups()
    assert int(gpus) == 3
    assert math.isfinite(float(worst_avg))
    assert math.isfinite(float(worst_inst))
    assert float(coverage) == 100.0
    assert out.count("GPU 0: NVIDIA H100") == 1
    assert "GPU 2: NVIDIA A100" in out
    assert "power_avg, 1 s window (NVML_FI_DEV_POWER_AVERAGE" in out  # the choice, said
    assert "counter update period (Sampler.counter_update_s, per window): " in out
    assert "load: idle (--load idle)" in out
    assert len([line for line in lines if line.startswith("     0.4   2 ")]) == 3
    assert "load: idle" in err


def test_real_mode_without_pynvml_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as if nvidia-ml-py were not installed
    assert accuracy.main(["--real"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "accuracy --real: pynvml is not installed "
        "(pip install 'thermoledger[nvml]': nvidia-ml-py)\n"
    )


@pytest.mark.parametrize(
    ("nvml", "why"),
    [
        (FakeNvml([]), "NVML sees no GPU (it counts none)"),
        (
            FakeNvml([h100()], init_error=codes.NVML_ERROR_DRIVER_NOT_LOADED),
            "NVML sees no GPU: nvmlInit failed: Driver Not Loaded",
        ),
    ],
)
def test_real_mode_where_nvml_sees_no_gpu_exits_2(
    nvml: FakeNvml, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert accuracy.main(["--real", "--load", "idle"], nvml=nvml) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"accuracy --real: {why}")
    assert err.count("\n") == 1


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is not None or importlib.util.find_spec("cupy") is not None,
    reason="torch or cupy is importable here",
)
def test_a_load_that_cannot_start_is_idle_unless_asked_for() -> None:
    with _real_nvml.Load(["GPU-x"], python=sys.executable) as load:
        assert load.label == "idle"
        assert load.description.startswith("idle (neither torch nor cupy importable by ")
    with pytest.raises(_real_nvml.NoGpu, match="--load square: neither torch nor cupy"):
        _real_nvml.Load(["GPU-x"], choice="square", python=sys.executable).__enter__()


_STUB_TORCH = """
__version__ = "0.0-stub"
bfloat16 = "bf16"
def randn(*shape, **options):
    {randn}
def matmul(a, b):
    return a
class cuda:
    @staticmethod
    def synchronize():
        pass
"""


def _stub_torch(directory: Path, monkeypatch: pytest.MonkeyPatch, randn: str) -> None:
    """A ``torch`` the load's subprocesses import (through PYTHONPATH), without a GPU."""
    (directory / "torch").mkdir()
    (directory / "torch" / "__init__.py").write_text(_STUB_TORCH.format(randn=randn))
    monkeypatch.setenv("PYTHONPATH", str(directory))


def test_the_load_runs_a_square_wave_per_gpu_and_stops_with_the_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_torch(tmp_path, monkeypatch, "return 1")
    load = _real_nvml.Load(["GPU-a", "GPU-b"], period_s=0.05, python=sys.executable)
    with load:
        assert load.label == "square 0.05 s × 0.3"
        assert "period 0.05 s, duty 0.3" in load.description
        assert "via torch 0.0-stub, bf16" in load.description
        procs = list(load._procs)
        assert [p.poll() for p in procs] == [None, None]  # running
    assert all(p.poll() is not None for p in procs)  # and stopped


def test_a_load_that_fails_to_start_leaves_the_gpus_idle_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_torch(tmp_path, monkeypatch, "raise RuntimeError('no CUDA GPUs are available')")
    with _real_nvml.Load(["GPU-a"], python=sys.executable) as load:
        assert load.label == "idle"
        assert load.description == (
            "idle (the load did not start: exited 1: RuntimeError: no CUDA GPUs are available)"
        )
    with pytest.raises(_real_nvml.NoGpu, match="--load square: exited 1"):
        _real_nvml.Load(["GPU-a"], choice="square", python=sys.executable).__enter__()


@pytest.mark.slow
def test_the_simulated_mode_keeps_its_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--windows", "0.3", "--fleets", "1", "--busy", "idle", "--no-run"]
    assert accuracy.main([*argv, "--modes", "counter", "averaged"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert SIMULATED_LINE.match(last), last
