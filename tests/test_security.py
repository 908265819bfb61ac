"""Security, tested with the real roles: RLS, grants, security-definer functions, secrets.

Every SQL check runs as ``authenticated`` / ``anon`` / ``service_role`` the way
Supabase (PostgREST) does it: ``set local role …`` plus the JWT claims in
``request.jwt.claims``. The secret checks run a real worker whose stages fail
with exceptions quoting the API key and the service-role key, and then search
the whole database, the alert webhook and the captured logs for them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from jobs.context import StageContext, StageResult
from jobs.domain.facts import Facts
from jobs.registry import STAGE_FUNCTIONS
from tests.conftest import USER_A, USER_B, make_settings, query
from tests.helpers import insert_import, running_worker, submit, wait_status
from tests.webhooks import WebhookReceiver
from worker import migrate, storage
from worker.errors import BadInput
from worker.llm.base import ExtractionInput, LLMResult, ModelUnavailable, UnusableAnswer
from worker.llm.offline import OfflineProvider
from worker.logs import setup_logging
from worker.settings import Settings
from worker.stages import STAGES

Conn = psycopg.Connection[dict[str, Any]]

PATH_A = f"user-imports/{USER_A}/export.zip"
PATH_B = f"user-imports/{USER_B}/export.zip"

#: Every table and view a signed-in user may read (their own rows only).
USER_TABLES = (
    "imports",
    "import_stages",
    "chunk_facts",
    "chunk_saved_facts",
    "conversation_chunks",
    "user_profiles",
    "import_progress",
)
QUEUE_TABLES = (
    "procrastinate_jobs",
    "procrastinate_workers",
    "procrastinate_events",
    "procrastinate_periodic_defers",
    # The fleet's rate budget: a user who could write it could stall every import.
    "fullpass_rate_budget",
)
#: Calls of every function only the worker / an operator may run (one valid call each).
PRIVILEGED_CALLS = (
    "select public.requeue_import(%(id)s)",
    "select public.requeue_import(%(id)s, 'extract')",
    "select public.cancel_import(%(id)s)",
    "select public.fullpass_defer(%(id)s, 'download', 1)",
    "select public.fullpass_cancel_jobs(%(id)s)",
    "select public.fullpass_mirror_profile(%(user)s, 'complete', NULL)",
    "select public.fullpass_add_column('imports', 'x', 'text')",
    "select public.fullpass_grant('user_profiles', 'ALL', 'anon')",
    "select public.fullpass_undo('0002')",
    "select public.fullpass_lock_down_queue()",
    "select public.procrastinate_defer_jobs_v1(ARRAY[ROW('imports', 'fullpass.download', 0,"
    " NULL, NULL, '{}'::jsonb, NULL)::public.procrastinate_job_to_defer_v1])",
    "select public.procrastinate_cancel_job_v1(1, true, false)",
    "select * from public.fullpass_rate_draw('anthropic', 50, NULL, 100, 5)",
    "select public.fullpass_rate_observe('anthropic', 50, NULL, 5, 0, NULL, 0)",
    "select public.fullpass_rate_pause('anthropic', 3600)",
    "select public.procrastinate_fetch_job_v2(ARRAY['imports']::varchar[], NULL)",
    "select public.procrastinate_retry_job_v1(1, now(), NULL, NULL, NULL)",
)

# --------------------------------------------------------------------------- sessions


def claims(user: uuid.UUID | None, role: str = "authenticated") -> str:
    return json.dumps({"sub": str(user), "role": role} if user else {"role": role})


@contextlib.contextmanager
def session(
    dsn: str, role: str, user: uuid.UUID | None = None, *, legacy: bool = False
) -> Iterator[Conn]:
    """One transaction as ``role`` with the JWT claims Supabase sets (rolled back at the end)."""
    assert role in ("anon", "authenticated", "service_role")
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        if legacy and user is not None:  # PostgREST before v10: one setting per claim
            conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (str(user),))
        else:
            conn.execute("select set_config('request.jwt.claims', %s, true)", (claims(user, role),))
        try:
            yield conn
        finally:
            conn.rollback()


def denied(conn: Conn, statement: str | sql.Composed, params: Any = None) -> str:
    """Run ``statement`` in a savepoint; it must fail with ``permission denied`` (42501)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught, conn.transaction():
        conn.execute(statement, params)
    return str(caught.value)


