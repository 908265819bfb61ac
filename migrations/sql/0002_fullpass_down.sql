-- Removes what 0002_fullpass_up.sql created. Tables and columns of the app
-- (conversation_chunks, user_profiles) are dropped only where fullpass
-- created them, as recorded in fullpass_schema_additions. The Supabase role
-- stand-ins and auth.uid() stay: other databases of the cluster may use them.

DROP VIEW IF EXISTS public.import_progress;
DROP TRIGGER IF EXISTS imports_after_insert ON public.imports;
DROP TRIGGER IF EXISTS imports_before_insert ON public.imports;
DROP FUNCTION IF EXISTS public.requeue_import(uuid, text);
DROP FUNCTION IF EXISTS public.cancel_import(uuid);
DROP FUNCTION IF EXISTS public.imports_after_insert();
DROP FUNCTION IF EXISTS public.imports_before_insert();
DROP FUNCTION IF EXISTS public.fullpass_mirror_profile(uuid, text, text);
DROP FUNCTION IF EXISTS public.fullpass_cancel_jobs(uuid);
DROP FUNCTION IF EXISTS public.fullpass_defer(uuid, text, int, timestamptz);
DROP FUNCTION IF EXISTS public.fullpass_lock_down_queue();
DROP TABLE IF EXISTS public.chunk_facts;
DROP TABLE IF EXISTS public.import_stages;
DROP TABLE IF EXISTS public.imports;
DROP FUNCTION IF EXISTS public.fullpass_stages();

DO $$
BEGIN
    IF to_regclass('public.conversation_chunks') IS NOT NULL THEN
        DROP POLICY IF EXISTS conversation_chunks_select_own ON public.conversation_chunks;
    END IF;
    IF to_regclass('public.user_profiles') IS NOT NULL THEN
        DROP POLICY IF EXISTS user_profiles_select_own ON public.user_profiles;
    END IF;
END
$$;

DO $$
DECLARE
    a record;
BEGIN
    FOR a IN SELECT table_name, column_name FROM public.fullpass_schema_additions
              ORDER BY column_name = '*' LOOP
        IF a.column_name = '*' THEN
            EXECUTE format('DROP TABLE IF EXISTS public.%I', a.table_name);
        ELSIF a.column_name LIKE 'constraint:%' THEN
            IF to_regclass('public.' || a.table_name) IS NOT NULL THEN
                EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT IF EXISTS %I',
                               a.table_name, substr(a.column_name, 12));
            END IF;
        ELSIF to_regclass('public.' || a.table_name) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE public.%I DROP COLUMN IF EXISTS %I',
                           a.table_name, a.column_name);
        END IF;
    END LOOP;
END
$$;
DROP INDEX IF EXISTS public.conversation_chunks_import_chunk_key;
DROP INDEX IF EXISTS public.conversation_chunks_user_idx;
DROP INDEX IF EXISTS public.user_profiles_user_id_idx;
DROP FUNCTION IF EXISTS public.fullpass_add_column(text, text, text);
DROP TABLE IF EXISTS public.fullpass_schema_additions;
