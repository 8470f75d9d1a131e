"""The demo: a short simulated eight-GPU training job through the whole product.

No GPU and no configuration needed. The demo takes the path a real job takes:

1. **Meter**: `thermoledger.meters.Meter` samples eight **simulated** GPUs (the simulated
   backend's power profiles, `meters.backends.simulated`) at 10 Hz for about ten seconds, with
   phases (warmup, train, eval) and declared work (tokens, model size), and seals 2 s chunks
   into its spool. Two of the GPUs have no energy counter (one reads a 1 s average, one
   instantaneous power), as on older hardware, so the power-integration path runs too.
2. **Service**: an embedded thermoledger service on SQLite (a fresh database in the demo's
   directory, migrated, with a token issued for project ``demo``), served by uvicorn on a free
   loopback port in this process. The meter uploads to it over HTTP, as in production.
3. **Report**: the run's report fetched from the service's API (``GET
   /api/v1/runs/{id}/report``) and printed as text; the run page as the service renders it
   (``GET /runs/{id}``, its stylesheet inlined) written to ``report.html``.

The simulated profiles have closed-form energy, so the demo closes by printing the exact ground
truth over the metered window beside the measurement and its band. Every output says the
devices are simulated. ``--serve`` keeps the service up until Ctrl-C, to browse the pages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from thermoledger.meters.api import Meter
from thermoledger.meters.backends.base import Clock, DeviceInfo, Readings
from thermoledger.meters.backends.simulated import (
    Bursty,
    Ramp,
    SimulatedBackend,
    SimulatedDevice,
)

#: Wall-clock length of each phase, s (the whole job takes their sum).
PHASES_S: tuple[tuple[str, float], ...] = (("warmup", 2.0), ("train", 6.0), ("eval", 2.0))
INTERVAL_S = 0.1
CHUNK_S = 2.0
RUN_NAME = "demo-llm-1.3b"
PROJECT = "demo"
HOST = "sim-node-0"
MODEL_PARAMS = 1.3e9
TOKENS_PER_S = 5.0e5  # the simulated job's throughput, declared as it goes
SIMULATED_GPU = "Simulated NVIDIA H100 80GB HBM3"
BANNER = "thermoledger demo: SIMULATED GPUs (no NVML device is used; figures are synthetic)"


def demo_fleet() -> tuple[SimulatedDevice, ...]:
    """Eight simulated H100-like GPUs with training-like loads.

    Six have an energy counter (exact up to the simulated sensor); one reads a 1 s averaged
    power and one instantaneous power, without a counter, so their energy is integrated. Each
    reports memory activity (as NVML's ``utilization.memory``) in step with its load, for the
    report's energy decomposition.
    """
    fleet = [
        SimulatedDevice(
            Bursty(310.0, 640.0 - 8.0 * i, period_s=1.7, duty=0.72, phase_s=0.37 * i),
            reading="average",
            counter_offset_j=5.0e6 + 1.0e5 * i,
            memory_busy=Bursty(0.15, 0.55, period_s=1.7, duty=0.72, phase_s=0.37 * i),
        )
        for i in range(6)
    ]
    fleet.append(
        SimulatedDevice(
            Bursty(300.0, 600.0, period_s=1.3, duty=0.6, phase_s=0.2),
            reading="average",
            has_counter=False,
            memory_busy=Bursty(0.2, 0.5, period_s=1.3, duty=0.6, phase_s=0.2),
        )
    )
    fleet.append(
        SimulatedDevice(
            Ramp(120.0, 520.0, duration_s=6.0, t_start_s=1.0),
            has_counter=False,
            memory_busy=Ramp(0.05, 0.45, duration_s=6.0, t_start_s=1.0),
        )
    )
    return tuple(fleet)


class RecordingBackend:
    """The simulated backend, remembering the first and last instant the meter read.

    The meter owns the sampling schedule; this wrapper notes the profile time (s since the
    backend opened) of every read so the demo can integrate the closed-form truth over exactly
    the metered window.
    """

    def __init__(self, fleet: Sequence[SimulatedDevice], *, clock: Clock | None = None) -> None:
        self.fleet = tuple(fleet)
        self.inner = SimulatedBackend(self.fleet, clock=clock)
        # Named as the GPU they stand for, so the service finds it in the hardware catalog
        # (roofline bounds, MFU); each stays flagged simulated.
        self._infos = tuple(
            dataclasses.replace(
                info, name=f"{SIMULATED_GPU} ({info.name.removeprefix('Simulated GPU ')})"
            )
            for info in self.inner.devices()
        )
        self.first_s = float("nan")
        self.last_s = float("nan")

    def devices(self) -> Sequence[DeviceInfo]:
        """The simulated devices."""
        return self._infos

    def read(self) -> Readings:
        """One read of every device; records its profile time."""
        readings = self.inner.read()
        t_s = float(readings.t_mono_s.max()) - self.inner.start_mono_s
        if self.first_s != self.first_s:  # NaN: the first read
            self.first_s = float(readings.t_mono_s.min()) - self.inner.start_mono_s
        self.last_s = t_s
        return readings

    def memory_busy_frac(self, i: int) -> float:
        """Device ``i``'s memory activity (`meters.backends.base.ActivityReader`)."""
        return self.inner.memory_busy_frac(i)

    def close(self) -> None:
        """Closes the simulated backend (nothing to release)."""
        self.inner.close()

    def true_energy_j(self) -> float:
        """The exact energy of every device over the metered window, J (closed form)."""
        return sum(float(d.profile.energy_j(self.first_s, self.last_s)) for d in self.fleet)


@dataclass
class DemoService:
    """The embedded service: its database, token and base URL."""

    directory: Path
    database_url: str
    token: str
    url: str
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def running(self) -> bool:
        """Whether the server thread still serves."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Shut the server down and wait for it."""
        self._server.should_exit = True
        self._thread.join(timeout=10.0)


def start_service(directory: Path) -> DemoService:
    """Migrate a fresh SQLite database in ``directory``, issue a token, serve it on loopback.

    Raises:
        ModuleNotFoundError: The ``[service]`` extra is not installed.
        RuntimeError: The server did not start within 20 s.
    """
    import uvicorn

    from thermoledger.db import migrate
    from thermoledger.db.engine import make_engine, make_sessionmaker
    from thermoledger.db.tokens import get_or_create_project

    from .app import create_app
    from .auth import issue_token, parse_scopes
    from .settings import Settings

    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'demo.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            project, _ = get_or_create_project(session, slug=PROJECT, name="thermoledger demo")
            issued = issue_token(
                session,
                project_id=project.id,
                name="demo",
                scopes=parse_scopes(["admin", "ingest", "read"]),
            )
    finally:
        engine.dispose()
    app = create_app(Settings(database_url=url))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="demo-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 20.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo's service did not start")
        time.sleep(0.02)
    return DemoService(directory, url, issued.token, f"http://127.0.0.1:{port}", server, thread)


