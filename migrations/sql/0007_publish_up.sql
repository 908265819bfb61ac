-- Publishing what the app reads: a pass's chunks staged until the pass
-- succeeds, backfills from the chunks a user already has, stages that are
-- skipped with a reason, and readiness in the progress view.

-- Staged chunks --------------------------------------------------------------
-- A pass writes its chunks here; the transaction that publishes the pass
-- replaces the user's chunks in conversation_chunks with them, so the app's
-- retrieval sees the old set while the pass runs (and after it fails) and the
-- new set once it has succeeded, never both.
CREATE TABLE public.import_chunks (
    id uuid PRIMARY KEY,
    import_id uuid NOT NULL REFERENCES public.imports (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    conversation_id text NOT NULL,
    title text,
    content text NOT NULL,
    token_count int,
    chunk_index int NOT NULL,
    total_chunks int,
    chunk_tier text NOT NULL,
    message_count int,
    is_recent boolean NOT NULL DEFAULT false,
    created_at timestamptz,
    content_hash text NOT NULL,
    embedding_model text
);
CREATE UNIQUE INDEX import_chunks_position_key
    ON public.import_chunks (import_id, conversation_id, chunk_tier, chunk_index);
CREATE INDEX import_chunks_tier_idx ON public.import_chunks (import_id, chunk_tier, created_at);
ALTER TABLE public.import_chunks ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.import_chunks FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.import_chunks TO service_role;

-- The staged embedding has the published column's type (where it exists).
DO $$
DECLARE
    kind text;
BEGIN
    SELECT format_type(a.atttypid, a.atttypmod) INTO kind
      FROM pg_attribute a
     WHERE a.attrelid = 'public.conversation_chunks'::regclass AND a.attname = 'embedding'
       AND NOT a.attisdropped;
    IF kind IS NOT NULL THEN
        EXECUTE format('ALTER TABLE public.import_chunks ADD COLUMN embedding %s', kind);
    END IF;
END
$$;

-- The column list both tables share (embedding included where it exists).
CREATE FUNCTION public.fullpass_chunk_columns()
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT 'id, user_id, import_id, conversation_id, title, content, token_count, chunk_index,'
           ' total_chunks, chunk_tier, message_count, is_recent, created_at, content_hash,'
           ' embedding_model'
           || CASE WHEN EXISTS (SELECT 1 FROM pg_attribute
                                 WHERE attrelid = 'public.import_chunks'::regclass
                                   AND attname = 'embedding' AND NOT attisdropped)
                   THEN ', embedding' ELSE '' END
$$;

-- Moves an import's staged chunks into conversation_chunks (the caller has
-- deleted the user's published ones in the same transaction).
CREATE FUNCTION public.fullpass_publish_chunks(p_import_id uuid)
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

-- Whether replacing the app's own chunks (no import_id: its quick pass) keeps
-- at least as many searchable chunks: as many staged chunks with an
-- embedding as the app's rows have, or no embedding column at all.
CREATE FUNCTION public.fullpass_app_chunks_replaceable(p_import_id uuid, p_user_id uuid)
    RETURNS boolean
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    staged bigint;
    app bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'public.import_chunks'::regclass
                      AND attname = 'embedding' AND NOT attisdropped) THEN
        RETURN true;
    END IF;
    EXECUTE 'SELECT count(*) FROM public.import_chunks WHERE import_id = $1 AND embedding IS NOT NULL'
        INTO staged USING p_import_id;
    EXECUTE 'SELECT count(*) FROM public.conversation_chunks'
            ' WHERE user_id = $1 AND import_id IS NULL AND embedding IS NOT NULL'
        INTO app USING p_user_id;
    RETURN staged >= app;
END
$$;

-- A backfill's chunks: every chunk the user has, staged as it is (ids and
-- embeddings kept). Rows the app wrote without a position get one, so that
-- each (conversation, tier, index) is unique.
CREATE FUNCTION public.fullpass_stage_existing_chunks(p_import_id uuid, p_user_id uuid)
    RETURNS int
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    n int;
    embedded boolean := public.fullpass_chunk_columns() LIKE '%, embedding';
