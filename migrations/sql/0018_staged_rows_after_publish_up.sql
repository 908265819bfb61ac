-- Publishing copies the staged chunks into conversation_chunks and no longer
-- deletes them in the same transaction: deleting an export's staged rows
-- (0.36 s for 25,000 chunks) only made the pass's publish, and the app's wait
-- for it, longer. The worker drops them right after the publish commits, and
-- its housekeeping drops any a worker left behind (the staged rows of an
-- import that is complete; see worker/maintenance.py). Until then a requeue
-- of the complete import reuses them, exactly as fullpass_restage_chunks
-- would have copied them back.
CREATE OR REPLACE FUNCTION public.fullpass_publish_chunks(p_import_id uuid)
    RETURNS int
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    n int;
    cols text := public.fullpass_chunk_columns();
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger
                WHERE tgrelid = 'public.conversation_chunks'::regclass
                  AND tgname = 'fullpass_chunks_fts') THEN
        cols := cols || ', fullpass_fts';
    END IF;
    EXECUTE format('INSERT INTO public.conversation_chunks (%1$s)'
                   ' SELECT %1$s FROM public.import_chunks WHERE import_id = $1', cols)
    USING p_import_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
