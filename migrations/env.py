"""Alembic environment: online migrations over one psycopg connection.

The DSN comes from the caller (``worker.migrate``), never from alembic.ini, so
the embedded server and ``DATABASE_URL`` resolve in one place. A
transaction-scoped advisory lock serialises concurrent ``fullpass migrate``
runs (several workers starting at once).

The configured embeddings model's vector size, also from the caller, is made
the transaction-local setting ``fullpass.embedding_dimension``: static SQL
cannot know it, and the revisions that create ``conversation_chunks.embedding``
read it there.
"""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool, text

MIGRATION_LOCK = 0x66756C6C  # "full"


def run_migrations_online() -> None:
    dsn: str = context.config.attributes["dsn"]
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn),
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=False)
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            dimension = context.config.attributes.get("embedding_dimension")
            if dimension is not None:
                connection.execute(
                    text("SELECT set_config('fullpass.embedding_dimension', :d, true)"),
                    {"d": str(int(dimension))},
                )
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("fullpass migrations run online only: use `fullpass migrate`")
run_migrations_online()
