"""An import's completion is stamped when its publish ends.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import execute_file

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file("0014_completion_clock_up.sql")


def downgrade() -> None:
    execute_file("0014_completion_clock_down.sql")
