"""A stage becomes ready once, and is queued once.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import execute_file

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file("0013_queue_once_up.sql")


def downgrade() -> None:
    execute_file("0013_queue_once_down.sql")
