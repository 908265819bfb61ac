-- Undoes 0007_publish_up.sql.

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
       i.spent_output_tokens
  FROM public.imports i
  LEFT JOIN public.import_stages cur ON cur.import_id = i.id AND cur.stage = i.stage
  LEFT JOIN LATERAL (
      SELECT CASE WHEN i.status = 'complete' THEN 100.0
             ELSE round(100.0 * sum(CASE
                     WHEN s.status IN ('done', 'skipped') THEN s.weight
                     WHEN s.status = 'running' AND s.items_total > 0
                         THEN s.weight * least(s.items_done, s.items_total)::numeric / s.items_total
                     ELSE 0 END) / nullif(sum(s.weight), 0), 1)
             END AS progress
        FROM public.import_stages s
       WHERE s.import_id = i.id
  ) p ON true;
REVOKE ALL ON public.import_progress FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.import_progress TO authenticated;
GRANT ALL ON public.import_progress TO service_role;

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
    PERFORM public.fullpass_mirror_profile(imp.user_id, 'failed', 'cancelled by operator');
    RETURN true;
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
           full_pass_completed_at = CASE WHEN p_status IN ('complete', 'failed') THEN now()
                                         ELSE NULL END,
           updated_at = now()
     WHERE user_id = p_user_id;
    IF NOT FOUND THEN
        INSERT INTO public.user_profiles (user_id, full_pass_status, full_pass_error,
                                          full_pass_started_at)
        VALUES (p_user_id, p_status, p_error,
                CASE WHEN p_status = 'processing' THEN now() END);
    END IF;
END
$$;

DROP FUNCTION public.fullpass_restage_chunks(uuid);
DROP FUNCTION public.fullpass_stage_existing_chunks(uuid, uuid);
DROP FUNCTION public.fullpass_app_chunks_replaceable(uuid, uuid);
DROP FUNCTION public.fullpass_publish_chunks(uuid);
DROP FUNCTION public.fullpass_chunk_columns();

-- Backfills have no file: they keep a placeholder path once the column is required again.
UPDATE public.imports SET storage_path = 'backfill/' || user_id || '/chunks'
 WHERE storage_path IS NULL;
ALTER POLICY imports_insert_own ON public.imports
    WITH CHECK (
        user_id = auth.uid()
        -- <bucket>/<user_id>/<file...>, with no empty, "." or ".." segment
        AND storage_path ~ ('^[A-Za-z0-9][A-Za-z0-9_.-]*/' || auth.uid()::text || '/[^/].*$')
        AND storage_path !~ '(^|/)\.{1,2}(/|$)'
        AND storage_path !~ '(//|/$)'
        AND storage_path !~ '[\\[:cntrl:]]'
    );
ALTER TABLE public.imports DROP CONSTRAINT imports_source_has_a_file;
ALTER TABLE public.imports DROP COLUMN source;
ALTER TABLE public.imports ALTER COLUMN storage_path SET NOT NULL;

DROP TABLE public.import_chunks;

-- The status constraint of 0002 comes back (its pass statuses had no 'cancelled').
UPDATE public.user_profiles SET full_pass_status = 'failed' WHERE full_pass_status = 'cancelled';
SELECT public.fullpass_undo('0007');
DO $$
BEGIN
    IF public.fullpass_recorded('user_profiles',
                                'constraint:fullpass_user_profiles_full_pass_status_check')
       AND NOT EXISTS (SELECT 1 FROM pg_constraint
                        WHERE conrelid = 'public.user_profiles'::regclass
                          AND conname = 'fullpass_user_profiles_full_pass_status_check') THEN
        ALTER TABLE public.user_profiles ADD CONSTRAINT fullpass_user_profiles_full_pass_status_check
            CHECK (full_pass_status IN ('pending', 'processing', 'complete', 'failed'));
    END IF;
END
$$;
