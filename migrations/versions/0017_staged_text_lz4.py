"""Staged chunk text is compressed with lz4 where the server has it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0017_staged_text_lz4_up.sql", revision=revision)


def downgrade() -> None:
    execute_file(LEDGER)
    execute_file("0017_staged_text_lz4_down.sql")
