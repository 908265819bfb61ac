"""Queue pickup: the job fetch commits without waiting for its WAL flush.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from migrations.sqlfiles import execute_file

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file("0012_pickup_up.sql")


def downgrade() -> None:
    execute_file("0012_pickup_down.sql")
