"""fullpass on a Supabase-shaped database: up, one import, RLS, down, and the app as it was.

The database is set up the way Supabase's own init scripts and migrations
(supabase/postgres: ``migrations/db/init-scripts``, ``migrations/db/migrations``)
set one up: the API roles, ``authenticator``, a non-superuser owner playing
``postgres`` (owner of the database and of ``public``, member of the API roles,
BYPASSRLS), default privileges granting ALL on everything new in ``public`` to
``anon``, ``authenticated`` and ``service_role``, the ``auth`` schema with
``auth.uid()``, and pgvector in ``extensions`` where the server has it. On it,
the app's own ``user_profiles`` and ``conversation_chunks`` with their own RLS
policies, trigger and indexes, some of them under the names fullpass's first
schema used, and (with pgvector) the app's ``embedding vector(1024)``: Cohere
embed-english-v3 on Bedrock, which the worker is configured for too (on the
fake Bedrock). The owner runs the migrations and the worker, as on Supabase.

``supabase_admin`` is a plain role here (owner of ``auth`` and ``extensions``,
target of default privileges): the test's own superuser does the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import USER_A, USER_B, fresh_database, make_settings, query
from tests.fakes.fake_bedrock import FakeBedrockServer
from tests.helpers import running_worker, submit, wait_status
from tests.test_security import denied, session, visible
from worker import migrate
from worker.cli import main
from worker.settings import get_settings

APP_TABLES = ("conversation_chunks", "user_profiles")
API_ROLES = ("anon", "authenticated", "service_role")


@dataclass(frozen=True)
class SupabaseDb:
    admin: str  #: the test's superuser
    owner: str  #: the role playing ``postgres``: runs the migrations and the worker
    authenticator: str  #: what PostgREST connects as before ``set local role``
    owner_role: str


def _as(dsn: str, user: str, dbname: str | None = None) -> str:
    params = conninfo_to_dict(dsn)
    params["user"] = user
    params.pop("password", None)
    if dbname is not None:
        params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


CLUSTER_ROLES = """
DO $$
DECLARE
    r text;
BEGIN
    -- 00000000000000-initial-schema.sql (the API roles as fullpass's own
    -- stand-ins create them where they are missing)
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
    ALTER ROLE service_role BYPASSRLS;
    BEGIN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    BEGIN
        CREATE ROLE supabase_admin NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT pg_has_role('authenticator', r, 'MEMBER') THEN
            EXECUTE format('GRANT %I TO authenticator', r);
        END IF;
    END LOOP;
END
$$;
"""

#: Run by the superuser in the new database; {owner} plays ``postgres``.
SUPABASE_DATABASE = """
ALTER SCHEMA public OWNER TO {owner};
-- 00000000000000-initial-schema.sql
CREATE SCHEMA extensions AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA public TO {owner}, anon, authenticated, service_role;
GRANT USAGE ON SCHEMA extensions TO {owner}, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
    GRANT ALL ON TABLES TO {owner}, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO {owner}, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
    GRANT ALL ON SEQUENCES TO {owner}, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON TABLES TO {owner}, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO {owner}, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON SEQUENCES TO {owner}, anon, authenticated, service_role;
