"""Publishing leaves the staged chunks to be dropped after its commit.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0018_staged_rows_after_publish_up.sql", revision=revision)


def downgrade() -> None:
    execute_file(LEDGER)
    execute_file("0018_staged_rows_after_publish_down.sql")
