"""The range of times the service stores or filters on, and the types that enforce it.

Why a range: a time at the edge of the calendar with an offset (``0001-01-01T00:00:00+14:00``,
``9999-12-31T23:59:59-14:00``) has no UTC equivalent in Python's calendar, so converting it for
storage raised ``OverflowError`` (a 500); and a run that starts in year 1 or ends in 9999 is a
typo or an attack, never a measurement. Every time the service stores — a run's start and end,
a token's expiry, phase and chunk times (unix seconds), ledger instants, factor and tariff
validity windows — lies in ``[Settings.earliest_time, Settings.latest_time]``, both ends
included (default 2000-01-01Z .. 2100-01-01Z; ``THERMOLEDGER_EARLIEST_TIME`` /
``THERMOLEDGER_LATEST_TIME``). A value outside it is a 422 naming the field and the range.

Query filters (``started_after``, ``from``/``to``, ``at``) are held to the same range and
refused outside it rather than clamped: a filter before the earliest or after the latest
stored time selects nothing more than the range's own edge would, and a silent clamp would hide
a typo such as year 2205.

Where the check lives. In the request schemas: `StoredTime` (an aware datetime) and
`StoredUnixS` (unix seconds) are the types of every such body field and query parameter, so
pydantic checks them all the same way, with the field path in the 422. Pydantic schemas are
static while the range is a setting, so the range of the app serving a request is bound in a
context variable (`bind`) by `service.deps.get_settings`, which every authenticated route
resolves before FastAPI validates the query and the body; outside a request (a script
validating a schema) the `Settings` defaults apply. Ingest checks the chunks' ``t0_s``/``t1_s``
vectorised (`service.ingest`), against the same range; the samples lie within their chunk's
``[t0_s, t1_s]`` (checked there too), so they are bounded with it. `db.types.UTCDateTime`
refuses a time without a UTC equivalent on its own, as a last line of defence.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

from .settings import Settings

__all__ = ["StoredTime", "StoredUnixS", "TimeRange", "bind", "current"]


def _iso(when: datetime) -> str:
    try:
        return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    except OverflowError:  # a configured edge without a UTC equivalent: show it as given
        return when.isoformat()


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Earliest and latest time the service stores (aware; both ends included)."""

    earliest: datetime
    latest: datetime

    @classmethod
    def of(cls, settings: Settings) -> TimeRange:
        """The range a service configured with ``settings`` keeps to."""
        return cls(settings.earliest_time, settings.latest_time)

    @classmethod
    def default(cls) -> TimeRange:
        """The `Settings` defaults, read from the class (no environment, no database URL)."""
        fields = Settings.model_fields
        return cls(fields["earliest_time"].default, fields["latest_time"].default)

    @property
    def earliest_s(self) -> float:
        """`earliest` in unix seconds."""
        return self.earliest.timestamp()

    @property
    def latest_s(self) -> float:
        """`latest` in unix seconds."""
        return self.latest.timestamp()

    def describe(self) -> str:
        """``[2000-01-01T00:00:00Z, 2100-01-01T00:00:00Z]``: the range as an error names it."""
        return f"[{_iso(self.earliest)}, {_iso(self.latest)}]"

    def refusal(self, given: str) -> str:
        """The message refusing ``given`` (the value as the client wrote it)."""
        return (
            f"{given} is outside the time range the service stores, {self.describe()} "
            "(THERMOLEDGER_EARLIEST_TIME, THERMOLEDGER_LATEST_TIME)"
        )

    def contains(self, when: datetime) -> bool:
        """Whether the aware ``when`` lies in the range (comparing never converts, so a time
        without a UTC equivalent in the calendar compares without overflowing)."""
        return self.earliest <= when <= self.latest

    def contains_s(self, t_s: float) -> bool:
        """Whether unix seconds ``t_s`` lie in the range (NaN does not)."""
        return math.isfinite(t_s) and self.earliest_s <= t_s <= self.latest_s

    def check(self, when: datetime) -> datetime:
        """``when`` if in range.

        Raises:
            ValueError: Outside the range (pydantic reports it with the field's path).
        """
        if not self.contains(when):
            raise ValueError(self.refusal(when.isoformat()))
        return when

    def check_s(self, t_s: float) -> float:
        """Unix seconds ``t_s`` if in range.

        Raises:
            ValueError: Outside the range, or not finite.
        """
        if not self.contains_s(t_s):
            raise ValueError(self.refusal(f"{t_s!r} s (unix time)"))
        return t_s


_CURRENT: contextvars.ContextVar[TimeRange | None] = contextvars.ContextVar(
    "thermoledger_time_range", default=None
)


def bind(settings: Settings) -> None:
    """Make ``settings``' range the one the schemas check for the rest of this request.

    A request runs in its own context (a task, copied into the worker threads of sync routes),
    so the binding ends with the request and never reaches another app's.
    """
    _CURRENT.set(TimeRange.of(settings))


def current() -> TimeRange:
    """The range bound for this request (`bind`), else the `Settings` defaults."""
    return _CURRENT.get() or TimeRange.default()


def _stored_time(when: datetime) -> datetime:
    return current().check(when)


def _stored_unix_s(t_s: float) -> float:
    return current().check_s(t_s)


#: An aware datetime inside the request's `TimeRange` (a 422 naming the field otherwise).
StoredTime = Annotated[AwareDatetime, AfterValidator(_stored_time)]
#: Unix seconds inside the request's `TimeRange` (phase times).
StoredUnixS = Annotated[float, AfterValidator(_stored_unix_s)]
