"""Database connections.

One place decides which server the process talks to (``DATABASE_URL``, or the
embedded server), so the CLI, the worker, alembic and the tests never disagree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from worker import embedded
from worker.settings import Settings

Conn = psycopg.AsyncConnection[dict[str, Any]]


def resolve_dsn(settings: Settings) -> str:
    """The DSN to use: ``DATABASE_URL`` if set, else the embedded server (started on demand)."""
    if settings.database_url:
        return settings.database_url
    return embedded.ensure_server(settings.home)


@asynccontextmanager
async def connect(dsn: str, *, autocommit: bool = True) -> AsyncIterator[Conn]:
    """A short-lived connection returning rows as dicts."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, row_factory=dict_row)
    try:
        yield conn
    finally:
        await conn.close()
