"""Input checks shared by `accounting.carbon`, `accounting.cost`, `accounting.planning` and
`accounting.amortisation`.

Every bad number is refused with `InvalidQuantity` naming the field, so the service can map it to
one 422 response; nothing is clamped or replaced by a default.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidQuantity


def finite(value: Any, field: str) -> float:
    """Return ``value`` as a float, refusing booleans, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise InvalidQuantity(f"expected a number, got {value!r}", field=field)
    result = float(value)
    if not math.isfinite(result):
        raise InvalidQuantity(f"must be finite, got {result!r}", field=field)
    return result


def non_negative(value: Any, field: str) -> float:
    """A finite number ≥ 0."""
    result = finite(value, field)
    if result < 0.0:
        raise InvalidQuantity(f"must be ≥ 0, got {result!r}", field=field)
    return result


def positive(value: Any, field: str) -> float:
    """A finite number > 0."""
    result = finite(value, field)
    if result <= 0.0:
        raise InvalidQuantity(f"must be > 0, got {result!r}", field=field)
    return result


def fraction(value: Any, field: str) -> float:
    """A finite number in [0, 1]."""
    result = finite(value, field)
    if not 0.0 <= result <= 1.0:
        raise InvalidQuantity(f"must lie in [0, 1], got {result!r}", field=field)
    return result


def non_empty(text: Any, field: str) -> str:
    """A string with something other than whitespace in it."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidQuantity(f"must be a non-empty string, got {text!r}", field=field)
    return text


def positive_array(values: ArrayLike, field: str) -> NDArray[np.float64]:
    """A float64 array (any shape, at least one element) of finite values > 0."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise InvalidQuantity("must hold at least one value", field=field)
    if not np.all(np.isfinite(array)):
        raise InvalidQuantity("must hold finite values only", field=field)
    if np.any(array <= 0.0):
        raise InvalidQuantity("must hold values > 0 only", field=field)
    return array


def check_window(valid_from: date | None, valid_to: date | None, field: str) -> None:
    """Refuse a validity window that ends before it starts."""
    if valid_from is not None and valid_to is not None and as_date(valid_to) < as_date(valid_from):
        raise InvalidQuantity(
            f"valid_to ({valid_to.isoformat()}) is before valid_from ({valid_from.isoformat()})",
            field=field,
        )


def as_date(when: date) -> date:
    """A `datetime` reduced to its calendar date; a `date` unchanged."""
    return when.date() if isinstance(when, datetime) else when


def window_covers(valid_from: date | None, valid_to: date | None, when: date) -> bool:
    """Whether ``when`` lies in the closed window; an open end does not limit it."""
    day = as_date(when)
    if valid_from is not None and day < as_date(valid_from):
        return False
    return not (valid_to is not None and day > as_date(valid_to))


def iso(when: date | None) -> str | None:
    """ISO 8601 text for JSON, or None."""
    return None if when is None else when.isoformat()