def configure_project(service: DemoService) -> None:
    """Give the demo project a region, a PUE and a tariff through the API (as an admin would).

    Without them the service prices nothing and derives no carbon, and says so; the demo shows
    the figures, on stated assumptions.
    """
    with _client(service) as client:
        client.put(
            "/api/v1/accounting", json={"region": "WORLD", "pue": "hyperscale"}
        ).raise_for_status()
        client.post(
            "/api/v1/tariffs",
            json={
                "region": "WORLD",
                "price": "0.12 USD/kWh",
                "valid_from": "2020-01-01T00:00:00Z",
                "source": "demo assumption: 0.12 USD/kWh industrial tariff",
            },
        ).raise_for_status()


def run_job(service: DemoService, backend: RecordingBackend, *, speed: float = 1.0) -> str:
    """The simulated training job, metered; returns its run id once uploaded.

    Args:
        service: Where the meter uploads.
        backend: The simulated GPUs.
        speed: Divides each phase's wall-clock length (tests run it faster).
    """
    meter = Meter(
        RUN_NAME,
        kind="training",
        server=service.url,
        token=service.token,
        backend=backend,
        interval_s=INTERVAL_S,
        chunk_s=CHUNK_S,
        spool_dir=service.directory / "spool",
        tags={"model": RUN_NAME, "demo": "simulated"},
        env={},  # the user's THERMOLEDGER_* settings are not the demo's
        host=HOST,
        upload_timeout_s=20.0,
    )
    with meter:
        meter.declare_model(params=MODEL_PARAMS)
        for name, duration_s in PHASES_S:
            with meter.phase(name):
                wall_s = duration_s / speed
                time.sleep(wall_s)
                if name == "train":
                    meter.add_tokens(int(TOKENS_PER_S * wall_s))
    summary = meter.summary()
    upload = summary.upload
    if upload is None or upload.error or upload.remaining or upload.rejected or upload.blocked:
        raise RuntimeError(f"the demo's upload failed: {upload}")
    return meter.run_id