BEGIN
    DELETE FROM public.import_chunks WHERE import_id = p_import_id;
    EXECUTE format(
        'INSERT INTO public.import_chunks (%s)'
        ' SELECT id, user_id, $1, conversation_id, title, content, token_count,'
        '        (row_number() OVER w - 1)::int, (count(*) OVER p)::int, chunk_tier,'
        '        message_count, is_recent, created_at, md5(content), embedding_model%s'
        '   FROM (SELECT c.id, c.user_id, coalesce(c.conversation_id, $3 || c.id) AS conversation_id,'
        '                c.title, c.content, c.token_count, c.chunk_index,'
        '                coalesce(c.chunk_tier, $4) AS chunk_tier, c.message_count,'
        '                coalesce(c.is_recent, false) AS is_recent, c.created_at,'
        '                c.embedding_model%s'
        '           FROM public.conversation_chunks c'
        '          WHERE c.user_id = $2 AND c.content IS NOT NULL AND c.content <> $5) c'
        ' WINDOW p AS (PARTITION BY conversation_id, chunk_tier),'
        '        w AS (PARTITION BY conversation_id, chunk_tier'
        '              ORDER BY chunk_index NULLS LAST, created_at, id)',
        public.fullpass_chunk_columns(),
        CASE WHEN embedded THEN ', embedding' ELSE '' END,
        CASE WHEN embedded THEN ', c.embedding' ELSE '' END)
    USING p_import_id, p_user_id, 'chunk-', 'medium', '';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION public.fullpass_chunk_columns(), public.fullpass_publish_chunks(uuid),
                       public.fullpass_app_chunks_replaceable(uuid, uuid),
                       public.fullpass_stage_existing_chunks(uuid, uuid)
    FROM PUBLIC, anon, authenticated;

-- Backfills: a pass over the chunks a user already has ----------------------
ALTER TABLE public.imports
    ADD COLUMN source text NOT NULL DEFAULT 'export' CHECK (source IN ('export', 'chunks'));
ALTER TABLE public.imports ALTER COLUMN storage_path DROP NOT NULL;
ALTER TABLE public.imports ADD CONSTRAINT imports_source_has_a_file
    CHECK ((source = 'export') = (storage_path IS NOT NULL));
GRANT INSERT (source) ON public.imports TO authenticated;
ALTER POLICY imports_insert_own ON public.imports
    WITH CHECK (
        user_id = auth.uid()
        AND (
            (source = 'chunks' AND storage_path IS NULL)
            OR (
                source = 'export'
                -- <bucket>/<user_id>/<file...>, with no empty, "." or ".." segment
                AND storage_path ~ ('^[A-Za-z0-9][A-Za-z0-9_.-]*/' || auth.uid()::text || '/[^/].*$')
                AND storage_path !~ '(^|/)\.{1,2}(/|$)'
                AND storage_path !~ '(//|/$)'
                AND storage_path !~ '[\\[:cntrl:]]'
            )
        )
    );

-- The profile mirrors a cancelled pass as cancelled; full_pass_completed_at is
-- the time of the last pass that completed.
SELECT public.fullpass_add_constraint('user_profiles', 'fullpass_user_profiles_full_pass_status_v2',
    $d$CHECK (full_pass_status IN ('pending', 'processing', 'complete', 'failed', 'cancelled'))$d$);
DO $$
BEGIN
    IF public.fullpass_recorded('user_profiles',
                                'constraint:fullpass_user_profiles_full_pass_status_check') THEN
        ALTER TABLE public.user_profiles
            DROP CONSTRAINT fullpass_user_profiles_full_pass_status_check;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION public.fullpass_mirror_profile(
    p_user_id uuid, p_status text, p_error text DEFAULT NULL
)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    UPDATE public.user_profiles
       SET full_pass_status = p_status,
           full_pass_error = p_error,
           full_pass_started_at = CASE WHEN p_status = 'processing'
                                       THEN coalesce(full_pass_started_at, now())
                                       WHEN p_status = 'pending' THEN NULL
                                       ELSE full_pass_started_at END,
           full_pass_completed_at = CASE WHEN p_status = 'complete' THEN now()
                                         ELSE full_pass_completed_at END,
           updated_at = now()
     WHERE user_id = p_user_id;
    IF NOT FOUND THEN
        INSERT INTO public.user_profiles (user_id, full_pass_status, full_pass_error,
                                          full_pass_started_at, full_pass_completed_at)
        VALUES (p_user_id, p_status, p_error,
                CASE WHEN p_status = 'processing' THEN now() END,
                CASE WHEN p_status = 'complete' THEN now() END);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION public.cancel_import(p_import_id uuid)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    imp public.imports;
