-- The stages as a graph, and the map step spread over the fleet.
--
-- * An `embed` stage runs beside the map step (both after `chunk`); `finalize`
--   waits for both. A stage is queued once every stage it comes after is done
--   or skipped; the transaction that finishes a stage queues what it made
--   ready (serialised by the import's row lock, so a stage is queued once).
-- * A stage with a long work list (`extract`, `embed`) fans out: its job
--   splits the list into pages and queues lanes; any worker runs a lane, and a
--   lane takes pages until none is left. The last lane out queues the stage's
--   job again, which finds its work done and finishes the stage.
-- * Embeddings are stored batch by batch, fenced like every checkpoint.

-- The stage list: the one place SQL learns the pipeline's order and weights.
-- `position` orders the display, and the import's current stage is its first
-- unfinished one: `embed` sits late, so it is shown only once the chain ahead
-- of it is done and the pass waits for it alone.
CREATE OR REPLACE FUNCTION public.fullpass_stages()
    RETURNS TABLE (stage text, "position" smallint, weight smallint)
    LANGUAGE sql IMMUTABLE
AS $$
    VALUES ('download'::text, 1::smallint, 3::smallint),
           ('chunk', 2, 12),
           ('extract', 3, 47),
           ('reduce', 4, 5),
           ('memory', 5, 8),
           ('regenerate', 6, 14),
           ('embed', 7, 8),
           ('finalize', 8, 3)
$$;

-- What each stage comes after. worker/stages.py holds the same graph; a test
-- keeps them in step.
CREATE FUNCTION public.fullpass_stage_after()
    RETURNS TABLE (stage text, after text)
    LANGUAGE sql IMMUTABLE
AS $$
    VALUES ('chunk'::text, 'download'::text),
           ('extract', 'chunk'),
           ('embed', 'chunk'),
           ('reduce', 'extract'),
           ('memory', 'reduce'),
           ('regenerate', 'memory'),
           ('finalize', 'regenerate'),
           ('finalize', 'embed')
$$;

-- A stage with a job waiting in the queue is 'queued' (so it is queued once).
ALTER TABLE public.import_stages DROP CONSTRAINT import_stages_status_check;
ALTER TABLE public.import_stages ADD CONSTRAINT import_stages_status_check
    CHECK (status IN ('pending', 'queued', 'running', 'done', 'failed', 'skipped'));

-- Existing imports get the new stage (skipped: their passes started without
-- it), and every stage its new position and weight.
INSERT INTO public.import_stages (import_id, stage, "position", weight, status, output)
SELECT i.id, 'embed', 7, 8, 'skipped',
       jsonb_build_object('skipped', 'started before the embed stage existed')
  FROM public.imports i
ON CONFLICT DO NOTHING;
UPDATE public.import_stages s
   SET "position" = f.position, weight = f.weight
  FROM public.fullpass_stages() f
 WHERE f.stage = s.stage AND (s.position, s.weight) IS DISTINCT FROM (f.position, f.weight);
UPDATE public.import_stages SET status = 'queued'
 WHERE status = 'pending'
   AND import_id IN (SELECT id FROM public.imports WHERE status IN ('pending', 'processing'))
   AND EXISTS (SELECT 1 FROM public.procrastinate_jobs j
                WHERE j.queueing_lock = import_stages.import_id::text AND j.status = 'todo'
                  AND j.task_name = 'fullpass.' || import_stages.stage);

-- What embedding the chunks cost.
ALTER TABLE public.imports ADD COLUMN embedding_tokens bigint NOT NULL DEFAULT 0;

-- Pages and lanes ---------------------------------------------------------------
-- A fanned-out stage's work list, page by page. A page is taken by one lane at
-- a time; `lease` is that lane's lease when it took the page.
CREATE TABLE public.import_pages (
    import_id uuid NOT NULL REFERENCES public.imports (id) ON DELETE CASCADE,
    stage text NOT NULL,
    page int NOT NULL,
    chunk_ids uuid[] NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done')),
    lane int,
    lease uuid,
    attempts int NOT NULL DEFAULT 0,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (import_id, stage, page)
);
CREATE INDEX import_pages_open ON public.import_pages (import_id, stage, page)
    WHERE status <> 'done';

-- The lanes of a fanned-out stage: one job each. Every run of a lane's job
-- draws a new lease; checkpoints of the lane are fenced by it.
CREATE TABLE public.import_lanes (
    import_id uuid NOT NULL REFERENCES public.imports (id) ON DELETE CASCADE,
    stage text NOT NULL,
    lane int NOT NULL,
    lease uuid,
    attempts int NOT NULL DEFAULT 0,
    pages_done int NOT NULL DEFAULT 0,
    -- What the lane's runs did (calls, chunks...), summed by the stage at its end.
    stats jsonb NOT NULL DEFAULT '{}'::jsonb,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (import_id, stage, lane)
);

ALTER TABLE public.import_pages ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.import_lanes ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.import_pages, public.import_lanes FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.import_pages, public.import_lanes TO service_role;

-- Whether `p_lease` may still write for the stage: the import is processing
-- at this generation, and the lease is the stage's own (its job's claim) or a
-- lane's of the stage (while the stage runs fanned out).
CREATE FUNCTION public.fullpass_holds(
    p_import_id uuid, p_generation int, p_stage text, p_lease uuid
)
    RETURNS boolean
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM public.imports i
          JOIN public.import_stages s ON s.import_id = i.id AND s.stage = p_stage
         WHERE i.id = p_import_id AND i.generation = p_generation AND i.status = 'processing'
           AND (s.lease = p_lease
                OR (s.status = 'running' AND EXISTS (
                        SELECT 1 FROM public.import_lanes l
                         WHERE l.import_id = i.id AND l.stage = p_stage AND l.lease = p_lease))))
