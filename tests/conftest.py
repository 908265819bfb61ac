"""Shared fixtures: a real PostgreSQL for every test, a settings object, a worker.

The server is ``TEST_DATABASE_URL`` / ``DATABASE_URL`` when set (CI runs the
suite once against the system PostgreSQL 15 this way), else the embedded
PostgreSQL under ``.test-home/`` (started once, reused across runs). The
schema is migrated once into a template database named after a hash of the
migrations; each test gets its own database cloned from it (~50 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker import migrate
from worker.llm.offline import OfflineProvider
from worker.settings import Settings

pytest_plugins = ["tests.fakes.plugin"]

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS = REPO / "migrations"
TEST_HOME = Path(os.environ.get("FULLPASS_TEST_HOME", REPO / ".test-home"))
USER_A = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
USER_B = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")


def _server_dsn() -> str:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return url
    if os.environ.get("FULLPASS_TEST_DOCKER"):
        return _container_dsn()
    from worker import embedded

    return embedded.ensure_server(TEST_HOME)


def _container_dsn() -> str:
    """PostgreSQL 17 with pgvector in Docker (``FULLPASS_TEST_DOCKER=1``, needs an engine)."""
    import atexit

    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer("pgvector/pgvector:pg17", driver=None)
    container.start()
    atexit.register(container.stop)
    url: str = container.get_connection_url()
    return url


def _with_db(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def _schema_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.rglob("*")):
        if path.suffix in (".py", ".sql") and "__pycache__" not in path.parts:
            digest.update(path.read_bytes())
    import procrastinate

    from worker.options import options_schema
    from worker.search import configured_dimension

    digest.update(procrastinate.__version__.encode())
    # The embedding column is created at the configured model's size.
    digest.update(str(configured_dimension()).encode())
    # Migrating stores the options' schema, which the insert trigger checks.
    digest.update(json.dumps(options_schema(), sort_keys=True).encode())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def server_dsn() -> str:
    return _server_dsn()


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> str:
    """A migrated template database (built once per schema version)."""
    name = f"fullpass_tpl_{_schema_hash()}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            building = name + "_build"
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(building))
            )
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(building)))
            migrate.upgrade(_with_db(server_dsn, building))
            conn.execute(
                sql.SQL("alter database {} rename to {}").format(
                    sql.Identifier(building), sql.Identifier(name)
                )
            )
    return name


@contextlib.contextmanager
def fresh_database(server_dsn: str, template: str | None) -> Iterator[str]:
    name = f"fullpass_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        if template:
            conn.execute(
                sql.SQL("create database {} template {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield _with_db(server_dsn, name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture
def db_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with fresh_database(server_dsn, template_db) as dsn:
        yield dsn


@pytest.fixture
def empty_db_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    with fresh_database(server_dsn, None) as dsn:
        yield dsn


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> Settings:
    return make_settings(db_dsn, tmp_path)


def make_settings(dsn: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": dsn,
        "FULLPASS_HOME": str(tmp_path / "home"),
        "FULLPASS_STORAGE_DIR": str(tmp_path / "storage"),
        "FULLPASS_LLM": "offline",
        "FULLPASS_RETRY_BASE_SECONDS": 0,
        "FULLPASS_MAX_ATTEMPTS": 3,
        "FULLPASS_HEARTBEAT_SECONDS": 0.5,
        "FULLPASS_STALLED_SECONDS": 3,
        "ANTHROPIC_API_KEY": None,
        "SUPABASE_URL": None,
        "SUPABASE_SERVICE_ROLE_KEY": None,
        "FULLPASS_ALERT_WEBHOOK": None,
        "FULLPASS_CALLBACK_URL": None,
        "FULLPASS_CALLBACK_SECRET": None,
        # The test exports are small: build their memory anyway (tests of the
        # small-export rule set it themselves).
        "FULLPASS_MIN_CONVERSATIONS": 0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    from worker.service import make_pool

    p = make_pool(db_dsn, max_size=8)
    await p.open(wait=True)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def offline() -> OfflineProvider:
    return OfflineProvider()


def query(dsn: str, statement: str, params: Any = None) -> list[dict[str, Any]]:
    """Run one statement synchronously and return its rows (helper for assertions)."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def stores_embeddings(dsn: str) -> bool:
    """Whether chunks carry an embedding column here (pgvector installed at migrate)."""
    return bool(
        query(
            dsn,
            "select 1 from pg_attribute where attrelid = 'public.import_chunks'::regclass"
            " and attname = 'embedding' and not attisdropped",
        )
    )


async def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
