-- Undoes 0015_staged_search_text_up.sql: conversation_chunks.fullpass_fts is
-- a generated column again (with its index, as 0005 made them), the staged
-- entries go, and publishing is 0007's.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger
                WHERE tgrelid = 'public.conversation_chunks'::regclass
                  AND tgname = 'fullpass_chunks_fts') THEN
        -- A column cannot become generated again: it is made anew (under the
        -- same names, which 0005's ledger entries still name).
        DROP TRIGGER fullpass_chunks_fts ON public.conversation_chunks;
        ALTER TABLE public.conversation_chunks DROP COLUMN fullpass_fts;
        ALTER TABLE public.conversation_chunks ADD COLUMN fullpass_fts tsvector GENERATED ALWAYS AS (
            setweight(to_tsvector('pg_catalog.english'::regconfig, left(coalesce(title, ''), 1000)), 'A')
            || setweight(to_tsvector('pg_catalog.english'::regconfig, left(coalesce(content, ''), 100000)), 'B')
        ) STORED;
        CREATE INDEX fullpass_conversation_chunks_fts_idx
            ON public.conversation_chunks USING gin (fullpass_fts);
    END IF;
END
$$;
SELECT public.fullpass_undo('0015');
DROP FUNCTION public.fullpass_chunks_fts();
DROP FUNCTION public.fullpass_chunk_fts(text, text);
ALTER TABLE public.import_chunks DROP COLUMN fullpass_fts;

CREATE OR REPLACE FUNCTION public.fullpass_publish_chunks(p_import_id uuid)
    RETURNS int
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    n int;
    cols text := public.fullpass_chunk_columns();
BEGIN
    EXECUTE format('INSERT INTO public.conversation_chunks (%1$s)'
                   ' SELECT %1$s FROM public.import_chunks WHERE import_id = $1', cols)
    USING p_import_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM public.import_chunks WHERE import_id = p_import_id;
    RETURN n;
END
$$;
