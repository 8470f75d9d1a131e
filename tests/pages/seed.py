"""Realistic runs for the page tests, sent through the public API like a meter sends them.

Traces come from the meter's own code: the simulated backend (`meters.backends.simulated`,
closed-form power and memory activity) read on a manual clock and sealed by
`meters.chunker.DeviceChunker`, so the chunks carry the summaries, bands, samples and memory-busy
fractions a real meter would upload. Devices are renamed
to a catalogued GPU (they stay flagged simulated) so the report can compute the bounds.

``client`` is anything with httpx's ``put``/``post`` (a `TestClient`, or an ``httpx.Client``
with a ``base_url`` for a live server).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from thermoledger.meters.backends.simulated import (
    Bursty,
    Ramp,
    SimulatedBackend,
    SimulatedDevice,
    steady,
)
from thermoledger.meters.chunker import DeviceChunker, SealJob, device_payload, seal
from thermoledger.meters.testing import ManualClock

T0_S = 1_790_000_000.0
GPU_NAME = "NVIDIA H100 80GB HBM3"
BATCH = 40


class Client(Protocol):
    """What the seed needs of a client: `fastapi.testclient.TestClient` or `httpx.Client`."""

    def put(self, url: str, *, json: Any = None, headers: dict[str, str] | None = None) -> Any: ...
    def post(self, url: str, *, json: Any = None, headers: dict[str, str] | None = None) -> Any: ...


@dataclass(frozen=True)
class SeededRun:
    """A run the seed created: its id and what went into it."""

    id: str
    name: str
    kind: str
    devices: int
    chunks: int
    phases: tuple[tuple[str, float, float], ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


def fleet(n: int = 4) -> tuple[SimulatedDevice, ...]:
    """``n`` simulated GPUs with training-like loads (bursty, a ramp, a steady one), whose
    memory is busy in step with the load (a memory-activity counter, as NVML's)."""
    out = []
    for i in range(n):
        memory: Any
        if i % 3 == 0:
            profile: Any = Bursty(310.0, 640.0 - 10.0 * i, period_s=37.0, duty=0.7, phase_s=5.0 * i)
            memory = Bursty(0.1, 0.6, period_s=37.0, duty=0.7, phase_s=5.0 * i)
        elif i % 3 == 1:
            profile = Ramp(150.0, 560.0, duration_s=240.0, t_start_s=30.0)
            memory = Ramp(0.05, 0.5, duration_s=240.0, t_start_s=30.0)
        else:
            profile = steady(420.0 + 5 * i)
            memory = steady(0.45)
        out.append(
            SimulatedDevice(
                profile, reading="average", counter_offset_j=1e6 * (i + 1), memory_busy=memory
            )
        )
    return tuple(out)


def trace(
    devices: Sequence[SimulatedDevice],
    *,
    duration_s: float,
    t0_s: float = T0_S,
    interval_s: float = 1.0,
    chunk_s: float = 10.0,
    host: str = "sim-node-0",
    gpu_name: str = GPU_NAME,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Device payloads and sealed chunks of a simulated trace, exactly as a meter makes them
    (the devices named ``gpu_name``: catalogued by default)."""
    clock = ManualClock(monotonic_s=1000.0, wall_s=t0_s)
    backend = SimulatedBackend(devices, clock=clock)
    infos = backend.devices()
    origin = clock.monotonic_s()
    chunkers = [
        DeviceChunker(
            info,
            key=f"{host}/{info.uid}",
            first_seq=0,
            interval_s=interval_s,
            chunk_s=chunk_s,
            origin_mono_s=origin,
            unix_offset_s=clock.wall_s() - clock.monotonic_s(),
        )
        for info in infos
    ]
    jobs: list[SealJob] = []
    steps = round(duration_s / interval_s)
    for step in range(steps + 1):
        readings = backend.read()
        for i, chunker in enumerate(chunkers):
            t_mono_s = float(readings.t_mono_s[i])
            job = chunker.add(t_mono_s, float(readings.power_w[i]), float(readings.energy_j[i]))
            if job is not None:
                jobs.append(job)
            if devices[i].memory_busy is not None:  # as the sampler reads it: once a second
                chunker.add_activity(t_mono_s, backend.memory_busy_frac(i))
        if step < steps:
            clock.advance(interval_s)
    jobs.extend(job for job in (c.flush() for c in chunkers) if job is not None)
    sealed, failed = seal(jobs)
    assert not failed, failed
    chunks = [dict(c) for c in sealed]
    payloads = []
    for info in infos:
        payload = dict(device_payload(info, host=host))
        payload["name"] = gpu_name  # resolves in the hardware catalog; still flagged simulated
        payloads.append(payload)
    return payloads, chunks


def _ok(response: Any) -> Any:
    assert response.status_code in (200, 201), response.text
    return response


#: The region and PUE `configure_accounting` gives a seeded project (built-in DE factor, no
#: tariff): its runs get location-based CO2e, and nothing is priced in USD.
SEED_REGION = "DE"
SEED_PUE = "typical"


def configure_accounting(
    client: Client, headers: dict[str, str], *, region: str = SEED_REGION, pue: str = SEED_PUE
) -> dict[str, Any]:
    """Set the project's region and PUE (``headers`` need the admin scope), before its runs
    end: the ledger freezes their figures with them, and the reports read them back."""
    body: dict[str, Any] = _ok(
        client.put("/api/v1/accounting", json={"region": region, "pue": pue}, headers=headers)
    ).json()
    return body


def seed_run(
    client: Client,
    headers: dict[str, str],
    *,
    name: str,
    kind: str = "training",
    devices: int = 4,
    duration_s: float = 900.0,
    t0_s: float = T0_S,
    phases: Sequence[tuple[str, float, float]] = (),
    tags: dict[str, str] | None = None,
    work: dict[str, Any] | None = None,
    finish: bool = True,
    profiles: Sequence[SimulatedDevice] | None = None,
    gpu_name: str = GPU_NAME,
    dated: bool = False,
) -> SeededRun:
    """Create a run, upload its simulated trace in batches, record phases and work, finish it.

    Args:
        client: API client.
        headers: Bearer headers of a token with ``ingest``.
        name: Run name.
        kind: Run kind.
        devices: Simulated GPUs.
        duration_s: Trace length, s.
        t0_s: Unix start of the trace.
        phases: (name, start, end) in seconds since ``t0_s``.
        tags: Run tags.
        work: Body of ``POST /work`` (e.g. ``{"model_params": 1.3e9, "tokens": 2.5e8}``).
        finish: Mark the run finished.
        profiles: The simulated devices (default: `fleet` of ``devices``).
        gpu_name: The devices' name (an uncatalogued one leaves the run without a peak).
        dated: Start the run at ``t0_s`` (else it starts when the server saw it).
    """
    run_id = str(uuid.uuid4())
    body: dict[str, Any] = {"name": name, "kind": kind, "tags": tags or {}, "simulated": True}
    if dated:
        body["started_at"] = datetime.fromtimestamp(t0_s, UTC).isoformat()
    _ok(client.put(f"/api/v1/runs/{run_id}", json=body, headers=headers))
    simulated = tuple(profiles) if profiles is not None else fleet(devices)
    payloads, chunks = trace(simulated, duration_s=duration_s, t0_s=t0_s, gpu_name=gpu_name)
    for start in range(0, len(chunks), BATCH):
        body = {"schema": 1, "devices": payloads, "chunks": chunks[start : start + BATCH]}
        _ok(client.post(f"/api/v1/runs/{run_id}/chunks", json=body, headers=headers))
    for phase, a, b in phases:
        _ok(
            client.post(
                f"/api/v1/runs/{run_id}/phases",
                json={"name": phase, "t0_s": t0_s + a, "t1_s": t0_s + b},
                headers=headers,
            )
        )
    if work:
        _ok(client.post(f"/api/v1/runs/{run_id}/work", json=work, headers=headers))
    if finish:
        _ok(client.post(f"/api/v1/runs/{run_id}/finish", json={}, headers=headers))
    return SeededRun(
        id=run_id,
        name=name,
        kind=kind,
        devices=len(simulated),
        chunks=len(chunks),
        phases=tuple(phases),
        tags=dict(tags or {}),
    )


@dataclass(frozen=True)
class Fleet:
    """The runs `seed_project` makes: two models, each trained and served."""

    train: SeededRun
    serve: SeededRun
    train_large: SeededRun
    serve_large: SeededRun
    empty: SeededRun


TRAIN_PHASES = (("warmup", 0.0, 60.0), ("train", 60.0, 780.0), ("eval", 780.0, 900.0))


def seed_project(client: Client, headers: dict[str, str], *, duration_s: float = 900.0) -> Fleet:
    """A small project: model ``demo-1b`` and ``demo-3b``, each with a training and an
    inference run (declared work and tokens), plus a run with no measurements.

    Tokens scale with ``duration_s`` so the runs keep a plausible MFU (0.2–0.55).
    """
    scale = duration_s / 900.0
    train = seed_run(
        client,
        headers,
        name="demo-1b-train",
        duration_s=duration_s,
        phases=[(n, a * duration_s / 900, b * duration_s / 900) for n, a, b in TRAIN_PHASES],
        tags={"model": "demo-1b", "team": "nlp"},
        work={"model_params": 1.3e9, "tokens": round(2.5e8 * scale), "dtype": "bf16"},
    )
    serve = seed_run(
        client,
        headers,
        name="demo-1b-serve",
        kind="inference",
        devices=2,
        duration_s=duration_s / 3,
        t0_s=T0_S + 3600,
        tags={"model": "demo-1b"},
        work={"model_params": 1.3e9, "tokens": round(4.0e7 * scale)},
    )
    train_large = seed_run(
        client,
        headers,
        name="demo-3b-train",
        devices=6,
        duration_s=duration_s,
        t0_s=T0_S + 7200,
        tags={"model": "demo-3b", "team": "nlp"},
        work={"model_params": 3.0e9, "tokens": round(1.2e8 * scale), "dtype": "bf16"},
    )
    serve_large = seed_run(
        client,
        headers,
        name="demo-3b-serve",
        kind="inference",
        devices=1,
        duration_s=duration_s / 3,
        t0_s=T0_S + 10800,
        tags={"model": "demo-3b"},
        work={"model_params": 3.0e9, "tokens": round(6.0e7 * scale)},
    )
    run_id = str(uuid.uuid4())
    _ok(
        client.put(
            f"/api/v1/runs/{run_id}",
            json={"name": "queued-job", "kind": "eval", "tags": {"team": "vision"}},
            headers=headers,
        )
    )
    empty = SeededRun(id=run_id, name="queued-job", kind="eval", devices=0, chunks=0)
    return Fleet(train, serve, train_large, serve_large, empty)


def seed_empty_run(
    client: Client, headers: dict[str, str], *, name: str, finish: bool, kind: str = "eval"
) -> SeededRun:
    """A run with no chunk: still running (a meter not heard from yet) or, with ``finish``,
    ended without measurements (a meter that never started, a spool never pushed)."""
    run_id = str(uuid.uuid4())
    _ok(client.put(f"/api/v1/runs/{run_id}", json={"name": name, "kind": kind}, headers=headers))
    if finish:
        _ok(client.post(f"/api/v1/runs/{run_id}/finish", json={}, headers=headers))
    return SeededRun(id=run_id, name=name, kind=kind, devices=0, chunks=0)


#: A GPU the hardware catalog does not know: FLOPs can be declared, but no peak applies.
UNCATALOGUED_GPU = "Acme Tensor Slab 9000"
#: The constant draw of `States.constant`'s devices, W.
CONSTANT_W = 400.0
#: The tariff `seed_states` adds before its priced run, USD/kWh.
TARIFF_USD_PER_KWH = 0.25


@dataclass(frozen=True)
class States:
    """One run (or model tag) per page state the browser tests look at (`seed_states`)."""

    no_flops: SeededRun
    flops_no_peak: SeededRun
    constant: SeededRun
    ended_empty: SeededRun
    running_empty: SeededRun
    priced: SeededRun
    training_only_model: str


def seed_states(
    client: Client,
    headers: dict[str, str],
    admin: dict[str, str],
    *,
    t0_s: float = T0_S + 86_400,
    duration_s: float = 120.0,
) -> States:
    """Runs in the states a page must tell apart, after `seed_project`'s (all unpriced).

    No FLOPs declared; FLOPs declared on a GPU with no catalog peak; a constant draw (the
    power chart's line must sit inside the plot); no chunks, running and ended; a model with
    a training run and no inference run; and, last, a priced run: the project gets a tariff
    (``admin`` headers) from now on, so only the runs that end after it are priced (the
    ledger froze the earlier ones without).
    """
    work = {"model_params": 1.3e8, "tokens": 2.0e7, "dtype": "bf16"}
    no_flops = seed_run(
        client, headers, name="no-flops", devices=1, duration_s=duration_s, t0_s=t0_s
    )
    flops_no_peak = seed_run(
        client,
        headers,
        name="flops-no-peak",
        devices=1,
        duration_s=duration_s,
        t0_s=t0_s + 600,
        work=work,
        gpu_name=UNCATALOGUED_GPU,
    )
    constant = seed_run(
        client,
        headers,
        name="constant-power",
        duration_s=duration_s,
        t0_s=t0_s + 1200,
        work=work,
        profiles=(SimulatedDevice(steady(CONSTANT_W), reading="average"),) * 2,
    )
    ended_empty = seed_empty_run(client, headers, name="never-metered", finish=True)
    running_empty = seed_empty_run(client, headers, name="not-yet-metered", finish=False)
    seed_run(
        client,
        headers,
        name="solo-train",
        devices=1,
        duration_s=duration_s,
        t0_s=t0_s + 1800,
        tags={"model": "solo-7b"},
        work=work,
    )
    now = datetime.now(UTC).replace(microsecond=0)
    _ok(
        client.post(
            "/api/v1/tariffs",
            json={
                "region": SEED_REGION,
                "price": f"{TARIFF_USD_PER_KWH} USD/kWh",
                "valid_from": (now - timedelta(seconds=1)).isoformat(),
                "source": "page tests",
            },
            headers=admin,
        )
    )
    priced = seed_run(
        client,
        headers,
        name="priced",
        devices=1,
        duration_s=duration_s,
        t0_s=t0_s + 2400,
        work=work,
    )
    return States(
        no_flops=no_flops,
        flops_no_peak=flops_no_peak,
        constant=constant,
        ended_empty=ended_empty,
        running_empty=running_empty,
        priced=priced,
        training_only_model="solo-7b",
    )


# --------------------------------------------------------------------------------------------
# Energy to quality and estimates (issue 15)

#: The metric `seed_quality` records, and the target its trend reads.
METRIC = "eval_loss"
TARGET = 2.5
#: Days between the starts of `seed_quality`'s runs.
QUALITY_SPACING_DAYS = 120.0


@dataclass(frozen=True)
class Quality:
    """`seed_quality`'s runs, oldest first, and an estimated run (`seed_estimate`)."""

    runs: tuple[SeededRun, ...]
    #: The newest run: the least energy to the target, the best value.
    best: SeededRun


def metric_points(
    t0_s: float, *, tau_s: float, duration_s: float, every_s: float = 10.0
) -> list[dict[str, Any]]:
    """``eval_loss = 2 + 2·exp(−t/τ)`` every ``every_s`` (it reaches `TARGET` at τ·ln 4), and
    ``tokens_seen`` beside it (a counter the run page lists but does not draw)."""
    out: list[dict[str, Any]] = []
    steps = int(duration_s // every_s)
    for step in range(steps + 1):
        t = step * every_s
        out.append(
            {
                "name": METRIC,
                "step": step,
                "value": 2.0 + 2.0 * math.exp(-t / tau_s),
                "t_s": t0_s + t,
            }
        )
        out.append({"name": "tokens_seen", "step": step, "value": 1e6 * step, "t_s": t0_s + t})
    return out


def seed_quality(
    client: Client, headers: dict[str, str], *, count: int = 4, duration_s: float = 60.0
) -> Quality:
    """``count`` one-GPU training runs `QUALITY_SPACING_DAYS` apart (the newest starting a day
    before `T0_S`), each recording `METRIC`. Each newer run converges faster (τ × 0.7), so its
    joules to `TARGET` fall over calendar time (the trend has a halving time), and runs longer
    (``duration_s`` × 1, 1.5, 2, …), so it reaches a better loss for more energy: every run is
    on the metric-vs-energy front."""
    runs = []
    for k in range(count):
        t0_s = T0_S - 86_400.0 - (count - 1 - k) * QUALITY_SPACING_DAYS * 86_400.0
        length_s = duration_s * (1.0 + 0.5 * k)
        run = seed_run(
            client,
            headers,
            name=f"quality-{k}",
            devices=1,
            duration_s=length_s,
            t0_s=t0_s,
            profiles=(SimulatedDevice(steady(CONSTANT_W), reading="average"),),
            finish=False,
            dated=True,
        )
        points = metric_points(t0_s, tau_s=40.0 * 0.7**k, duration_s=length_s)
        _ok(client.post(f"/api/v1/runs/{run.id}/metrics", json={"points": points}, headers=headers))
        _ok(client.post(f"/api/v1/runs/{run.id}/finish", json={}, headers=headers))
        runs.append(run)
    return Quality(runs=tuple(runs), best=runs[-1])


#: Provenance of `seed_estimate`'s run.
ESTIMATE_SOURCE = "Cloud bill, March"


def seed_estimate(
    client: Client, headers: dict[str, str], *, name: str = "billed-run"
) -> SeededRun:
    """An estimated run: 8 devices × 10 h × 300 W (24 kWh of IT energy), ±10 % on the power,
    from a cloud bill (``POST /runs/{id}/estimate``)."""
    run_id = str(uuid.uuid4())
    body = {
        "name": name,
        "devices": 8,
        "duration": "10 h",
        "mean_power": "300 W",
        "started_at": "2026-03-01T00:00:00Z",
        "band": {"mean_power": {"rel": 0.1}},
        "provenance": {"source": ESTIMATE_SOURCE, "document": "invoice 42", "page": "2"},
    }
    _ok(client.post(f"/api/v1/runs/{run_id}/estimate", json=body, headers=headers))
    return SeededRun(id=run_id, name=name, kind="training", devices=8, chunks=0)
