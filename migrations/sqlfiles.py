"""Running the plain ``.sql`` files that hold the schema.

The SQL is executed through the raw psycopg connection without parameters, so
``%`` signs and several statements per file need no escaping.
"""

from __future__ import annotations

import re
from pathlib import Path

from alembic import op

SQL_DIR = Path(__file__).parent / "sql"

#: The ledger of what fullpass adds to the app's tables, and its recording
#: helpers; every revision that touches those tables runs it before its own SQL.
LEDGER = "fullpass_ledger.sql"


def execute_sql(sql: str) -> None:
    dbapi = op.get_bind().connection.dbapi_connection
    assert dbapi is not None
    cur = dbapi.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def execute_file(name: str, *, revision: str | None = None) -> None:
    """Run one SQL file; with ``revision``, the ledger's helpers record under that revision.

    The setting is cleared afterwards (all revisions share one transaction), so
    a later file that forgets to name its revision fails instead of recording
    its changes as an earlier revision's, which that revision's downgrade would
    then take back.
    """
    sql = (SQL_DIR / name).read_text(encoding="utf-8")
    if revision is None:
        execute_sql(sql)
        return
    if not re.fullmatch(r"[0-9A-Za-z_]+", revision):
        raise ValueError(f"not a revision id: {revision!r}")
    execute_sql(f"SELECT set_config('fullpass.revision', '{revision}', true)")
    execute_sql(sql)
    execute_sql("SELECT set_config('fullpass.revision', '', true)")