$$;

-- The queue -------------------------------------------------------------------
-- A stage's job shares the import's queueing lock with the chain (at most one
-- queued); `embed`, which runs beside the chain, has one of its own. Stage
-- jobs go before lanes (priority 0 against -1): a small import arriving while
-- large ones fan out is not queued behind their lanes.
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
            p_import_id::text || CASE WHEN p_stage = 'embed' THEN ':embed' ELSE '' END,
            jsonb_build_object('import_id', p_import_id, 'generation', p_generation),
            p_scheduled_at
        )::public.procrastinate_job_to_defer_v1
    ]))[1]
$$;

CREATE FUNCTION public.fullpass_defer_lanes(
    p_import_id uuid, p_stage text, p_generation int, p_lanes int
)
    RETURNS bigint[]
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT public.procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW(
            'imports',
            'fullpass.lane',
            -1,
            NULL,
            NULL,
            jsonb_build_object('import_id', p_import_id, 'generation', p_generation,
                               'stage', p_stage, 'lane', n),
            NULL
        )::public.procrastinate_job_to_defer_v1
          FROM generate_series(1, p_lanes) AS n
    ))
$$;

-- Jobs of an import, found by their arguments (an import has several jobs at
-- once now: its chain, its side stage, its lanes).
CREATE INDEX fullpass_jobs_by_import ON public.procrastinate_jobs ((args ->> 'import_id'))
    WHERE status IN ('todo', 'doing');

