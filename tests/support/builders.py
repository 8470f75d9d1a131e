"""Wire payloads for ingest tests: devices, chunks of exactly known energy, and batches."""

from __future__ import annotations

from typing import Any

from thermoledger.meters.wire import decode_column

__all__ = ["LIMIT_W", "T0_S", "batch", "chunk", "device", "floats"]

#: Unix time at which chunk 0 starts, s.
T0_S = 1_760_000_000.0
#: The power limit the builders' devices report, W.
LIMIT_W = 700.0


def device(
    index: int = 0, *, host: str = "node-0", limit_w: float | None = LIMIT_W
) -> dict[str, Any]:
    """A wire device (`meters.wire.DevicePayload`)."""
    return {
        "key": f"{host}/gpu{index}",
        "host": host,
        "kind": "gpu",
        "index": index,
        "uid": f"GPU-{host}-{index}",
        "name": "NVIDIA H100 80GB HBM3",
        "power_limit_w": limit_w,
        "has_energy_counter": True,
        "power_method": "power_avg",
        "simulated": False,
    }


def chunk(
    seq: int,
    *,
    device_index: int = 0,
    host: str = "node-0",
    power_w: float = 300.0,
    n: int = 10,
    interval_s: float = 1.0,
    t0_s: float | None = None,
) -> dict[str, Any]:
    """A wire chunk of constant power: chunk ``seq`` covers [T0 + seq·n·dt, T0 + (seq+1)·n·dt).

    Its energy is exactly power × duration (left-sample rule: the last interval reaches the
    next chunk's first sample), with a ±2 % band.
    """
    start = T0_S + seq * n * interval_s if t0_s is None else t0_s
    duration_s = n * interval_s
    energy_j = power_w * duration_s
    return {
        "device_key": f"{host}/gpu{device_index}",
        "seq": seq,
        "t0_s": start,
        "t1_s": start + duration_s,
        "n": n,
        "method": "counter",
        "energy_j": energy_j,
        "energy_low_j": energy_j * 0.98,
        "energy_high_j": energy_j * 1.02,
        "sensor_uncertainty_j": energy_j * 0.02,
        "bound_below_j": 0.0,
        "bound_above_j": 0.0,
        "min_power_w": power_w,
        "mean_power_w": power_w,
        "max_power_w": power_w,
        "gap_s": 0.0,
        "gap_count": 0,
        "reset_count": 0,
        "wrap_count": 0,
        "samples": {
            "t_s": [start + i * interval_s for i in range(n)],
            "power_w": [power_w] * n,
        },
    }


def batch(
    chunks: list[dict[str, Any]], devices: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A wire batch (`meters.wire.IngestBatch`); devices default to those the chunks name."""
    if devices is None:
        seen: dict[str, dict[str, Any]] = {}
        for c in chunks:
            host, gpu = c["device_key"].split("/")
            seen.setdefault(c["device_key"], device(int(gpu.removeprefix("gpu")), host=host))
        devices = list(seen.values())
    return {"schema": 1, "devices": devices, "chunks": chunks}


def floats(column: list[float] | str | None) -> list[float]:
    """A chunk's sample column as floats, whichever wire encoding it has (list or base64)."""
    assert column is not None, "the column is absent"
    return list(decode_column(column)) if isinstance(column, str) else list(column)
