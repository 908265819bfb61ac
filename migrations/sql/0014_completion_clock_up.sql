-- An import is complete when the transaction that publishes it ends, and a
-- large pass's publish takes seconds inside it: completed_at (and the
-- profile's full_pass_completed_at) are read from the clock at that point,
-- not now() (the transaction's start), like the stages' finished_at.

CREATE OR REPLACE FUNCTION public.fullpass_advance(p_import_id uuid, p_generation int)
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
           SET status = 'complete', completed_at = clock_timestamp(), updated_at = clock_timestamp(),
               error = NULL
         WHERE id = p_import_id;
        RETURN NULL;
    END IF;
    UPDATE public.imports
       SET stage = nxt.stage, attempts = nxt.attempts, updated_at = now()
     WHERE id = p_import_id;
    RETURN nxt.stage;
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
           full_pass_completed_at = CASE WHEN p_status = 'complete' THEN clock_timestamp()
                                         ELSE full_pass_completed_at END,
           updated_at = now()
     WHERE user_id = p_user_id;
    IF NOT FOUND THEN
        INSERT INTO public.user_profiles (user_id, full_pass_status, full_pass_error,
                                          full_pass_started_at, full_pass_completed_at)
        VALUES (p_user_id, p_status, p_error,
                CASE WHEN p_status = 'processing' THEN now() END,
                CASE WHEN p_status = 'complete' THEN clock_timestamp() END);
    END IF;
    IF p_status IN ('failed', 'cancelled') THEN
        PERFORM public.fullpass_embedding_status(
            p_user_id, CASE WHEN p_status = 'failed' THEN 'failed' END, 'processing');
    END IF;
END
$$;
