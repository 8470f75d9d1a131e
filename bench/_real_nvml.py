"""The real-NVML leg of ``bench/accuracy.py`` (``--real``): power readings against the counter.

On real GPUs there is no closed-form truth. The proxy is the energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, mJ) read at a window's two edges as the meter takes
them (`meters.edges`: each edge is a counter update, its value exact at its instant), so the
window's counter energy is the difference of two exact values. Over **the same window and the
same samples** (the meter's ticks and its two edges), the benchmark then works out what the
meter would have reported from power readings alone:

* **averaged**: the power the meter read (the driver's 1 s average under ``power_reading=
  average``, as ``auto`` picks on Ampere except GA100 and newer), with the counter hidden: the
  samples go through the meter's own chunker (`meters.chunker.DeviceChunker`, lag correction
  and band included) for a copy of the GPU's `DeviceInfo` without a counter, cut into chunks
  where the meter cut them;
* **instant**: the instantaneous reading (``NVML_FI_DEV_POWER_INSTANT``) taken right after each
  of those reads by a second backend opened with ``power_reading=instant``, likewise.

The three figures differ only by what they are computed from: window, sample times and
integration code are shared. The meter here is the `meters.sampler.Sampler` that `Meter` runs
(its chunks kept in memory instead of a spool). Its clock's wall time is the monotonic time, so
the chunks' sample times are the reads' own times (to the µs between two clock calls), which
is how each sample finds its instantaneous reading.

A GPU load is optional: a duty-cycled square wave of matrix products (bf16 with torch, fp16 with
cupy) in one subprocess per GPU, where the interpreter that runs it can import torch or cupy
(`Load`); else the GPUs idle. The output says which.

`main` takes the NVML module as an argument (``meters.testing.fake_pynvml.FakeNvml`` in the
tests); without one it imports ``pynvml`` and exits 2 with one line when that is missing or
NVML sees no GPU.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import importlib.util
import itertools
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from thermoledger.meters.backends.base import (
    DeviceInfo,
    FlatBuffer,
    FlatReadings,
    Method,
    Readings,
)
from thermoledger.meters.backends.nvml import NvmlBackend, NvmlModule
from thermoledger.meters.chunker import DeviceChunker, DeviceSummary, seal
from thermoledger.meters.errors import MeterError
from thermoledger.meters.sampler import MeterSummary, Sampler
from thermoledger.meters.spool import RunStatus
from thermoledger.meters.wire import ChunkPayload, DevicePayload

__all__ = [
    "Case",
    "Figure",
    "Load",
    "NoGpu",
    "Tap",
    "add_arguments",
    "main",
    "measure",
    "open_taps",
]

LoadChoice = Literal["auto", "idle", "square"]
_NO_BINS_S = 1e9  # a replay's chunks are cut where the meter cut them, never by time bins

# One subprocess per GPU: matrix products while the wave is high, sleep while it is low.
_LOAD_SCRIPT = r"""
import sys, time
period_s, duty, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
try:
    import torch
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    def work():
        for _ in range(4):
            torch.matmul(a, b)
        torch.cuda.synchronize()
    via = "torch " + torch.__version__ + ", bf16"
except ImportError:
    import cupy
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32).astype(cupy.float16)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32).astype(cupy.float16)
    def work():
        for _ in range(4):
            a @ b
        cupy.cuda.Device().synchronize()
    via = "cupy " + cupy.__version__ + ", fp16"
work()
print("ready", via, flush=True)
t0 = time.monotonic()
while True:
    phase = ((time.monotonic() - t0) % period_s) / period_s
    if phase < duty:
        work()
    else:
        time.sleep(min(0.002, (1.0 - phase) * period_s))
