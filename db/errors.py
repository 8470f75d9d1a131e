"""The database layer's error tree.

Errors subclass both a stdlib class and `StorageError`, so generic code can catch `ValueError` /
`RuntimeError` while the service maps `StorageError` subclasses to HTTP status codes in one table.

Two families share it: the infrastructure's (an unsupported database, a malformed sample blob, a
migration that cannot run) and the refusals of the store modules (`db.tokens`, `db.runs`,
`db.phases`, `db.chunks`, `db.totals`, and `db.factors`, `db.ledger` beside them): `NotFound`,
`Conflict` and `InvalidInput`, which carries every refused field as a `FieldProblem` so a request
learns all its mistakes at once. The routes never catch them; `service.errors` maps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Conflict",
    "FieldProblem",
    "InvalidInput",
    "MigrationError",
    "NotFound",
    "SampleCodecError",
    "SchemaDrift",
    "StorageError",
    "UnsupportedDatabase",
]


class StorageError(Exception):
    """Base class of every error raised by `db` itself (SQLAlchemy's own errors pass through)."""


class UnsupportedDatabase(ValueError, StorageError):
    """The database URL names a backend or driver thermoledger does not support."""


class SampleCodecError(ValueError, StorageError):
    """A raw-sample blob cannot be encoded or decoded (bad version, truncated, malformed)."""


class MigrationError(RuntimeError, StorageError):
    """A schema migration could not run (no revision scripts found, unknown revision, ...)."""


class SchemaDrift(MigrationError):
    """The live schema and the models disagree: a migration is missing or was edited."""


# --------------------------------------------------------------------------- refusals


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One refused field: its path in the request (``chunks[3].samples.t_s[17]``) and why."""

    field: str
    message: str


class NotFound(LookupError, StorageError):
    """The row does not exist, or belongs to another project (the two are not told apart)."""

    def __init__(self, resource: str, key: object) -> None:
        self.resource = resource
        self.key = key
        super().__init__(f"{resource} {key} not found")


class Conflict(ValueError, StorageError):
    """The request contradicts what is stored (same key, different content or owner)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidInput(ValueError, StorageError):
    """Values that no row may hold (time going backwards, implausible power, ...).

    Attributes:
        problems: Every refused field found, in request order (at least one).
        field: Path of the first.
    """

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        if not problems:
            raise ValueError("InvalidInput needs at least one problem")
        self.problems = tuple(problems)
        self.field: str | None = self.problems[0].field
        super().__init__(f"{self.problems[0].field}: {self.problems[0].message}")

    @classmethod
    def one(cls, field: str, message: str) -> InvalidInput:
        """An error about a single field."""
        return cls([FieldProblem(field, message)])
