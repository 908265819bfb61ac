"""Staged chunks published with the pass, backfills from chunks, skipped stages.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0007_publish_up.sql", revision=revision)


def downgrade() -> None:
    execute_file(LEDGER)
    execute_file("0007_publish_down.sql")