-- procrastinate's fetch (procrastinate_fetch_job_v2 of procrastinate 3.10),
-- with one rule more: a worker runs at most one lane of an import at a time.
-- A lane already has the import's whole concurrency on its worker; another
-- lane there would only share it, while it could run on a worker that has none,
-- and an import never takes every slot of a worker (a small import arriving
-- finds one free).
CREATE FUNCTION public.fullpass_fetch_job(target_queue_names varchar[], p_worker_id bigint)
    RETURNS public.procrastinate_jobs
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    found_jobs public.procrastinate_jobs;
BEGIN
    WITH candidate AS (
        SELECT jobs.*
          FROM public.procrastinate_jobs AS jobs
         WHERE NOT EXISTS (
                   SELECT 1 FROM public.procrastinate_jobs AS other_jobs
                    WHERE jobs.lock IS NOT NULL
                      AND other_jobs.lock = jobs.lock
                      AND (other_jobs.status = 'doing'
                           OR (other_jobs.status = 'todo'
                               AND (other_jobs.priority > jobs.priority
                                    OR (other_jobs.priority = jobs.priority
                                        AND other_jobs.id < jobs.id)))))
           AND jobs.status = 'todo'
           AND (target_queue_names IS NULL OR jobs.queue_name = ANY (target_queue_names))
           AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
           AND NOT (jobs.task_name = 'fullpass.lane' AND EXISTS (
                   SELECT 1 FROM public.procrastinate_jobs AS mine
                    WHERE mine.status = 'doing' AND mine.worker_id = p_worker_id
                      AND mine.task_name = 'fullpass.lane'
                      AND mine.args ->> 'import_id' = jobs.args ->> 'import_id'))
         ORDER BY jobs.priority DESC, jobs.id ASC
         LIMIT 1
           FOR UPDATE OF jobs SKIP LOCKED
    )
    UPDATE public.procrastinate_jobs
       SET status = 'doing', worker_id = p_worker_id
      FROM candidate
     WHERE procrastinate_jobs.id = candidate.id
    RETURNING procrastinate_jobs.* INTO found_jobs;
    RETURN found_jobs;
END
$$;

-- Queues every stage of an import whose dependencies are done or skipped and
-- that is not queued, running or finished yet. Returns the stages queued.
CREATE FUNCTION public.fullpass_queue_ready(p_import_id uuid, p_generation int)
    RETURNS text[]
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    ready text[];
    s text;
BEGIN
    SELECT coalesce(array_agg(st.stage ORDER BY st.position), '{}') INTO ready
      FROM public.import_stages st
     WHERE st.import_id = p_import_id AND st.status = 'pending'
       AND NOT EXISTS (
           SELECT 1 FROM public.fullpass_stage_after() d
             JOIN public.import_stages dep ON dep.import_id = st.import_id AND dep.stage = d.after
            WHERE d.stage = st.stage AND dep.status NOT IN ('done', 'skipped'));
    FOREACH s IN ARRAY ready LOOP
        UPDATE public.import_stages SET status = 'queued', updated_at = now()
         WHERE import_id = p_import_id AND stage = s;
        PERFORM public.fullpass_defer(p_import_id, s, p_generation);
    END LOOP;
    RETURN ready;
END
$$;

-- After a stage finished (in its transaction, the import row locked): queues
-- what is now ready, then either completes the import (every stage done or
-- skipped) or points it at its first unfinished stage. Returns that stage
-- (NULL: the import is complete).
CREATE FUNCTION public.fullpass_advance(p_import_id uuid, p_generation int)
    RETURNS text
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    nxt record;
BEGIN
    PERFORM public.fullpass_queue_ready(p_import_id, p_generation);
    SELECT s.stage, s.attempts INTO nxt FROM public.import_stages s
     WHERE s.import_id = p_import_id AND s.status NOT IN ('done', 'skipped')
     ORDER BY s.position LIMIT 1;
    IF NOT FOUND THEN
        UPDATE public.imports
           SET status = 'complete', completed_at = now(), updated_at = now(), error = NULL
         WHERE id = p_import_id;
        RETURN NULL;
    END IF;
    UPDATE public.imports
       SET stage = nxt.stage, attempts = nxt.attempts, updated_at = now()
     WHERE id = p_import_id;
    RETURN nxt.stage;
END
$$;

-- Stops every queued job of an import and asks running ones to abort.
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
         WHERE args ->> 'import_id' = p_import_id::text AND status IN ('todo', 'doing')
         FOR UPDATE
    LOOP
        PERFORM public.procrastinate_cancel_job_v1(j.id, j.status = 'doing', false);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

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
    PERFORM public.fullpass_queue_ready(NEW.id, NEW.generation);
    RETURN NULL;
END
$$;

