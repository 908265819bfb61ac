"""Queue pickup: the job fetch commits without waiting for its WAL flush.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from migrations.sqlfiles import execute_file

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file("0010_pickup_up.sql")


def downgrade() -> None:
    execute_file("0010_pickup_down.sql")