-- 00000000000001-auth-schema.sql, with GoTrue's later auth.uid() (both claim styles)
CREATE SCHEMA auth AUTHORIZATION supabase_admin;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;
ALTER FUNCTION auth.uid() OWNER TO supabase_admin;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
-- 10000000000000_demote-postgres.sql, 20211115181400_update-auth-permissions.sql
GRANT ALL ON SCHEMA auth TO {owner};
GRANT ALL ON SCHEMA extensions TO {owner};
"""

#: The app's own tables, created by the owner as the app's migrations would.
APP_SCHEMA = """
CREATE TABLE public.user_profiles (
    user_id uuid PRIMARY KEY,
    soul_md text,
    identity_md text,
    user_md text,
    agents_md text,
    tools_md text,
    soulprint_text text,
    import_status text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.user_profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_profiles_select_own ON public.user_profiles
    FOR SELECT TO authenticated USING (auth.uid() = user_id);
CREATE POLICY user_profiles_update_own ON public.user_profiles
    FOR UPDATE TO authenticated USING (auth.uid() = user_id) WITH CHECK (auth.uid() = user_id);
CREATE FUNCTION public.set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER user_profiles_set_updated_at BEFORE UPDATE ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE INDEX user_profiles_user_id_idx ON public.user_profiles (user_id, import_status);
-- A public status badge: anon reads two columns, nothing else.
REVOKE ALL ON public.user_profiles FROM anon;
GRANT SELECT (user_id, import_status) ON public.user_profiles TO anon;
CREATE POLICY user_profiles_status_public ON public.user_profiles FOR SELECT TO anon USING (true);

CREATE TABLE public.conversation_chunks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid,
    conversation_id text,
    title text,
    content text,
    chunk_tier text,
    created_at timestamptz DEFAULT now()
    {embedding}
);
ALTER TABLE public.conversation_chunks ENABLE ROW LEVEL SECURITY;
CREATE POLICY conversation_chunks_select_own ON public.conversation_chunks
    FOR SELECT TO authenticated USING (auth.uid() = user_id);
CREATE INDEX conversation_chunks_user_idx ON public.conversation_chunks (user_id, created_at DESC);
CREATE INDEX conversation_chunks_import_chunk_key ON public.conversation_chunks (conversation_id);
-- Signed-in users read their chunks, not the embeddings.
REVOKE ALL ON public.conversation_chunks FROM authenticated;
GRANT SELECT (id, user_id, conversation_id, title, content, chunk_tier, created_at)
    ON public.conversation_chunks TO authenticated;
"""

APP_ROWS = """
INSERT INTO public.user_profiles (user_id, soul_md, import_status)
VALUES ('{a}', 'v1 soul of a', 'done'), ('{b}', 'v1 soul of b', 'done');
INSERT INTO public.conversation_chunks (user_id, conversation_id, title, content, chunk_tier)
VALUES ('{a}', 'app-1', 'mine', 'written by the app', 'medium'),
       ('{b}', 'app-2', 'theirs', 'written by the app', 'medium');
"""


@pytest.fixture(scope="module")
def cluster_roles(server_dsn: str) -> None:
    query(server_dsn, CLUSTER_ROLES)


@pytest.fixture
def supabase_db(server_dsn: str, cluster_roles: None) -> Iterator[SupabaseDb]:
    """A fresh Supabase-shaped database with the app's tables and rows, owned by a new role."""
    owner = f"fullpass_owner_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(owner)
    # 10000000000000_demote-postgres.sql, 20230201083204_grant_auth_roles_to_postgres.sql
    query(
        server_dsn,
        sql.SQL(
            "CREATE ROLE {} LOGIN NOSUPERUSER CREATEDB CREATEROLE BYPASSRLS;"
            " GRANT anon, authenticated, service_role TO {};"
            ' ALTER ROLE {} SET search_path TO "$user", public, extensions'
        )
        .format(role, role, role)
        .as_string(None),
    )
    try:
        with fresh_database(server_dsn, None) as admin:
            dbname = conninfo_to_dict(admin)["dbname"]
            query(
                admin,
                sql.SQL("ALTER DATABASE {} OWNER TO {}")
                .format(sql.Identifier(str(dbname)), role)
                .as_string(None),
            )
            query(admin, sql.SQL(SUPABASE_DATABASE).format(owner=role).as_string(None))
            embedding = ""
            if query(admin, "select 1 from pg_available_extensions where name = 'vector'"):
                query(admin, "CREATE EXTENSION vector WITH SCHEMA extensions")
                embedding = ", embedding extensions.vector(1024)"
            owner_dsn = _as(admin, owner)
            query(owner_dsn, APP_SCHEMA.replace("{embedding}", embedding))
            query(owner_dsn, APP_ROWS.format(a=USER_A, b=USER_B))
            yield SupabaseDb(
                admin=admin,
                owner=owner_dsn,
                authenticator=_as(admin, "authenticator"),
                owner_role=owner,
            )
    finally:
        query(server_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(role).as_string(None))


