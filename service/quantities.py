"""Quantities at the API edge: every value with a unit goes through `parse_quantity`.

A wrong dimension raises `DimensionMismatch` (422 naming the field and both dimensions), a
malformed value `InvalidQuantity` (422 naming the field). Counts (tokens, parameters) may also
be plain non-negative integers.
"""

from __future__ import annotations

import math
from typing import Any

from thermoledger.accounting.units import DIMENSIONS, InvalidQuantity, parse_quantity

__all__ = ["parse_count", "parse_flops"]

# A count given as a float (JSON 7e9) is accepted when it is this close to an integer.
_INTEGRAL_REL = 1e-9


def parse_flops(raw: Any, *, field: str) -> float:
    """FLOPs from ``{"value": 3.2, "unit": "PFLOP"}`` or ``"3.2 PFLOP"``, as a float in FLOP.

    Raises:
        DimensionMismatch: Not of dimension ``[compute]``.
        InvalidQuantity: Malformed, non-finite, or negative.
    """
    flops = float(parse_quantity(raw, "compute", field=field).to("FLOP").magnitude)
    if not math.isfinite(flops) or flops < 0:
        raise InvalidQuantity(f"{flops!r} FLOP is not a finite count >= 0", field=field)
    return flops


def parse_count(raw: Any, dimension: str, *, field: str) -> int:
    """A non-negative integer count: a plain integer, or a quantity of ``dimension``.

    Args:
        raw: ``1000000``, ``1e6``, ``{"value": 1e6, "unit": "token"}`` or ``"1e6 token"``.
        dimension: A `accounting.units.DIMENSIONS` name, e.g. ``"tokens"`` or
            ``"dimensionless"`` (model parameters).
        field: Field path for error messages.

    Raises:
        DimensionMismatch: A quantity of another dimension.
        InvalidQuantity: Malformed, negative, fractional or non-finite.
    """
    if isinstance(raw, bool):
        raise InvalidQuantity(f"expected a count, got {raw!r}", field=field)
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        unit = DIMENSIONS.get(dimension, dimension)
        value = float(parse_quantity(raw, dimension, field=field).to(unit).magnitude)
    if not math.isfinite(value) or value < 0:
        raise InvalidQuantity(f"{value!r} is not a finite count >= 0", field=field)
    rounded = round(value)
    if abs(value - rounded) > _INTEGRAL_REL * max(1.0, value):
        raise InvalidQuantity(f"{value!r} is not a whole number", field=field)
    return int(rounded)
