"""Which power reading each GPU gives (``power_reading``), how it is chosen and how it is set.

The NVML backend takes the driver's 1 s average where a GPU has one (``auto``, the default),
the same with a warning for GPUs without one (``average``), or the instantaneous reading
(``instant``); whether ``nvmlDeviceGetPowerUsage`` averages depends on the chip, and GA100 is
told by its PCI device id, the name being the fallback. The option travels from the command line
(``--power-reading``), the environment (``THERMOLEDGER_POWER_READING``) and ``Meter`` to the
backend.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from thermoledger.meters import options as meter_options
from thermoledger.meters.api import Meter
from thermoledger.meters.backends import Method, NvmlBackend
from thermoledger.meters.backends import nvml as codes
from thermoledger.meters.backends.nvml import is_ga100
from thermoledger.meters.backends.simulated import Bursty
from thermoledger.meters.settings import MeterSettings, PowerReading, SettingsError
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_pynvml import (
    FakeGpu,
    FakeNvml,
    a10,
    a30,
    a100,
    a800,
    h100,
    p100,
    v100,
)

AVG, INSTANT = Method.POWER_AVG, Method.POWER_INSTANT
ODD_NAME = "NVIDIA Graphics Device"  # what a board the driver does not know by name reports


def _open(gpus: list[FakeGpu], **kwargs: Any) -> tuple[NvmlBackend, FakeNvml]:
    clock = ManualClock()
    fake = FakeNvml(gpus, clock=clock)
    return NvmlBackend(nvml=fake, clock=clock, env={}, **kwargs), fake


# -- the choice, per chip and per power_reading --------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "reading", "method", "source", "other"),
    [
        # Hopper and non-GA100 Ampere: the average field; instant on request
        (h100(), "auto", AVG, "NVML_FI_DEV_POWER_AVERAGE", False),
        (h100(), "average", AVG, "NVML_FI_DEV_POWER_AVERAGE", False),
        (h100(), "instant", INSTANT, "NVML_FI_DEV_POWER_INSTANT", False),
        (a10(), "auto", AVG, "NVML_FI_DEV_POWER_AVERAGE", False),
        # no field values: nvmlDeviceGetPowerUsage, which averages there
        (h100(field_power=False), "auto", AVG, "nvmlDeviceGetPowerUsage", False),
        (a10(field_power=False), "average", AVG, "nvmlDeviceGetPowerUsage", False),
        (h100(field_power=False), "instant", AVG, "nvmlDeviceGetPowerUsage", True),
        # GA100 (A100, A800, A30): no average field, power usage instantaneous
        (a100(), "auto", INSTANT, "NVML_FI_DEV_POWER_INSTANT", True),
        (a100(), "average", INSTANT, "NVML_FI_DEV_POWER_INSTANT", True),
        (a100(), "instant", INSTANT, "NVML_FI_DEV_POWER_INSTANT", False),
        (a100(field_power=False), "auto", INSTANT, "nvmlDeviceGetPowerUsage", True),
        (a800(field_power=False), "auto", INSTANT, "nvmlDeviceGetPowerUsage", True),
        (a30(field_power=False), "average", INSTANT, "nvmlDeviceGetPowerUsage", True),
        # before Ampere: instantaneous only
        (v100(), "auto", INSTANT, "NVML_FI_DEV_POWER_INSTANT", True),
        (v100(field_power=False), "instant", INSTANT, "nvmlDeviceGetPowerUsage", False),
        (p100(), "average", INSTANT, "nvmlDeviceGetPowerUsage", True),
    ],
)
def test_the_reading_per_chip_and_power_reading(
    gpu: FakeGpu, reading: str, method: Method, source: str, other: bool
) -> None:
    backend, fake = _open([gpu], power_reading=reading)
    info = backend.devices()[0]
    assert info.power_method is method
    assert source in info.uncertainty.note
    # NVML documents 1 s for both averages; an instantaneous reading has no window
    assert info.uncertainty.power_window_s == (1.0 if method is AVG else None)
    if other:
        wanted = "instantaneous" if reading == "instant" else "averaged"
        assert f"no {wanted} power on this GPU" in info.note
    else:
        assert "on this GPU:" not in info.note
    reads_usage = source == "nvmlDeviceGetPowerUsage"
    before = fake.calls[("nvmlDeviceGetPowerUsage", 0)]
    backend.read()
    assert fake.calls[("nvmlDeviceGetPowerUsage", 0)] == before + reads_usage


def test_the_readings_are_what_the_chosen_source_returns() -> None:
    wave = Bursty(100.0, 500.0, period_s=2.0)  # at t = 0.5: 500 W now, 300 W over the last second
    clock = ManualClock()
    fake = FakeNvml([h100(profile=wave), a100(profile=wave), a10(profile=wave)], clock=clock)
    backend = NvmlBackend(nvml=fake, clock=clock, env={})
    clock.advance(0.5)
    assert backend.read().power_w.tolist() == [300.0, 500.0, 300.0]


# -- GA100 by PCI device id, the name as fallback ----------------------------------------------


def test_an_a800_is_a_ga100_by_its_pci_id_whatever_its_name() -> None:
    renamed = a800(name=ODD_NAME, field_power=False)
    backend, _ = _open([renamed])
    info = backend.devices()[0]
    assert info.power_method is INSTANT
    assert "GA100 by its PCI device id 0x20F3" in info.note
    assert "no averaged power on this GPU" in info.note


def test_without_a_pci_id_the_name_decides_and_knows_the_a800() -> None:
    named, _ = _open([a800(field_power=False, pci_device_id=None)])
    assert named.devices()[0].power_method is INSTANT
    assert "GA100 by its name" in named.devices()[0].note
    # Control: with neither the id nor a telling name, nothing can say GA100 (why the id matters).
    blind, _ = _open([a800(name=ODD_NAME, field_power=False, pci_device_id=None)])
    assert blind.devices()[0].power_method is AVG


@pytest.mark.parametrize(
    "device_id", [0x20B0, 0x20B2, 0x20B5, 0x20B7, 0x20B8, 0x20BD, 0x20F1, 0x20F3, 0x20F5, 0x20F6]
)
def test_ga100_pci_ids(device_id: int) -> None:
    assert is_ga100(ODD_NAME, device_id) == (True, f"GA100 by its PCI device id 0x{device_id:04X}")


@pytest.mark.parametrize(
    ("name", "device_id", "ga100"),
    [
        ("NVIDIA A100-SXM4-80GB", None, True),
        ("NVIDIA A100 80GB PCIe", None, True),
        ("NVIDIA A100X", None, True),
        ("NVIDIA A30", None, True),
        ("NVIDIA A800-SXM4-80GB", None, True),  # the old name rule missed it
        ("NVIDIA A800 40GB PCIe", None, True),
        ("NVIDIA AX800", None, True),
        ("NVIDIA A10", 0x2236, False),  # GA102
        ("NVIDIA A40", 0x2235, False),  # GA102
        ("NVIDIA RTX A6000", 0x2230, False),
        ("NVIDIA RTX A3000 Laptop GPU", None, False),
        ("NVIDIA H100 80GB HBM3", 0x2330, False),  # GH100
        ("NVIDIA H800", 0x2324, False),
    ],
)
def test_ga100_names_and_other_chips(name: str, device_id: int | None, ga100: bool) -> None:
    assert is_ga100(name, device_id)[0] is ga100


def test_the_pci_id_is_asked_only_where_power_usage_decides() -> None:
    backend, fake = _open([h100(), a100(), v100(field_power=False), a10(field_power=False)])
    assert [d.power_method for d in backend.devices()] == [AVG, INSTANT, INSTANT, AVG]
    # h100: the average field answered; a100: fields, but power usage was asked (GA100 check);
    # v100: before Ampere, no chip question; a10: power usage on Ampere, so the PCI id
    assert [fake.calls[("nvmlDeviceGetPciInfo", i)] for i in range(4)] == [0, 1, 0, 1]


# -- the warning, once --------------------------------------------------------------------------


def test_average_asked_where_a_gpu_has_none_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    fleet = [h100(), a100(), v100(), p100()]
    with caplog.at_level(logging.WARNING, logger="thermoledger"):
        backend, _ = _open(fleet, power_reading="average")
        backend.read()
        backend.read()
    warnings = [r for r in caplog.records if "power_reading=average" in r.getMessage()]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "1 (NVIDIA A100-SXM4-80GB), 2 (Tesla V100-SXM2-32GB), 3 (Tesla P100" in message
    assert "0 (" not in message
    assert [d.power_method for d in backend.devices()] == [AVG, INSTANT, INSTANT, INSTANT]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="thermoledger"):
        _open(fleet)  # auto: a GPU without an average is no news, only its note says so
    assert not [r for r in caplog.records if "power_reading" in r.getMessage()]


def test_instant_asked_where_a_gpu_has_none_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("thermoledger.test.power")
    with caplog.at_level(logging.WARNING, logger="thermoledger.test.power"):
        _open([h100(field_power=False), h100()], power_reading="instant", logger=log)
    (record,) = caplog.records
    assert record.name == "thermoledger.test.power"
    assert "power_reading=instant: GPU(s) 0 (" in record.getMessage()


def test_a_bad_power_reading_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="power_reading must be one of auto, average, instant"):
        _open([h100()], power_reading="mean")


# -- settings, environment, command line, Meter -------------------------------------------------


def test_settings_take_the_argument_then_the_environment_then_auto() -> None:
    assert MeterSettings.resolve(env={}).power_reading == "auto"
    env = {"THERMOLEDGER_POWER_READING": "instant"}
    assert MeterSettings.resolve(env=env).power_reading == "instant"
    assert MeterSettings.resolve(env=env, power_reading="average").power_reading == "average"
    with pytest.raises(SettingsError, match="THERMOLEDGER_POWER_READING must be one of auto"):
        MeterSettings.resolve(env={"THERMOLEDGER_POWER_READING": "1s"})
    with pytest.raises(SettingsError, match="power_reading must be one of"):
        MeterSettings.resolve(env=env, power_reading="often")
    with pytest.raises(SettingsError, match="power_reading"):
        MeterSettings(power_reading="never")  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["run", "sidecar"])
def test_the_flag_parses_on_both_metering_commands(command: str) -> None:
    parser = meter_options.build_parser()
    tail = ["--", "python", "x.py"] if command == "run" else []
    args = parser.parse_args([command, "--power-reading", "instant", *tail])
    options = meter_options.from_args(args, parser, env={})
    assert isinstance(options, meter_options.MeterOptions)
    assert options.power_reading == "instant"
    assert options.settings_flags()["power_reading"] == "instant"
    settings = MeterSettings.resolve(env={}, **options.settings_flags())
    assert settings.power_reading == "instant"
    default = meter_options.from_args(parser.parse_args([command, *tail]), parser, env={})
    assert isinstance(default, meter_options.MeterOptions)
    assert default.power_reading is None  # the environment, then auto, decide
    env = {"THERMOLEDGER_POWER_READING": "average"}
    assert MeterSettings.resolve(env=env, **default.settings_flags()).power_reading == "average"
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--power-reading", "sometimes", *tail])


def test_the_flag_is_documented_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = meter_options.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["sidecar", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--power-reading {auto,average,instant}" in text
    assert "THERMOLEDGER_POWER_READING" in text


def test_meter_passes_power_reading_to_the_nvml_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``Meter(power_reading=...)`` → settings → `open_backend` → `NvmlBackend`.

    `open_backend` imports pynvml itself; the one seam replaced here is that import, which hands
    over a fake driver (there is no GPU on a CI machine).
    """
    fake = FakeNvml([h100(), a100()])
    monkeypatch.setattr(codes, "_import_pynvml", lambda: fake)
    env = {"THERMOLEDGER_POWER_READING": "instant"}
    cases: list[tuple[PowerReading | None, dict[str, str], PowerReading, list[Method]]] = [
        (None, {}, "auto", [AVG, INSTANT]),
        (None, env, "instant", [INSTANT, INSTANT]),
        ("average", env, "average", [AVG, INSTANT]),
    ]
    for given, environment, resolved, methods in cases:
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING),
            Meter(
                "power",
                backend="nvml",
                power_reading=given,
                spool_dir=tmp_path,
                env=environment,
                host="h",
            ) as m,
        ):
            assert m.state == "running", caplog.text
            assert m.settings is not None
            assert m.settings.power_reading == resolved
            assert [d["power_method"] for d in m.devices] == [x.label for x in methods]
        said = [r for r in caplog.records if "offer no averaged power" in r.getMessage()]
        assert len(said) == (given == "average")
