"""The SQL contract: migrations, the insert trigger, operator functions, the stage list."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import USER_A, USER_B, query
from tests.helpers import import_row, insert_import, jobs_of, progress_row, stage_rows
from worker import migrate
from worker.stages import AFTER, STAGES, task_name

PATH_A = f"user-imports/{USER_A}/export.zip"


def test_sql_and_python_agree_on_the_stages(db_dsn: str) -> None:
    rows = query(db_dsn, "select stage, weight from public.fullpass_stages() order by position")
    assert tuple(r["stage"] for r in rows) == STAGES
    assert sum(r["weight"] for r in rows) == 100
    edges = query(db_dsn, "select stage, after from public.fullpass_stage_after()")
    assert {(r["stage"], r["after"]) for r in edges} == {
        (stage, after) for stage, afters in AFTER.items() for after in afters
    }
    assert set(AFTER) == set(STAGES)


def test_insert_defers_exactly_one_job_in_the_same_transaction(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        import_id = conn.execute(
            "insert into imports (user_id, storage_path) values (%s, %s) returning id",
            (USER_A, PATH_A),
        ).fetchone()[0]  # type: ignore[index]
        inside = conn.execute(
            "select count(*) from procrastinate_jobs where queueing_lock = %s", (str(import_id),)
        ).fetchone()[0]  # type: ignore[index]
        assert inside == 1
        conn.rollback()
    assert query(db_dsn, "select count(*) as n from procrastinate_jobs")[0]["n"] == 0

    import_id = insert_import(db_dsn, USER_A, PATH_A)
    jobs = jobs_of(db_dsn, import_id)
    assert len(jobs) == 1
    assert jobs[0]["task_name"] == task_name("download")
    assert jobs[0]["status"] == "todo"
    assert jobs[0]["args"] == {"import_id": str(import_id), "generation": 1}
    job = query(db_dsn, "select queue_name, queueing_lock from procrastinate_jobs")[0]
    assert job == {"queue_name": "imports", "queueing_lock": str(import_id)}
    assert set(stage_rows(db_dsn, import_id)) == set(STAGES)
    row = import_row(db_dsn, import_id)
    assert (row["status"], row["stage"], row["attempts"]) == ("pending", "download", 0)
    profile = query(
        db_dsn, "select full_pass_status from user_profiles where user_id = %s", (USER_A,)
    )
    assert profile == [{"full_pass_status": "pending"}]


def test_insert_cannot_forge_state(db_dsn: str) -> None:
    rows = query(
        db_dsn,
        "insert into imports (user_id, storage_path, status, stage, input_tokens)"
        " values (%s, %s, 'complete', 'finalize', 99) returning status, stage, input_tokens",
        (USER_A, PATH_A),
    )
    assert rows == [{"status": "pending", "stage": "download", "input_tokens": 0}]


def test_second_active_import_for_a_user_is_refused_clearly(db_dsn: str) -> None:
    first = insert_import(db_dsn, USER_A, PATH_A)
    with pytest.raises(psycopg.errors.UniqueViolation, match="already has a full pass in progress"):
        insert_import(db_dsn, USER_A, PATH_A)
    insert_import(db_dsn, USER_B, f"user-imports/{USER_B}/x.json")  # other users are unaffected
    query(db_dsn, "select public.cancel_import(%s)", (first,))
    insert_import(db_dsn, USER_A, PATH_A)  # allowed once the first one has ended


def test_progress_view_of_a_new_import(db_dsn: str) -> None:
    import_id = insert_import(db_dsn, USER_A, PATH_A)
    p = progress_row(db_dsn, import_id)
    assert p["status"] == "pending"
    assert (p["stage"], p["stage_index"], p["stage_count"]) == ("download", 1, len(STAGES))
    assert float(p["progress"]) == 0.0
    assert p["eta"] is None


def test_requeue_rejects_unknown_stage_and_import(db_dsn: str) -> None:
    import_id = insert_import(db_dsn, USER_A, PATH_A)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='unknown stage "nope"'):
        query(db_dsn, "select public.requeue_import(%s, 'nope')", (import_id,))
    with pytest.raises(psycopg.errors.NoDataFound):
        query(db_dsn, "select public.requeue_import(gen_random_uuid())")


def test_requeue_while_queued_replaces_the_queued_job(db_dsn: str) -> None:
    import_id = insert_import(db_dsn, USER_A, PATH_A)
    query(db_dsn, "select public.requeue_import(%s)", (import_id,))
    jobs = jobs_of(db_dsn, import_id)
    assert [j["status"] for j in jobs] == ["cancelled", "todo"]
    assert jobs[1]["args"]["generation"] == 2
    assert import_row(db_dsn, import_id)["generation"] == 2


def test_cancel_of_a_queued_import(db_dsn: str) -> None:
    import_id = insert_import(db_dsn, USER_A, PATH_A)
    assert query(db_dsn, "select public.cancel_import(%s) as c", (import_id,)) == [{"c": True}]
    assert [j["status"] for j in jobs_of(db_dsn, import_id)] == ["cancelled"]
    row = import_row(db_dsn, import_id)
    assert row["status"] == "cancelled"
    assert query(db_dsn, "select public.cancel_import(%s) as c", (import_id,)) == [{"c": False}]


def test_migrations_upgrade_downgrade_upgrade(empty_db_dsn: str) -> None:
    migrate.upgrade(empty_db_dsn)
    assert migrate.current(empty_db_dsn) == migrate.head()
    migrate.upgrade(empty_db_dsn)  # up to date: a no-op
    assert migrate.current(empty_db_dsn) == migrate.head()
    migrate.downgrade(empty_db_dsn, "base")
    assert migrate.current(empty_db_dsn) is None
    leftovers = query(
        empty_db_dsn,
        "select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = 'public' and relkind in ('r', 'v')"
        " and relname <> 'alembic_version'",
    )
    assert leftovers == []
    functions = query(
        empty_db_dsn,
        "select p.oid::regprocedure::text as fn from pg_proc p"
        " where p.pronamespace = 'public'::regnamespace"
        " and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass"
        " and d.objid = p.oid and d.deptype = 'e')",
    )
    assert functions == []  # pgvector's, where fullpass installed it, are the extension's
    migrate.upgrade(empty_db_dsn)
    assert migrate.current(empty_db_dsn) == migrate.head()
    insert_import(empty_db_dsn, USER_A, PATH_A)


OLD_APP_TABLES = """
create table public.conversation_chunks (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null,
    conversation_id text,
    content text,
    created_at timestamptz default now()
);
create table public.user_profiles (
    user_id uuid primary key,
    soul_md text,
    soulprint_text text,
    import_status text,
    created_at timestamptz default now()
);
insert into public.user_profiles (user_id, soul_md) values ('%s', 'v1 soul');
insert into public.conversation_chunks (user_id, conversation_id, content)
    values ('%s', 'c1', 'old chunk');
