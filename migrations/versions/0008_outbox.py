"""The completion callback's outbox: import_events, written by a trigger when an import ends.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0008_outbox_up.sql", revision=revision)


def downgrade() -> None:
    execute_file("0008_outbox_down.sql")
