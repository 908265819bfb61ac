"""A fact count per checkpoint row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0004_fact_counts_up.sql", revision=revision)


def downgrade() -> None:
    execute_file("0004_fact_counts_down.sql")
