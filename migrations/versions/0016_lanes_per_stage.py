"""A worker runs one lane of each stage of an import; the map step's lanes go first.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0016_lanes_per_stage_up.sql", revision=revision)


def downgrade() -> None:
    execute_file(LEDGER)
    execute_file("0016_lanes_per_stage_down.sql")
