"""Search: the embedding column at the configured size, full text, HNSW, search_chunks().

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0005_search_up.sql", revision=revision)


def downgrade() -> None:
    execute_file(LEDGER)
    execute_file("0005_search_down.sql")
