-- Hardening: options checked at insert, a lease per claimed stage, the whole
-- spend of an import, and the repair of an import left without a job.

-- Options, checked when the row is inserted ---------------------------------
-- The rules are the worker's own option model (worker/options.py) as JSON
-- schema, stored by `fullpass migrate`; the checker below understands the
-- subset of JSON schema that model produces.
CREATE TABLE public.fullpass_options_schema (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    schema jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.fullpass_options_schema ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.fullpass_options_schema FROM PUBLIC, anon, authenticated;

CREATE FUNCTION public.fullpass_check_value(p_path text, p_value jsonb, p_rule jsonb)
    RETURNS void
    LANGUAGE plpgsql
    IMMUTABLE
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    want text := p_rule ->> 'type';
    got text := jsonb_typeof(p_value);
    shown text := left(p_value::text, 60);
    n numeric;
    item jsonb;
    i int := 0;
BEGIN
    IF want = 'integer' THEN
        IF got <> 'number' OR (p_value #>> '{}')::numeric <> trunc((p_value #>> '{}')::numeric)
           OR (p_value #>> '{}') ~ '[.eE]' THEN
            RAISE EXCEPTION '% must be an integer, not %', p_path, shown
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSIF want = 'number' THEN
        IF got <> 'number' THEN
            RAISE EXCEPTION '% must be a number, not %', p_path, shown
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSIF want IS NOT NULL AND got <> want THEN
        RAISE EXCEPTION '% must be a %, not %', p_path,
            CASE want WHEN 'array' THEN 'list' ELSE want END, shown
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF got = 'number' THEN
        n := (p_value #>> '{}')::numeric;
        IF (p_rule ? 'minimum' AND n < (p_rule ->> 'minimum')::numeric)
           OR (p_rule ? 'maximum' AND n > (p_rule ->> 'maximum')::numeric) THEN
            RAISE EXCEPTION '% must be between % and %, not %', p_path,
                coalesce(p_rule ->> 'minimum', '-inf'), coalesce(p_rule ->> 'maximum', 'inf'), shown
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF p_rule ? 'enum' AND NOT (p_rule -> 'enum') @> jsonb_build_array(p_value) THEN
        RAISE EXCEPTION '% must be one of %, not %', p_path, p_rule -> 'enum', shown
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF got = 'array' THEN
        IF jsonb_array_length(p_value) < coalesce((p_rule ->> 'minItems')::int, 0)
           OR jsonb_array_length(p_value) > coalesce((p_rule ->> 'maxItems')::int, 1000) THEN
            RAISE EXCEPTION '% must hold between % and % items', p_path,
                coalesce((p_rule ->> 'minItems')::int, 0), coalesce((p_rule ->> 'maxItems')::int, 1000)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (p_rule ->> 'uniqueItems')::boolean
           AND (SELECT count(DISTINCT e) <> count(*) FROM jsonb_array_elements(p_value) e) THEN
            RAISE EXCEPTION '% must not repeat an item', p_path
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR item IN SELECT e FROM jsonb_array_elements(p_value) e LOOP
            PERFORM public.fullpass_check_value(p_path || '[' || i || ']', item,
                                                coalesce(p_rule -> 'items', '{}'::jsonb));
            i := i + 1;
        END LOOP;
    END IF;
END
$$;

-- Raises a clear error for anything in p_options the worker would not accept.
CREATE FUNCTION public.fullpass_check_options(p_options jsonb)
    RETURNS void
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    rules jsonb;
    props jsonb;
    k text;
    v jsonb;
BEGIN
    IF p_options IS NULL OR jsonb_typeof(p_options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.schema INTO rules FROM public.fullpass_options_schema s;
    IF octet_length(p_options::text) > coalesce((rules ->> 'maxBytes')::int, 4096) THEN
        RAISE EXCEPTION 'options are larger than % bytes', coalesce((rules ->> 'maxBytes')::int, 4096)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    props := coalesce(rules -> 'properties', '{}'::jsonb);
    FOR k, v IN SELECT e.key, e.value FROM jsonb_each(p_options) e LOOP
        IF NOT props ? k THEN
            RAISE EXCEPTION 'options: unknown key "%"', left(k, 60)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known keys: ' || coalesce(
                          (SELECT string_agg(key, ', ' ORDER BY key) FROM jsonb_object_keys(props) key),
                          'none (run fullpass migrate)');
        END IF;
        PERFORM public.fullpass_check_value('options.' || k, v, props -> k);
    END LOOP;
END
$$;

-- The after-insert trigger runs as the owner, so the checker needs no grant
-- to the API roles; an error here aborts the insert.
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

-- A lease per claim ---------------------------------------------------------
-- Every claim of a stage draws a new lease; the job holding it is the only one
-- allowed to call a model, checkpoint or finish for that stage. A worker that
-- froze past the stalled timeout and came back finds its lease gone and stops.
ALTER TABLE public.import_stages ADD COLUMN lease uuid;

-- The whole spend of an import ----------------------------------------------
-- input_tokens/output_tokens are the current generation's (a requeue resets
-- them to what the kept stages cost); spent_* count every token billed for the
-- import across all generations, including answers a stale job could no
-- longer checkpoint.
ALTER TABLE public.imports
    ADD COLUMN spent_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN spent_output_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN repairs int NOT NULL DEFAULT 0;
UPDATE public.imports SET spent_input_tokens = input_tokens, spent_output_tokens = output_tokens;

CREATE OR REPLACE FUNCTION public.imports_before_insert()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    active uuid;
BEGIN
    -- A new import always starts from the beginning, whatever the insert said.
    NEW.status := 'pending';
    NEW.stage := 'download';
    NEW.attempts := 0;
    NEW.error := NULL;
    NEW.generation := 1;
    NEW.input_tokens := 0;
    NEW.output_tokens := 0;
    NEW.spent_input_tokens := 0;
    NEW.spent_output_tokens := 0;
    NEW.repairs := 0;
    NEW.started_at := NULL;
    NEW.completed_at := NULL;
    NEW.created_at := now();
    NEW.updated_at := now();
    SELECT id INTO active FROM public.imports
     WHERE user_id = NEW.user_id AND status IN ('pending', 'processing')
     LIMIT 1;
    IF active IS NOT NULL THEN
        RAISE EXCEPTION 'user % already has a full pass in progress (import %)', NEW.user_id, active
            USING ERRCODE = 'unique_violation',
                  HINT = 'Wait for it to finish, or stop it with public.cancel_import().';
    END IF;
    RETURN NEW;
END
$$;

-- Imports left without a job --------------------------------------------------
-- A pending or processing import always has a queued or running job (every
-- hand-over defers the next job in the same transaction). One without any (a
-- job aborted or deleted by hand, a bug) would never move again: the worker's
-- maintenance loop finds them and calls fullpass_repair_import.
CREATE VIEW public.fullpass_orphaned_imports AS
SELECT i.id AS import_id, i.status, i.stage, i.generation, i.repairs, i.updated_at
  FROM public.imports i
 WHERE i.status IN ('pending', 'processing')
   AND NOT EXISTS (
       SELECT 1 FROM public.procrastinate_jobs j
        WHERE j.queueing_lock = i.id::text AND j.status IN ('todo', 'doing')
   );
REVOKE ALL ON public.fullpass_orphaned_imports FROM PUBLIC, anon, authenticated;

-- Re-defers the first unfinished stage of an import that has no job, with the
-- same generation (so it stays fenced against anything older). After
-- p_max_repairs repairs the import fails instead: something keeps killing it.
CREATE FUNCTION public.fullpass_repair_import(p_import_id uuid, p_max_repairs int DEFAULT 5)
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

REVOKE ALL ON FUNCTION public.fullpass_check_value(text, jsonb, jsonb),
                       public.fullpass_check_options(jsonb),
                       public.fullpass_repair_import(uuid, int)
    FROM PUBLIC, anon, authenticated;

-- The progress view gains the whole spend of the import.
CREATE OR REPLACE VIEW public.import_progress WITH (security_invoker = true) AS
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