def one_of_each(dsn: str) -> dict[uuid.UUID, uuid.UUID]:
    """An import with stages, facts, chunks and a profile for both users: {user: import_id}."""
    imports = {
        USER_A: insert_import(dsn, USER_A, PATH_A),
        USER_B: insert_import(dsn, USER_B, PATH_B),
    }
    for user, import_id in imports.items():
        chunk_id = uuid.uuid4()
        query(
            dsn,
            "insert into public.conversation_chunks (id, user_id, import_id, conversation_id,"
            " title, content, chunk_index, total_chunks, content_hash)"
            " values (%s, %s, %s, 'c1', 't', 'private words', 0, 1, 'h')",
            (chunk_id, user, import_id),
        )
        query(
            dsn,
            "insert into public.chunk_facts (import_id, chunk_id, user_id, content_hash)"
            " values (%s, %s, %s, 'h')",
            (import_id, chunk_id, user),
        )
        query(
            dsn,
            "insert into public.chunk_saved_facts (import_id, chunk_id, ordinal, user_id, kind,"
            " facts) values (%s, %s, 0, %s, 'memory', '{}')",
            (import_id, chunk_id, user),
        )
    return imports


def visible(conn: Conn, table: str) -> set[str]:
    """The user ids (or, for import_stages, import ids) of the rows ``conn`` can see."""
    column = "import_id" if table == "import_stages" else "user_id"
    rows = conn.execute(
        sql.SQL("select distinct {}::text as k from public.{}").format(
            sql.Identifier(column), sql.Identifier(table)
        )
    ).fetchall()
    return {r["k"] for r in rows}


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("legacy", [False, True], ids=["jwt-claims", "jwt-claim-sub"])
def test_authenticated_reads_only_their_own_rows(db_dsn: str, legacy: bool) -> None:
    imports = one_of_each(db_dsn)
    for me in (USER_A, USER_B):
        with session(db_dsn, "authenticated", me, legacy=legacy) as conn:
            for table in USER_TABLES:
                expected = str(imports[me]) if table == "import_stages" else str(me)
                assert visible(conn, table) == {expected}, table
            assert len(conn.execute("select * from public.import_stages").fetchall()) == len(STAGES)
            progress = conn.execute("select import_id, progress from import_progress").fetchall()
            assert [r["import_id"] for r in progress] == [imports[me]]
            other = imports[USER_B if me == USER_A else USER_A]
            assert conn.execute("select * from imports where id = %s", (other,)).fetchall() == []


def test_authenticated_without_a_user_sees_nothing(db_dsn: str) -> None:
    one_of_each(db_dsn)
    with session(db_dsn, "authenticated") as conn:
        for table in USER_TABLES:
            assert visible(conn, table) == set(), table


# --------------------------------------------------------------------------- inserting


def test_authenticated_insert_defers_the_job_through_the_trigger(db_dsn: str) -> None:
    with session(db_dsn, "authenticated", USER_A) as conn:
        row = conn.execute(
            "insert into public.imports (user_id, storage_path, options)"
            " values (%s, %s, '{\"concurrency\": 2}') returning id, status, stage",
            (USER_A, PATH_A),
        ).fetchone()
        assert row is not None and (row["status"], row["stage"]) == ("pending", "download")
        assert len(conn.execute("select * from import_stages").fetchall()) == len(STAGES)
        denied(conn, "select * from procrastinate_jobs")
        conn.commit()
    jobs = query(db_dsn, "select task_name, status, queueing_lock, args from procrastinate_jobs")
    assert jobs == [
        {
            "task_name": "fullpass.download",
            "status": "todo",
            "queueing_lock": str(row["id"]),
            "args": {"import_id": str(row["id"]), "generation": 1},
        }
    ]
    profile = query(
        db_dsn, "select full_pass_status from user_profiles where user_id = %s", (USER_A,)
    )
    assert profile == [{"full_pass_status": "pending"}]


