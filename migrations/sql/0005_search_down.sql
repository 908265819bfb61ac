-- Undoes 0005_search_up.sql: search_chunks, then what the ledger holds of
-- 0005 on the app's tables (the vector and full-text indexes, the status
-- constraint, the fullpass_fts, embedding_model and embedding_status columns,
-- and the embedding column where 0005 created it).
--
-- An embedding column of fullpass's that 0005 re-created at the configured
-- size (it was empty) keeps that size: it is 0002's column, the size 0002
-- itself now gives it, and 0002's downgrade drops it.

DO $$
DECLARE
    fn regprocedure;
BEGIN
    -- 0005 refuses to run where a public.search_chunks exists: the one of this
    -- signature (query_embedding vector, or real[] without pgvector) is its own.
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace AND p.proname = 'search_chunks'
           AND p.pronargs = 5
           AND p.proargtypes[0] = 'uuid'::regtype AND p.proargtypes[1] = 'text'::regtype
           AND p.proargtypes[3] = 'int4'::regtype AND p.proargtypes[4] = 'text[]'::regtype
    LOOP
        EXECUTE format('DROP FUNCTION %s', fn);
    END LOOP;
END
$$;

SELECT public.fullpass_undo('0005');
