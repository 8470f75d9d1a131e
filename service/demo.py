"""The demo: a simulated two-node, eight-GPU training run through the accounting core.

No GPU and no configuration needed. The trace is generated from the simulated backend's power
profiles (`meters.backends.simulated`), which have closed-form energy, so the demo can print the
exact ground truth beside what the accounting core measured. It exercises the paths a real run
takes: counter-based energy, power-only devices (averaged and instantaneous readings), a sampling
gap, a counter reset (driver reload), chunking every 10 s, phases, declared work, the three
bounds, cost and carbon. Every output says the devices are simulated.
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from thermoledger.accounting.carbon import default_emission_factor, default_pue
from thermoledger.accounting.cost import OwnedHardware, Tariff
from thermoledger.accounting.integrate import (
    PowerModel,
    counter_energy_curve,
    power_energy_curve,
    summarize_chunks,
    window_energy,
)
from thermoledger.accounting.report import (
    DeclaredWork,
    DeviceUsage,
    PhaseUsage,
    ReportSettings,
    RunInfo,
    RunReport,
    build_run_report,
    devices_from_chunks,
)
from thermoledger.meters.backends.simulated import Bursty, Profile, Ramp

INTERVAL_S = 0.1
CHUNK_S = 10.0
DURATION_S = 900.0
T_START_S = 1_790_000_000.0  # a fixed wall-clock origin keeps the demo's output reproducible
PHASES = (("warmup", 0.0, 60.0), ("train", 60.0, 780.0), ("eval", 780.0, 900.0))
H100_SXM = "nvidia-h100-sxm5-80gb"


@dataclass(frozen=True)
class DemoDevice:
    host: str
    index: int
    profile: Profile
    reading: Literal["counter", "power_avg", "power_instant"]
    gap_s: tuple[float, float] | None = None  # samples missing in [a, b)
    reset_at_s: float | None = None  # driver reload: the counter restarts from 0

    @property
    def key(self) -> str:
        return f"{self.host}/gpu{self.index}"


def demo_fleet() -> tuple[DemoDevice, ...]:
    """Two nodes of four simulated H100 SXM GPUs with training-like loads and some faults."""
    fleet: list[DemoDevice] = []
    for node in range(2):
        host = f"sim-node-{node}"
        for i in range(4):
            phase_s = 0.37 * (4 * node + i)
            profile: Profile = Bursty(
                310.0, 640.0 - 8.0 * i, period_s=1.7, duty=0.72, phase_s=phase_s
            )
            reading: Literal["counter", "power_avg", "power_instant"] = "counter"
            gap = None
            reset = None
            if node == 0 and i == 1:
                reset = 412.3
            if node == 1 and i == 2:
                reading, gap = "power_avg", (300.0, 305.0)
            if node == 1 and i == 3:
                reading = "power_instant"
                profile = Ramp(120.0, 520.0, duration_s=120.0, t_start_s=30.0)
            fleet.append(DemoDevice(host, i, profile, reading, gap, reset))
    return tuple(fleet)


@dataclass(frozen=True)
class DemoResult:
    report: RunReport
    true_energy_j: float


def run_demo() -> DemoResult:
    """Generate the trace, summarise it in 10 s chunks, and build the run report."""
    t_rel = np.arange(0.0, DURATION_S + INTERVAL_S / 2, INTERVAL_S)
    devices: list[DeviceUsage] = []
    true_j = 0.0
    phase_energy = np.zeros((len(PHASES), 3))
    starts = np.array([T_START_S + a for _, a, _ in PHASES])
    ends = np.array([T_START_S + b for _, _, b in PHASES])
    for dev in demo_fleet():
        t = t_rel
        if dev.gap_s is not None:
            a, b = dev.gap_s
            t = t[(t < a) | (t >= b)]
        true_j += float(dev.profile.energy_j(0.0, DURATION_S))
        power_w = (
            dev.profile.average_power_w(t, 1.0)
            if dev.reading == "power_avg"
            else dev.profile.power_w(t)
        )
        t_abs = T_START_S + t
        name = "Simulated NVIDIA H100 80GB HBM3"
        if dev.reading == "counter":
            counter_j = 5.0e6 + dev.profile.primitive_j(t) - dev.profile.primitive_j(0.0)
            if dev.reset_at_s is not None:
                after = t >= dev.reset_at_s
                counter_j = np.where(after, dev.profile.energy_j(dev.reset_at_s, t), counter_j)
            summaries = summarize_chunks(
                t_abs,
                power_w,
                chunk_s=CHUNK_S,
                origin_s=T_START_S,
                counter_j=counter_j,
                model=PowerModel(max_power_w=700.0, nominal_interval_s=INTERVAL_S),
            )
            curve = counter_energy_curve(t_abs, counter_j, max_power_w=700.0)
        else:
            # instant readings see ~25 ms of each 100 ms (A100/H100); averaged ones lag by w/2
            coverage = 0.25 if dev.reading == "power_instant" else 1.0
            window_s = 1.0 if dev.reading == "power_avg" else 0.0
            model = PowerModel(
                method=dev.reading,
                max_power_w=700.0,
                nominal_interval_s=INTERVAL_S,
                coverage_fraction=coverage,
                averaging_window_s=window_s,
            )
            summaries = summarize_chunks(
                t_abs, power_w, chunk_s=CHUNK_S, origin_s=T_START_S, model=model
            )
            curve = power_energy_curve(t_abs, power_w, model=model)
        devices.extend(
            devices_from_chunks(
                summaries,
                keys=[dev.key],
                hosts=[dev.host],
                indexes=[dev.index],
                names=[name],
                catalog_ids=[H100_SXM],
                simulated=[True],
            )
        )
        windows = window_energy(curve, starts, ends)
        phase_energy += np.column_stack(
            [windows.energy_j, windows.energy_low_j, windows.energy_high_j]
        )
    phases = [
        PhaseUsage(name, T_START_S + a, T_START_S + b, *map(float, phase_energy[k]))
        for k, (name, a, b) in enumerate(PHASES)
    ]
    settings = ReportSettings(
        pue=default_pue("hyperscale"),
        location_factor=default_emission_factor("WORLD"),
        tariff=Tariff(0.12, source="demo assumption: 0.12 USD/kWh industrial tariff"),
        hardware=OwnedHardware.over_years(30_000.0, 5.0, source="demo assumption: 30k USD, 5 y"),
    )
    report = build_run_report(
        run=RunInfo(str(uuid.UUID(int=0x7E50)), "demo-llm-1.3b", "training", "finished"),
        devices=devices,
        phases=phases,
        work=DeclaredWork(dtype="bf16", tokens=2.5e8, model_params=1.3e9),
        settings=settings,
    )
    return DemoResult(report, true_j)


def main(argv: list[str] | None = None, *, out: TextIO | None = None) -> int:
    """Print the demo report; ``--json PATH`` also writes it as JSON."""
    out = out or sys.stdout
    import argparse

    parser = argparse.ArgumentParser(prog="thermoledger-server demo", description=__doc__)
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    print(
        "thermoledger demo: SIMULATED GPUs (no NVML device is used; figures are synthetic)",
        file=out,
    )
    print(file=out)
    result = run_demo()
    report = result.report
    print(report.render_text(), file=out)
    measured = report.total.energy_j
    error = (measured - result.true_energy_j) / result.true_energy_j
    print(file=out)
    low_j, high_j = report.total.energy_low_j, report.total.energy_high_j
    verdict = "covers" if low_j <= result.true_energy_j <= high_j else "MISSES"
    print(
        f"Ground truth (simulation, closed form): {result.true_energy_j:,.0f} J; "
        f"measured {measured:,.0f} J ({error:+.3%}); "
        f"band {low_j:,.0f} … {high_j:,.0f} J {verdict} it",
        file=out,
    )
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
        print(f"JSON report written to {args.json}", file=out)
    return 0