"""


def test_migrates_onto_the_apps_older_tables_and_back(empty_db_dsn: str) -> None:
    query(empty_db_dsn, OLD_APP_TABLES % (USER_A, USER_A))
    migrate.upgrade(empty_db_dsn)
    cols = {
        r["column_name"]
        for r in query(
            empty_db_dsn,
            "select column_name from information_schema.columns"
            " where table_name = 'conversation_chunks'",
        )
    }
    assert {"import_id", "chunk_tier", "content_hash", "is_recent", "total_chunks"} <= cols
    profile = query(empty_db_dsn, "select soul_md, full_pass_status from user_profiles")
    assert profile == [{"soul_md": "v1 soul", "full_pass_status": "pending"}]
    assert query(empty_db_dsn, "select chunk_tier from conversation_chunks") == [
        {"chunk_tier": "medium"}
    ]
    migrate.downgrade(empty_db_dsn, "base")
    # The app's tables and data survive; only fullpass's columns are gone.
    assert query(empty_db_dsn, "select soul_md from user_profiles") == [{"soul_md": "v1 soul"}]
    cols_after = {
        r["column_name"]
        for r in query(
            empty_db_dsn,
            "select column_name from information_schema.columns where table_name = 'user_profiles'",
        )
    }
    assert cols_after == {"user_id", "soul_md", "soulprint_text", "import_status", "created_at"}
    # Row-level security is off again, and fullpass's grants, policies and indexes are gone.
    tables = query(
        empty_db_dsn,
        "select relname, relrowsecurity, array(select pg_get_userbyid(a.grantee)"
        "  from aclexplode(coalesce(relacl, acldefault('r', relowner))) a"
        "  where a.grantee <> relowner) as grantees"
        " from pg_class where relname in ('conversation_chunks', 'user_profiles') order by relname",
    )
    assert [(t["relname"], t["relrowsecurity"], t["grantees"]) for t in tables] == [
        ("conversation_chunks", False, []),
        ("user_profiles", False, []),
    ]
    assert query(empty_db_dsn, "select policyname from pg_policies") == []
    indexes = query(
        empty_db_dsn,
        "select indexname from pg_indexes"
        " where tablename in ('conversation_chunks', 'user_profiles')",
    )
    assert {i["indexname"] for i in indexes} == {"conversation_chunks_pkey", "user_profiles_pkey"}
    migrate.upgrade(empty_db_dsn)
    assert migrate.current(empty_db_dsn) == migrate.head()


def test_staged_text_is_compressed_with_lz4_where_the_server_has_it(empty_db_dsn: str) -> None:
    migrate.upgrade(empty_db_dsn)
    lz4 = query(
        empty_db_dsn,
        "select 'lz4' = any(enumvals) as ok from pg_settings"
        " where name = 'default_toast_compression'",
    )[0]["ok"]
    column = (
        "select attcompression::text as method from pg_attribute"
        " where attrelid = 'public.import_chunks'::regclass and attname = 'content'"
    )
    assert query(empty_db_dsn, column)[0]["method"] == ("l" if lz4 else "")
    import_id = insert_import(empty_db_dsn, USER_A, PATH_A)
    text = " ".join(f"word{i}" for i in range(3000))  # ~26 kB: stored compressed
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        with conn.cursor().copy(
            "copy import_chunks (id, import_id, user_id, conversation_id, content,"
            " chunk_index, chunk_tier, content_hash) from stdin"
        ) as copy:
            copy.write_row(
                (
                    "0b0e2f4c-9f0c-4c1e-9a57-2f0b7b1c2d3e",
                    import_id,
                    USER_A,
                    "c1",
                    text,
                    0,
                    "medium",
                    "h",
                )
            )
        stored = conn.execute(
            "select pg_column_compression(content) as method, content = %s as same"
            " from import_chunks where import_id = %s",
            (text, import_id),
        ).fetchone()
    assert stored == (("lz4" if lz4 else "pglz"), True)
    migrate.downgrade(empty_db_dsn, "0016")
    assert query(empty_db_dsn, column)[0]["method"] == ""