def test_authenticated_cannot_insert_for_another_user(db_dsn: str) -> None:
    with session(db_dsn, "authenticated", USER_A) as conn:
        denied(
            conn, "insert into imports (user_id, storage_path) values (%s, %s)", (USER_B, PATH_B)
        )
        denied(
            conn, "insert into imports (user_id, storage_path) values (%s, %s)", (USER_B, PATH_A)
        )
    with session(db_dsn, "authenticated") as conn:  # signed in, but no user in the token
        denied(
            conn, "insert into imports (user_id, storage_path) values (%s, %s)", (USER_A, PATH_A)
        )


def test_insert_for_another_user_does_not_reveal_their_active_import(db_dsn: str) -> None:
    theirs = insert_import(db_dsn, USER_B, PATH_B)
    with session(db_dsn, "authenticated", USER_A) as conn:
        message = denied(
            conn, "insert into imports (user_id, storage_path) values (%s, %s)", (USER_B, PATH_B)
        )
    assert str(theirs) not in message
    with (
        session(db_dsn, "authenticated", USER_B) as conn,
        pytest.raises(psycopg.errors.UniqueViolation, match="already has a full pass"),
    ):
        conn.execute(
            "insert into imports (user_id, storage_path) values (%s, %s)", (USER_B, PATH_B)
        )


BAD_PATHS = {
    "dotdot": "user-imports/{a}/../{b}/export.zip",
    "dotdot-end": "user-imports/{a}/..",
    "dotdot-first": "../user-imports/{a}/export.zip",
    "dot": "user-imports/{a}/./export.zip",
    "dot-start": "./user-imports/{a}/export.zip",
    "dot-bucket": "./{a}/export.zip",
    "absolute": "/user-imports/{a}/export.zip",
    "absolute-etc": "/etc/passwd",
    "other-user": "user-imports/{b}/export.zip",
    "user-as-file": "user-imports/x/{a}",
    "user-prefix": "user-imports/{a}x/export.zip",
    "user-upper": "user-imports/{A}/export.zip",
    "no-bucket": "{a}/export.zip",
    "nested-bucket": "a/user-imports/{a}/export.zip",
    "backslash": "user-imports/{a}\\..\\{b}\\export.zip",
    "backslash-bucket": "user-imports\\{a}/export.zip",
    "empty-segment": "user-imports//{a}/export.zip",
    "empty-segment-file": "user-imports/{a}//export.zip",
    "trailing-slash": "user-imports/{a}/sub/",
    "newline": "user-imports/{a}/export.zip\n../{b}/x",
    "tab": "user-imports/{a}/exp\tort.zip",
    "escape": "user-imports/{a}/\x1b[2Jexport.zip",
    "del": "user-imports/{a}/export\x7f.zip",
    "c1-control": "user-imports/{a}/export\x85.zip",
    "bare-folder": "user-imports/{a}",
    "bare-folder-slash": "user-imports/{a}/",
    "empty": "",
    "url": "https://evil.example/user-imports/{a}/export.zip",
}


def test_storage_path_must_stay_in_the_users_folder(db_dsn: str) -> None:
    with session(db_dsn, "authenticated", USER_A) as conn:
        for case, template in BAD_PATHS.items():
            path = template.format(a=USER_A, A=str(USER_A).upper(), b=USER_B)
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(
                    "insert into imports (user_id, storage_path) values (%s, %s)", (USER_A, path)
                )
                pytest.fail(f"{case}: {path!r} was accepted")
            if case != "user-upper":  # the worker compares UUIDs: the same user's folder
                # the worker refuses every other one too, whoever inserted the row
                with pytest.raises(BadInput):
                    storage.validate_storage_path(path, str(USER_A))
        for name in ("export.zip", "sub/dir/export.zip", "export..v2.zip", ".hidden", "a b.json"):
            path = f"user-imports/{USER_A}/{name}"
            with conn.transaction(force_rollback=True):
                conn.execute(
                    "insert into imports (user_id, storage_path) values (%s, %s)", (USER_A, path)
                )
            assert storage.validate_storage_path(path, str(USER_A)) == (
                "user-imports",
                f"{USER_A}/{name}",
            )


