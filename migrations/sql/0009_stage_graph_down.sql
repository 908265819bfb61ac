-- Undoes 0009_stage_graph_up.sql: back to the stage chain of 0007.

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

CREATE OR REPLACE FUNCTION public.fullpass_repair_import(p_import_id uuid, p_max_repairs int DEFAULT 5)
    RETURNS text
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    imp public.imports;
    resume text;
BEGIN
    SELECT * INTO imp FROM public.imports
     WHERE id = p_import_id AND status IN ('pending', 'processing')
     FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM public.procrastinate_jobs j
                WHERE j.queueing_lock = imp.id::text AND j.status IN ('todo', 'doing')) THEN
        RETURN NULL;  -- a job appeared meanwhile: nothing to repair
    END IF;
    SELECT s.stage INTO resume FROM public.import_stages s
     WHERE s.import_id = imp.id AND s.status NOT IN ('done', 'skipped')
     ORDER BY s.position LIMIT 1;
    IF resume IS NULL OR imp.repairs >= p_max_repairs THEN
        UPDATE public.import_stages
           SET status = 'failed', finished_at = now(), updated_at = now(),
               error = 'left without a job ' || (imp.repairs + 1) || ' times'
         WHERE import_id = imp.id AND stage = coalesce(resume, imp.stage);
        UPDATE public.imports
           SET status = 'failed', completed_at = now(), updated_at = now(),
               repairs = repairs + 1,
               error = coalesce(resume, imp.stage) || ': left without a job '
                       || (imp.repairs + 1) || ' times; not repaired again'
         WHERE id = imp.id;
        PERFORM public.fullpass_mirror_profile(imp.user_id, 'failed',
            coalesce(resume, imp.stage) || ': left without a job');
        RETURN 'failed';
    END IF;
    UPDATE public.import_stages
       SET status = 'pending', updated_at = now()
     WHERE import_id = imp.id AND stage = resume AND status = 'running';
    UPDATE public.imports
       SET stage = resume, repairs = repairs + 1, updated_at = now()
     WHERE id = imp.id;
    PERFORM public.fullpass_defer(imp.id, resume, imp.generation);
    RETURN resume;
END
$$;

CREATE OR REPLACE VIEW public.fullpass_orphaned_imports AS
SELECT i.id AS import_id, i.status, i.stage, i.generation, i.repairs, i.updated_at
  FROM public.imports i
 WHERE i.status IN ('pending', 'processing')
   AND NOT EXISTS (
       SELECT 1 FROM public.procrastinate_jobs j
        WHERE j.queueing_lock = i.id::text AND j.status IN ('todo', 'doing')
   );

CREATE OR REPLACE FUNCTION public.imports_after_insert()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.fullpass_check_options(NEW.options);
    INSERT INTO public.import_stages (import_id, stage, "position", weight)
    SELECT NEW.id, s.stage, s.position, s.weight FROM public.fullpass_stages() s;
    PERFORM public.fullpass_mirror_profile(NEW.user_id, 'pending');
    PERFORM public.fullpass_defer(NEW.id, 'download', NEW.generation);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.fullpass_cancel_jobs(p_import_id uuid)
    RETURNS int
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    j record;
    n int := 0;
BEGIN
    FOR j IN
        SELECT id, status FROM public.procrastinate_jobs
         WHERE queueing_lock = p_import_id::text AND status IN ('todo', 'doing')
         FOR UPDATE
    LOOP
        PERFORM public.procrastinate_cancel_job_v1(j.id, j.status = 'doing', false);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION public.fullpass_defer(
    p_import_id uuid, p_stage text, p_generation int, p_scheduled_at timestamptz DEFAULT NULL
)
    RETURNS bigint
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT (public.procrastinate_defer_jobs_v1(ARRAY[
        ROW(
            'imports',
            'fullpass.' || p_stage,
            0,
            NULL,
            p_import_id::text,
            jsonb_build_object('import_id', p_import_id, 'generation', p_generation),
            p_scheduled_at
        )::public.procrastinate_job_to_defer_v1
    ]))[1]
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

DROP FUNCTION public.fullpass_queue_ready(uuid, int);
DROP FUNCTION public.fullpass_advance(uuid, int);
DROP FUNCTION public.fullpass_stage_after();
DROP FUNCTION public.fullpass_store_embeddings(uuid, int, text, uuid, uuid[], text[], text, int);
DROP FUNCTION public.fullpass_embedding_status(uuid, text, text);
DROP FUNCTION public.fullpass_holds(uuid, int, text, uuid);
DROP FUNCTION public.fullpass_defer_lanes(uuid, text, int, int);
DROP FUNCTION public.fullpass_fetch_job(varchar[], bigint);
DROP INDEX public.fullpass_jobs_by_import;
DROP TABLE public.import_pages, public.import_lanes;
ALTER TABLE public.imports DROP COLUMN embedding_tokens;

CREATE OR REPLACE FUNCTION public.fullpass_stages()
    RETURNS TABLE (stage text, "position" smallint, weight smallint)
    LANGUAGE sql IMMUTABLE
AS $$
    VALUES ('download'::text, 1::smallint, 3::smallint),
           ('chunk', 2, 12),
           ('extract', 3, 55),
           ('reduce', 4, 5),
           ('memory', 5, 8),
           ('regenerate', 6, 14),
           ('finalize', 7, 3)
$$;

DELETE FROM public.import_stages WHERE stage = 'embed';
UPDATE public.import_stages s
   SET "position" = f.position, weight = f.weight
  FROM public.fullpass_stages() f
 WHERE f.stage = s.stage;
UPDATE public.import_stages SET status = 'pending' WHERE status = 'queued';
ALTER TABLE public.import_stages DROP CONSTRAINT import_stages_status_check;
ALTER TABLE public.import_stages ADD CONSTRAINT import_stages_status_check
    CHECK (status IN ('pending', 'running', 'done', 'failed', 'skipped'));