-- The profile mirrors the pass; an embedding that was under way when the pass
-- failed is marked failed (the user's published chunks are untouched), and
-- one a cancelled pass started is forgotten.
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
    IF p_status IN ('failed', 'cancelled') THEN
        PERFORM public.fullpass_embedding_status(
            p_user_id, CASE WHEN p_status = 'failed' THEN 'failed' END, 'processing');
    END IF;
END
$$;

-- Sets user_profiles.embedding_status (only from `p_from` when given). The
-- column may be the app's own, unconstrained, or missing: then nothing is done.
CREATE FUNCTION public.fullpass_embedding_status(
    p_user_id uuid, p_status text, p_from text DEFAULT NULL
)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'public.user_profiles'::regclass
                      AND attname = 'embedding_status' AND NOT attisdropped) THEN
        RETURN;
    END IF;
    EXECUTE 'UPDATE public.user_profiles SET embedding_status = $2, updated_at = now()'
            ' WHERE user_id = $1 AND ($3::text IS NULL OR embedding_status = $3)'
            '   AND embedding_status IS DISTINCT FROM $2'
      USING p_user_id, p_status, p_from;
END
$$;

-- Embeddings of a batch of staged chunks, with what the batch cost, in one
-- statement: written only while `p_lease` holds the stage; the tokens count in
-- the import's embedding spend either way (they were paid). Returns false when
-- the lease no longer holds the stage.
CREATE FUNCTION public.fullpass_store_embeddings(
    p_import_id uuid, p_generation int, p_stage text, p_lease uuid,
    p_ids uuid[], p_vectors text[], p_model text, p_tokens int
)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    current boolean := public.fullpass_holds(p_import_id, p_generation, p_stage, p_lease);
    kind text;
BEGIN
    IF current THEN
        SELECT format_type(a.atttypid, a.atttypmod) INTO kind FROM pg_attribute a
         WHERE a.attrelid = 'public.import_chunks'::regclass AND a.attname = 'embedding'
           AND NOT a.attisdropped;
        IF kind IS NULL THEN
            RAISE EXCEPTION 'import_chunks has no embedding column' USING ERRCODE = 'undefined_column';
        END IF;
        EXECUTE format(
            'UPDATE public.import_chunks c SET embedding = v.vec::%s, embedding_model = $3'
            '  FROM unnest($2::uuid[], $4::text[]) AS v(id, vec)'
            ' WHERE c.import_id = $1 AND c.id = v.id', kind)
          USING p_import_id, p_ids, p_model, p_vectors;
    END IF;
    UPDATE public.imports
       SET embedding_tokens = embedding_tokens + p_tokens, updated_at = now()
     WHERE id = p_import_id AND p_tokens > 0;
    RETURN current;
END
$$;