"""
_PROBE = (
    "import importlib.util as u, sys; "
    "sys.exit(0 if u.find_spec('torch') or u.find_spec('cupy') else 1)"
)


class NoGpu(Exception):
    """``--real`` cannot run here: no pynvml, no driver, or no GPU (the message says which)."""


# -- the meter's reads, recorded --------------------------------------------------------------


class Tap:
    """The meter's NVML backend, each read of a GPU followed by an instantaneous reading.

    A `meters.backends.base.DeviceReader` like `NvmlBackend` itself, so the sampler reads it GPU
    by GPU (ticks and the edges' waits alike). Each read of GPU ``i`` is recorded as (time of
    the meter's read, s; the instantaneous power read right after it, W).

    Args:
        main: The backend the meter reads (``power_reading="average"``).
        instant: The same GPUs in the same order, opened with ``power_reading="instant"``.
    """

    def __init__(self, main: NvmlBackend, instant: NvmlBackend) -> None:
        self.main = main
        self.instant = instant
        self._n = len(main.devices())
        self.records: list[list[tuple[float, float]]] = [[] for _ in range(self._n)]

    def devices(self) -> tuple[DeviceInfo, ...]:
        return self.main.devices()

    def clear(self) -> None:
        """Forget the recorded reads (a new window)."""
        self.records = [[] for _ in range(self._n)]

    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        self.main.read_device(buffer, i)
        t_mono_s = buffer.t_mono_s[i]
        scratch = FlatBuffer(self._n, t_wall_s=t_mono_s, t_mono_s=t_mono_s)
        self.instant.read_device(scratch, i)
        self.records[i].append((t_mono_s, scratch.power_w[i]))

    def read(self) -> Readings:
        return self._read_all().freeze()

    def read_flat(self) -> FlatReadings:
        return self._read_all().flat()

    def close(self) -> None:
        self.main.close()
        self.instant.close()

    def _read_all(self) -> FlatBuffer:
        now_s = time.monotonic()
        buffer = FlatBuffer(self._n, t_wall_s=now_s, t_mono_s=now_s)
        for i in range(self._n):
            self.read_device(buffer, i)
        return buffer


class _MonotonicWall:
    """A clock whose wall time is the monotonic time: chunk times are the reads' own times."""

    def monotonic_s(self) -> float:
        return time.monotonic()

    def wall_s(self) -> float:
        return time.monotonic()


class _Chunks:
    """A `meters.sampler.ChunkSink` that keeps the sealed chunks in memory, by device key."""

    def __init__(self) -> None:
        self.by_key: dict[str, list[ChunkPayload]] = defaultdict(list)
        self._lock = threading.Lock()

    def open_run(self, run_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        pass

    def put_devices(self, run_id: str, devices: Iterable[DevicePayload]) -> None:
        pass

    def put_chunks(self, run_id: str, chunks: Iterable[ChunkPayload]) -> int:
        n = 0
        with self._lock:
            for chunk in chunks:
                self.by_key[chunk["device_key"]].append(chunk)
                n += 1
        return n

    def next_seqs(self, run_id: str) -> dict[str, int]:
        return {}

    def set_run_status(self, run_id: str, status: RunStatus, exit_code: int | None = None) -> None:
        pass


# -- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    """One power-based figure of a window, and its band, J."""

    method: str
    energy_j: float
    low_j: float
    high_j: float

    def error_percent(self, truth_j: float) -> float:
        return 100.0 * (self.energy_j - truth_j) / truth_j

    def covers(self, truth_j: float) -> bool:
        return self.low_j <= truth_j <= self.high_j


@dataclass(frozen=True, slots=True)
class Case:
    """One GPU over one window: the counter's figure and what power readings alone give.

    Attributes:
        index: NVML index.
        uid: GPU UUID.
        name: Its name.
        window_s: The job's length, s (the window holds it: it opens just before and closes
            just after).
        repeat: Which repeat of that window (from 1).
        load: What the GPU ran (``idle`` or the square wave).
        duration_s: The meter's window (first to last sample), s.
        counter_j: The meter's counter figure, J (NaN: no counter figure for this window).
        counter_diff_j: The counter's raw difference between the window's edge samples, J.
        counter_update_s: The counter's update period seen at the opening edge, s (0: it moves
            continuously; None: not seen).
        averaged: The averaged-power figure (None: the GPU has no averaged reading).
        instant: The instantaneous-power figure (None: no instantaneous reading).
        samples: Samples in the window.
        note: What went wrong, if anything.
    """

    index: int
    uid: str
    name: str
    window_s: float
    repeat: int
    load: str
    duration_s: float
    counter_j: float
    counter_diff_j: float
    counter_update_s: float | None
    averaged: Figure | None
    instant: Figure | None
    samples: int
    note: str = ""

    @property
    def measured(self) -> bool:
        """Whether the counter gave a truth to compare with."""
        return math.isfinite(self.counter_j) and self.counter_j > 0


def _source(info: DeviceInfo) -> str:
    """Which call gives a GPU's power, from its hint's note (``…; power: <source>``)."""
    note = info.uncertainty.note
    return note.split("power: ", 1)[1] if "power: " in note else "?"


def power_choice(info: DeviceInfo) -> str:
    """The power reading a GPU got, in words: method, then the call and its documented window."""
    window = info.uncertainty.power_window_s
    window_text = f", {window:g} s window" if window else ""
    return f"{info.power_method.label}{window_text} ({_source(info)})"


def _replay(
    info: DeviceInfo,
    t_s: Sequence[float],
    power_w: Sequence[float],
    cuts_s: Sequence[float],
    *,
    interval_s: float,
) -> DeviceSummary:
    """What the meter's chunker makes of these samples for ``info``, chunked at ``cuts_s``."""
    chunker = DeviceChunker(
        info,
        key=f"replay/{info.uid}",
        first_seq=0,
        interval_s=interval_s,
        chunk_s=_NO_BINS_S,
        origin_mono_s=t_s[0],
        unix_offset_s=0.0,
    )
    cuts = set(cuts_s)
    jobs = []
    for t, p in zip(t_s, power_w, strict=True):
        job = chunker.add(t, p, math.nan)
        if job is not None:
            jobs.append(job)
        if t in cuts:
            cut = chunker.cut()
            if cut is not None:
                jobs.append(cut)
    _, failures = seal(jobs)
    if failures:
        raise RuntimeError(f"the chunker refused a replayed chunk: {failures[0][1]}")
    return chunker.summary()


def _figure(summary: DeviceSummary) -> Figure:
    return Figure(summary.method, summary.energy_j, summary.energy_low_j, summary.energy_high_j)


def _nearest(records: Sequence[tuple[float, float]], times_s: Sequence[float]) -> list[float]:
    """For each time, the instantaneous power recorded nearest to it, W."""
    ordered = sorted(records)
    keys = [t for t, _ in ordered]
    out = []
    for t in times_s:
        j = bisect.bisect_left(keys, t)
        near = [k for k in (j - 1, j) if 0 <= k < len(keys)]
        best = min(near, key=lambda k: abs(keys[k] - t))
        out.append(ordered[best][1])
    return out


def _window_samples(
    chunks: Sequence[ChunkPayload],
) -> tuple[list[float], list[float], list[float], list[float]]:
    """The window's samples from its chunks (a carried sample once) and the chunk edges.

    Returns:
        ``(t_s, power_w, counter_j, cuts_s)``: times, power and counter of every sample, and
        the end of every chunk but the last (where the meter cut).
    """
    t_s: list[float] = []
    power_w: list[float] = []
    counter_j: list[float] = []
    for chunk in sorted(chunks, key=lambda c: c["seq"]):
        samples = chunk.get("samples")
        if samples is None:
            raise RuntimeError("a chunk without its samples")
        ts, ps = samples["t_s"], samples["power_w"]
        es = samples.get("energy_j")
        if isinstance(ts, str) or isinstance(ps, str) or isinstance(es, str):
            raise RuntimeError("encoded samples: expected the chunker's lists")
        for k, t in enumerate(ts):
            if t_s and t <= t_s[-1]:
                continue  # a carried sample opens the next chunk too
            t_s.append(t)
            power_w.append(ps[k])
            counter_j.append(es[k] if es is not None else math.nan)
    cuts_s = [c["t1_s"] for c in sorted(chunks, key=lambda c: c["seq"])][:-1]
    return t_s, power_w, counter_j, cuts_s


def measure(
    tap: Tap,
    window_s: float,
    *,
    repeat: int = 1,
    load: str = "idle",
    interval_s: float = 0.1,
    chunk_s: float = 10.0,
) -> list[Case]:
    """Meter one window of ``window_s`` over every GPU of ``tap``; one `Case` per GPU.

    Args:
        tap: The GPUs (`open_taps`).
        window_s: How long the "job" runs between ``start()`` returning and ``stop()``, s.
        repeat: Which repeat this is (for the record).
        load: What the GPUs run meanwhile (for the record).
        interval_s: The meter's sampling interval, s.
        chunk_s: The meter's chunk length, s.
    """
    tap.clear()
    sink = _Chunks()
    sampler = Sampler(
        tap,
        run_id=str(uuid.uuid4()),
        spool=sink,
        interval_s=interval_s,
        chunk_s=chunk_s,
        clock=_MonotonicWall(),
        host="accuracy-real",
    )
    sampler.start()
    time.sleep(window_s)
    summary = sampler.stop()
    return [
        _case(
            tap,
            summary,
            sink,
            i,
            window_s=window_s,
            repeat=repeat,
            load=load,
            interval_s=interval_s,
        )
        for i in range(len(tap.devices()))
    ]


def _case(
    tap: Tap,
    summary: MeterSummary,
    sink: _Chunks,
    i: int,
    *,
    window_s: float,
    repeat: int,
    load: str,
    interval_s: float,
) -> Case:
    info = tap.devices()[i]
    device = summary.devices[i]
    quality = summary.quality.devices[i] if summary.quality is not None else None
    base: dict[str, Any] = {
        "index": info.index,
        "uid": info.uid,
        "name": info.name,
        "window_s": window_s,
        "repeat": repeat,
        "load": load,
        "counter_update_s": quality.counter_update_s if quality is not None else None,
    }
    chunks = sink.by_key.get(device.key, [])
    if not chunks:
        return Case(
            **base,
            duration_s=math.nan,
            counter_j=math.nan,
            counter_diff_j=math.nan,
            averaged=None,
            instant=None,
            samples=0,
            note=f"no chunk sealed ({device.status}: {device.message})",
        )
    t_s, avg_w, counter_j, cuts_s = _window_samples(chunks)
    notes = []
    if not info.has_energy_counter or device.method != "counter":
        notes.append(f"no counter figure (method {device.method}): nothing to compare with")
        truth_j = diff_j = math.nan
    else:
        truth_j, diff_j = device.energy_j, counter_j[-1] - counter_j[0]
    if device.missed:
        notes.append(f"missed readings {device.missed}")
    hidden = dataclasses.replace(info, has_energy_counter=False)
    # The waits at the edges of a counter on a grid leave an interval of up to a few update
    # periods at the window's ends, which a GPU read without its counter would not have: the
    # replays take every interval as an ordinary one, not as a hole.
    longest_s = max((b - a for a, b in itertools.pairwise(t_s)), default=0.0)
    interval_s = max(interval_s, longest_s / 2.5)
    averaged = None
    if info.power_method == Method.POWER_AVG:
        averaged = _figure(_replay(hidden, t_s, avg_w, cuts_s, interval_s=interval_s))
    instant = None
    instant_info = tap.instant.devices()[i]
    if instant_info.power_method == Method.POWER_INSTANT:
        inst_w = _nearest(tap.records[i], t_s)
        hidden_instant = dataclasses.replace(instant_info, has_energy_counter=False)
        instant = _figure(_replay(hidden_instant, t_s, inst_w, cuts_s, interval_s=interval_s))
    return Case(
        **base,
        duration_s=t_s[-1] - t_s[0],
        counter_j=truth_j,
        counter_diff_j=diff_j,
        averaged=averaged,
        instant=instant,
        samples=len(t_s),
        note="; ".join(notes),
    )


# -- opening the GPUs ---------------------------------------------------------------------------


def open_taps(nvml: NvmlModule | None = None, gpus: Sequence[int | str] | None = None) -> Tap:
    """Open every GPU NVML shows (or ``gpus``), twice: the meter's reading and the instant one.

    Args:
        nvml: The NVML module (default: ``import pynvml``).
        gpus: NVML indices or UUIDs (default: every GPU; ``CUDA_VISIBLE_DEVICES`` is ignored).

    Raises:
        NoGpu: pynvml is missing, NVML does not start (no driver), or it sees no GPU.
    """
    if nvml is None and importlib.util.find_spec("pynvml") is None:
        raise NoGpu("pynvml is not installed (pip install 'thermoledger[nvml]': nvidia-ml-py)")
    try:
        main = NvmlBackend(nvml=nvml, gpus=gpus, env={}, power_reading="average")
    except MeterError as e:
        raise NoGpu(f"NVML sees no GPU: {e}") from e
    if not main.devices():
        main.close()
        raise NoGpu("NVML sees no GPU (it counts none)")
    try:
        instant = NvmlBackend(
            nvml=nvml, gpus=list(main.selection.indices), env={}, power_reading="instant"
        )
    except MeterError as e:
        main.close()
        raise NoGpu(f"NVML failed opening the GPUs a second time: {e}") from e
    return Tap(main, instant)


# -- an optional load ---------------------------------------------------------------------------


def _load_python(explicit: str | None) -> str | None:
    """The first interpreter that can import torch or cupy (None: none)."""
    candidates = [explicit] if explicit else [sys.executable, shutil.which("python3")]
    seen: set[str] = set()
    for python in candidates:
        if not python or python in seen:
            continue
        seen.add(python)
        try:
            probe = subprocess.run([python, "-c", _PROBE], timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return python
    return None


class Load:
    """A square wave of matrix products on each GPU, in one subprocess per GPU, or nothing.

    Args:
        uids: The GPUs (each subprocess sees one, by ``CUDA_VISIBLE_DEVICES=<uuid>``).
        choice: ``auto`` (the wave where torch or cupy can be imported, else idle), ``idle``
            or ``square`` (the wave, or `NoGpu` when it cannot start).
        period_s: The wave's period, s.
        duty: The part of each period spent computing.
        python: The interpreter to run it (default: this one, else ``python3`` on the PATH,
            whichever can import torch or cupy).
        matrix_n: The side of the matrices multiplied.

    Attributes:
        description: What the GPUs run, in words (``idle (...)`` or the wave and its library).
    """

    def __init__(
        self,
        uids: Sequence[str],
        *,
        choice: LoadChoice = "auto",
        period_s: float = 0.25,
        duty: float = 0.3,
        python: str | None = None,
        matrix_n: int = 8192,
    ) -> None:
        self._uids = list(uids)
        self._choice = choice
        self._period_s = period_s
        self._duty = duty
        self._python = python
        self._n = matrix_n
        self._procs: list[subprocess.Popen[str]] = []
        self.description = "idle (--load idle)"

    @property
    def label(self) -> str:
        """``idle`` or ``square <period> s × <duty>``."""
        return "idle" if not self._procs else f"square {self._period_s:g} s × {self._duty:g}"

    def __enter__(self) -> Load:
        if self._choice == "idle":
            return self
        python = _load_python(self._python)
        if python is None:
            why = f"neither torch nor cupy importable by {self._python or sys.executable}"
            if not self._python:
                why += " or python3"
            if self._choice == "square":
                raise NoGpu(f"--load square: {why}")
            self.description = f"idle ({why})"
            return self
        try:
            via = self._start(python)
        except RuntimeError as e:
            self.__exit__()
            if self._choice == "square":
                raise NoGpu(f"--load square: {e}") from e
            self.description = f"idle (the load did not start: {e})"
            return self
        self.description = (
            f"square wave, period {self._period_s:g} s, duty {self._duty:g}: "
            f"{self._n}×{self._n} matrix products via {via} ({python})"
        )
        return self

    def _start(self, python: str) -> str:
        args = [python, "-c", _LOAD_SCRIPT, str(self._period_s), str(self._duty), str(self._n)]
        for uid in self._uids:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=uid)
            self._procs.append(
                subprocess.Popen(
                    args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        via = ""
        for proc in self._procs:
            line = _first_line(proc, timeout_s=120.0)
            if not line.startswith("ready"):
                proc.kill()
                _, err = proc.communicate(timeout=10)
                last = (err.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"exited {proc.returncode}: {last}")
            via = line.removeprefix("ready").strip()
        time.sleep(2.0 * self._period_s)  # the averaged readings see the wave
        return via

    def __exit__(self, *exc_info: object) -> None:
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.communicate(timeout=10)
        self._procs = []


def _first_line(proc: subprocess.Popen[str], *, timeout_s: float) -> str:
    """The first line ``proc`` prints, or "" when it prints none in time."""
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return lines[0].strip() if lines else ""


# -- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--real`` (``--windows`` and ``--quick`` are shared with the simulation)."""
    real = parser.add_argument_group("real GPUs (--real)")
    real.add_argument(
        "--real",
        action="store_true",
        help="compare power readings with the energy counter on the GPUs NVML shows",
    )
    real.add_argument("--gpus", nargs="+", help="NVML indices or UUIDs (default: every GPU)")
    real.add_argument("--repeats", type=int, default=3, help="repeats of each window")
    real.add_argument(
        "--load",
        choices=("auto", "idle", "square"),
        default="auto",
        help="a square wave of matrix products where torch or cupy imports (auto), or none",
    )
    real.add_argument("--load-period", type=float, default=0.25, help="the wave's period, s")
    real.add_argument("--load-duty", type=float, default=0.3, help="the wave's duty cycle")
    real.add_argument("--load-python", help="the interpreter that runs the load")


def _percent(value: float) -> str:
    return f"{value:+8.3f}" if math.isfinite(value) else "     n/a"


def _row(case: Case) -> str:
    def part(figure: Figure | None) -> str:
        if figure is None:
            return f"{'n/a':>11} {'':>8} {'':>6}"
        err = figure.error_percent(case.counter_j) if case.measured else math.nan
        covers = ("yes" if figure.covers(case.counter_j) else "NO") if case.measured else "-"
        return f"{figure.energy_j:11.3f} {_percent(err)} {covers:>6}"

    update = "n/a" if case.counter_update_s is None else f"{case.counter_update_s:.4f}"
    row = (
        f"  {case.window_s:6g} {case.repeat:3d} {case.duration_s:9.4f} {case.samples:5d} "
        f"{case.counter_j:11.3f} {part(case.averaged)} {part(case.instant)} {update:>9}"
    )
    return row + (f"  ({case.note})" if case.note else "")


def report(tap: Tap, cases: Sequence[Case], load: str, out: TextIO) -> tuple[float, float, float]:
    """Print the cases per GPU, then the summary lines; returns (Y, I, Z) of the last line."""
    infos = tap.devices()
    print(f"load: {load}", file=out)
    header = (
        f"  {'window':>6} {'rep':>3} {'metered s':>9} {'n':>5} {'counter J':>11} "
        f"{'averaged J':>11} {'err %':>8} {'covers':>6} {'instant J':>11} {'err %':>8} "
        f"{'covers':>6} {'update s':>9}"
    )
    for i, info in enumerate(infos):
        mine = [c for c in cases if c.uid == info.uid]
        print(f"GPU {info.index}: {info.name} ({info.uid})", file=out)
        print(
            f"  the meter's power reading (power_reading=average): {power_choice(info)}", file=out
        )
        print(f"  instantaneous reading: {power_choice(tap.instant.devices()[i])}", file=out)
        in_field = tap.main.energy_in_field[i]
        print(
            f"  energy counter: {'yes' if info.has_energy_counter else 'NO'}; "
            f"read with power in one field-values call: {'yes' if in_field else 'no'}",
            file=out,
        )
        periods = sorted({c.counter_update_s for c in mine if c.counter_update_s is not None})
        seen = ", ".join(f"{p * 1000:.1f} ms" for p in periods) or "not seen"
        print(f"  counter update period (Sampler.counter_update_s, per window): {seen}", file=out)
        if info.note:
            print(f"  note: {info.note}", file=out)
        print(header, file=out)
        for case in mine:
            print(_row(case), file=out)
        for window_s in sorted({c.window_s for c in mine}):
            print(
                _summary_line(
                    f"  {window_s:g} s windows", [c for c in mine if c.window_s == window_s]
                ),
                file=out,
            )
    measured = [c for c in cases if c.measured]
    avg = [c for c in measured if c.averaged is not None]
    inst = [c for c in measured if c.instant is not None]
    worst_avg = max(
        (abs(c.averaged.error_percent(c.counter_j)) for c in avg if c.averaged), default=math.nan
    )
    worst_inst = max(
        (abs(c.instant.error_percent(c.counter_j)) for c in inst if c.instant), default=math.nan
    )
    cover_avg = _coverage([c.averaged.covers(c.counter_j) for c in avg if c.averaged])
    cover_inst = _coverage([c.instant.covers(c.counter_j) for c in inst if c.instant])
    mismatch = max((abs(c.counter_j - c.counter_diff_j) for c in measured), default=math.nan)
    print("Summary:", file=out)
    print(_summary_line("  all windows", cases), file=out)
    print(
        f"  band coverage: averaged {cover_avg:.1f} % of {len(avg)}, "
        f"instant {cover_inst:.1f} % of {len(inst)}",
        file=out,
    )
    print(
        f"  the meter's counter figure vs the counter's difference at the edges: "
        f"max |Δ| {mismatch:.6f} J over {len(measured)} windows",
        file=out,
    )
    return worst_avg, worst_inst, cover_avg


def _coverage(flags: Sequence[bool]) -> float:
    return 100.0 * sum(flags) / len(flags) if flags else math.nan


def _summary_line(label: str, cases: Sequence[Case]) -> str:
    def worst(errors: list[float]) -> str:
        if not errors:
            return "n/a"
        return (
            f"max |e| {max(abs(e) for e in errors):.3f} % (median {statistics.median(errors):+.3f})"
        )

    measured = [c for c in cases if c.measured]
    avg = [c.averaged.error_percent(c.counter_j) for c in measured if c.averaged is not None]
    inst = [c.instant.error_percent(c.counter_j) for c in measured if c.instant is not None]
    return f"{label}: averaged {worst(avg)}; instant {worst(inst)}; n={len(measured)}"


def main(
    args: argparse.Namespace,
    *,
    nvml: NvmlModule | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``--real``: every window on every GPU, then the report and the machine-read line.

    Args:
        args: The parsed options (`add_arguments`, plus ``windows`` and ``quick``).
        nvml: The NVML module (default: ``import pynvml``); tests pass a fake.
        out: Where the report goes (default: stdout).
        err: Where progress and the one-line refusal go (default: stderr).

    Returns:
        0; 2 when NVML cannot be used here (no pynvml, no driver, no GPU) or a ``--load square``
        cannot start; 1 when no window could be compared (no GPU with a counter).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    windows: list[float] = [2.0] if args.quick else list(args.windows)
    repeats = 1 if args.quick else args.repeats
    gpus = [int(g) if g.isdigit() else g for g in args.gpus] if args.gpus else None
    try:
        tap = open_taps(nvml, gpus)
    except NoGpu as e:
        print(f"accuracy --real: {e}", file=err)
        return 2
    started_s = time.monotonic()
    cases: list[Case] = []
    try:
        with Load(
            [d.uid for d in tap.devices()],
            choice=args.load,
            period_s=args.load_period,
            duty=args.load_duty,
            python=args.load_python,
        ) as load:
            print(f"accuracy --real: load: {load.description}", file=err, flush=True)
            for repeat in range(1, repeats + 1):
                for window_s in windows:
                    cases += measure(tap, window_s, repeat=repeat, load=load.label)
                    print(
                        f"  {window_s:g} s window {repeat}/{repeats} done, "
                        f"{time.monotonic() - started_s:.0f} s",
                        file=err,
                        flush=True,
                    )
    except NoGpu as e:
        tap.close()
        print(f"accuracy --real: {e}", file=err)
        return 2
    try:
        print(
            f"Per GPU and window: the counter's energy between the window's edges (the truth "
            f"proxy), and what the meter makes of the averaged and of the instantaneous power "
            f"readings over the same samples ({len(tap.devices())} GPUs, windows "
            f"{', '.join(f'{w:g} s' for w in windows)} × {repeats})",
            file=out,
        )
        worst_avg, worst_inst, coverage = report(tap, cases, load.description, out)
    finally:
        tap.close()
    print(
        f"accuracy (real NVML): averaged vs counter max |error| {worst_avg:.4f} %, "
        f"instant max |error| {worst_inst:.4f} %, band coverage {coverage:.1f} %, "
        f"{len(tap.devices())} GPUs",
        file=out,
    )
    return 0 if any(c.measured for c in cases) else 1
