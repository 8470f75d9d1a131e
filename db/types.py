"""Column types that behave the same on SQLite and PostgreSQL.

* `UTCDateTime`: timezone-aware UTC in Python on both backends. PostgreSQL stores
  ``timestamptz``; SQLite has no time-zone type, so the value is stored as naive UTC text and
  re-labelled UTC on the way out. Naive datetimes are refused on the way in: guessing their zone
  is how reports end up an hour off. So is a time whose UTC equivalent leaves Python's calendar
  (``0001-01-01T00:00:00+14:00``): `TimeOutOfRange`, an `InvalidInput` (422 at the service),
  raised unwrapped by SQLAlchemy, never the ``OverflowError`` of the conversion. The service
  refuses such times long before (`service.timebounds`); this is the last line of defence for
  every statement, filters included.
* `StrEnumType`: a ``str`` enum stored as ``VARCHAR`` and read back as the enum member. The set of
  allowed values is enforced in the database by a named CHECK constraint on the table (see
  `db.models`), not by a native PostgreSQL ``ENUM``, whose values cannot be changed inside a
  transaction and which SQLite lacks.
* `JSON_DOC`: ``JSON`` everywhere, ``JSONB`` on PostgreSQL (indexable, de-duplicated keys).
* `BIGINT_PK`: ``BIGINT`` surrogate keys, except on SQLite where only ``INTEGER PRIMARY KEY``
  aliases the rowid and therefore autoincrements (a ``BIGINT`` key would stay NULL there).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DontWrapMixin

from .errors import FieldProblem, InvalidInput

__all__ = [
    "BIGINT_PK",
    "JSON_DOC",
    "StrEnumType",
    "TimeOutOfRange",
    "UTCDateTime",
    "to_utc",
    "utcnow",
]

E = TypeVar("E", bound=enum.StrEnum)

JSON_DOC: sa.types.TypeEngine[Any] = sa.JSON().with_variant(JSONB(), "postgresql")
BIGINT_PK: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the default of every ``*_at`` column)."""
    return datetime.now(UTC)


class TimeOutOfRange(DontWrapMixin, InvalidInput):
    """A time with no UTC equivalent in the calendar (years 1-9999), so it cannot be stored or
    compared with stored times. `DontWrapMixin`: SQLAlchemy raises it as it is from inside a
    statement, instead of wrapping it in a ``StatementError`` no error table knows."""

    def __init__(self, value: datetime) -> None:
        super().__init__(
            [FieldProblem("time", f"{value.isoformat()} has no UTC equivalent in years 1-9999")]
        )


def to_utc(value: datetime) -> datetime:
    """An aware ``value`` in UTC.

    Raises:
        TimeOutOfRange: Its UTC equivalent falls outside years 1-9999 (``astimezone``'s
            ``OverflowError``).
    """
    try:
        return value.astimezone(UTC)
    except OverflowError as e:
        raise TimeOutOfRange(value) from e


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware datetime, stored and returned in UTC on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: give it a time zone")
        value = to_utc(value)
        # SQLite would store the offset-free text of whatever zone it got; storing naive UTC
        # keeps the text sortable, so range filters and ORDER BY work on it.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StrEnumType(sa.TypeDecorator[E]):
    """A `enum.StrEnum` column: ``VARCHAR(length)`` in the database, the member in Python.

    Args:
        enum_class: The enum whose values the column holds.
        length: Column width in characters; must fit the longest value.
    """

    impl = sa.String
    cache_ok = True

    def __init__(self, enum_class: type[E], length: int = 16) -> None:
        longest = max(len(member.value) for member in enum_class)
        if longest > length:
            raise ValueError(f"{enum_class.__name__} has a value longer than {length} characters")
        super().__init__(length)
        self.enum_class = enum_class

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        # Raises ValueError naming the bad value before the database sees it.
        return self.enum_class(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_class(value)

    def check_sql(self, column: str) -> str:
        """SQL for a CHECK constraint that admits exactly the enum's values in ``column``."""
        allowed = ", ".join(f"'{member.value}'" for member in self.enum_class)
        return f"{column} IN ({allowed})"
