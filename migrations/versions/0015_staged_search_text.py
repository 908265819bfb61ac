"""A chunk's full-text entry is staged with it and copied at publish.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0015_staged_search_text_up.sql", revision=revision)


def downgrade() -> None:
    execute_file(LEDGER)
    execute_file("0015_staged_search_text_down.sql")
