-- Undoes 0003_hardening_up.sql: back to the 0002 triggers and view.

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
       i.updated_at
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

CREATE OR REPLACE FUNCTION public.imports_after_insert()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    INSERT INTO public.import_stages (import_id, stage, "position", weight)
    SELECT NEW.id, s.stage, s.position, s.weight FROM public.fullpass_stages() s;
    PERFORM public.fullpass_mirror_profile(NEW.user_id, 'pending');
    PERFORM public.fullpass_defer(NEW.id, 'download', NEW.generation);
    RETURN NULL;
END
$$;

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

DROP FUNCTION public.fullpass_repair_import(uuid, int);
DROP VIEW public.fullpass_orphaned_imports;
DROP FUNCTION public.fullpass_check_options(jsonb);
DROP FUNCTION public.fullpass_check_value(text, jsonb, jsonb);
DROP TABLE public.fullpass_options_schema;
ALTER TABLE public.imports
    DROP COLUMN spent_input_tokens,
    DROP COLUMN spent_output_tokens,
    DROP COLUMN repairs;
ALTER TABLE public.import_stages DROP COLUMN lease;
