-- Queue pickup: the job fetch commits without waiting for its WAL to reach
-- the disk.
--
-- An idle worker's pickup of a new import is: the insert's commit (the app's,
-- flushed as ever), the NOTIFY, the fetch, the stage claim. The fetch's commit
-- waited for a WAL flush, a few milliseconds of the pickup on an ordinary
-- disk. It is now asynchronous (`synchronous_commit` off for the fetch's
-- transaction only; `set_config(..., true)` ends with it), which is harmless:
--
-- * Only a crash of the database server can lose it (WAL reaches the disk
--   within 3 x `wal_writer_delay`, 0.6 s by default; a clean restart or
--   failover flushes it; a worker's crash loses nothing).
-- * The worker's next step is the stage claim (or lane claim), a synchronous
--   commit: WAL is flushed in order, so a claim that committed made the fetch
--   durable with it. A fetch that is lost is therefore one whose worker has
--   claimed nothing and done nothing yet; after the server's recovery its job
--   is `todo` again and is fetched anew, as if the first fetch had never
--   happened, while the first worker's claim fails with the lost connection and
--   its end is not written (the job's row no longer says it runs it).
-- * A job that ran without a claim (procrastinate's own `remove_old_jobs`) may
--   run again after such a crash: it is idempotent.
--
-- Every other commit of fullpass (claims, checkpoints, completions, the
-- app's insert) still waits for its flush.

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
    IF found_jobs.id IS NOT NULL THEN
        -- This transaction's commit does not wait for its WAL flush (see above).
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN found_jobs;
END
$$;
