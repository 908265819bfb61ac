"""Options checked at insert, a lease per claimed stage, whole spend, orphan repair.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from migrations.sqlfiles import LEDGER, execute_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_file(LEDGER)
    execute_file("0003_hardening_up.sql", revision=revision)


def downgrade() -> None:
    execute_file("0003_hardening_down.sql")