-- requeue: `p_from_stage` and every stage after it in the graph are redone,
-- with every stage that had not finished; what is ready is queued.
CREATE OR REPLACE FUNCTION public.requeue_import(p_import_id uuid, p_from_stage text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    imp public.imports;
    redo text[];
    other uuid;
BEGIN
    SELECT * INTO imp FROM public.imports WHERE id = p_import_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'import % does not exist', p_import_id USING ERRCODE = 'no_data_found';
    END IF;
    IF p_from_stage IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM public.fullpass_stages() s WHERE s.stage = p_from_stage) THEN
        RAISE EXCEPTION 'unknown stage "%"', p_from_stage
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

    -- What is redone: the named stage and everything after it in the graph,
    -- and every stage that had not finished. Without a stage: the unfinished
    -- ones (the failed or interrupted stage); a complete import redoes finalize.
    WITH RECURSIVE later(stage) AS (
        SELECT p_from_stage WHERE p_from_stage IS NOT NULL
        UNION
        SELECT d.stage FROM public.fullpass_stage_after() d JOIN later l ON d.after = l.stage
    )
    SELECT array_agg(DISTINCT x.stage) INTO redo FROM (
        SELECT stage FROM later
        UNION
        SELECT s.stage FROM public.import_stages s
         WHERE s.import_id = p_import_id AND s.status NOT IN ('done', 'skipped')
    ) x;
    IF redo IS NULL THEN
        redo := ARRAY['finalize'];
    END IF;

    PERFORM public.fullpass_cancel_jobs(p_import_id);

    IF imp.status = 'complete' AND NOT ('chunk' = ANY (redo)) THEN
        PERFORM public.fullpass_restage_chunks(p_import_id);
    END IF;

    UPDATE public.import_stages s
       SET status = 'pending', attempts = 0, items_done = 0, items_total = NULL,
           input_tokens = 0, output_tokens = 0, started_at = NULL, finished_at = NULL,
           error = NULL, output = '{}'::jsonb, lease = NULL, updated_at = now()
     WHERE s.import_id = p_import_id AND s.stage = ANY (redo);
    DELETE FROM public.import_pages WHERE import_id = p_import_id AND stage = ANY (redo);
    DELETE FROM public.import_lanes WHERE import_id = p_import_id AND stage = ANY (redo);
    IF 'extract' = ANY (redo) THEN
        DELETE FROM public.chunk_facts WHERE import_id = p_import_id;
    END IF;

    UPDATE public.imports
       SET status = 'pending',
           stage = (SELECT s.stage FROM public.fullpass_stages() s
                     WHERE s.stage = ANY (redo) ORDER BY s.position LIMIT 1),
           attempts = 0, error = NULL, completed_at = NULL, generation = generation + 1,
           updated_at = now(),
           input_tokens = (SELECT coalesce(sum(input_tokens), 0) FROM public.import_stages
                            WHERE import_id = p_import_id),
           output_tokens = (SELECT coalesce(sum(output_tokens), 0) FROM public.import_stages
                             WHERE import_id = p_import_id)
     WHERE id = p_import_id
     RETURNING * INTO imp;
    PERFORM public.fullpass_mirror_profile(imp.user_id, 'pending');
    PERFORM public.fullpass_queue_ready(p_import_id, imp.generation);
    RETURN (SELECT max(id) FROM public.procrastinate_jobs
             WHERE args ->> 'import_id' = p_import_id::text AND status = 'todo');
END
$$;

-- Imports that would never move again: pending or processing, and either no
-- job at all, or a stage queued or running with no job of its own (its job or
-- one of its lanes). `updated_at` is the stuck stage's (another stage may keep
-- the import's fresh).
CREATE OR REPLACE VIEW public.fullpass_orphaned_imports AS
SELECT i.id AS import_id, i.status, i.stage, i.generation, i.repairs,
       coalesce(stuck.updated_at, i.updated_at) AS updated_at
  FROM public.imports i
  LEFT JOIN LATERAL (
      SELECT max(s.updated_at) AS updated_at FROM public.import_stages s
       WHERE s.import_id = i.id AND s.status IN ('queued', 'running')
         AND NOT EXISTS (
             SELECT 1 FROM public.procrastinate_jobs j
              WHERE j.args ->> 'import_id' = i.id::text AND j.status IN ('todo', 'doing')
                AND (j.task_name = 'fullpass.' || s.stage
                     OR (j.task_name = 'fullpass.lane' AND j.args ->> 'stage' = s.stage)))
  ) stuck ON true
 WHERE i.status IN ('pending', 'processing')
   AND (stuck.updated_at IS NOT NULL
        OR NOT EXISTS (SELECT 1 FROM public.procrastinate_jobs j
                        WHERE j.args ->> 'import_id' = i.id::text
                          AND j.status IN ('todo', 'doing')));

-- Re-queues what an orphaned import was waiting for: its stages queued or
-- running without a job (a fanned-out stage is planned again from what is
-- left), and whatever is ready. After p_max_repairs the import fails instead.
CREATE OR REPLACE FUNCTION public.fullpass_repair_import(p_import_id uuid, p_max_repairs int DEFAULT 5)
    RETURNS text
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    imp public.imports;
    stuck text[];
    queued text[];
    first_open text;
