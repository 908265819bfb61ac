"""The completion callback's outbox: import_events, written by a trigger when an import ends.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0006_outbox_up.sql", revision=revision)


def downgrade() -> None:
    execute_file("0006_outbox_down.sql")