#: The only columns of ``imports`` a user may give on insert.
USER_COLUMNS = ("user_id", "storage_path", "options", "source")
#: Columns the trigger and the worker own: a user may not even name them on insert.
SERVER_COLUMNS: dict[str, Any] = {
    "id": uuid.uuid4(),
    "status": "complete",
    "stage": "finalize",
    "attempts": 0,
    "error": "x",
    "input_tokens": 0,
    "output_tokens": 0,
    "generation": 2,
    "created_at": "2020-01-01",
    "started_at": "2020-01-01",
    "completed_at": "2020-01-01",
    "updated_at": "2020-01-01",
    "conversation_count": 1,
    "chunk_count": 1,
    "fact_count": 1,
    "spent_input_tokens": 0,
    "spent_output_tokens": 0,
    "repairs": 0,
    "embedding_tokens": 0,
    "spent_cost_usd": 0,
}


def test_a_user_may_start_a_backfill_of_their_own_chunks_only(db_dsn: str) -> None:
    insert = "insert into imports (user_id, storage_path, source) values (%s, %s, %s)"
    with session(db_dsn, "authenticated", USER_A) as conn:
        for user, path, source in (
            (USER_B, None, "chunks"),  # someone else's
            (USER_A, PATH_A, "chunks"),  # a backfill has no file
        ):
            with pytest.raises(psycopg.errors.DatabaseError), conn.transaction():
                conn.execute(insert, (user, path, source))
        with pytest.raises(psycopg.errors.DatabaseError), conn.transaction():
            conn.execute(insert, (USER_A, None, "export"))  # an export needs its file
        conn.execute(insert, (USER_A, None, "chunks"))
        conn.commit()
    (row,) = query(db_dsn, "select user_id, source, storage_path, status from imports")
    assert row == {"user_id": USER_A, "source": "chunks", "storage_path": None, "status": "pending"}


def test_authenticated_cannot_set_server_columns(db_dsn: str) -> None:
    statement = sql.SQL("insert into imports (user_id, storage_path, {}) values (%s, %s, %s)")
    with session(db_dsn, "authenticated", USER_A) as conn:
        for column, value in SERVER_COLUMNS.items():
            denied(conn, statement.format(sql.Identifier(column)), (USER_A, PATH_A, value))
    columns = query(
        db_dsn,
        "select column_name from information_schema.columns c"
        " where table_schema = 'public' and table_name = 'imports'",
    )
    # a new column must be classified: settable by users (then granted) or not (then listed)
    assert {c["column_name"] for c in columns} == {*SERVER_COLUMNS, *USER_COLUMNS}


# --------------------------------------------------------------------------- writing


def test_authenticated_cannot_change_or_delete_anything(db_dsn: str) -> None:
    imports = one_of_each(db_dsn)
    mine = imports[USER_A]
    with session(db_dsn, "authenticated", USER_A) as conn:
        denied(conn, "update imports set status = 'complete' where id = %s", (mine,))
        denied(conn, "update imports set storage_path = %s where id = %s", (PATH_B, mine))
        denied(conn, "delete from imports where id = %s", (mine,))
        denied(
            conn,
            "insert into imports (user_id, storage_path) values (%s, %s)"
            " on conflict (id) do update set status = 'complete'",
            (USER_A, PATH_A),
        )
        for table in USER_TABLES[:-1]:  # the view is not updatable anyway
            name, column = sql.Identifier(table), sql.Identifier(plain_column(db_dsn, table))
            denied(conn, sql.SQL("update public.{} set {} = {}").format(name, column, column))
            denied(conn, sql.SQL("delete from public.{}").format(name))
            denied(conn, sql.SQL("truncate public.{}").format(name))
            if table != "imports":
                denied(conn, sql.SQL("insert into public.{} default values").format(name))
        denied(conn, "select * from fullpass_schema_additions")
    row = query(db_dsn, "select status, storage_path from imports where id = %s", (mine,))
    assert row == [{"status": "pending", "storage_path": PATH_A}]


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_queue_tables_and_functions_are_closed(db_dsn: str, role: str) -> None:
    import_id = insert_import(db_dsn, USER_A, PATH_A)
    params = {"id": import_id, "user": USER_A}
    with session(db_dsn, role, USER_A if role == "authenticated" else None) as conn:
        for call in PRIVILEGED_CALLS:
            denied(conn, call, params)
        for table in QUEUE_TABLES:
            name = sql.Identifier(table)
            denied(conn, sql.SQL("select * from public.{}").format(name))
            denied(conn, sql.SQL("insert into public.{} default values").format(name))
            column = sql.Identifier(plain_column(db_dsn, table))
            denied(conn, sql.SQL("update public.{} set {} = {}").format(name, column, column))
            denied(conn, sql.SQL("delete from public.{}").format(name))
            denied(conn, sql.SQL("truncate public.{}").format(name))
        denied(conn, "select nextval('procrastinate_jobs_id_seq')")
    assert len(query(db_dsn, "select * from procrastinate_jobs")) == 1