# --------------------------------------------------------------------------- snapshot

#: Everything of the app's that fullpass may touch, one query per aspect; every
#: row is a tuple, every aspect compared as a set. ``alembic_version`` is left
#: out (alembic keeps it, empty, after the last downgrade).
SNAPSHOT: dict[str, str] = {
    "relations": """
        select n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner),
               c.relrowsecurity, c.relforcerowsecurity
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname in ('public', 'auth', 'extensions') and c.relkind <> 't'
           and c.relname not in ('alembic_version', 'alembic_version_pkc')
           and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass
                            and d.objid = c.oid and d.deptype = 'e')
    """,
    "columns": """
        select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
          from pg_attribute a
          join pg_class c on c.oid = a.attrelid
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
           and c.relname <> 'alembic_version' and a.attnum > 0 and not a.attisdropped
    """,
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          from pg_constraint
         where connamespace = 'public'::regnamespace
           and conrelid::regclass::text <> 'alembic_version'
    """,
    "indexes": """
        select indrelid::regclass::text, indexrelid::regclass::text, pg_get_indexdef(indexrelid)
          from pg_index i join pg_class c on c.oid = i.indrelid
         where c.relnamespace = 'public'::regnamespace and c.relname <> 'alembic_version'
    """,
    "policies": """
        select tablename, policyname, permissive, roles::text, cmd, qual, with_check
          from pg_policies where schemaname = 'public'
    """,
    "triggers": """
        select tgrelid::regclass::text, tgname, pg_get_triggerdef(t.oid), tgenabled
          from pg_trigger t join pg_class c on c.oid = t.tgrelid
         where c.relnamespace = 'public'::regnamespace and not t.tgisinternal
    """,
    "table_privileges": """
        select c.relname, pg_get_userbyid(a.grantor),
               case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
               a.privilege_type, a.is_grantable
          from pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
         where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v', 'm', 'p', 'S')
           and c.relname <> 'alembic_version'
    """,
    "column_privileges": """
        select c.relname, att.attname, pg_get_userbyid(a.grantor),
               case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
               a.privilege_type, a.is_grantable
          from pg_class c
          join pg_attribute att on att.attrelid = c.oid
         cross join aclexplode(att.attacl) a
         where c.relnamespace = 'public'::regnamespace and att.attnum > 0
           and not att.attisdropped
    """,
    "default_privileges": """
        select pg_get_userbyid(d.defaclrole), coalesce(d.defaclnamespace::regnamespace::text, ''),
               d.defaclobjtype,
               case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
               a.privilege_type, a.is_grantable
          from pg_default_acl d, aclexplode(d.defaclacl) a
    """,
    "schemas": """
        select n.nspname, pg_get_userbyid(n.nspowner),
               case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
               a.privilege_type, a.is_grantable
          from pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
         where n.nspname in ('public', 'auth', 'extensions')
    """,
    "functions": """
        select p.oid::regprocedure::text, pg_get_userbyid(p.proowner), p.prosecdef,
               p.proconfig::text, md5(p.prosrc), p.proacl::text
          from pg_proc p
         where p.pronamespace in ('public'::regnamespace, 'auth'::regnamespace)
           and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass
                            and d.objid = p.oid and d.deptype = 'e')
    """,
    "extensions": "select extname, extnamespace::regnamespace::text from pg_extension",
    "roles": """
        select rolname, rolsuper, rolinherit, rolcanlogin, rolbypassrls, rolcreaterole
          from pg_roles
         where rolname in ('anon', 'authenticated', 'service_role', 'authenticator',
                           'supabase_admin', %(owner)s)
    """,
    "memberships": """
        select pg_get_userbyid(roleid), pg_get_userbyid(member), admin_option
          from pg_auth_members
         where pg_get_userbyid(member) in ('authenticator', %(owner)s)
    """,
}


def snapshot(db: SupabaseDb) -> dict[str, set[tuple[Any, ...]]]:
    """The app's schema and grants, read as the superuser."""
    out: dict[str, set[tuple[Any, ...]]] = {}
    with psycopg.connect(db.admin, autocommit=True) as conn:
        for aspect, statement in SNAPSHOT.items():
            params = {"owner": db.owner_role} if "%(owner)s" in statement else None
            out[aspect] = {tuple(r) for r in conn.execute(statement, params).fetchall()}
    return out


