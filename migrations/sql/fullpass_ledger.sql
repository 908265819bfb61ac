-- fullpass's ledger: what it added to, or changed on, tables it did not create
-- (the app's conversation_chunks and user_profiles), and the helpers through
-- which every revision makes such changes, so that its downgrade can take back
-- exactly those and nothing of the app's.
--
-- Rules for a revision touching a table fullpass does not own:
-- * go through the helpers below; each records what it did under the revision
--   named by the setting fullpass.revision (migrations/sqlfiles.py sets it
--   around the revision's SQL file), and the downgrade calls
--   fullpass_undo('<revision>');
-- * every policy, index, constraint and trigger is named fullpass_...: an app
--   may use any other name, so an object found under another name is the
--   app's, and an existing fullpass_ object not in the ledger is left alone;
-- * the previous privileges of a role are saved before the revision first
--   grants to or revokes from it, and restored as they were.
--
-- Run before a revision's own SQL and before the 0002 downgrade. Idempotent
-- (IF NOT EXISTS, CREATE OR REPLACE), so it also brings the ledger of a
-- database migrated by an earlier version of this file up to date. Only ever
-- add to it: an older revision's calls must keep their meaning.

CREATE TABLE IF NOT EXISTS public.fullpass_schema_additions (
    table_name text NOT NULL,
    -- The column added; '*' when fullpass created the whole table;
    -- 'policy:<name>', 'index:<name>', 'constraint:<name>', 'trigger:<name>';
    -- 'rls:enabled' when fullpass turned row-level security on.
    column_name text NOT NULL,
    PRIMARY KEY (table_name, column_name)
);
-- Rows written before the column existed were all written by revision 0002.
ALTER TABLE public.fullpass_schema_additions
    ADD COLUMN IF NOT EXISTS revision text NOT NULL DEFAULT '0002';

CREATE TABLE IF NOT EXISTS public.fullpass_saved_privileges (
    revision text NOT NULL,
    table_name text NOT NULL,
    grantee text NOT NULL,  -- a role name, or PUBLIC
    -- What the grantee held on the table before the revision first changed it:
    -- [{"privilege": "SELECT", "column": null or "<column>", "grantable": false}, ...]
    privileges jsonb NOT NULL,
    PRIMARY KEY (revision, table_name, grantee)
);

ALTER TABLE public.fullpass_schema_additions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.fullpass_saved_privileges ENABLE ROW LEVEL SECURITY;

-- Every function pins its search_path with pg_temp named last: left out, the
-- session's temporary schema is searched *first* for tables and types.

-- The revision the running migration records under.
CREATE OR REPLACE FUNCTION public.fullpass_revision()
    RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rev text := nullif(current_setting('fullpass.revision', true), '');
BEGIN
    IF rev IS NULL THEN
        RAISE EXCEPTION 'fullpass.revision is not set: the change cannot be recorded'
            USING HINT = 'Run the revision''s SQL with migrations.sqlfiles.execute_file(name, revision=...).';
    END IF;
    RETURN rev;
END
$$;

CREATE OR REPLACE FUNCTION public.fullpass_record(p_table text, p_what text)
    RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, public, pg_temp
AS $$
    INSERT INTO public.fullpass_schema_additions (table_name, column_name, revision)
    VALUES (p_table, p_what, public.fullpass_revision())
    ON CONFLICT DO NOTHING
$$;

-- Whether the ledger holds p_what for p_table (any revision).
CREATE OR REPLACE FUNCTION public.fullpass_recorded(p_table text, p_what text)
    RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM public.fullpass_schema_additions
                    WHERE table_name = p_table AND column_name = p_what)
$$;

-- Names of what fullpass puts on a table it may not own carry its prefix.
CREATE OR REPLACE FUNCTION public.fullpass_check_name(p_name text)
    RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_name NOT LIKE 'fullpass\_%' THEN
        RAISE EXCEPTION 'name "%" must start with fullpass_: the app may use any other', p_name
            USING ERRCODE = 'invalid_name';
    END IF;
END
$$;

-- An existing object under a fullpass_ name that the ledger does not hold was
-- not created by this ledger: it is neither replaced nor ever dropped.
CREATE OR REPLACE FUNCTION public.fullpass_note_existing(p_table text, p_what text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NOT public.fullpass_recorded(p_table, p_what) THEN
        RAISE NOTICE '% on %: already present and not recorded by fullpass; left as it is',
            p_what, p_table;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION public.fullpass_table(p_table text)
    RETURNS regclass
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass := to_regclass(format('public.%I', p_table));
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION 'table public.% does not exist', p_table USING ERRCODE = 'undefined_table';
    END IF;
    RETURN rel;
END
$$;

-- Creates the table when absent (recorded as '*': the downgrade drops it whole).
CREATE OR REPLACE FUNCTION public.fullpass_create_table(p_table text, p_columns text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF to_regclass(format('public.%I', p_table)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE public.%I (%s)', p_table, p_columns);
    -- Only what is granted later (a platform's default privileges may grant ALL).
    -- The API roles exist by now: revision 0002 creates stand-ins first.
    EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC, anon, authenticated', p_table);
    PERFORM public.fullpass_record(p_table, '*');
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION public.fullpass_add_column(p_table text, p_column text, p_definition text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
         WHERE attrelid = public.fullpass_table(p_table) AND attname = p_column
           AND attnum > 0 AND NOT attisdropped
    ) THEN
        EXECUTE format('ALTER TABLE public.%I ADD COLUMN %I %s', p_table, p_column, p_definition);
        PERFORM public.fullpass_record(p_table, p_column);
    END IF;
END
$$;

-- p_definition: everything after "ON <table>", e.g. 'FOR SELECT TO authenticated USING (...)'.
CREATE OR REPLACE FUNCTION public.fullpass_create_policy(
    p_table text, p_name text, p_definition text
)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.fullpass_check_name(p_name);
    IF EXISTS (SELECT 1 FROM pg_policy
                WHERE polrelid = public.fullpass_table(p_table) AND polname = p_name) THEN
        PERFORM public.fullpass_note_existing(p_table, 'policy:' || p_name);
        RETURN;
    END IF;
    EXECUTE format('CREATE POLICY %I ON public.%I %s', p_name, p_table, p_definition);
    PERFORM public.fullpass_record(p_table, 'policy:' || p_name);
END
$$;

-- p_definition: everything after "ON <table>", e.g. '(user_id)' or 'USING hnsw (...)'.
CREATE OR REPLACE FUNCTION public.fullpass_create_index(
    p_table text, p_name text, p_definition text, p_unique boolean DEFAULT false
)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.fullpass_check_name(p_name);
    PERFORM public.fullpass_table(p_table);
    IF to_regclass(format('public.%I', p_name)) IS NOT NULL THEN
        PERFORM public.fullpass_note_existing(p_table, 'index:' || p_name);
        RETURN;
    END IF;
    EXECUTE format('CREATE %sINDEX %I ON public.%I %s',
                   CASE WHEN p_unique THEN 'UNIQUE ' ELSE '' END, p_name, p_table, p_definition);
    PERFORM public.fullpass_record(p_table, 'index:' || p_name);
END
$$;

-- p_definition: the constraint itself, e.g. 'CHECK (...)'.
CREATE OR REPLACE FUNCTION public.fullpass_add_constraint(
    p_table text, p_name text, p_definition text
)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.fullpass_check_name(p_name);
    IF EXISTS (SELECT 1 FROM pg_constraint
                WHERE conrelid = public.fullpass_table(p_table) AND conname = p_name) THEN
        PERFORM public.fullpass_note_existing(p_table, 'constraint:' || p_name);
        RETURN;
    END IF;
    EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I %s', p_table, p_name, p_definition);
    PERFORM public.fullpass_record(p_table, 'constraint:' || p_name);
END
$$;

-- CREATE TRIGGER <p_name> <p_when> ON <table> <p_action>, e.g.
-- p_when 'BEFORE UPDATE', p_action 'FOR EACH ROW EXECUTE FUNCTION public.fullpass_...()'.
CREATE OR REPLACE FUNCTION public.fullpass_create_trigger(
    p_table text, p_name text, p_when text, p_action text
)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.fullpass_check_name(p_name);
    IF EXISTS (SELECT 1 FROM pg_trigger
                WHERE tgrelid = public.fullpass_table(p_table) AND tgname = p_name) THEN
        PERFORM public.fullpass_note_existing(p_table, 'trigger:' || p_name);
        RETURN;
    END IF;
    EXECUTE format('CREATE TRIGGER %I %s ON public.%I %s', p_name, p_when, p_table, p_action);
    PERFORM public.fullpass_record(p_table, 'trigger:' || p_name);
END
$$;

-- Turns row-level security on, recorded only when it was off.
CREATE OR REPLACE FUNCTION public.fullpass_enable_rls(p_table text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = public.fullpass_table(p_table)) THEN
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', p_table);
        PERFORM public.fullpass_record(p_table, 'rls:enabled');
    END IF;
END
$$;

-- Privileges ---------------------------------------------------------------

-- A grantee as GRANT/REVOKE spell it.
CREATE OR REPLACE FUNCTION public.fullpass_grantee(p_grantee text)
    RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN upper(p_grantee) = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(p_grantee) END
$$;

-- What p_grantee holds on the table, itself and column by column, read from
-- the ACLs (information_schema shows only grants the current role takes part in).
CREATE OR REPLACE FUNCTION public.fullpass_privileges(p_table text, p_grantee text)
    RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH rel AS (
        SELECT c.oid, c.relacl, c.relowner FROM pg_class c
         WHERE c.oid = to_regclass(format('public.%I', p_table))
    ), who AS (
        SELECT CASE WHEN upper(p_grantee) = 'PUBLIC' THEN 0::oid
                    ELSE (SELECT r.oid FROM pg_roles r WHERE r.rolname = p_grantee) END AS oid
    ), held AS (
        SELECT a.privilege_type, NULL::text AS column_name, a.is_grantable
          FROM rel, who, aclexplode(coalesce(rel.relacl, acldefault('r', rel.relowner))) a
         WHERE a.grantee = who.oid
        UNION ALL
        SELECT a.privilege_type, att.attname::text, a.is_grantable
          FROM rel, who, pg_attribute att, aclexplode(att.attacl) a
         WHERE att.attrelid = rel.oid AND att.attnum > 0 AND NOT att.attisdropped
           AND a.grantee = who.oid
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('privilege', h.privilege_type,
                                                 'column', h.column_name,
                                                 'grantable', h.grantable)
                              ORDER BY h.column_name NULLS FIRST, h.privilege_type),
                    '[]'::jsonb)
      FROM (SELECT privilege_type, column_name, bool_or(is_grantable) AS grantable
              FROM held GROUP BY privilege_type, column_name) h
$$;

-- Saves what p_grantee holds on the table, once per revision: before its first change.
CREATE OR REPLACE FUNCTION public.fullpass_save_privileges(p_table text, p_grantee text)
    RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, public, pg_temp
AS $$
    INSERT INTO public.fullpass_saved_privileges (revision, table_name, grantee, privileges)
    VALUES (public.fullpass_revision(), p_table, public.fullpass_grantee(p_grantee),
            public.fullpass_privileges(p_table, p_grantee))
    ON CONFLICT DO NOTHING
$$;

-- GRANT <p_privileges> ON <table> TO <p_grantee>, e.g. p_privileges 'SELECT' or 'INSERT (a, b)'.
CREATE OR REPLACE FUNCTION public.fullpass_grant(p_table text, p_privileges text, p_grantee text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.fullpass_table(p_table);
    PERFORM public.fullpass_save_privileges(p_table, p_grantee);
    EXECUTE format('GRANT %s ON public.%I TO %s',
                   p_privileges, p_table, public.fullpass_grantee(p_grantee));
END
$$;

CREATE OR REPLACE FUNCTION public.fullpass_revoke(p_table text, p_privileges text, p_grantee text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.fullpass_table(p_table);
    PERFORM public.fullpass_save_privileges(p_table, p_grantee);
    EXECUTE format('REVOKE %s ON public.%I FROM %s',
                   p_privileges, p_table, public.fullpass_grantee(p_grantee));
END
$$;

-- Brings what p_grantee holds on the table back to p_saved: revokes what it
-- holds beyond that, grants back what it lacks (privileges on columns that no
-- longer exist are skipped). Privileges it held all along are not touched.
CREATE OR REPLACE FUNCTION public.fullpass_restore_privileges(
    p_table text, p_grantee text, p_saved jsonb
)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    p record;
    who text := public.fullpass_grantee(p_grantee);
BEGIN
    IF to_regclass(format('public.%I', p_table)) IS NULL
       OR (who <> 'PUBLIC' AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_grantee)) THEN
        RETURN;
    END IF;
    FOR p IN
        SELECT * FROM jsonb_to_recordset(public.fullpass_privileges(p_table, p_grantee))
                   AS x (privilege text, "column" text, grantable boolean)
        EXCEPT
        SELECT * FROM jsonb_to_recordset(p_saved) AS x (privilege text, "column" text, grantable boolean)
    LOOP
        EXECUTE format('REVOKE %s%s ON public.%I FROM %s', p.privilege,
                       CASE WHEN p."column" IS NULL THEN '' ELSE format(' (%I)', p."column") END, p_table, who);
    END LOOP;
    -- Revoking a table privilege also revokes it on every column: compare anew.
    FOR p IN
        SELECT * FROM jsonb_to_recordset(p_saved) AS x (privilege text, "column" text, grantable boolean)
        EXCEPT
        SELECT * FROM jsonb_to_recordset(public.fullpass_privileges(p_table, p_grantee))
                   AS x (privilege text, "column" text, grantable boolean)
    LOOP
        CONTINUE WHEN p."column" IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_attribute
             WHERE attrelid = to_regclass(format('public.%I', p_table)) AND attname = p."column"
               AND attnum > 0 AND NOT attisdropped);
        EXECUTE format('GRANT %s%s ON public.%I TO %s%s', p.privilege,
                       CASE WHEN p."column" IS NULL THEN '' ELSE format(' (%I)', p."column") END, p_table, who,
                       CASE WHEN p.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

-- Undoing a revision ---------------------------------------------------------

-- Takes back everything p_revision recorded: privileges restored first, then
-- policies, triggers, indexes and constraints (they may depend on columns),
-- row-level security, added columns, and last the tables it created (whole:
-- the revision's other entries on those need no undoing). Only what the
-- ledger holds is dropped.
CREATE OR REPLACE FUNCTION public.fullpass_undo(p_revision text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    s record;
    a record;
    rel regclass;
    kind text;
    obj text;
BEGIN
    FOR s IN SELECT p.table_name, p.grantee, p.privileges FROM public.fullpass_saved_privileges p
              WHERE p.revision = p_revision
                AND NOT EXISTS (SELECT 1 FROM public.fullpass_schema_additions t
                                 WHERE t.revision = p_revision AND t.table_name = p.table_name
                                   AND t.column_name = '*')
              ORDER BY p.table_name, p.grantee LOOP
        PERFORM public.fullpass_restore_privileges(s.table_name, s.grantee, s.privileges);
    END LOOP;

    FOR a IN
        SELECT e.table_name, e.column_name FROM public.fullpass_schema_additions e
         WHERE e.revision = p_revision
           AND (e.column_name = '*' OR NOT EXISTS (
                   SELECT 1 FROM public.fullpass_schema_additions t
                    WHERE t.revision = p_revision AND t.table_name = e.table_name
                      AND t.column_name = '*'))
         ORDER BY CASE
                      WHEN e.column_name = '*' THEN 7
                      WHEN e.column_name NOT LIKE '%:%' THEN 6
                      ELSE array_position(ARRAY['policy', 'trigger', 'index', 'constraint', 'rls'],
                                          split_part(e.column_name, ':', 1))
                  END,
                  e.table_name, e.column_name
    LOOP
        rel := to_regclass(format('public.%I', a.table_name));
        CONTINUE WHEN rel IS NULL;
        IF a.column_name = '*' THEN
            EXECUTE format('DROP TABLE public.%I', a.table_name);
            CONTINUE;
        ELSIF a.column_name NOT LIKE '%:%' THEN
            EXECUTE format('ALTER TABLE public.%I DROP COLUMN IF EXISTS %I',
                           a.table_name, a.column_name);
            CONTINUE;
        END IF;
        kind := split_part(a.column_name, ':', 1);
        obj := substr(a.column_name, length(kind) + 2);
        CASE kind
            WHEN 'policy' THEN
                EXECUTE format('DROP POLICY IF EXISTS %I ON public.%I', obj, a.table_name);
            WHEN 'trigger' THEN
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON public.%I', obj, a.table_name);
            WHEN 'index' THEN
                IF EXISTS (SELECT 1 FROM pg_index
                            WHERE indexrelid = to_regclass(format('public.%I', obj))
                              AND indrelid = rel) THEN
                    EXECUTE format('DROP INDEX public.%I', obj);
                END IF;
            WHEN 'constraint' THEN
                EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT IF EXISTS %I',
                               a.table_name, obj);
            WHEN 'rls' THEN
                EXECUTE format('ALTER TABLE public.%I DISABLE ROW LEVEL SECURITY', a.table_name);
            ELSE
                RAISE EXCEPTION 'fullpass_schema_additions: unknown entry "%" on %',
                    a.column_name, a.table_name;
        END CASE;
    END LOOP;

    DELETE FROM public.fullpass_saved_privileges WHERE revision = p_revision;
    DELETE FROM public.fullpass_schema_additions WHERE revision = p_revision;
END
$$;

-- Nobody but the migrating role reads the ledger or runs the helpers (a
-- platform's default privileges may have granted them to the API roles).
DO $$
DECLARE
    target text;
    fn regprocedure;
BEGIN
    FOREACH target IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        CONTINUE WHEN target <> 'PUBLIC'
                      AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = target);
        EXECUTE format('REVOKE ALL ON public.fullpass_schema_additions,'
                       ' public.fullpass_saved_privileges FROM %s', public.fullpass_grantee(target));
        FOR fn IN
            SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'public'::regnamespace
               AND p.proname = ANY (ARRAY[
                   'fullpass_revision', 'fullpass_record', 'fullpass_recorded',
                   'fullpass_check_name', 'fullpass_note_existing', 'fullpass_table',
                   'fullpass_create_table', 'fullpass_add_column', 'fullpass_create_policy',
                   'fullpass_create_index', 'fullpass_add_constraint', 'fullpass_create_trigger',
                   'fullpass_enable_rls', 'fullpass_grantee', 'fullpass_privileges',
                   'fullpass_save_privileges', 'fullpass_grant', 'fullpass_revoke',
                   'fullpass_restore_privileges', 'fullpass_undo'])
        LOOP
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', fn, public.fullpass_grantee(target));
        END LOOP;
    END LOOP;
END
$$;