def plain_column(dsn: str, table: str) -> str:
    """A column of ``table`` that may be assigned (not an identity or generated column)."""
    rows = query(
        dsn,
        "select column_name from information_schema.columns where table_schema = 'public'"
        " and table_name = %s and is_identity = 'NO' and is_generated = 'NEVER'"
        " order by ordinal_position limit 1",
        (table,),
    )
    return str(rows[0]["column_name"])


def test_no_function_is_executable_by_the_api_roles(db_dsn: str) -> None:
    """Apart from extension functions, anon/authenticated may call only the stage list,
    and signed-in users the search (row-level security keeps it to their rows)."""
    assert executable_functions(db_dsn) == api_functions(db_dsn)
    procrastinate = query(
        db_dsn, "select count(*) as n from pg_proc where proname like 'procrastinate%%'"
    )
    assert procrastinate[0]["n"] > 10  # the check above did cover procrastinate's API


def api_functions(dsn: str) -> set[tuple[str, str]]:
    """What the API roles may call: the stage list, and search_chunks for signed-in users.

    search_chunks takes ``query_embedding vector``, or ``real[]`` without pgvector.
    """
    search = query(dsn, "select 'public.search_chunks'::regproc::regprocedure::text as fn")
    return {
        ("anon", "fullpass_stages()"),
        ("authenticated", "fullpass_stages()"),
        ("authenticated", search[0]["fn"]),
    }


def executable_functions(dsn: str) -> set[tuple[str, str]]:
    rows = query(
        dsn,
        """
        select r.rolname, p.oid::regprocedure::text as fn
          from pg_proc p
          join pg_namespace n on n.oid = p.pronamespace
         cross join (values ('anon'), ('authenticated')) as r (rolname)
         where n.nspname = 'public'
           and has_function_privilege(r.rolname, p.oid, 'EXECUTE')
           and not exists (select 1 from pg_depend d
                            where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                              and d.deptype = 'e')
        """,
    )
    return {(r["rolname"], r["fn"]) for r in rows}


def test_anon_gets_nothing(db_dsn: str) -> None:
    one_of_each(db_dsn)
    with session(db_dsn, "anon") as conn:
        for table in (*USER_TABLES, "fullpass_schema_additions"):
            denied(conn, sql.SQL("select * from public.{}").format(sql.Identifier(table)))
        denied(
            conn, "insert into imports (user_id, storage_path) values (%s, %s)", (USER_A, PATH_A)
        )
    # not even with a forged user claim
    with session(db_dsn, "anon", USER_A) as conn:
        for table in USER_TABLES:
            denied(conn, sql.SQL("select * from public.{}").format(sql.Identifier(table)))
        denied(
            conn, "insert into imports (user_id, storage_path) values (%s, %s)", (USER_A, PATH_A)
        )


# --------------------------------------------------------------------------- definer functions


def test_security_definer_functions_pin_a_safe_search_path(db_dsn: str) -> None:
    rows = query(
        db_dsn,
        """
        select p.proname, p.proconfig
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'public' and p.prosecdef
        """,
    )
    definers = {r["proname"]: r["proconfig"] or [] for r in rows}
    assert {"requeue_import", "cancel_import", "fullpass_defer", "fullpass_cancel_jobs"} <= set(
        definers
    )
    for name, config in definers.items():
        paths = [c.removeprefix("search_path=") for c in config if c.startswith("search_path=")]
        assert len(paths) == 1, f"{name} does not pin search_path"
        schemas = [s.strip().strip('"') for s in paths[0].split(",")]
        assert schemas[0] == "pg_catalog", name
        assert "$user" not in schemas, name
        # pg_temp must be named, and last: otherwise it is searched *first* for tables
        assert schemas[-1] == "pg_temp", f"{name}: search_path {paths[0]!r}"


