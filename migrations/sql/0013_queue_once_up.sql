-- A stage becomes ready once, and is queued once.
--
-- Two finishers of one import can reach `fullpass_queue_ready` together (the
-- last lane of the map step and the stage's own job, or the map step and the
-- embed stage ending at the same moment): both read the next stage as pending,
-- the second waits for the first's row lock and then queued it again, and the
-- second job's queueing lock collided with the first's (a unique violation that
-- failed the finisher's transaction). The stage is now queued only by the
-- statement that moves it from pending; the other finds it queued and returns
-- nothing.

CREATE OR REPLACE FUNCTION public.fullpass_queue_ready(p_import_id uuid, p_generation int)
    RETURNS text[]
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    ready text[];
    queued text[] := '{}';
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
        -- Only a stage still pending is queued: another finisher that saw it
        -- pending too (the last lane out and the stage's own job, say) waits
        -- here for the first one's commit, then finds it queued.
        UPDATE public.import_stages SET status = 'queued', updated_at = now()
         WHERE import_id = p_import_id AND stage = s AND status = 'pending';
        IF FOUND THEN
            PERFORM public.fullpass_defer(p_import_id, s, p_generation);
            queued := queued || s;
        END IF;
    END LOOP;
    RETURN queued;
END
$$;