BEGIN
    SELECT * INTO imp FROM public.imports
     WHERE id = p_import_id AND status IN ('pending', 'processing')
     FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(array_agg(s.stage ORDER BY s.position), '{}') INTO stuck
      FROM public.import_stages s
     WHERE s.import_id = imp.id AND s.status IN ('queued', 'running')
       AND NOT EXISTS (
           SELECT 1 FROM public.procrastinate_jobs j
            WHERE j.args ->> 'import_id' = imp.id::text AND j.status IN ('todo', 'doing')
              AND (j.task_name = 'fullpass.' || s.stage
                   OR (j.task_name = 'fullpass.lane' AND j.args ->> 'stage' = s.stage)));
    IF cardinality(stuck) = 0
       AND EXISTS (SELECT 1 FROM public.procrastinate_jobs j
                    WHERE j.args ->> 'import_id' = imp.id::text AND j.status IN ('todo', 'doing')) THEN
        RETURN NULL;  -- a job appeared meanwhile: nothing to repair
    END IF;
    SELECT s.stage INTO first_open FROM public.import_stages s
     WHERE s.import_id = imp.id AND s.status NOT IN ('done', 'skipped')
     ORDER BY s.position LIMIT 1;
    IF first_open IS NULL OR imp.repairs >= p_max_repairs THEN
        first_open := coalesce(stuck[1], first_open, imp.stage);
        UPDATE public.import_stages
           SET status = 'failed', finished_at = now(), updated_at = now(),
               error = 'left without a job ' || (imp.repairs + 1) || ' times'
         WHERE import_id = imp.id AND stage = first_open;
        UPDATE public.imports
           SET status = 'failed', completed_at = now(), updated_at = now(),
               repairs = repairs + 1,
               error = first_open || ': left without a job '
                       || (imp.repairs + 1) || ' times; not repaired again'
         WHERE id = imp.id;
        PERFORM public.fullpass_cancel_jobs(imp.id);
        PERFORM public.fullpass_mirror_profile(imp.user_id, 'failed',
            first_open || ': left without a job');
        RETURN 'failed';
    END IF;
    UPDATE public.import_stages
       SET status = 'pending', updated_at = now()
     WHERE import_id = imp.id AND stage = ANY (stuck);
    UPDATE public.imports SET repairs = repairs + 1, updated_at = now() WHERE id = imp.id;
    queued := public.fullpass_queue_ready(imp.id, imp.generation);
    RETURN coalesce(nullif(array_to_string(queued, ', '), ''), 'nothing ready');
END
$$;

REVOKE ALL ON FUNCTION public.fullpass_queue_ready(uuid, int), public.fullpass_stage_after(),
                       public.fullpass_advance(uuid, int),
                       public.fullpass_holds(uuid, int, text, uuid),
                       public.fullpass_defer_lanes(uuid, text, int, int),
                       public.fullpass_fetch_job(varchar[], bigint),
                       public.fullpass_embedding_status(uuid, text, text),
                       public.fullpass_store_embeddings(uuid, int, text, uuid, uuid[], text[],
                                                        text, int)
    FROM PUBLIC, anon, authenticated;
REVOKE ALL ON public.fullpass_orphaned_imports FROM PUBLIC, anon, authenticated;

-- The progress view: the embed stage's progress beside the map step's.
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
       p.note,
       -- The embed stage runs beside the map step: its own progress.
       emb.status AS embed_status,
       emb.items_done AS embedded,
       emb.items_total AS embed_total,
       i.embedding_tokens
  FROM public.imports i
  LEFT JOIN public.import_stages cur ON cur.import_id = i.id AND cur.stage = i.stage
  LEFT JOIN public.import_stages mem ON mem.import_id = i.id AND mem.stage = 'memory'
  LEFT JOIN public.import_stages reg ON reg.import_id = i.id AND reg.stage = 'regenerate'
  LEFT JOIN public.import_stages emb ON emb.import_id = i.id AND emb.stage = 'embed'
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
