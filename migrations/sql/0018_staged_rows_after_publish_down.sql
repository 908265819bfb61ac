-- Publishing deletes the staged chunks in its own transaction again.
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
    DELETE FROM public.import_chunks WHERE import_id = p_import_id;
    RETURN n;
END
$$;