BEGIN
    SELECT * INTO imp FROM public.imports WHERE id = p_import_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'import % does not exist', p_import_id USING ERRCODE = 'no_data_found';
    END IF;
    IF imp.status NOT IN ('pending', 'processing') THEN
        RETURN false;  -- already finished: nothing to stop
    END IF;
    PERFORM public.fullpass_cancel_jobs(p_import_id);
    UPDATE public.import_stages
       SET status = 'failed', error = 'cancelled', finished_at = now(), updated_at = now()
     WHERE import_id = p_import_id AND status = 'running';
    UPDATE public.imports
       SET status = 'cancelled', error = 'cancelled by operator', completed_at = now(),
           generation = generation + 1, updated_at = now()
     WHERE id = p_import_id;
    PERFORM public.fullpass_mirror_profile(imp.user_id, 'cancelled', 'cancelled by operator');
    RETURN true;
END
$$;

-- A requeue of a published pass from after `chunk` stages its chunks again
-- (publishing moved them to conversation_chunks).
CREATE OR REPLACE FUNCTION public.fullpass_restage_chunks(p_import_id uuid)
    RETURNS int
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    n int;
    cols text := public.fullpass_chunk_columns();
BEGIN
    IF EXISTS (SELECT 1 FROM public.import_chunks WHERE import_id = p_import_id) THEN
        RETURN 0;
    END IF;
    EXECUTE format('INSERT INTO public.import_chunks (%1$s)'
                   ' SELECT %1$s FROM public.conversation_chunks WHERE import_id = $1', cols)
    USING p_import_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION public.fullpass_restage_chunks(uuid) FROM PUBLIC, anon, authenticated;

CREATE OR REPLACE FUNCTION public.requeue_import(p_import_id uuid, p_from_stage text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    imp public.imports;
    from_stage text := p_from_stage;
    from_pos smallint;
    other uuid;
BEGIN
    SELECT * INTO imp FROM public.imports WHERE id = p_import_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'import % does not exist', p_import_id USING ERRCODE = 'no_data_found';
    END IF;

    IF from_stage IS NULL THEN
        -- Resume: the first stage that has not finished (the failed one, or
        -- the one that was running); a complete import redoes its last stage.
        SELECT s.stage INTO from_stage FROM public.import_stages s
         WHERE s.import_id = p_import_id AND s.status NOT IN ('done', 'skipped')
         ORDER BY s.position LIMIT 1;
        IF from_stage IS NULL THEN
            SELECT s.stage INTO from_stage FROM public.fullpass_stages() s
             ORDER BY s.position DESC LIMIT 1;
        END IF;
    END IF;

    SELECT s.position INTO from_pos FROM public.fullpass_stages() s WHERE s.stage = from_stage;
    IF from_pos IS NULL THEN
        RAISE EXCEPTION 'unknown stage "%"', from_stage
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Stages: ' || (SELECT string_agg(stage, ', ' ORDER BY position)
                                          FROM public.fullpass_stages());
    END IF;

    SELECT id INTO other FROM public.imports
     WHERE user_id = imp.user_id AND status IN ('pending', 'processing') AND id <> imp.id
     LIMIT 1;
    IF other IS NOT NULL THEN
        RAISE EXCEPTION 'user % already has another full pass in progress (import %)',
            imp.user_id, other USING ERRCODE = 'unique_violation';
    END IF;

    PERFORM public.fullpass_cancel_jobs(p_import_id);

    IF imp.status = 'complete'
       AND from_pos > (SELECT position FROM public.fullpass_stages() WHERE stage = 'chunk') THEN
        PERFORM public.fullpass_restage_chunks(p_import_id);
    END IF;

    UPDATE public.import_stages s
       SET status = 'pending', attempts = 0, items_done = 0, items_total = NULL,
           input_tokens = 0, output_tokens = 0, started_at = NULL, finished_at = NULL,
           error = NULL, output = '{}'::jsonb, updated_at = now()
     WHERE s.import_id = p_import_id
       AND (s.position >= from_pos OR s.status NOT IN ('done', 'skipped'));
    IF from_pos <= (SELECT position FROM public.fullpass_stages() WHERE stage = 'extract') THEN
        DELETE FROM public.chunk_facts WHERE import_id = p_import_id;
    END IF;

    UPDATE public.imports
       SET status = 'pending', stage = from_stage, attempts = 0, error = NULL,
           completed_at = NULL, generation = generation + 1, updated_at = now(),
           input_tokens = (SELECT coalesce(sum(input_tokens), 0) FROM public.import_stages
                            WHERE import_id = p_import_id),
           output_tokens = (SELECT coalesce(sum(output_tokens), 0) FROM public.import_stages
                             WHERE import_id = p_import_id)
     WHERE id = p_import_id
     RETURNING * INTO imp;
    PERFORM public.fullpass_mirror_profile(imp.user_id, 'pending');
    RETURN public.fullpass_defer(p_import_id, from_stage, imp.generation);
