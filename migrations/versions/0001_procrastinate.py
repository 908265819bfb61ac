"""procrastinate's queue schema, at the pinned procrastinate version (3.10).

A later procrastinate upgrade adds a revision that applies that release's own
migration files from ``procrastinate.schema.SchemaManager.get_migrations_path()``.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from procrastinate.schema import SchemaManager

from migrations.sqlfiles import execute_file, execute_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_sql(
        "DO $$ BEGIN IF to_regclass('public.procrastinate_jobs') IS NOT NULL THEN "
        "RAISE EXCEPTION 'procrastinate schema already present: this database has a queue "
        "fullpass did not create' USING ERRCODE = 'duplicate_table'; END IF; END $$;"
    )
    execute_sql(SchemaManager.get_schema())


def downgrade() -> None:
    execute_file("0001_procrastinate_down.sql")
