-- A worker runs at most one lane of each stage of an import, and the map
-- step's lanes go before the embed stage's.
--
-- The fetch allowed one lane of an import per worker, whatever its stage: on a
-- worker with the map step's lanes and the embed stage's both queued, a lane of
-- one stage kept the other's waiting. The rule is there because a lane already
-- has its stage's whole concurrency on its worker (the import's model calls for
-- the map step, the embedding requests for embed); another lane of the same
-- stage would only share it. Lanes of two stages share nothing: an embed lane
-- waiting for the map step's lane (or the other way round) only made the pass
-- longer.
--
-- The map step is the pass's critical path (reduce, MEMORY, the sections and
-- the publish wait for it); embedding only has to end before the publish. Its
-- lanes now go first (priority -1 against -2; stage jobs keep 0).
--
-- A worker running a lane of an import takes a lane of another stage of the
-- same import only when a slot of its stays free besides (the worker says how
-- many do, as `p_spare_slots`): an import never takes a worker's last free slot
-- with a second lane, and a small import arriving finds one. (On a worker of
-- two slots the second stage's lanes therefore run elsewhere, or after.)

DROP FUNCTION public.fullpass_fetch_job(varchar[], bigint);

CREATE FUNCTION public.fullpass_fetch_job(
    target_queue_names varchar[], p_worker_id bigint, p_spare_slots int DEFAULT 0
)
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
                      AND mine.args ->> 'import_id' = jobs.args ->> 'import_id'
                      AND (mine.args ->> 'stage' = jobs.args ->> 'stage'
                           OR coalesce(p_spare_slots, 0) < 1)))
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
        -- This transaction's commit does not wait for its WAL flush (0012).
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
            CASE WHEN p_stage = 'extract' THEN -1 ELSE -2 END,
            NULL,
            NULL,
            jsonb_build_object('import_id', p_import_id, 'generation', p_generation,
                               'stage', p_stage, 'lane', n),
            NULL
        )::public.procrastinate_job_to_defer_v1
          FROM generate_series(1, p_lanes) AS n
    ))
$$;

REVOKE ALL ON FUNCTION public.fullpass_fetch_job(varchar[], bigint, int)
    FROM PUBLIC, anon, authenticated;
