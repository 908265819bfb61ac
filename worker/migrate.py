"""``fullpass migrate``: alembic, driven programmatically.

The alembic scripts ship inside the ``migrations`` package, so an installed
worker migrates without a checkout or an ``alembic.ini``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations


def alembic_config(dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.attributes["dsn"] = dsn
    return cfg


def upgrade(dsn: str, revision: str = "head", *, embedding_dimension: int | None = None) -> None:
    """Apply the migrations, then store the worker's option rules for the insert check.

    ``conversation_chunks.embedding``, where fullpass creates it, gets the
    vector size of the configured embeddings model (``FULLPASS_EMBEDDINGS*``),
    or ``embedding_dimension`` when given: the worker refuses to start against
    a column of another size, so the two must agree from the first migration.
    With embeddings off (and no ``embedding_dimension``) the revisions keep
    their own default.
    """
    from worker.search import MAX_DIMENSION, configured_dimension

    dimension = configured_dimension() if embedding_dimension is None else embedding_dimension
    if dimension is not None and not 1 <= dimension <= MAX_DIMENSION:
        raise ValueError(f"embedding dimension {dimension} is not between 1 and {MAX_DIMENSION}")
    cfg = alembic_config(dsn)
    cfg.attributes["embedding_dimension"] = dimension
    command.upgrade(cfg, revision)
    sync_options_schema(dsn)


def sync_options_schema(dsn: str) -> None:
    """Store :func:`worker.options.options_schema` where the insert trigger reads it.

    Part of every ``fullpass migrate``, so a release that adds an option
    teaches the database about it without a schema revision.
    """
    import psycopg
    from psycopg.types.json import Jsonb

    from worker import queries
    from worker.options import options_schema

    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute(queries.OPTIONS_SCHEMA_TABLE).fetchone()
        if exists and exists[0] is not None:
            conn.execute(queries.STORE_OPTIONS_SCHEMA, {"schema": Jsonb(options_schema())})


def head() -> str:
    """The newest revision this release knows."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert revision is not None
    return revision


def downgrade(dsn: str, revision: str) -> None:
    command.downgrade(alembic_config(dsn), revision)


def revisions() -> list[str]:
    """fullpass's revisions, oldest first (the chain is linear)."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def current(dsn: str) -> str | None:
    """The revision the database is at (None before the first migration)."""
    import psycopg

    from worker import queries

    with psycopg.connect(dsn) as conn:
        exists = conn.execute(queries.ALEMBIC_TABLE).fetchone()
        if not exists or exists[0] is None:
            return None
        row = conn.execute(queries.ALEMBIC_REVISION).fetchone()
        return str(row[0]) if row else None