def test_a_temp_table_cannot_hijack_the_definer_trigger(db_dsn: str) -> None:
    """A user's temporary ``procrastinate_jobs`` (with a trigger) must not capture the job.

    With ``pg_temp`` missing from a security-definer function's ``search_path``
    it is searched first for table names: procrastinate's unqualified
    ``INSERT INTO procrastinate_jobs`` would then write into the user's table
    and fire the user's trigger with the definer's (owner's) privileges.
    """
    with session(db_dsn, "authenticated", USER_A) as conn:
        conn.execute(
            "create temp table procrastinate_jobs (id bigserial, queue_name text,"
            " task_name text, priority int, lock text, queueing_lock text, args jsonb,"
            " scheduled_at timestamptz)"
        )
        conn.execute(
            "create function pg_temp.escalate() returns trigger language plpgsql as $$"
            " begin insert into public.fullpass_schema_additions values ('owned', current_user);"
            " return new; end $$"
        )
        conn.execute(
            "create trigger escalate before insert on pg_temp.procrastinate_jobs"
            " for each row execute function pg_temp.escalate()"
        )
        row = conn.execute(
            "insert into imports (user_id, storage_path) values (%s, %s) returning id",
            (USER_A, PATH_A),
        ).fetchone()
        assert row is not None
        captured = conn.execute("select count(*) as n from pg_temp.procrastinate_jobs").fetchone()
        assert captured == {"n": 0}
        conn.commit()
    assert query(db_dsn, "select * from fullpass_schema_additions where table_name = 'owned'") == []
    jobs = query(db_dsn, "select queueing_lock from procrastinate_jobs")
    assert jobs == [{"queueing_lock": str(row["id"])}]


def test_service_role_can_requeue_and_cancel(db_dsn: str) -> None:
    import_id = insert_import(db_dsn, USER_A, PATH_A)
    with session(db_dsn, "service_role") as conn:
        cancelled = conn.execute("select public.cancel_import(%s) as ok", (import_id,)).fetchone()
        assert cancelled == {"ok": True}
        job = conn.execute("select public.requeue_import(%s) as job", (import_id,)).fetchone()
        assert job is not None and job["job"] is not None
        conn.commit()
    row = query(db_dsn, "select status, generation from imports where id = %s", (import_id,))
    assert row == [{"status": "pending", "generation": 3}]


def test_service_role_can_draw_from_the_rate_budget(db_dsn: str) -> None:
    """A worker connecting as service_role runs the budget's three statements."""
    with session(db_dsn, "service_role") as conn:
        draw = "select * from public.fullpass_rate_draw('anthropic', 60, 1000, 50, 5)"
        assert conn.execute(draw).fetchone() == {"wait_seconds": 0, "paused_seconds": 0}
        conn.execute("select public.fullpass_rate_observe('anthropic', 60, 1000, 5, 3, 10, 0)")
        conn.execute("select public.fullpass_rate_pause('anthropic', 1)")
        row = conn.execute("select requests, input_tokens, pauses from fullpass_rate_budget")
        assert row.fetchone() == {"requests": 3, "input_tokens": 10, "pauses": 1}


def test_supabase_default_privileges_do_not_open_anything(empty_db_dsn: str) -> None:
    """Supabase grants ALL on new objects in ``public`` to anon/authenticated by default."""
    for kind in ("tables", "sequences", "functions"):
        query(
            empty_db_dsn,
            f"alter default privileges in schema public grant all on {kind}"
            " to anon, authenticated, service_role",
        )
    migrate.upgrade(empty_db_dsn)
    rows = query(
        empty_db_dsn,
        """
        select r.rolname, c.relname, p.priv
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         cross join (values ('anon'), ('authenticated')) as r (rolname)
         cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                 'REFERENCES', 'TRIGGER']) as p (priv)
         where n.nspname = 'public' and c.relkind in ('r', 'v', 'm', 'p', 'S')
           and has_table_privilege(r.rolname, c.oid, p.priv)
        """,
    )
    granted = {(r["rolname"], r["relname"], r["priv"]) for r in rows}
    assert granted == {("authenticated", t, "SELECT") for t in USER_TABLES}
    columns = query(
        empty_db_dsn,
        "select column_name from information_schema.columns c"
        " where table_schema = 'public' and table_name = 'imports'"
        " and has_column_privilege('authenticated', 'public.imports', c.column_name, 'INSERT')",
    )
    assert {r["column_name"] for r in columns} == set(USER_COLUMNS)
    assert executable_functions(empty_db_dsn) == api_functions(empty_db_dsn)


