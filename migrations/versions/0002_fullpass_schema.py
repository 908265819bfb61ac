"""fullpass tables, trigger, progress view, operator functions and RLS.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0002_fullpass_up.sql", revision=revision)


def downgrade() -> None:
    # The ledger first: a database migrated by an earlier version of it gets
    # the columns and functions the downgrade relies on.
    execute_file(LEDGER)
    execute_file("0002_fullpass_down.sql")
