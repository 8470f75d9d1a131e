"""Energies summed per group across devices, each band term combined by its own rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._validate import FloatArray, IntArray, InvalidArgument
from .model import COMBINES, Combine, _band
from .segments import _sum_by


@dataclass(frozen=True, slots=True)
class EnergyTotals:
    """Energy summed per group key (`aggregate_energy`), one entry per distinct key.

    Attributes:
        key: The distinct group keys, sorted.
        energy_j, energy_low_j, energy_high_j: Sum and band, J.
        sensor_uncertainty_j: Combined sensor error, J (root-sum-square over devices for
            ``combine="independent"``, plain sum for ``"linear"``).
        bound_below_j, bound_above_j: Summed one-sided bounds, J.
        n_devices: Distinct devices in each group.
        n_rows: Input rows in each group.
        combine: How sensor errors of different devices were combined.
    """

    key: npt.NDArray[np.generic]
    energy_j: FloatArray
    energy_low_j: FloatArray
    energy_high_j: FloatArray
    sensor_uncertainty_j: FloatArray
    bound_below_j: FloatArray
    bound_above_j: FloatArray
    n_devices: IntArray
    n_rows: IntArray
    combine: Combine

    def __len__(self) -> int:
        return int(self.energy_j.size)


def aggregate_energy(
    energy_j: npt.ArrayLike,
    sensor_uncertainty_j: npt.ArrayLike,
    bound_below_j: npt.ArrayLike,
    bound_above_j: npt.ArrayLike,
    *,
    device: npt.ArrayLike,
    group: npt.ArrayLike | None = None,
    combine: Combine = "independent",
) -> EnergyTotals:
    """Sum energies per group (run, host, phase ...) across devices, combining uncertainties.

    Rows of the same (group, device) add linearly, sensor error included: one device's sensor
    error is systematic over time. Across devices, sensor errors combine root-sum-square
    (``"independent"``, default) or linearly (``"linear"``, conservative). Bounds always add
    linearly (they are worst cases, and aliasing is correlated across the ranks of one job).

    Args:
        energy_j: Energy per row (e.g. per chunk), J.
        sensor_uncertainty_j: Sensor error per row, J.
        bound_below_j: One-sided bound below per row, J.
        bound_above_j: One-sided bound above per row, J (+inf allowed).
        device: Device key per row (e.g. GPU UUID, or "host:index").
        group: Group key per row (default: one group for all rows).
        combine: ``"independent"`` or ``"linear"`` for sensor errors across devices.

    Returns:
        Totals per distinct group key (see `EnergyTotals`).

    Raises:
        InvalidArgument: Mismatched lengths, negative or NaN values, unknown combine.
    """
    if combine not in COMBINES:
        raise InvalidArgument(f"combine must be one of {COMBINES}, got {combine!r}")
    cols = [
        np.atleast_1d(np.asarray(x, dtype=np.float64))
        for x in (energy_j, sensor_uncertainty_j, bound_below_j, bound_above_j)
    ]
    dev = np.atleast_1d(np.asarray(device))
    rows = dev.size
    grp = np.zeros(rows, dtype=np.int64) if group is None else np.atleast_1d(np.asarray(group))
    names = ("energy_j", "sensor_uncertainty_j", "bound_below_j", "bound_above_j")
    for name, col in zip(names, cols, strict=True):
        if col.shape != (rows,):
            raise InvalidArgument(f"{name} has shape {col.shape}, device has ({rows},)")
        if np.any(np.isnan(col)) or np.any(col < 0):
            raise InvalidArgument(f"{name} must be >= 0 and not NaN")
    if not np.all(np.isfinite(cols[0])):
        raise InvalidArgument("energy_j must be finite")
    if grp.shape != (rows,):
        raise InvalidArgument(f"group has shape {grp.shape}, device has ({rows},)")
    energy, sensor, below, above = cols
    keys, g_inv = np.unique(grp, return_inverse=True)
    _, d_inv = np.unique(dev, return_inverse=True)
    n_dev = int(d_inv.max()) + 1 if rows else 0
    pair = g_inv.astype(np.int64) * n_dev + d_inv
    pairs, p_inv = np.unique(pair, return_inverse=True)
    pair_grp = pairs // max(n_dev, 1)
    ng = keys.size
    npair = pairs.size

    def per_pair(values: FloatArray) -> FloatArray:
        return _sum_by(p_inv, values, npair)

    def per_group(values: FloatArray) -> FloatArray:
        return _sum_by(pair_grp, values, ng)

    pair_sensor = per_pair(sensor)
    if combine == "independent":
        total_sensor = np.sqrt(per_group(pair_sensor * pair_sensor))
    else:
        total_sensor = per_group(pair_sensor)
    total_energy = _sum_by(g_inv, energy, ng)
    total_below = _sum_by(g_inv, below, ng)
    total_above = _sum_by(g_inv, above, ng)
    low, high = _band(total_energy, total_sensor, total_below, total_above)
    return EnergyTotals(
        key=keys,
        energy_j=total_energy,
        energy_low_j=low,
        energy_high_j=high,
        sensor_uncertainty_j=total_sensor,
        bound_below_j=total_below,
        bound_above_j=total_above,
        n_devices=np.bincount(pair_grp, minlength=ng).astype(np.int64),
        n_rows=np.bincount(g_inv, minlength=ng).astype(np.int64),
        combine=combine,
    )
