-- Removes what 0002_fullpass_up.sql created. On the app's tables
-- (conversation_chunks, user_profiles) only what the ledger holds is taken
-- back (fullpass_undo, fullpass_ledger.sql, run just before this file): the
-- columns, fullpass_ policies, indexes and constraints it added, row-level
-- security if it turned it on, and each role's privileges as they were saved;
-- the tables themselves only where fullpass created them. The Supabase role
-- stand-ins and auth.uid() stay: other databases of the cluster may use them.
--
-- A database migrated by the first version of 0002 has a ledger of columns,
-- created tables and the status constraint only. Its policies
-- (conversation_chunks_select_own, user_profiles_select_own) and indexes
-- (conversation_chunks_user_idx, user_profiles_user_id_idx; the unique
-- conversation_chunks_import_chunk_key goes with the import_id column) carry
-- names an app uses too, and nothing tells fullpass's from the app's: they
-- are left in place, never dropped by name. Its privilege changes on the app's
-- tables (anon's revoked, authenticated's and service_role's granted) were not
-- saved and stay as they are.

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

SELECT public.fullpass_undo('0002');
DO $$
BEGIN
    -- A later revision's changes still recorded here would be lost with the
    -- ledger: its downgrade must run first.
    IF EXISTS (SELECT 1 FROM public.fullpass_schema_additions)
       OR EXISTS (SELECT 1 FROM public.fullpass_saved_privileges) THEN
        RAISE EXCEPTION 'fullpass_schema_additions still records changes of revisions %',
            (SELECT string_agg(DISTINCT revision, ', ') FROM (
                 SELECT revision FROM public.fullpass_schema_additions
                 UNION SELECT revision FROM public.fullpass_saved_privileges) r);
    END IF;
END
$$;

DROP FUNCTION IF EXISTS public.fullpass_undo(text);
DROP FUNCTION IF EXISTS public.fullpass_restore_privileges(text, text, jsonb);
DROP FUNCTION IF EXISTS public.fullpass_revoke(text, text, text);
DROP FUNCTION IF EXISTS public.fullpass_grant(text, text, text);
DROP FUNCTION IF EXISTS public.fullpass_save_privileges(text, text);
DROP FUNCTION IF EXISTS public.fullpass_privileges(text, text);
DROP FUNCTION IF EXISTS public.fullpass_grantee(text);
DROP FUNCTION IF EXISTS public.fullpass_enable_rls(text);
DROP FUNCTION IF EXISTS public.fullpass_create_trigger(text, text, text, text);
DROP FUNCTION IF EXISTS public.fullpass_add_constraint(text, text, text);
DROP FUNCTION IF EXISTS public.fullpass_create_index(text, text, text, boolean);
DROP FUNCTION IF EXISTS public.fullpass_create_policy(text, text, text);
DROP FUNCTION IF EXISTS public.fullpass_add_column(text, text, text);
DROP FUNCTION IF EXISTS public.fullpass_create_table(text, text);
DROP FUNCTION IF EXISTS public.fullpass_table(text);
DROP FUNCTION IF EXISTS public.fullpass_note_existing(text, text);
DROP FUNCTION IF EXISTS public.fullpass_check_name(text);
DROP FUNCTION IF EXISTS public.fullpass_recorded(text, text);
DROP FUNCTION IF EXISTS public.fullpass_record(text, text);
DROP FUNCTION IF EXISTS public.fullpass_revision();
DROP TABLE IF EXISTS public.fullpass_saved_privileges;
DROP TABLE IF EXISTS public.fullpass_schema_additions;