def differences(
    before: dict[str, set[tuple[Any, ...]]], after: dict[str, set[tuple[Any, ...]]]
) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Per aspect, what went missing and what appeared (empty when nothing changed)."""
    return {
        aspect: {
            "missing": sorted(before[aspect] - after[aspect], key=repr),
            "added": sorted(after[aspect] - before[aspect], key=repr),
        }
        for aspect in before
        if before[aspect] != after[aspect]
    }


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_env(
    supabase_db: SupabaseDb,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_bedrock: FakeBedrockServer,
) -> Iterator[None]:
    """``fullpass`` commands against the Supabase-shaped database, as its owner.

    Embeddings are the app's: Cohere on Bedrock (the fake), 1024 dimensions.
    """
    monkeypatch.setenv("DATABASE_URL", supabase_db.owner)
    monkeypatch.setenv("FULLPASS_HOME", str(tmp_path / "home"))
    for name, value in fake_bedrock.settings_env("cohere.embed-english-v3").items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# --------------------------------------------------------------------------- tests


async def test_up_import_rls_down_leaves_the_apps_schema_and_grants_as_they_were(
    supabase_db: SupabaseDb,
    cli_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = supabase_db
    before = snapshot(db)
    pgvector = bool(query(db.admin, "select 1 from pg_extension where extname = 'vector'"))
    # signed-in users read some of the chunks' columns, not the whole table
    assert ("conversation_chunks", "authenticated", "SELECT") not in {
        (t, grantee, p) for t, _, grantee, p, _ in before["table_privileges"]
    }

    code, out, _ = cli(capsys, "migrate")
    assert (code, out.strip()) == (0, f"database at revision {migrate.head()}")

    # The app's own columns, policies, indexes and trigger are there as the app
    # made them; fullpass's stand beside them under their own names.
    during = snapshot(db)
    for aspect in ("columns", "constraints", "indexes", "policies", "triggers"):
        assert before[aspect] <= during[aspect], aspect
    names = {p[1] for p in during["policies"]} | {i[1] for i in during["indexes"]}
    assert {
        "fullpass_conversation_chunks_select_own",
        "fullpass_user_profiles_select_own",
        "fullpass_conversation_chunks_user_idx",
        "fullpass_conversation_chunks_import_chunk_key",
        "fullpass_user_profiles_user_id_idx",
        "fullpass_conversation_chunks_fts_idx",
    } <= names
    # the app's embedding column is left as it is; the vector index stands beside it
    assert ("fullpass_conversation_chunks_embedding_idx" in names) == pgvector
    embedding = query(
        db.admin,
        "select format_type(atttypid, atttypmod) as type from pg_attribute"
        " where attrelid = 'public.conversation_chunks'::regclass and attname = 'embedding'",
    )
    assert embedding == ([{"type": "extensions.vector(1024)"}] if pgvector else [])
    ledger = query(db.admin, "select table_name, column_name from fullpass_schema_additions")
    recorded = {(r["table_name"], r["column_name"]) for r in ledger}
    assert {
        ("conversation_chunks", "policy:fullpass_conversation_chunks_select_own"),
        ("conversation_chunks", "index:fullpass_conversation_chunks_user_idx"),
        ("conversation_chunks", "index:fullpass_conversation_chunks_import_chunk_key"),
        ("conversation_chunks", "import_id"),
        ("user_profiles", "policy:fullpass_user_profiles_select_own"),
        ("user_profiles", "index:fullpass_user_profiles_user_id_idx"),
        ("user_profiles", "constraint:fullpass_user_profiles_full_pass_status_check"),
        ("user_profiles", "memory_md"),
        ("conversation_chunks", "fullpass_fts"),
        ("conversation_chunks", "embedding_model"),
        ("conversation_chunks", "index:fullpass_conversation_chunks_fts_idx"),
        ("user_profiles", "embedding_status"),
        ("user_profiles", "constraint:fullpass_user_profiles_embedding_status_check"),
    } <= recorded
    assert ("conversation_chunks", "embedding") not in recorded  # the app's
    hnsw = ("conversation_chunks", "index:fullpass_conversation_chunks_embedding_idx")
    assert (hnsw in recorded) == pgvector
    assert not {what for _, what in recorded} & {"*", "rls:enabled"}  # the app's, RLS already on
    for _, what in recorded:  # every object fullpass put on the app's tables is named as its own
        assert ":" not in what or what.split(":", 1)[1].startswith("fullpass_"), what
    saved = query(db.admin, "select table_name, grantee, privileges from fullpass_saved_privileges")
    assert {(r["table_name"], r["grantee"]) for r in saved} == {
        (t, r) for t in APP_TABLES for r in API_ROLES
    }
    anon_profiles = next(
        r["privileges"]
        for r in saved
        if (r["table_name"], r["grantee"]) == ("user_profiles", "anon")
    )
    assert anon_profiles == [
        {"privilege": "SELECT", "column": "import_status", "grantable": False},
        {"privilege": "SELECT", "column": "user_id", "grantable": False},
    ]

    # One import end to end, the worker connected as the owner.
    settings = make_settings(db.owner, tmp_path)
    import_id = submit(settings, USER_A)
    async with running_worker(settings) as worker:
        row = await wait_status(db.owner, import_id, ("complete", "failed"), worker=worker)
    assert row["status"] == "complete", row["error"]
    profile = query(
        db.owner,
        "select full_pass_status, memory_md from user_profiles where user_id = %s",
        (USER_A,),
    )[0]
    assert profile["full_pass_status"] == "complete" and profile["memory_md"]

    # RLS with the real roles, through authenticator as PostgREST does it.
    for me, other in ((USER_A, USER_B), (USER_B, USER_A)):
        with session(db.authenticator, "authenticated", me) as conn:
            for table in (*APP_TABLES, "imports", "import_progress"):
                expected = {str(me)} if me == USER_A or table in APP_TABLES else set()
                assert visible(conn, table) == expected, table
            # the app's own update policy and grants still work, for one's own row only
            for user, expected in ((me, 1), (other, 0)):
                updated = conn.execute(
                    "update user_profiles set soul_md = 'edited' where user_id = %s", (user,)
                )
                assert updated.rowcount == expected
            # search_chunks runs as the caller: their own chunks, whoever they ask for
            for user in (me, other):
                found = conn.execute(
                    "select distinct c.user_id::text as u from public.search_chunks(%s,"
                    " 'written by the app') s join conversation_chunks c on c.id = s.id",
                    (user,),
                ).fetchall()
                assert found == ([{"u": str(me)}] if user == me else []), (me, user)
    with session(db.authenticator, "anon") as conn:
        for table in (*APP_TABLES, "imports", "procrastinate_jobs", "fullpass_saved_privileges"):
            denied(conn, sql.SQL("select * from public.{}").format(sql.Identifier(table)))
        denied(conn, "select * from public.search_chunks(%s, 'app')", (USER_A,))
    with session(db.authenticator, "service_role") as conn:
        assert visible(conn, "user_profiles") == {str(USER_A), str(USER_B)}
        found = conn.execute(
            "select title from public.search_chunks(%s, 'written by the app')", (USER_B,)
        ).fetchall()
        assert found == [{"title": "theirs"}]

    code, out, _ = cli(capsys, "migrate", "--downgrade")
    assert (code, out.strip()) == (0, "database at revision base: fullpass removed")
    assert differences(before, snapshot(db)) == {}
    # The app's rows stay (the import's chunks too, without fullpass's columns).
    soul = query(db.admin, "select soul_md from user_profiles where user_id = %s", (USER_B,))
    assert soul == [{"soul_md": "v1 soul of b"}]
    assert len(query(db.admin, "select * from conversation_chunks")) > 2
    with session(db.authenticator, "anon") as conn:  # the app's grant to anon is back
        rows = conn.execute("select user_id, import_status from user_profiles").fetchall()
        assert len(rows) == 2

    code, _, err = cli(capsys, "migrate", "--downgrade")
    assert code == 1 and "not at a fullpass revision" in err
    assert differences(before, snapshot(db)) == {}


#: What a later revision might do to the app's tables, through the same helpers.
LATER_REVISION = """
SELECT set_config('fullpass.revision', '0003', true);
SELECT public.fullpass_add_column('user_profiles', 'persona_version', 'int DEFAULT 1');
SELECT public.fullpass_create_index('user_profiles', 'fullpass_user_profiles_persona_idx',
                                    '(persona_version)');
