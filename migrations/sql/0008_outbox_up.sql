-- The completion callback's outbox: one row per import that ended (complete,
-- failed or cancelled), written by a trigger in the transaction that ends it,
-- and sent to FULLPASS_CALLBACK_URL by the workers (worker/outbox.py).
--
-- Only fullpass's own tables are created or changed here: the app's
-- user_profiles and conversation_chunks are read, never altered.

CREATE TABLE public.import_events (
    -- Also the webhook-id header: a receiver dedupes on it.
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    import_id uuid NOT NULL REFERENCES public.imports (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    generation int NOT NULL,
    kind text NOT NULL
        CHECK (kind IN ('import.completed', 'import.failed', 'import.cancelled')),
    -- The JSON body sent, as computed when the transaction that ended the import committed.
    payload jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Attempts started (an attempt cut short by a crash counts).
    attempts int NOT NULL DEFAULT 0,
    -- When the event may next be claimed: due now, after a retry's backoff, or
    -- when the lease of the sender that holds it runs out.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- The claim of the sender holding the event (NULL: nobody), and who that is
    -- (host:pid), for operators.
    lease uuid,
    leased_by text,
    delivered_at timestamptz,
    -- Given up: attempts used up, or never delivered within a day.
    failed_at timestamptz,
    last_error text,
    CHECK (delivered_at IS NULL OR failed_at IS NULL)
);
CREATE INDEX import_events_due_idx ON public.import_events (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX import_events_import_idx ON public.import_events (import_id);
CREATE INDEX import_events_finished_idx ON public.import_events (coalesce(delivered_at, failed_at))
    WHERE delivered_at IS NOT NULL OR failed_at IS NOT NULL;

-- The event of an import that ended, computed when its transaction commits
-- (a deferred constraint trigger): the payload reflects everything that
-- transaction wrote, whatever the order of its statements (the v2 profile and
-- the status in finalize; the status, then the profile's mirror on a failure).
-- A state changed again before the commit (status or generation) was never
-- seen by anyone and gives no event; nor does a row deleted meanwhile.
--
-- chunks_embedded counts the user's chunks with an embedding; the column
-- exists only where pgvector does (or the app made one), so it is looked up in
-- the catalog and read by dynamic SQL: without it, the count is 0.
--
-- Reading the app's tables never keeps an import from ending: a part that
-- cannot be read (the app changed its table) is null in the payload, with a
-- warning in the server's log.
--
-- SECURITY DEFINER: whoever ends the import (the worker's role, an operator
-- function) writes the event, without a grant on the table of its own.
CREATE FUNCTION public.imports_final_event()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    imp public.imports;
    event_id uuid := gen_random_uuid();
    kind text;
    happened timestamptz;
    soulprint_ready boolean;
    memory_ready boolean;
    embedded bigint;
BEGIN
    SELECT * INTO imp FROM public.imports WHERE id = NEW.id;
    IF NOT FOUND OR imp.status IS DISTINCT FROM NEW.status
       OR imp.generation IS DISTINCT FROM NEW.generation THEN
        RETURN NULL;
    END IF;
    kind := CASE imp.status WHEN 'complete' THEN 'import.completed'
                            WHEN 'failed' THEN 'import.failed'
                            ELSE 'import.cancelled' END;
    happened := coalesce(imp.completed_at, now());

    BEGIN
        -- The app's table may hold several rows per user: any one ready is ready.
        SELECT coalesce(bool_or(p.soulprint_text IS NOT NULL), false),
               coalesce(bool_or(p.memory_md IS NOT NULL), false)
          INTO soulprint_ready, memory_ready
          FROM public.user_profiles p
         WHERE p.user_id = imp.user_id;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'import %: user_profiles not readable for the callback: %', imp.id, SQLERRM;
    END;

    BEGIN
        embedded := 0;
        IF EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = to_regclass('public.conversation_chunks')
                      AND attname = 'embedding' AND attnum > 0 AND NOT attisdropped) THEN
            EXECUTE 'SELECT count(*) FROM public.conversation_chunks'
                    ' WHERE user_id = $1 AND embedding IS NOT NULL'
               INTO embedded USING imp.user_id;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        embedded := NULL;
        RAISE WARNING 'import %: conversation_chunks not readable for the callback: %',
            imp.id, SQLERRM;
    END;

    INSERT INTO public.import_events (id, import_id, user_id, generation, kind, payload)
    VALUES (event_id, imp.id, imp.user_id, imp.generation, kind, jsonb_build_object(
        'id', event_id,
        'event', kind,
        'timestamp', to_char(happened AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'user_id', imp.user_id,
        'import_id', imp.id,
        'generation', imp.generation,
        'status', imp.status,
        'stage', imp.stage,
        'error', CASE WHEN imp.status <> 'complete' THEN imp.error END,
        'soulprint_ready', soulprint_ready,
        'memory_building', EXISTS (SELECT 1 FROM public.imports o
                                    WHERE o.user_id = imp.user_id
                                      AND o.status IN ('pending', 'processing')),
        'memory_ready', memory_ready,
        'chunks_embedded', embedded,
        'processing_time', round(greatest(extract(epoch FROM
                               happened - coalesce(imp.started_at, imp.created_at)), 0), 3),
        'conversations', imp.conversation_count,
        'chunks', imp.chunk_count,
        'facts', imp.fact_count
    ));
    -- A hint for the senders listening (delivered at commit); the row is the truth.
    PERFORM pg_notify('fullpass_import_events', event_id::text);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER imports_final_event
    AFTER UPDATE ON public.imports
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.status IN ('complete', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION public.imports_final_event();

-- Operators and the worker's roles only: the rows carry delivery internals
-- (the receiver's errors, which worker holds what); a user follows their
-- import in imports / import_progress.
ALTER TABLE public.import_events ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.import_events FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.import_events TO service_role;
REVOKE ALL ON FUNCTION public.imports_final_event() FROM PUBLIC, anon, authenticated;