def fetch_report(service: DemoService, run_id: str) -> dict[str, Any]:
    """The run's JSON report from the service's API."""
    with _client(service) as client:
        response = client.get(f"/api/v1/runs/{run_id}/report")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


def fetch_page(service: DemoService, run_id: str) -> str:
    """The run page as the service renders it, with its stylesheet inlined (one file)."""
    with _client(service) as client:
        page = client.get(f"/runs/{run_id}")
        page.raise_for_status()
        css = client.get("/static/style.css")
        css.raise_for_status()
    link = re.compile(r'<link rel="stylesheet" href="[^"]*/static/style\.css">')
    return link.sub(lambda _: f"<style>\n{css.text}\n</style>", page.text, count=1)


@contextlib.contextmanager
def _client(service: DemoService) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {service.token}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=20.0) as client:
        yield client


def render_text(report: Mapping[str, Any]) -> str:
    """The API's JSON report as a terminal table."""
    return "\n".join(_text_lines(report))


def _text_lines(report: Mapping[str, Any]) -> Iterator[str]:
    run, energy, work = report["run"], report["energy"], report["work"]
    total = energy["total"]
    yield (
        f"Run {run['name']} ({run['kind']}, {run['status']})  "
        "[SIMULATED DEVICES: not a measurement]"
    )
    yield f"  id {run['id']}, {report['duration_s']:.1f} s measured"
    yield (
        f"  energy {_j(total['energy_j'])}  (band {_j(total['energy_low_j'])} … "
        f"{_j(total['energy_high_j'])})"
    )
    yield ""
    yield f"  {'device':<20} {'method':<14} {'energy J':>10} {'± J':>7} {'mean W':>7} {'peak W':>7}"
    yield "  " + "-" * 70
    for d in energy["by_device"]:
        band_j = max(d["energy_high_j"] - d["energy_j"], d["energy_j"] - d["energy_low_j"])
        yield (
            f"  {d['key']:<20} {d['method']:<14} {d['energy_j']:>10,.0f} {band_j:>7,.0f} "
            f"{_num(d['mean_power_w'], '7.1f')} {_num(d['peak_power_w'], '7.1f')}"
        )
    if energy["by_phase"]:
        yield ""
        yield f"  {'phase':<10} {'duration s':>10} {'energy J':>10}"
        for p in energy["by_phase"]:
            yield f"  {p['name']:<10} {p['duration_s']:>10.1f} {p['energy_j']:>10,.0f}"
    efficiency = report["efficiency"]
    yield ""
    yield "Efficiency"
    if work["flops"] is not None:
        yield (
            f"  {work['flops']:.3e} FLOP ({work['dtype']}; {work['flops_source']}), "
            f"{_num(efficiency['flop_per_j'], '.3e')} FLOP/J"
        )
    if work["tokens"] is not None:
        yield f"  {_num(efficiency['j_per_token'], '.4g')} J/token over {work['tokens']:.3e} tokens"
    if efficiency["mfu"] is not None:
        yield f"  MFU {efficiency['mfu']:.1%}"
    bounds = report["bounds"]
    if bounds is not None:
        yield "Bounds (measured energy vs each reference)"
        for name in ("landauer", "hardware_roofline", "energy_roofline"):
            bound = bounds.get(name)
            if bound is not None:
                yield (
                    f"  {name}: {bound['bound_j']:.4g} J; measured is "
                    f"{bound['orders_of_magnitude']:+.2f} orders of magnitude above it"
                )
    decomposition = report.get("energy_decomposition")
    if decomposition is not None:
        yield "Where the energy went (constant + compute + memory + unexplained)"
        for name, part in decomposition["components"].items():
            if part["energy_j"] is None:
                yield f"  {name:<12} not available ({part['reason']})"
            else:
                yield f"  {name:<12} {part['energy_j']:>10,.0f} J {part['share']:>7.1%}"
        sources = sorted({d["pi0_provenance"] for d in decomposition["devices"]})
        yield f"  pi0 {decomposition['pi0_w']:,.0f} W in all ({', '.join(sources)})"
    cost, carbon = report["cost"], report["carbon"]
    yield "Cost"
    if cost["total_usd"] is None:
        yield f"  not priced ({cost['total_reason']})"
    else:
        tariff = cost["tariff"]
        yield (
            f"  {cost['total_usd']:.6f} USD ({cost['energy_billed_kwh']:.5f} kWh billed at "
            f"{tariff['usd_per_kwh']} USD/kWh: {tariff['source']})"
        )
    yield "Carbon (GHG Scope 2)"
    for basis in ("location_based", "market_based"):
        entry = carbon[basis]
        label = basis.replace("_", "-")
        if entry["co2e_g"] is None:
            yield f"  {label:<15} not available ({entry['reason']})"
        else:
            factor = entry["factor"]
            yield (
                f"  {label:<15} {entry['co2e_g']:.3f} gCO2e ({factor['region']}, "
                f"{factor['intensity_g_per_kwh']:g} g/kWh; PUE {carbon['pue']['value']:g})"
            )
    if report["notes"]:
        yield "Notes"
        yield from (f"  - {note}" for note in report["notes"])