# --------------------------------------------------------------------------- secrets

API_KEY = "sk-ant-api03-SECRETKEY0123456789abcdefABCDEF-_xyzXYZ0123456789AA"
JWT_PAYLOAD = "eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UiLCJTRUNSRVQiOjF9"
JWT_SIGNATURE = "SECRETSIG_q1w2e3r4t5y6u7i8o9p0aAsSdDfFgGhHjJkKlL"
SERVICE_KEY = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{JWT_PAYLOAD}.{JWT_SIGNATURE}"
#: A secret leaks if any of these shows up (whole, or its distinctive parts).
SECRET_PARTS = (API_KEY, "SECRETKEY", SERVICE_KEY, JWT_PAYLOAD, JWT_SIGNATURE, "SECRETSIG")


def leaked(text: str) -> list[str]:
    return [part for part in SECRET_PARTS if part in text]


def secret_settings(dsn: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ANTHROPIC_API_KEY": API_KEY,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        "FULLPASS_LLM": "offline",
        "FULLPASS_MAX_ATTEMPTS": 2,
        "FULLPASS_LOG_FORMAT": "json",
        "FULLPASS_LOG_LEVEL": "DEBUG",
    }
    values.update(overrides)
    return make_settings(dsn, tmp_path, **values)


def database_text(dsn: str) -> str:
    """Every row of every table in ``public`` (fullpass's and procrastinate's), as text."""
    tables = query(
        dsn,
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = 'public' and c.relkind = 'r'",
    )
    assert {"imports", "procrastinate_jobs", "procrastinate_events"} <= {
        t["relname"] for t in tables
    }
    parts: list[str] = []
    with psycopg.connect(dsn) as conn:
        for t in tables:
            statement = sql.SQL("select t::text from public.{} t")
            rows = conn.execute(statement.format(sql.Identifier(t["relname"]))).fetchall()
            parts.extend(str(r[0]) for r in rows)
    return "\n".join(parts)


