"""The accounting core's error tree.

Domain errors subclass both a stdlib class and `AccountingError`, so callers can catch either
(`except ValueError` in generic code, `except AccountingError` at a service boundary).
"""

from __future__ import annotations


class AccountingError(Exception):
    """Base class of every error raised by `accounting`."""


class DimensionMismatch(ValueError, AccountingError):
    """A quantity has the wrong physical dimension (e.g. joules where dollars were expected).

    Attributes:
        expected: The dimension that was asked for, e.g. ``"[energy]"`` or ``"[currency]"``.
        given: The dimension of the value that was supplied.
        field: Name of the field being parsed, when the caller gave one.
    """

    def __init__(self, expected: str, given: str, *, field: str | None = None) -> None:
        self.expected = expected
        self.given = given
        self.field = field
        where = f"{field}: " if field else ""
        super().__init__(f"{where}expected a quantity of dimension {expected}, got {given}")


class InvalidQuantity(ValueError, AccountingError):
    """A quantity could not be parsed (unknown unit, malformed text, non-finite value)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidSamples(ValueError, AccountingError):
    """Sample arrays are malformed: mismatched lengths, NaN, negative power, time going back."""


class UnknownDevice(LookupError, AccountingError):
    """A device name matches no entry of the hardware catalog."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"device {name!r} is not in the hardware catalog")
