"""The fleet's shared budget of API calls: requests and input tokens per minute.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import execute_file

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file("0010_rate_budget_up.sql", revision=revision)


def downgrade() -> None:
    execute_file("0010_rate_budget_down.sql")
