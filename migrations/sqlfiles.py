"""Running the plain ``.sql`` files that hold the schema.

The SQL is executed through the raw psycopg connection without parameters, so
``%`` signs and several statements per file need no escaping.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

SQL_DIR = Path(__file__).parent / "sql"


def execute_sql(sql: str) -> None:
    dbapi = op.get_bind().connection.dbapi_connection
    assert dbapi is not None
    cur = dbapi.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def execute_file(name: str) -> None:
    execute_sql((SQL_DIR / name).read_text(encoding="utf-8"))
