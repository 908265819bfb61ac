-- Back to revision 0009's fullpass_queue_ready.

CREATE OR REPLACE FUNCTION public.fullpass_queue_ready(p_import_id uuid, p_generation int)
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