END
$$;

-- The progress view: readiness and why stages were skipped ------------------
DROP VIEW public.import_progress;
CREATE VIEW public.import_progress WITH (security_invoker = true) AS
SELECT i.id AS import_id,
       i.user_id,
       i.status,
       i.stage,
       cur.position AS stage_index,
       (SELECT count(*)::int FROM public.fullpass_stages()) AS stage_count,
       p.progress,
       cur.items_done,
       cur.items_total,
       i.attempts,
       CASE
           WHEN i.status = 'complete' THEN i.completed_at
           WHEN i.status = 'processing' AND p.progress > 0 AND p.progress < 100
               THEN now() + (now() - i.started_at) * ((100 - p.progress) / p.progress)::float8
       END AS eta,
       i.error,
       i.input_tokens,
       i.output_tokens,
       i.conversation_count,
       i.chunk_count,
       i.fact_count,
       i.created_at,
       i.started_at,
       i.completed_at,
       i.updated_at,
       i.generation,
       i.spent_input_tokens,
       i.spent_output_tokens,
       i.source,
       -- MEMORY is published as soon as the memory stage finishes.
       coalesce(mem.status = 'done', false) AS memory_ready,
       -- The sections are published with the whole pass.
       (i.status = 'complete' AND coalesce(reg.status = 'done', false)) AS sections_ready,
       p.note
  FROM public.imports i
  LEFT JOIN public.import_stages cur ON cur.import_id = i.id AND cur.stage = i.stage
  LEFT JOIN public.import_stages mem ON mem.import_id = i.id AND mem.stage = 'memory'
  LEFT JOIN public.import_stages reg ON reg.import_id = i.id AND reg.stage = 'regenerate'
  LEFT JOIN LATERAL (
      SELECT CASE WHEN i.status = 'complete' THEN 100.0
             ELSE round(100.0 * sum(CASE
                     WHEN s.status IN ('done', 'skipped') THEN s.weight
                     WHEN s.status = 'running' AND s.items_total > 0
                         THEN s.weight * least(s.items_done, s.items_total)::numeric / s.items_total
                     ELSE 0 END) / nullif(sum(s.weight), 0), 1)
             END AS progress,
             string_agg(DISTINCT s.output ->> 'skipped', '; ')
                 FILTER (WHERE s.status = 'skipped') AS note
        FROM public.import_stages s
       WHERE s.import_id = i.id
  ) p ON true;
REVOKE ALL ON public.import_progress FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.import_progress TO authenticated;
GRANT ALL ON public.import_progress TO service_role;
