-- A chunk's full-text entry is prepared while the pass runs, not at publish.
--
-- conversation_chunks.fullpass_fts was a generated column: every chunk a pass
-- published had its entry computed inside the publishing transaction, ~1 ms a
-- chunk (6 s of a 5,000-chunk pass, with nothing else left to do). The entry
-- is now staged with the chunk (import_chunks.fullpass_fts), filled while the
-- map step's model calls are in flight, and copied at publish. The column on
-- conversation_chunks becomes a plain one that a trigger keeps current: an
-- inserted row without an entry gets one (the app's own rows, a staged chunk
-- nobody prepared), and a changed title or content recomputes it, so the
-- column holds what it held as a generated one. One function says what the
-- entry is.

-- The title weighs more than the body (A against B in ts_rank); inputs are
-- cut so that no row can exceed a tsvector's 1 MB limit (see 0005).
CREATE FUNCTION public.fullpass_chunk_fts(p_title text, p_content text)
    RETURNS tsvector
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT setweight(to_tsvector('pg_catalog.english'::regconfig, left(coalesce(p_title, ''), 1000)), 'A')
           || setweight(to_tsvector('pg_catalog.english'::regconfig,
                                    left(coalesce(p_content, ''), 100000)), 'B')
$$;

-- SECURITY DEFINER: the app's roles write chunks, and call nothing of fullpass's.
CREATE FUNCTION public.fullpass_chunks_fts()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' OR NEW.fullpass_fts IS NULL THEN
        NEW.fullpass_fts := public.fullpass_chunk_fts(NEW.title, NEW.content);
    END IF;
    RETURN NEW;
END
$$;

DO $$
BEGIN
    -- Only the column fullpass generated (0005); a table whose column is not
    -- generated (not ours) is left as it is, and publish computes the entry.
    IF EXISTS (SELECT 1 FROM pg_attribute
                WHERE attrelid = 'public.conversation_chunks'::regclass
                  AND attname = 'fullpass_fts' AND attgenerated = 's' AND NOT attisdropped)
       AND public.fullpass_recorded('conversation_chunks', 'fullpass_fts') THEN
        ALTER TABLE public.conversation_chunks ALTER COLUMN fullpass_fts DROP EXPRESSION;
        PERFORM public.fullpass_create_trigger(
            'conversation_chunks', 'fullpass_chunks_fts',
            'BEFORE INSERT OR UPDATE OF title, content, fullpass_fts',
            'FOR EACH ROW EXECUTE FUNCTION public.fullpass_chunks_fts()');
    END IF;
END
$$;

REVOKE ALL ON FUNCTION public.fullpass_chunk_fts(text, text), public.fullpass_chunks_fts()
    FROM PUBLIC, anon, authenticated;

ALTER TABLE public.import_chunks ADD COLUMN fullpass_fts tsvector;

-- Moves an import's staged chunks into conversation_chunks (the caller has
-- deleted the user's published ones in the same transaction), with the
-- full-text entries prepared for them (the trigger computes any missing).
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