def _num(value: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return format("n/a", f">{width}") if value is None else format(value, spec)


def _j(value_j: float) -> str:
    for unit, scale in (("MJ", 1e6), ("kJ", 1e3)):
        if abs(value_j) >= scale:
            return f"{value_j / scale:,.3f} {unit}"
    return f"{value_j:,.1f} J"


def default_directory() -> Path:
    """Where the demo keeps its files: ``demo/`` in the user's thermoledger data directory."""
    import platformdirs

    return platformdirs.user_data_path("thermoledger") / "demo"


def _fresh(directory: Path) -> None:
    """Remove the files an earlier demo left in ``directory`` (its own names only)."""
    for name in ("demo.db", "demo.db-wal", "demo.db-shm", "report.html"):
        (directory / name).unlink(missing_ok=True)
    spool = directory / "spool"
    if spool.is_dir():
        shutil.rmtree(spool)


def main(argv: list[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the demo; print the report, write the run page, say how to open the pages."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="thermoledger-server demo",
        description="A short simulated 8-GPU training job, metered, served and reported: "
        "meter → embedded service (SQLite) → report. The GPUs are simulated.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="where the demo's database, spool and report.html go (default: demo/ in the "
        "user's thermoledger data directory); an earlier demo's files there are replaced",
    )
    parser.add_argument("--json", type=Path, help="also write the API's JSON report here")
    parser.add_argument(
        "--serve", action="store_true", help="then serve the pages on loopback until Ctrl-C"
    )
    # tests shorten the job: each phase lasts its wall-clock length / speed
    parser.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    directory: Path = args.dir or default_directory()
    print(BANNER, file=out, flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    _fresh(directory)
    service = start_service(directory)
    try:
        configure_project(service)
        backend = RecordingBackend(demo_fleet())
        job_s = sum(d for _, d in PHASES_S) / args.speed
        print(f"metering a {job_s:g} s job on 8 simulated GPUs …", file=out, flush=True)
        run_id = run_job(service, backend, speed=args.speed)
        report = fetch_report(service, run_id)
        html = directory / "report.html"
        html.write_text(fetch_page(service, run_id), encoding="utf-8")
        print(file=out)
        print(render_text(report), file=out)
        print(file=out)
        print(truth_line(report, backend.true_energy_j()), file=out)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"JSON report written to {args.json}", file=out)
        print(f"Run page (as the service renders it; simulated devices): {html}", file=out)
        if args.serve:
            print(
                f"Serving every page at {service.url}/runs/{run_id}; sign in with the token "
                f"{service.token} (project {PROJECT!r}). Ctrl-C stops.",
                file=out,
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while service.running:
                    time.sleep(0.5)
        else:
            print(
                f"Open it in a browser (file://{html}), or browse every page with "
                "`thermoledger-server demo --serve`.",
                file=out,
            )
    finally:
        service.stop()
    return 0


def truth_line(report: Mapping[str, Any], truth_j: float) -> str:
    """The closed-form truth beside the measurement and whether the band covers it."""
    total = report["energy"]["total"]
    measured_j, low_j, high_j = total["energy_j"], total["energy_low_j"], total["energy_high_j"]
    verdict = "covers" if low_j <= truth_j <= high_j else "MISSES"
    return (
        f"Ground truth (simulation, closed form): {truth_j:,.0f} J; measured "
        f"{measured_j:,.0f} J ({(measured_j - truth_j) / truth_j:+.3%}); band "
        f"{low_j:,.0f} … {high_j:,.0f} J {verdict} it"
    )
