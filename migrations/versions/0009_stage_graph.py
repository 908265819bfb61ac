"""The stages as a graph: embed beside the map step, finalize after both.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0009_stage_graph_up.sql", revision=revision)


def downgrade() -> None:
    execute_file("0009_stage_graph_down.sql")
