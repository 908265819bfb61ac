-- The job fetch commits synchronously again (0009's fullpass_fetch_job).

CREATE OR REPLACE FUNCTION public.fullpass_fetch_job(target_queue_names varchar[], p_worker_id bigint)
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