SELECT public.fullpass_create_index('user_profiles', 'fullpass_user_profiles_app_idx', '(soul_md)');
SELECT public.fullpass_add_constraint('user_profiles', 'fullpass_user_profiles_persona_check',
                                      'CHECK (persona_version > 0)');
CREATE FUNCTION public.fullpass_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NEW;
END
$$;
SELECT public.fullpass_create_trigger('user_profiles', 'fullpass_user_profiles_touch',
                                      'BEFORE UPDATE',
                                      'FOR EACH ROW EXECUTE FUNCTION public.fullpass_touch()');
SELECT public.fullpass_create_policy('conversation_chunks',
                                     'fullpass_conversation_chunks_update_own',
                                     'FOR UPDATE TO authenticated USING (user_id = auth.uid())');
SELECT public.fullpass_grant('conversation_chunks', 'UPDATE (title)', 'authenticated');
SELECT public.fullpass_revoke('user_profiles', 'SELECT', 'service_role');
SELECT public.fullpass_grant('user_profiles', 'SELECT (user_id)', 'PUBLIC');
SELECT public.fullpass_grant('user_profiles', 'SELECT (soul_md)', 'anon');
SELECT public.fullpass_enable_rls('app_notes');
SELECT public.fullpass_revoke('app_notes', 'INSERT, UPDATE', 'authenticated');
SELECT public.fullpass_create_table('fullpass_personas', 'id int PRIMARY KEY');
SELECT public.fullpass_grant('fullpass_personas', 'SELECT', 'authenticated');
SELECT set_config('fullpass.revision', '', true);
"""


def ledger(dsn: str) -> list[dict[str, Any]]:
    return query(
        dsn,
        "select revision, table_name, column_name from fullpass_schema_additions"
        " union all select revision, table_name, 'privileges:' || grantee"
        " from fullpass_saved_privileges order by 1, 2, 3",
    )


def test_a_later_revision_takes_back_only_its_own_changes(supabase_db: SupabaseDb) -> None:
    """The helpers record under the running revision; fullpass_undo(revision) undoes just those."""
    db = supabase_db
    query(db.owner, "CREATE TABLE public.app_notes (id int PRIMARY KEY, body text)")
    before = snapshot(db)
    migrate.upgrade(db.owner)
    # an object under a fullpass_ name that fullpass did not record is never taken over
    query(db.owner, "CREATE INDEX fullpass_user_profiles_app_idx ON public.user_profiles (user_md)")
    at_0002, ledger_0002 = snapshot(db), ledger(db.owner)

    query(db.owner, LATER_REVISION)
    at_0003 = snapshot(db)
    changed = differences(at_0002, at_0003)
    assert {"columns", "indexes", "constraints", "triggers", "policies", "table_privileges"} <= set(
        changed
    )
    assert ("user_profiles", "fullpass_user_profiles_app_idx") not in {
        (t, i) for t, i, _ in changed["indexes"]["added"]
    }
    assert ("public", "app_notes", "r", db.owner_role, True, False) in at_0003["relations"]
    recorded_0003 = {
        (r["table_name"], r["column_name"]) for r in ledger(db.owner) if r["revision"] == "0003"
    }
    assert ("user_profiles", "index:fullpass_user_profiles_app_idx") not in recorded_0003
    assert ("app_notes", "rls:enabled") in recorded_0003
    assert ("user_profiles", "privileges:PUBLIC") in recorded_0003

    # 0002's downgrade refuses while 0003's changes are recorded
    with pytest.raises(psycopg.errors.RaiseException, match="changes of revisions 0003"):
        migrate.downgrade(db.owner, "base")

    # 0003's downgrade: what it recorded, then its own function the trigger used
    query(db.owner, "SELECT public.fullpass_undo('0003'); DROP FUNCTION public.fullpass_touch()")
    assert differences(at_0002, snapshot(db)) == {}
    assert ledger(db.owner) == ledger_0002

    query(db.owner, "DROP INDEX public.fullpass_user_profiles_app_idx")
    migrate.downgrade(db.owner, "base")
    assert differences(before, snapshot(db)) == {}


def test_the_helpers_refuse_unprefixed_names_and_unrecorded_changes(db_dsn: str) -> None:
    with pytest.raises(psycopg.errors.InvalidName, match="must start with fullpass_"):
        query(
            db_dsn,
            "SELECT set_config('fullpass.revision', '0003', true);"
            " SELECT public.fullpass_create_policy('user_profiles', 'user_profiles_select_own',"
            " 'FOR SELECT USING (true)')",
        )
    with pytest.raises(psycopg.errors.RaiseException, match=r"fullpass\.revision is not set"):
        query(db_dsn, "SELECT public.fullpass_add_column('user_profiles', 'x', 'text')")
    assert query(db_dsn, "select * from fullpass_schema_additions where column_name = 'x'") == []


#: Turns the ledger of a migrated database back into what the first version of
#: 0002 left on an app that already had every name it would have used: no
#: revision column, no saved privileges, none of the newer helpers, and no
#: policy or index of its own on the app's tables (it skipped those names).
FIRST_0002_LEDGER = r"""
DROP POLICY fullpass_conversation_chunks_select_own ON public.conversation_chunks;
DROP POLICY fullpass_user_profiles_select_own ON public.user_profiles;
DROP INDEX public.fullpass_conversation_chunks_user_idx,
           public.fullpass_conversation_chunks_import_chunk_key,
           public.fullpass_user_profiles_user_id_idx;
