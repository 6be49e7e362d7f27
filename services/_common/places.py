"""Where a service's tables live on PostgreSQL (docs/storage.md). Kept apart from
services/_common/pg.py so reading the configuration does not import the database driver."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PgPlace:
    """A service's tables: a schema (named after the service) in the database `dsn` names.

    `str()` never shows the DSN (it may hold a password): only the schema, for logs."""

    dsn: str
    schema: str

    def __str__(self) -> str:
        return f"postgresql schema {self.schema}"

    def __repr__(self) -> str:
        return f"PgPlace(schema={self.schema!r})"
