"""What each stage costs and with which model; facts a re-import reuses.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import execute_file

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file("0011_costs_up.sql")


def downgrade() -> None:
    execute_file("0011_costs_down.sql")