@contextlib.contextmanager
def captured_logs(settings: Settings, caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """The worker's real logging (JSON lines into a buffer), with caplog seeing every record first.

    caplog's handler goes *before* the worker's own handler, so it sees the
    records as they were logged, not after the worker's handler touched them.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    stream = io.StringIO()
    setup_logging(settings, stream=stream)
    root.handlers.insert(0, caplog.handler)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name in logging.root.manager.loggerDict:
            logging.getLogger(name).setLevel(saved_levels.get(name, logging.NOTSET))


def assert_logs_clean(stream: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    lines = stream.getvalue().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # JSON lines, one per record
    assert leaked(stream.getvalue()) == []
    assert caplog.records
    assert leaked(caplog.text) == []
    for record in caplog.records:
        assert leaked(record.getMessage()) == [], record.getMessage()
        assert leaked(record.exc_text or "") == []


def assert_clean_failure(dsn: str, import_id: uuid.UUID, stage: str) -> dict[str, Any]:
    row = query(dsn, "select status, stage, error from imports where id = %s", (import_id,))[0]
    assert (row["status"], row["stage"]) == ("failed", stage)
    assert row["error"] and leaked(row["error"]) == []
    failed = query(
        dsn,
        "select error from import_stages where import_id = %s and stage = %s",
        (import_id, stage),
    )[0]
    assert failed["error"] and leaked(failed["error"]) == []
    profile = query(
        dsn,
        "select full_pass_status, full_pass_error from user_profiles"
        " where user_id = (select user_id from imports where id = %s)",
        (import_id,),
    )[0]
    assert profile["full_pass_status"] == "failed"
    assert profile["full_pass_error"] and leaked(profile["full_pass_error"]) == []
    return row


async def test_secrets_in_stage_exceptions_are_never_stored_or_logged(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Model answers, the MEMORY call and a whole stage fail with messages quoting the keys."""
    quoted = (
        f"key={API_KEY} headers={{'x-api-key': '{API_KEY}', 'authorization': 'Bearer"
        f" {SERVICE_KEY}'}} url=https://x.supabase.co/storage/v1/object?apikey={SERVICE_KEY}"
        f" bare {SERVICE_KEY}"
    )

    async def bad_extraction(self: OfflineProvider, item: ExtractionInput) -> LLMResult[Facts]:
        raise UnusableAnswer(f"unusable answer for {item.chunk_id}: {quoted}")

    async def bad_memory(self: OfflineProvider, facts: Facts) -> LLMResult[str]:
        raise ModelUnavailable(f"memory call failed: {quoted}")

    async def boom(ctx: StageContext) -> StageResult:
        try:
            raise ValueError(f"inner cause with {API_KEY} and {SERVICE_KEY}")
        except ValueError as inner:
            raise RuntimeError(f"boom {quoted}") from inner

    monkeypatch.setattr(OfflineProvider, "extract_facts", bad_extraction)
    monkeypatch.setattr(OfflineProvider, "write_memory", bad_memory)
    monkeypatch.setitem(STAGE_FUNCTIONS, "regenerate", boom)

    with WebhookReceiver() as alerts:
        settings = secret_settings(
            db_dsn, tmp_path, FULLPASS_ALERT_WEBHOOK=alerts.url, FULLPASS_MAX_ATTEMPTS=1
        )
        with captured_logs(settings, caplog) as stream:
            import_id = submit(settings, USER_A)
            async with running_worker(settings) as worker:
                await wait_status(db_dsn, import_id, ("failed",), timeout=30, worker=worker)

    row = assert_clean_failure(db_dsn, import_id, "regenerate")
    assert "boom" in row["error"] and "[REDACTED]" in row["error"]
    facts = query(
        db_dsn,
        "select error from chunk_facts where import_id = %s and error is not null",
        (import_id,),
    )
    assert facts and all("[REDACTED]" in f["error"] for f in facts)
    memory = query(
        db_dsn,
        "select output->>'error' as e from import_stages where import_id = %s and stage = 'memory'",
        (import_id,),
    )
    assert memory[0]["e"] and "[REDACTED]" in memory[0]["e"]
    assert leaked(database_text(db_dsn)) == []
    assert alerts.received and leaked(json.dumps(alerts.received)) == []
    assert "stage failed" in stream.getvalue()
    assert_logs_clean(stream, caplog)


class EchoingStorage:
    """A storage server that refuses every request, quoting the credentials it was sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("authorization", "")
                key = self.headers.get("apikey", "")
                outer.seen.append(auth)
                status = 503 if str(USER_B) in self.path else 401
                body = json.dumps(
                    {
                        "statusCode": str(status),
                        "error": "Unauthorized",
                        "message": auth,
                        "key": key,
                    }
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("WWW-Authenticate", f'Bearer error="invalid_token" token="{key}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EchoingStorage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_storage_echoing_the_service_key_leaks_nothing(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """401 (refused key) and 503 (retried, then transient) responses that echo the key."""
    monkeypatch.setattr(storage, "RETRY_BASE_SECONDS", 0.0)
    monkeypatch.setattr(storage, "ATTEMPTS", 2)
    with EchoingStorage() as server:
        settings = secret_settings(db_dsn, tmp_path, SUPABASE_URL=server.url)
        with captured_logs(settings, caplog) as stream:
            refused = insert_import(db_dsn, USER_A, PATH_A)
            unavailable = insert_import(db_dsn, USER_B, PATH_B)
            async with running_worker(settings) as worker:
                for import_id in (refused, unavailable):
                    await wait_status(db_dsn, import_id, ("failed",), timeout=30, worker=worker)
    assert f"Bearer {SERVICE_KEY}" in server.seen  # the key really was in play
    assert "HTTP 401" in assert_clean_failure(db_dsn, refused, "download")["error"]
    assert "HTTP 503" in assert_clean_failure(db_dsn, unavailable, "download")["error"]
    assert leaked(database_text(db_dsn)) == []
    assert "retrying" in stream.getvalue()
    assert_logs_clean(stream, caplog)
