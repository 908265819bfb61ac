"""Alembic migrations of the fullpass schema (run with ``fullpass migrate``)."""
