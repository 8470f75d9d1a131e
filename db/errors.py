"""The database layer's error tree.

Errors subclass both a stdlib class and `StorageError`, so generic code can catch `ValueError` /
`RuntimeError` while the service maps `StorageError` subclasses to HTTP status codes in one table.
"""

from __future__ import annotations


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
