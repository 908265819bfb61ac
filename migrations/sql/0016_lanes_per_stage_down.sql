-- One lane of an import per worker, whatever its stage (0012's fetch), and
-- every lane at priority -1 (0009's).

DROP FUNCTION public.fullpass_fetch_job(varchar[], bigint, int);

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
    IF found_jobs.id IS NOT NULL THEN
        -- This transaction's commit does not wait for its WAL flush (see above).
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN found_jobs;
END
$$;

CREATE OR REPLACE FUNCTION public.fullpass_defer_lanes(
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

REVOKE ALL ON FUNCTION public.fullpass_fetch_job(varchar[], bigint)
    FROM PUBLIC, anon, authenticated;