ALTER TABLE public.user_profiles RENAME CONSTRAINT fullpass_user_profiles_full_pass_status_check
    TO user_profiles_full_pass_status_check;
DELETE FROM public.fullpass_schema_additions WHERE column_name LIKE '%:%';
ALTER TABLE public.fullpass_schema_additions DROP COLUMN revision;
INSERT INTO public.fullpass_schema_additions
    VALUES ('user_profiles', 'constraint:user_profiles_full_pass_status_check');
DROP TABLE public.fullpass_saved_privileges;
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
               WHERE p.pronamespace = 'public'::regnamespace
                 AND p.proname LIKE 'fullpass\_%' AND p.proname <> 'fullpass_add_column'
                 AND p.proname NOT IN ('fullpass_stages', 'fullpass_defer', 'fullpass_cancel_jobs',
                                       'fullpass_mirror_profile', 'fullpass_lock_down_queue')
    LOOP
        EXECUTE format('DROP FUNCTION %s', fn);
    END LOOP;
END
$$;
"""


def test_a_database_migrated_by_the_first_0002_keeps_the_apps_objects_on_downgrade(
    supabase_db: SupabaseDb,
) -> None:
    """Its ledger knows columns, tables and one constraint: nothing else is dropped by name."""
    db = supabase_db
    before = snapshot(db)
    migrate.upgrade(db.owner, "0002")
    query(db.owner, FIRST_0002_LEDGER)
    migrate.downgrade(db.owner, "base")
    after = snapshot(db)
    changed = differences(before, after)
    # Only the privilege changes it never saved stay as they are.
    assert set(changed) <= {"table_privileges", "column_privileges"}, changed
    assert {grantee for _, _, grantee, _, _ in changed["table_privileges"]["missing"]} == {"anon"}
