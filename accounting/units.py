"""One pint registry for the whole application, and parsers for quantities at the edges.

The registry is pint's default one plus ``data/units.txt``: ``FLOP`` (dimension ``[compute]``,
with SI prefixes, so ``GFLOP``, ``PFLOP`` work), ``token`` (``[token_count]``), ``USD``
(``[currency]``; other currencies only through explicit dated exchange rates, never implicitly)
and ``gCO2e`` (``[emissions]``, with ``kgCO2e``, ``tCO2e`` and ``lbCO2e``: pounds, exactly
0.45359237 kg, as US grid tables and Strubell et al. 2019 print them, so ``lbCO2e/kWh`` is an
intensity like ``gCO2e/kWh``). pint's own ``J``, ``Wh``,
``kWh``, ``W``, ``bit`` and ``K`` are used as they are.

At an API boundary a quantity is ``{"value": 3.6, "unit": "MJ"}`` or the text ``"3.6 MJ"``;
`parse_quantity` turns either into a Quantity and checks its dimension against what the caller
expects, raising `DimensionMismatch` naming both.

Example:
    >>> (Q_(1e15, "FLOP") / Q_(3e3, "J")).to("GFLOP/J").magnitude
    333.3333333333333
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import resources
from typing import Any, TypeAlias

try:
    import pint
except ModuleNotFoundError as e:  # pint is an extra: the meter and the demo never need it
    raise ModuleNotFoundError(
        "thermoledger's unit registry needs pint, which the base install leaves out; "
        "install it with: pip install 'thermoledger[units]' (the [service] extra includes it)",
        name=e.name,
    ) from e

from .errors import DimensionMismatch, InvalidQuantity

UnitRegistry: TypeAlias = "pint.UnitRegistry[Any]"
QuantityT: TypeAlias = "pint.Quantity[Any]"

__all__ = [
    "DIMENSIONS",
    "Q_",
    "DimensionMismatch",
    "InvalidQuantity",
    "Quantity",
    "QuantityT",
    "dimension_of",
    "magnitude_in",
    "parse_quantity",
    "ureg",
]


def _build_registry() -> UnitRegistry:
    registry: UnitRegistry = pint.UnitRegistry(
        autoconvert_offset_to_baseunit=True, cache_folder=None
    )
    definitions = resources.files("thermoledger.accounting") / "data" / "units.txt"
    with resources.as_file(definitions) as path:
        registry.load_definitions(str(path))
    return registry


ureg: UnitRegistry = _build_registry()
Q_ = ureg.Quantity
Quantity = pint.Quantity

#: Friendly names for the dimensions the application uses, mapped to a reference unit.
#: `parse_quantity(..., "energy")` is the same as `parse_quantity(..., "J")`.
DIMENSIONS: dict[str, str] = {
    "energy": "J",
    "power": "W",
    "time": "s",
    "compute": "FLOP",
    "compute_rate": "FLOP/s",
    "efficiency": "FLOP/J",
    "tokens": "token",
    "currency": "USD",
    "emissions": "gCO2e",
    "carbon_intensity": "gCO2e/kWh",
    "tariff": "USD/kWh",
    "information": "bit",
    "temperature": "K",
    "bandwidth": "byte/s",
    "data": "byte",
    "dimensionless": "dimensionless",
}


def _reference_unit(expected: str) -> pint.Unit:
    unit_text = DIMENSIONS.get(expected, expected)
    try:
        return ureg.Unit(unit_text)
    except (pint.UndefinedUnitError, pint.errors.DefinitionSyntaxError, ValueError) as e:
        raise InvalidQuantity(f"unknown expected unit or dimension {expected!r}") from e


def dimension_of(unit: Any) -> str:
    """Return pint's dimensionality text, e.g. ``"[mass] * [length] ** 2 / [time] ** 2"``."""
    if isinstance(unit, str):
        unit = ureg.Unit(unit)
    return str(unit.dimensionality) or "dimensionless"


def parse_quantity(raw: Any, expected: str, *, field: str | None = None) -> QuantityT:
    """Parse an edge value into a Quantity of the expected dimension.

    Args:
        raw: ``{"value": 3.6, "unit": "MJ"}``, ``"3.6 MJ"``, or a pint Quantity.
        expected: A dimension name from `DIMENSIONS` (``"energy"``) or any unit of the wanted
            dimension (``"J"``, ``"gCO2e/kWh"``).
        field: The name of the field, used in error messages.

    Returns:
        The quantity in the unit it was given (convert with ``.to(...)``).

    Raises:
        InvalidQuantity: Malformed input, unknown unit, or a non-finite value.
        DimensionMismatch: The unit's dimension differs from the expected one.
    """
    reference = _reference_unit(expected)
    quantity = _to_quantity(raw, field=field)
    magnitude = quantity.magnitude
    if not isinstance(magnitude, int | float) or not math.isfinite(float(magnitude)):
        raise InvalidQuantity(f"value must be a finite number, got {magnitude!r}", field=field)
    if quantity.dimensionality != reference.dimensionality:
        raise DimensionMismatch(
            f"{dimension_of(reference)} (e.g. {reference:~})",
            f"{dimension_of(quantity.units)} ({quantity.units:~})",
            field=field,
        )
    return quantity


def magnitude_in(raw: Any, unit: str, *, field: str | None = None) -> float:
    """Parse ``raw`` (see `parse_quantity`) and return its magnitude in ``unit`` as a float."""
    return float(parse_quantity(raw, unit, field=field).to(unit).magnitude)


def _to_quantity(raw: Any, *, field: str | None) -> QuantityT:
    if isinstance(raw, pint.Quantity):
        return raw
    if isinstance(raw, Mapping):
        if set(raw) != {"value", "unit"}:
            raise InvalidQuantity(
                'expected an object {"value": <number>, "unit": "<unit>"}', field=field
            )
        value, unit = raw["value"], raw["unit"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidQuantity(f"value must be a number, got {value!r}", field=field)
        if not isinstance(unit, str):
            raise InvalidQuantity(f"unit must be a string, got {unit!r}", field=field)
        return Q_(float(value), _parse_unit(unit, field=field))
    if isinstance(raw, str):
        text = raw.strip()
        number, _, unit = text.partition(" ")
        try:
            value = float(number)
        except ValueError as e:
            raise InvalidQuantity(
                f'expected "<number> <unit>" such as "3.6 MJ", got {raw!r}', field=field
            ) from e
        return Q_(value, _parse_unit(unit.strip() or "dimensionless", field=field))
    raise InvalidQuantity(
        f'expected {{"value": ..., "unit": ...}} or "<number> <unit>", got {type(raw).__name__}',
        field=field,
    )


def _parse_unit(text: str, *, field: str | None) -> pint.Unit:
    try:
        return ureg.Unit(text)
    except (pint.UndefinedUnitError, pint.errors.DefinitionSyntaxError, ValueError) as e:
        raise InvalidQuantity(f"unknown unit {text!r}", field=field) from e
    except Exception as e:  # pint's parser raises assorted errors on garbage input
        raise InvalidQuantity(f"cannot parse unit {text!r}", field=field) from e
