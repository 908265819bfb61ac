"""Every SQL statement the worker runs against fullpass's own tables.

Kept in one module so that the database contract can be read in one place;
the schema itself lives in ``migrations/sql``. Statements take named
parameters (``%(name)s``).
"""

from __future__ import annotations

from typing import LiteralString

# --- stage lifecycle ------------------------------------------------------

#: Claims a stage for a job: only when the job's generation is current, the
#: import is still live and the stage has not finished. Every claim draws a
#: new lease: from now on only this job may call a model, checkpoint or finish
#: for the stage (a job requeued from a stalled worker gets a new lease, and
#: the stalled one, if it ever wakes up, finds its lease gone). Returns the
#: import row, the stage's new attempt number and the lease, or nothing
#: (stale or duplicate job). One statement (one round trip, one commit): the
#: user's profile shows the pass processing in the same transaction.
CLAIM_STAGE: LiteralString = """
WITH imp AS (
    SELECT * FROM public.imports
     WHERE id = %(import_id)s AND generation = %(generation)s
       AND status IN ('pending', 'processing')
     FOR NO KEY UPDATE
), st AS (
    UPDATE public.import_stages s
       SET status = 'running', attempts = s.attempts + 1, error = NULL, lease = gen_random_uuid(),
           started_at = coalesce(s.started_at, now()), finished_at = NULL, updated_at = now(),
           model = coalesce(%(model)s, s.model)
      FROM imp
     WHERE s.import_id = imp.id AND s.stage = %(stage)s AND s.status NOT IN ('done', 'skipped')
    RETURNING s.attempts, s.lease
), shown AS (
    -- The import shows its first unfinished stage (another may run beside it).
    SELECT s.stage FROM public.import_stages s, imp
     WHERE s.import_id = imp.id AND s.status NOT IN ('done', 'skipped')
     ORDER BY s.position LIMIT 1
), upd AS (
    UPDATE public.imports i
       SET status = 'processing', stage = coalesce(shown.stage, %(stage)s),
           attempts = CASE WHEN coalesce(shown.stage, %(stage)s) = %(stage)s
                           THEN st.attempts ELSE i.attempts END,
           error = NULL, started_at = coalesce(i.started_at, now()), updated_at = now()
      FROM st LEFT JOIN shown ON true
     WHERE i.id = %(import_id)s
    RETURNING i.id
)
SELECT imp.id, imp.user_id, imp.storage_path, imp.source, imp.options, imp.generation,
       imp.status, st.attempts, st.lease,
       public.fullpass_mirror_profile(imp.user_id, 'processing', NULL) AS mirrored
  FROM imp, st
"""

#: A claim that failed for another reason than the database going away (a bug,
#: data the worker cannot handle): counted as an attempt of the stage, and the
#: import fails once the attempts are used up, so it is never left pending.
CLAIM_FAILED: LiteralString = """
WITH imp AS (
    SELECT id, user_id FROM public.imports
     WHERE id = %(import_id)s AND generation = %(generation)s
       AND status IN ('pending', 'processing')
     FOR NO KEY UPDATE
), st AS (
    UPDATE public.import_stages s
       SET attempts = s.attempts + 1, error = %(error)s, updated_at = now(),
           status = CASE WHEN s.attempts + 1 >= %(max_attempts)s THEN 'failed' ELSE s.status END,
           finished_at = CASE WHEN s.attempts + 1 >= %(max_attempts)s THEN now() END
      FROM imp
     WHERE s.import_id = imp.id AND s.stage = %(stage)s
    RETURNING s.attempts, s.status = 'failed' AS final
)
UPDATE public.imports i
   SET error = %(stage)s || ': ' || %(error)s, updated_at = now(), attempts = st.attempts,
       status = CASE WHEN st.final THEN 'failed' ELSE i.status END,
       completed_at = CASE WHEN st.final THEN now() ELSE i.completed_at END
  FROM st
 WHERE i.id = %(import_id)s
RETURNING i.user_id, st.final, st.attempts
"""

MIRROR_PROFILE: LiteralString = """
SELECT public.fullpass_mirror_profile(%(user_id)s, %(status)s, %(error)s)
"""

STAGE_OUTPUTS: LiteralString = """
SELECT stage, output FROM public.import_stages
 WHERE import_id = %(import_id)s AND status IN ('done', 'skipped')
"""

#: Locks the import for the final write of a stage (then IS_CURRENT says
#: whether the job still holds the stage, seeing whatever committed before the lock).
LOCK_IMPORT: LiteralString = """
SELECT id FROM public.imports WHERE id = %(import_id)s FOR NO KEY UPDATE
"""

#: Whether the job still holds the stage: same generation, still processing,
#: and the lease of the stage's claim or of one of its lanes (asked before
#: every model call, and under LOCK_IMPORT before a stage's final write).
IS_CURRENT: LiteralString = """
SELECT public.fullpass_holds(%(import_id)s, %(generation)s, %(stage)s, %(lease)s) AS current
"""

FINISH_STAGE: LiteralString = """
UPDATE public.import_stages
   SET status = %(status)s, finished_at = clock_timestamp(), updated_at = now(), error = NULL,
       output = %(output)s,
       items_done = coalesce(items_total, items_done),
       model = coalesce(%(model)s, model),
       -- A stage whose cost is not booked call by call (embed) gives it here.
       cost_usd = CASE WHEN %(set_cost)s THEN %(cost_usd)s::numeric ELSE cost_usd END
 WHERE import_id = %(import_id)s AND stage = %(stage)s
"""

#: Later stages a finishing one decided to skip, each with the reason.
SKIP_STAGES: LiteralString = """
UPDATE public.import_stages s
   SET status = 'skipped', finished_at = clock_timestamp(), updated_at = now(), error = NULL,
       output = jsonb_build_object('skipped', r.reason)
  FROM jsonb_each_text(%(reasons)s::jsonb) AS r(stage, reason)
 WHERE s.import_id = %(import_id)s AND s.stage = r.stage AND s.status NOT IN ('done', 'running')
"""

#: After a stage finished: queues the stages it made ready and completes the
#: import when nothing is left; the import's stage now (NULL: complete).
ADVANCE_IMPORT: LiteralString = """
SELECT public.fullpass_advance(%(import_id)s, %(generation)s) AS stage
"""

SET_COUNTS: LiteralString = """
UPDATE public.imports
   SET conversation_count = coalesce(%(conversation_count)s, conversation_count),
       chunk_count = coalesce(%(chunk_count)s, chunk_count),
       fact_count = coalesce(%(fact_count)s, fact_count)
 WHERE id = %(import_id)s
"""

DEFER_STAGE: LiteralString = """
SELECT public.fullpass_defer(%(import_id)s, %(stage)s, %(generation)s) AS job_id
"""

DEFER_STAGE_LATER: LiteralString = """
SELECT public.fullpass_defer(%(import_id)s, %(stage)s, %(generation)s,
                             now() + %(delay)s * interval '1 second') AS job_id
"""

#: A parked stage keeps its output (e.g. the batch ids) and gives its attempt back
#: (run after LOCK_CURRENT, in the same transaction).
PARK_STAGE: LiteralString = """
UPDATE public.import_stages
   SET output = %(output)s, attempts = greatest(attempts - 1, 0), updated_at = now()
 WHERE import_id = %(import_id)s AND stage = %(stage)s
"""

RUNNING_OUTPUT: LiteralString = """
SELECT output FROM public.import_stages WHERE import_id = %(import_id)s AND stage = %(stage)s
"""

#: Records a failed attempt of the job holding the stage (``lane``: of one of
#: its lanes, the stage stays running); ``final`` also fails the import, and
#: stops the import's other jobs (its other lanes, a stage beside it).
FAIL_STAGE: LiteralString = """
WITH imp AS (
    SELECT id FROM public.imports
     WHERE id = %(import_id)s AND generation = %(generation)s
       AND status IN ('pending', 'processing')
     FOR NO KEY UPDATE
), st AS (
    UPDATE public.import_stages s
       SET status = CASE WHEN %(final)s THEN 'failed'
                         WHEN %(lane)s THEN s.status ELSE 'queued' END,
           error = %(error)s, updated_at = now(),
           finished_at = CASE WHEN %(final)s THEN now() END
      FROM imp
     WHERE s.import_id = imp.id AND s.stage = %(stage)s
       AND public.fullpass_holds(%(import_id)s, %(generation)s, %(stage)s, %(lease)s)
    RETURNING s.stage
)
UPDATE public.imports i
   SET error = %(stage)s || ': ' || %(error)s, updated_at = now(),
       status = CASE WHEN %(final)s THEN 'failed' ELSE i.status END,
       completed_at = CASE WHEN %(final)s THEN now() ELSE i.completed_at END
  FROM st
 WHERE i.id = %(import_id)s
RETURNING i.user_id
"""

#: The import's other jobs, once it failed: queued ones are cancelled and
#: running ones asked to abort (the job recording the failure is left alone).
STOP_OTHER_JOBS: LiteralString = """
SELECT count(public.procrastinate_cancel_job_v1(j.id, j.status = 'doing', false)) AS stopped
  FROM public.procrastinate_jobs j
 WHERE j.args ->> 'import_id' = %(import_id)s::text AND j.status IN ('todo', 'doing')
   AND j.id IS DISTINCT FROM %(job_id)s::bigint
"""

# --- fanned-out stages ------------------------------------------------------
# A stage with a long work list splits it into pages and queues lanes; a lane
# takes pages until none is left; the last lane out queues the stage again.

#: The stage's pages (its work list split), replacing any left by an earlier plan.
DELETE_PAGES: LiteralString = """
WITH p AS (
    DELETE FROM public.import_pages WHERE import_id = %(import_id)s AND stage = %(stage)s
)
DELETE FROM public.import_lanes WHERE import_id = %(import_id)s AND stage = %(stage)s
"""

INSERT_PAGES: LiteralString = """
INSERT INTO public.import_pages (import_id, stage, page, chunk_ids)
SELECT %(import_id)s, %(stage)s, p.ordinality::int,
       ARRAY(SELECT jsonb_array_elements_text(p.ids))::uuid[]
  FROM jsonb_array_elements(%(pages)s::jsonb) WITH ORDINALITY AS p(ids, ordinality)
"""

INSERT_LANES: LiteralString = """
INSERT INTO public.import_lanes (import_id, stage, lane)
SELECT %(import_id)s, %(stage)s, n FROM generate_series(1, %(lanes)s) AS n
"""

#: A fanned-out stage waits for its lanes: it keeps its output (the plan),
#: gives its attempt back, and counts what is left to do.
FANNED_OUT: LiteralString = """
UPDATE public.import_stages
   SET output = %(output)s, attempts = greatest(attempts - 1, 0), updated_at = now(),
       items_total = %(total)s, items_done = %(done)s
 WHERE import_id = %(import_id)s AND stage = %(stage)s
"""

DEFER_LANES: LiteralString = """
SELECT public.fullpass_defer_lanes(%(import_id)s, %(stage)s, %(generation)s, %(lanes)s) AS jobs
"""

#: A run of a lane's job: a new lease for the lane, while its stage runs
#: fanned out at the job's generation. Returns the import row and the lease.
CLAIM_LANE: LiteralString = """
WITH imp AS (
    SELECT i.* FROM public.imports i
      JOIN public.import_stages s ON s.import_id = i.id AND s.stage = %(stage)s
     WHERE i.id = %(import_id)s AND i.generation = %(generation)s AND i.status = 'processing'
       AND s.status = 'running'
), lane AS (
    UPDATE public.import_lanes l
       SET lease = gen_random_uuid(), attempts = l.attempts + 1,
           started_at = coalesce(l.started_at, now()), finished_at = NULL, updated_at = now()
      FROM imp
     WHERE l.import_id = imp.id AND l.stage = %(stage)s AND l.lane = %(lane)s
       AND l.finished_at IS NULL
    RETURNING l.lease, l.attempts
)
SELECT imp.id, imp.user_id, imp.storage_path, imp.source, imp.options, imp.generation,
       imp.status, lane.attempts, lane.lease
  FROM imp, lane
"""

#: The lane's next page: one nobody has, or one an earlier run of this lane
#: held when it stopped. Counts an attempt of the page.
NEXT_PAGE: LiteralString = """
WITH next AS (
    SELECT p.page FROM public.import_pages p
     WHERE p.import_id = %(import_id)s AND p.stage = %(stage)s
       AND (p.status = 'pending'
            OR (p.status = 'running' AND p.lane = %(lane)s AND p.lease <> %(lease)s))
       AND public.fullpass_holds(%(import_id)s, %(generation)s, %(stage)s, %(lease)s)
     ORDER BY (p.status = 'running') DESC, p.page
     LIMIT 1
       FOR UPDATE SKIP LOCKED
)
UPDATE public.import_pages p
   SET status = 'running', lane = %(lane)s, lease = %(lease)s, attempts = p.attempts + 1,
       started_at = coalesce(p.started_at, now()), updated_at = now()
  FROM next
 WHERE p.import_id = %(import_id)s AND p.stage = %(stage)s AND p.page = next.page
RETURNING p.page, p.chunk_ids::text[] AS chunk_ids, p.attempts
"""

#: A page's staged chunks get their full-text entry (see PgPageSource); the
#: ones that have it already are left as they are, and so are the ones another
#: transaction holds (the embed stage writing their vectors): it never waits
#: for a row, so it can never deadlock with that writer, and what it skips
#: the publish computes.
PREPARE_SEARCH_TEXT: LiteralString = """
UPDATE public.import_chunks c
   SET fullpass_fts = public.fullpass_chunk_fts(c.title, c.content)
  FROM (SELECT id FROM public.import_chunks
         WHERE import_id = %(import_id)s AND id = ANY(%(ids)s::uuid[]) AND fullpass_fts IS NULL
           FOR UPDATE SKIP LOCKED) AS free
 WHERE c.id = free.id
"""

PAGE_DONE: LiteralString = """
WITH page AS (
    UPDATE public.import_pages
       SET status = 'done', finished_at = now(), updated_at = now()
     WHERE import_id = %(import_id)s AND stage = %(stage)s AND page = %(page)s
       AND lease = %(lease)s AND status = 'running'
       AND public.fullpass_holds(%(import_id)s, %(generation)s, %(stage)s, %(lease)s)
    RETURNING 1
)
UPDATE public.import_lanes
   SET pages_done = pages_done + 1, updated_at = now()
 WHERE import_id = %(import_id)s AND stage = %(stage)s AND lane = %(lane)s
   AND EXISTS (SELECT 1 FROM page)
RETURNING 1
"""

#: What a run of a lane did, added to the lane's record (under LOCK_IMPORT);
#: ``finished``: the lane is done. Returns whether the last lane out had
#: closed it already.
LANE_STATS: LiteralString = """
WITH before AS (
    SELECT finished_at FROM public.import_lanes
     WHERE import_id = %(import_id)s AND stage = %(stage)s AND lane = %(lane)s
)
UPDATE public.import_lanes l
   SET stats = (SELECT coalesce(jsonb_object_agg(x.k, x.v), '{}'::jsonb)
                  FROM (SELECT n.k, sum(n.v::bigint) AS v
                          FROM (SELECT * FROM jsonb_each_text(l.stats)
                                UNION ALL
                                SELECT * FROM jsonb_each_text(%(stats)s::jsonb)) AS n(k, v)
                         GROUP BY n.k) x),
       finished_at = CASE WHEN %(finished)s THEN coalesce(l.finished_at, now())
                          ELSE l.finished_at END,
       updated_at = now()
 WHERE l.import_id = %(import_id)s AND l.stage = %(stage)s AND l.lane = %(lane)s
   AND l.lease = %(lease)s
RETURNING (SELECT finished_at IS NOT NULL FROM before) AS closed
"""

#: Pages of the stage not done yet (under LOCK_IMPORT, by the lane finishing).
OPEN_PAGES: LiteralString = """
SELECT count(*) AS n FROM public.import_pages
 WHERE import_id = %(import_id)s AND stage = %(stage)s AND status <> 'done'
"""

#: The last lane out queues the stage's job again: it finds the work done and
#: finishes the stage. Every lane is closed with it, and the lanes' jobs still
#: queued are cancelled: a lane whose job starts later is not needed, and one
#: still running when the stage's run begins must not queue the stage again.
REQUEUE_FANNED_OUT: LiteralString = """
WITH st AS (
    UPDATE public.import_stages
       SET status = 'queued', updated_at = now()
     WHERE import_id = %(import_id)s AND stage = %(stage)s AND status = 'running'
    RETURNING 1
), closed AS (
    UPDATE public.import_lanes
       SET finished_at = now(), updated_at = now()
     WHERE import_id = %(import_id)s AND stage = %(stage)s AND finished_at IS NULL
       AND EXISTS (SELECT 1 FROM st)
), unneeded AS (
    SELECT public.procrastinate_cancel_job_v1(j.id, false, false) AS id
      FROM public.procrastinate_jobs j
     WHERE j.task_name = 'fullpass.lane' AND j.status = 'todo'
       AND j.args ->> 'import_id' = %(import_id)s::text AND j.args ->> 'stage' = %(stage)s
       AND EXISTS (SELECT 1 FROM st)
)
-- A CTE nobody reads is never run: counting `unneeded` is what cancels the lanes.
SELECT public.fullpass_defer(%(import_id)s, %(stage)s, %(generation)s) AS job_id,
       (SELECT count(*) FROM unneeded) AS cancelled_lanes
  FROM st
"""

#: What the stage's lanes did, summed (read by the stage when it finishes).
LANES_STATS: LiteralString = """
SELECT n.k AS key, sum(n.v::bigint) AS value
  FROM public.import_lanes l, jsonb_each_text(l.stats) AS n(k, v)
 WHERE l.import_id = %(import_id)s AND l.stage = %(stage)s
 GROUP BY n.k
"""

# --- progress and accounting ---------------------------------------------

SET_PROGRESS: LiteralString = """
UPDATE public.import_stages
   SET items_done = %(done)s, items_total = coalesce(%(total)s, items_total), updated_at = now()
 WHERE import_id = %(import_id)s AND stage = %(stage)s AND status = 'running'
   AND lease = %(lease)s
"""

#: A lane's progress: what it finished since it last reported.
ADD_PROGRESS: LiteralString = """
UPDATE public.import_stages
   SET items_done = items_done + %(done)s, updated_at = now()
 WHERE import_id = %(import_id)s AND stage = %(stage)s AND status = 'running'
   AND public.fullpass_holds(%(import_id)s, %(generation)s, %(stage)s, %(lease)s)
"""

#: Tokens a call cost. Booked on the stage and the generation only while the
#: job holds the stage; the import's whole spend counts them whatever happens.
ADD_USAGE: LiteralString = """
WITH cur AS (
    SELECT %(import_id)s::uuid AS import_id
     WHERE public.fullpass_holds(%(import_id)s, %(generation)s, %(stage)s, %(lease)s)
), st AS (
    UPDATE public.import_stages s
       SET input_tokens = s.input_tokens + %(input_tokens)s,
           output_tokens = s.output_tokens + %(output_tokens)s,
           cost_usd = s.cost_usd + %(cost_usd)s::numeric, updated_at = now()
      FROM cur
     WHERE s.import_id = cur.import_id AND s.stage = %(stage)s
)
UPDATE public.imports i
   SET input_tokens = i.input_tokens
           + CASE WHEN EXISTS (SELECT 1 FROM cur) THEN %(input_tokens)s ELSE 0 END,
       output_tokens = i.output_tokens
           + CASE WHEN EXISTS (SELECT 1 FROM cur) THEN %(output_tokens)s ELSE 0 END,
       spent_input_tokens = i.spent_input_tokens + %(input_tokens)s,
       spent_output_tokens = i.spent_output_tokens + %(output_tokens)s,
       spent_cost_usd = i.spent_cost_usd + %(cost_usd)s::numeric,
       updated_at = now()
 WHERE i.id = %(import_id)s
"""

# --- chunks ---------------------------------------------------------------
# A pass works on its staged chunks (import_chunks); they replace the user's
# chunks in conversation_chunks when the pass is published.

DELETE_CHUNKS: LiteralString = """
DELETE FROM public.import_chunks WHERE import_id = %(import_id)s
"""

#: A published pass's staged chunks (conversation_chunks holds their copy),
#: dropped after the publish commits: only while the import is still complete
#: at that generation. A requeue that came first (it locks the import) keeps
#: them as its staging.
DROP_PUBLISHED_STAGING: LiteralString = """
DELETE FROM public.import_chunks c
 USING (SELECT id FROM public.imports
         WHERE id = %(import_id)s AND status = 'complete' AND generation = %(generation)s
           FOR SHARE) AS done
 WHERE c.import_id = done.id
"""

#: Complete imports whose staged chunks are still there (the worker that
#: published them stopped before dropping them). The imports with staged rows
#: are found by skipping through the staging index, one probe per import.
LEFTOVER_STAGING: LiteralString = """
WITH RECURSIVE staged(import_id) AS (
    (SELECT import_id FROM public.import_chunks ORDER BY import_id LIMIT 1)
    UNION ALL
    SELECT (SELECT c.import_id FROM public.import_chunks c
             WHERE c.import_id > s.import_id ORDER BY c.import_id LIMIT 1)
      FROM staged s WHERE s.import_id IS NOT NULL
)
SELECT i.id AS import_id, i.generation
  FROM staged s JOIN public.imports i ON i.id = s.import_id
 WHERE i.status = 'complete' AND i.completed_at < now() - make_interval(secs => %(grace)s)
"""

DELETE_SAVED_FACTS: LiteralString = """
DELETE FROM public.chunk_saved_facts WHERE import_id = %(import_id)s
"""

COPY_SAVED_FACTS: LiteralString = """
COPY public.chunk_saved_facts (
    import_id, chunk_id, ordinal, user_id, kind, said_at, facts, fact_count
) FROM STDIN
"""

COPY_CHUNKS: LiteralString = """
COPY public.import_chunks (
    id, user_id, import_id, conversation_id, title, content, token_count, chunk_index,
    total_chunks, chunk_tier, message_count, is_recent, created_at, content_hash
) FROM STDIN
"""

#: The map step's work list: ids and hashes only (contents are read page by page).
CHUNKS_FOR_EXTRACTION: LiteralString = """
SELECT c.id::text AS id, c.content_hash
  FROM public.import_chunks c
 WHERE c.import_id = %(import_id)s AND c.chunk_tier = %(tier)s
 ORDER BY c.created_at NULLS LAST, c.conversation_id, c.chunk_index
"""

#: Chunk contents for the map step, with the facts their saved memories and
#: custom instructions were filed as (to leave those out of the model's facts).
CHUNKS_BY_ID: LiteralString = """
SELECT c.id::text AS id, c.conversation_id, c.chunk_index, coalesce(c.title, '') AS title,
       c.content, c.content_hash, c.created_at,
       (SELECT jsonb_agg(s.facts ORDER BY s.ordinal) FROM public.chunk_saved_facts s
         WHERE s.import_id = c.import_id AND s.chunk_id = c.id) AS saved
  FROM public.import_chunks c
 WHERE c.import_id = %(import_id)s AND c.id = ANY(%(ids)s::uuid[])
"""

#: A page's share of the map step's work list: its chunks without a current
#: checkpoint, in the page's order.
EXTRACTION_LEFT: LiteralString = """
SELECT c.id::text AS id, c.content_hash
  FROM unnest(%(ids)s::uuid[]) WITH ORDINALITY AS p(id, n)
  JOIN public.import_chunks c ON c.import_id = %(import_id)s AND c.id = p.id
 WHERE NOT EXISTS (SELECT 1 FROM public.chunk_facts f
                    WHERE f.import_id = c.import_id AND f.chunk_id = c.id
                      AND f.content_hash = c.content_hash)
 ORDER BY p.n
"""

EXTRACTED_CHUNKS: LiteralString = """
SELECT chunk_id::text AS chunk_id, content_hash FROM public.chunk_facts
 WHERE import_id = %(import_id)s
"""

#: The facts of one call's chunks (a jsonb array of rows) and the call's token
#: usage, in one statement: one round trip per call, atomic without a
#: transaction block. Fenced by the import's generation and the stage's lease:
#: a job that no longer holds the stage writes no checkpoint and books its
#: tokens only in the import's whole spend (``current`` is then false). A chunk
#: already checkpointed with the same content is left as it is.
CHECKPOINT_CHUNK_FACTS: LiteralString = """
WITH current AS (
    SELECT i.id, i.user_id FROM public.imports i
     WHERE i.id = %(import_id)s
       AND public.fullpass_holds(%(import_id)s, %(generation)s, %(stage)s, %(lease)s)
), written AS (
    INSERT INTO public.chunk_facts (import_id, chunk_id, user_id, content_hash, facts, fact_count,
                                    model, input_tokens, output_tokens, cache_read_tokens, error,
                                    requested_model, prompt_version)
    SELECT c.id, r.chunk_id, c.user_id, r.content_hash, r.facts, r.fact_count, %(model)s,
           r.input_tokens, r.output_tokens, r.cache_read_tokens, %(error)s::text,
           %(requested_model)s, %(prompt_version)s
      FROM current c
     CROSS JOIN jsonb_to_recordset(%(rows)s::jsonb) AS r(
           chunk_id uuid, content_hash text, facts jsonb, fact_count int,
           input_tokens int, output_tokens int, cache_read_tokens int)
    ON CONFLICT (import_id, chunk_id) DO UPDATE
       SET content_hash = EXCLUDED.content_hash, facts = EXCLUDED.facts,
           fact_count = EXCLUDED.fact_count, model = EXCLUDED.model,
           input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
           cache_read_tokens = EXCLUDED.cache_read_tokens, error = EXCLUDED.error,
           requested_model = EXCLUDED.requested_model,
           prompt_version = EXCLUDED.prompt_version,
           reused_from_import = NULL, reused_from_chunk = NULL, created_at = now()
     WHERE chunk_facts.content_hash IS DISTINCT FROM EXCLUDED.content_hash
    RETURNING 1
), stage AS (
    UPDATE public.import_stages s
       SET input_tokens = s.input_tokens + %(input_tokens)s,
           output_tokens = s.output_tokens + %(output_tokens)s,
           cost_usd = s.cost_usd + %(cost_usd)s::numeric, updated_at = now()
      FROM current c
     WHERE s.import_id = c.id AND s.stage = %(stage)s
       AND %(input_tokens)s + %(output_tokens)s > 0
), total AS (
    UPDATE public.imports i
       SET input_tokens = i.input_tokens
               + CASE WHEN EXISTS (SELECT 1 FROM current) THEN %(input_tokens)s ELSE 0 END,
           output_tokens = i.output_tokens
               + CASE WHEN EXISTS (SELECT 1 FROM current) THEN %(output_tokens)s ELSE 0 END,
           spent_input_tokens = i.spent_input_tokens + %(input_tokens)s,
           spent_output_tokens = i.spent_output_tokens + %(output_tokens)s,
           spent_cost_usd = i.spent_cost_usd + %(cost_usd)s::numeric,
           updated_at = now()
     WHERE i.id = %(import_id)s AND %(input_tokens)s + %(output_tokens)s > 0
)
SELECT EXISTS (SELECT 1 FROM current) AS current, (SELECT count(*) FROM written) AS written
"""

CHUNK_FACTS_SUMMARY: LiteralString = """
SELECT count(*) AS chunks,
       count(*) FILTER (WHERE error IS NOT NULL) AS failed,
       coalesce(sum(fact_count), 0) AS facts,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       count(*) FILTER (WHERE reused_from_import IS NOT NULL) AS reused
  FROM public.chunk_facts WHERE import_id = %(import_id)s
"""

#: A re-import pays only for what is new: each chunk of the work list (the
#: import's chunks of ``tier``, or those of ``ids``) without a checkpoint,
#: whose content an earlier import of the same user already extracted with the
#: same model and prompt version, gets a copy of those facts (the latest
#: extraction), naming where it came from; the extract stage counts them. Never
#: across users, never from a failed extraction. Fenced like every checkpoint.
REUSE_CHUNK_FACTS: LiteralString = """
WITH current AS (
    SELECT i.id, i.user_id FROM public.imports i
     WHERE i.id = %(import_id)s
       AND public.fullpass_holds(%(import_id)s, %(generation)s, %(stage)s, %(lease)s)
), todo AS MATERIALIZED (
    SELECT c.id, c.content_hash
      FROM public.import_chunks c
      JOIN current ON c.import_id = current.id
     WHERE (%(tier)s::text IS NULL OR c.chunk_tier = %(tier)s::text)
       AND (%(ids)s::uuid[] IS NULL OR c.id = ANY (%(ids)s::uuid[]))
       AND NOT EXISTS (SELECT 1 FROM public.chunk_facts f
                        WHERE f.import_id = c.import_id AND f.chunk_id = c.id
                          AND f.content_hash = c.content_hash)
), found AS (
    -- One index lookup by (user, content) per chunk: a join the planner sizes
    -- from statistics taken before the import filled these tables can pair
    -- every chunk with every fact of the user.
    SELECT t.id AS chunk_id, t.content_hash, f.facts, f.fact_count, f.model,
           f.import_id AS from_import, f.chunk_id AS from_chunk
      FROM todo t
     CROSS JOIN current
     CROSS JOIN LATERAL (
        SELECT f.facts, f.fact_count, f.model, f.import_id, f.chunk_id
          FROM public.chunk_facts f
         WHERE f.user_id = current.user_id AND f.content_hash = t.content_hash
           AND f.import_id <> current.id AND f.error IS NULL
           AND f.requested_model = %(model)s AND f.prompt_version = %(prompt_version)s
         ORDER BY f.created_at DESC
         LIMIT 1
     ) f
), written AS (
    INSERT INTO public.chunk_facts (import_id, chunk_id, user_id, content_hash, facts, fact_count,
                                    model, requested_model, prompt_version,
                                    reused_from_import, reused_from_chunk)
    SELECT current.id, f.chunk_id, current.user_id, f.content_hash, f.facts, f.fact_count,
           f.model, %(model)s, %(prompt_version)s, f.from_import, f.from_chunk
      FROM found f, current
    ON CONFLICT (import_id, chunk_id) DO UPDATE
       SET content_hash = EXCLUDED.content_hash, facts = EXCLUDED.facts,
           fact_count = EXCLUDED.fact_count, model = EXCLUDED.model,
           input_tokens = 0, output_tokens = 0, cache_read_tokens = 0, error = NULL,
           requested_model = EXCLUDED.requested_model,
           prompt_version = EXCLUDED.prompt_version,
           reused_from_import = EXCLUDED.reused_from_import,
           reused_from_chunk = EXCLUDED.reused_from_chunk, created_at = now()
     WHERE chunk_facts.content_hash IS DISTINCT FROM EXCLUDED.content_hash
    RETURNING 1
), counted AS (
    UPDATE public.import_stages s
       SET items_reused = s.items_reused + (SELECT count(*) FROM written), updated_at = now()
      FROM current
     WHERE s.import_id = current.id AND s.stage = %(stage)s
)
SELECT EXISTS (SELECT 1 FROM current) AS current, (SELECT count(*) FROM written) AS reused
"""

#: Every usable fact of an import: the map step's, dated by their conversation,
#: and the saved ones, dated when they were saved; oldest first.
CHUNK_FACTS_WITH_DATES: LiteralString = """
SELECT chunk_id, facts, created_at FROM (
    SELECT f.chunk_id::text AS chunk_id, f.facts, c.created_at
      FROM public.chunk_facts f
      LEFT JOIN public.import_chunks c ON c.id = f.chunk_id
     WHERE f.import_id = %(import_id)s AND f.error IS NULL AND f.fact_count > 0
    UNION ALL
    SELECT s.chunk_id::text, s.facts, coalesce(s.said_at, c.created_at)
      FROM public.chunk_saved_facts s
      LEFT JOIN public.import_chunks c ON c.id = s.chunk_id
     WHERE s.import_id = %(import_id)s
) facts
 ORDER BY created_at NULLS FIRST, chunk_id
"""

#: Conversations ranked for the regenerate sample: long, recent, fact-dense.
CONVERSATION_SCORES: LiteralString = """
WITH conv AS (
    SELECT c.conversation_id, max(c.title) AS title, max(c.created_at) AS created_at,
           sum(c.token_count) AS tokens, bool_or(c.is_recent) AS is_recent,
           sum(coalesce(f.fact_count, 0)) AS facts
      FROM public.import_chunks c
      LEFT JOIN public.chunk_facts f ON f.chunk_id = c.id AND f.import_id = c.import_id
     WHERE c.import_id = %(import_id)s AND c.chunk_tier = %(tier)s
     GROUP BY c.conversation_id
)
SELECT conversation_id, title, created_at, tokens, facts,
       ln(1 + tokens) + 2.0 * facts + CASE WHEN is_recent THEN 2.0 ELSE 0 END AS score
  FROM conv
 ORDER BY score DESC, conversation_id
 LIMIT %(limit)s
"""

CONVERSATION_TEXT: LiteralString = """
SELECT conversation_id, chunk_index, content FROM public.import_chunks
 WHERE import_id = %(import_id)s AND chunk_tier = %(tier)s
   AND conversation_id = ANY(%(conversation_ids)s)
 ORDER BY conversation_id, chunk_index
"""

# --- embeddings -----------------------------------------------------------

#: Whether staged chunks have an embedding column (pgvector is installed).
STAGED_EMBEDDING_COLUMN: LiteralString = """
SELECT 1 FROM pg_attribute
 WHERE attrelid = 'public.import_chunks'::regclass AND attname = 'embedding'
   AND NOT attisdropped
"""

#: The embed stage's work list: every staged chunk, and whether it still needs
#: an embedding of the model (none yet, or one of another model).
EMBEDDING_WORK: LiteralString = """
SELECT c.id::text AS id,
       (c.embedding IS NULL OR c.embedding_model IS DISTINCT FROM %(model)s) AS todo
  FROM public.import_chunks c
 WHERE c.import_id = %(import_id)s
 ORDER BY c.created_at NULLS LAST, c.conversation_id, c.chunk_tier, c.chunk_index
"""

EMBEDDING_LEFT: LiteralString = """
SELECT c.id::text AS id
  FROM unnest(%(ids)s::uuid[]) WITH ORDINALITY AS p(id, n)
  JOIN public.import_chunks c ON c.import_id = %(import_id)s AND c.id = p.id
 WHERE c.embedding IS NULL OR c.embedding_model IS DISTINCT FROM %(model)s
 ORDER BY p.n
"""

#: What is embedded of a chunk: its conversation's title and its text.
EMBEDDING_TEXTS: LiteralString = """
SELECT c.id::text AS id,
       CASE WHEN coalesce(c.title, '') = '' THEN c.content
            ELSE c.title || E'\n\n' || c.content END AS text
  FROM public.import_chunks c
 WHERE c.import_id = %(import_id)s AND c.id = ANY(%(ids)s::uuid[])
"""

#: One batch's vectors (pgvector's text form) and tokens, fenced like every checkpoint.
STORE_EMBEDDINGS: LiteralString = """
SELECT public.fullpass_store_embeddings(
    %(import_id)s, %(generation)s, %(stage)s, %(lease)s,
    %(ids)s::uuid[], %(vectors)s::text[], %(model)s, %(tokens)s) AS current
"""

SET_EMBEDDING_STATUS: LiteralString = """
SELECT public.fullpass_embedding_status(i.user_id, %(status)s)
  FROM public.imports i WHERE i.id = %(import_id)s
"""

#: A published pass whose chunks were embedded: the user's embeddings are complete.
EMBEDDINGS_PUBLISHED: LiteralString = """
SELECT public.fullpass_embedding_status(%(user_id)s, 'complete')
  FROM public.import_stages
 WHERE import_id = %(import_id)s AND stage = 'embed' AND status = 'done'
"""

# --- finalize -------------------------------------------------------------

#: A backfill's chunks: the ones the user has (from the app's quick pass or an
#: earlier pass), staged as they are, embeddings included.
STAGE_EXISTING_CHUNKS: LiteralString = """
SELECT public.fullpass_stage_existing_chunks(%(import_id)s, %(user_id)s) AS staged
"""

STAGED_COUNTS: LiteralString = """
SELECT count(*) AS chunks, count(DISTINCT conversation_id) AS conversations,
       coalesce(array_agg(DISTINCT chunk_tier), '{}') AS tiers
  FROM public.import_chunks WHERE import_id = %(import_id)s
"""

#: Publishing the pass's chunks: the user's published chunks go (the app's own
#: rows only when ``replace_app_rows``), the staged ones take their place.
DELETE_PUBLISHED_CHUNKS: LiteralString = """
DELETE FROM public.conversation_chunks
 WHERE user_id = %(user_id)s AND (import_id IS NOT NULL OR %(replace_app_rows)s)
"""

PUBLISH_STAGED_CHUNKS: LiteralString = """
SELECT public.fullpass_publish_chunks(%(import_id)s) AS published
"""

#: Whether the app's own chunks may be replaced without losing searchable
#: chunks: the staged ones are at least as many with an embedding (or no
#: embedding column exists, and text search finds both alike).
APP_ROWS_REPLACEABLE: LiteralString = """
SELECT public.fullpass_app_chunks_replaceable(%(import_id)s, %(user_id)s) AS replaceable
"""

#: MEMORY, published as soon as the memory stage has it (new data: nothing of
#: the v1 profile is at risk).
WRITE_MEMORY: LiteralString = """
UPDATE public.user_profiles SET memory_md = %(memory_md)s, updated_at = now()
 WHERE user_id = %(user_id)s
"""

INSERT_MEMORY: LiteralString = """
INSERT INTO public.user_profiles (user_id, memory_md) VALUES (%(user_id)s, %(memory_md)s)
"""

#: The v2 profile, written only when the whole pass succeeded.
WRITE_PROFILE: LiteralString = """
UPDATE public.user_profiles
   SET soul_md = %(soul_md)s, identity_md = %(identity_md)s, user_md = %(user_md)s,
       agents_md = %(agents_md)s, tools_md = %(tools_md)s, soulprint_text = %(soulprint_text)s,
       full_pass_status = 'complete', full_pass_error = NULL,
       -- the clock, not now(): after this transaction's publish of the chunks
       full_pass_completed_at = clock_timestamp(), updated_at = now()
 WHERE user_id = %(user_id)s
"""

INSERT_PROFILE: LiteralString = """
INSERT INTO public.user_profiles (user_id, soul_md, identity_md, user_md, agents_md, tools_md,
                                  soulprint_text, full_pass_status, full_pass_completed_at)
VALUES (%(user_id)s, %(soul_md)s, %(identity_md)s, %(user_md)s, %(agents_md)s, %(tools_md)s,
        %(soulprint_text)s, 'complete', clock_timestamp())
"""

# --- operator surface -----------------------------------------------------

INSERT_IMPORT: LiteralString = """
INSERT INTO public.imports (user_id, storage_path, source, options)
VALUES (%(user_id)s, %(storage_path)s, %(source)s, %(options)s)
RETURNING id
"""

REQUEUE: LiteralString = "SELECT public.requeue_import(%(import_id)s, %(stage)s) AS job_id"
CANCEL: LiteralString = "SELECT public.cancel_import(%(import_id)s) AS cancelled"

PROGRESS_ONE: LiteralString = """
SELECT * FROM public.import_progress WHERE import_id = %(import_id)s
"""

PROGRESS_RECENT: LiteralString = """
SELECT * FROM public.import_progress ORDER BY created_at DESC LIMIT %(limit)s
"""

STAGES_OF: LiteralString = """
SELECT stage, status, attempts, items_done, items_total, error,
       input_tokens, output_tokens, started_at, finished_at, model, cost_usd, items_reused
  FROM public.import_stages WHERE import_id = %(import_id)s ORDER BY position
"""

MEMORY_OF: LiteralString = """
SELECT p.memory_md FROM public.user_profiles p
  JOIN public.imports i ON i.user_id = p.user_id
 WHERE i.id = %(import_id)s
"""


# --- maintenance -------------------------------------------------------------

#: Pending or processing imports with no queued or running job (see maintenance.py).
ORPHANED_IMPORTS: LiteralString = """
SELECT import_id, status, stage, repairs FROM public.fullpass_orphaned_imports
 WHERE updated_at < now() - %(grace)s * interval '1 second'
 ORDER BY updated_at LIMIT 100
"""

REPAIR_IMPORT: LiteralString = """
SELECT public.fullpass_repair_import(%(import_id)s, %(max_repairs)s) AS action
"""

LIVE_IMPORTS: LiteralString = """
SELECT id FROM public.imports WHERE id = ANY(%(ids)s) AND status IN ('pending', 'processing')
"""

# --- the completion callback (worker/outbox.py) -------------------------------

LISTEN_EVENTS: LiteralString = "LISTEN fullpass_import_events"

#: Claims due events for one sender: each goes to one sender (SKIP LOCKED),
#: counts an attempt, and is leased (not due again) until the request's
#: deadline and a margin have passed, so a sender that dies with it lets it go.
CLAIM_EVENTS: LiteralString = """
WITH due AS (
    SELECT id FROM public.import_events
     WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
     ORDER BY next_attempt_at, created_at
     LIMIT %(limit)s
     FOR UPDATE SKIP LOCKED
)
UPDATE public.import_events e
   SET attempts = e.attempts + 1, lease = gen_random_uuid(), leased_by = %(worker)s,
       next_attempt_at = clock_timestamp() + %(lease_seconds)s * interval '1 second'
  FROM due
 WHERE e.id = due.id
RETURNING e.id, e.import_id, e.kind, e.payload, e.attempts, e.lease
"""

#: Whoever sent it: a delivered event is delivered, even if its lease ran out
#: meanwhile (another sender then does not send it again).
EVENT_DELIVERED: LiteralString = """
UPDATE public.import_events
   SET delivered_at = now(), lease = NULL
 WHERE id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL
"""

EVENT_RETRY_LATER: LiteralString = """
UPDATE public.import_events
   SET next_attempt_at = now() + %(delay)s * interval '1 second', lease = NULL,
       last_error = %(error)s
 WHERE id = %(id)s AND lease = %(lease)s AND delivered_at IS NULL AND failed_at IS NULL
"""

EVENT_GIVEN_UP: LiteralString = """
UPDATE public.import_events
   SET failed_at = now(), lease = NULL, last_error = %(error)s
 WHERE id = %(id)s AND lease = %(lease)s AND delivered_at IS NULL AND failed_at IS NULL
"""

NEXT_EVENT_DUE: LiteralString = """
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8 AS seconds
  FROM public.import_events
 WHERE delivered_at IS NULL AND failed_at IS NULL
"""

#: Events nobody delivered within the time (no worker has a callback URL, or
#: its receiver never answered): given up, unless a sender holds them now.
EXPIRE_EVENTS: LiteralString = """
UPDATE public.import_events
   SET failed_at = now(), lease = NULL,
       last_error = coalesce(last_error || '; ', '') || %(reason)s
 WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
   AND created_at < now() - %(seconds)s * interval '1 second'
RETURNING id, import_id
"""

#: Delivered and given-up events, once they are old enough (a bounded batch).
PRUNE_EVENTS: LiteralString = """
DELETE FROM public.import_events
 WHERE id IN (SELECT id FROM public.import_events
               WHERE (delivered_at IS NOT NULL OR failed_at IS NOT NULL)
                 AND coalesce(delivered_at, failed_at) < now() - %(seconds)s * interval '1 second'
               LIMIT 5000)
"""

# --- health ------------------------------------------------------------------

FRESH_WORKERS: LiteralString = """
SELECT count(*) AS n FROM public.procrastinate_workers
 WHERE last_heartbeat > now() - %(seconds)s * interval '1 second'
"""

STUCK_IMPORTS: LiteralString = """
SELECT id, status, stage, updated_at FROM public.imports
 WHERE status IN ('pending', 'processing')
   AND updated_at < now() - %(minutes)s * interval '1 minute'
 ORDER BY updated_at LIMIT 20
"""

# --- the queue -------------------------------------------------------------

#: procrastinate's fetch, with fullpass's rule on lanes (migration 0009); its
#: commit does not wait for the WAL flush (0012: the claim that follows does).
FETCH_JOB: LiteralString = """
SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name,
       attempts, worker_id
  FROM public.fullpass_fetch_job(%(queues)s::varchar[], %(worker_id)s, %(spare_slots)s)
"""

#: procrastinate's heartbeat, sent on the worker's own connection. Its
#: versioned function name changes between procrastinate releases: follow it
#: here when the pinned version moves.
UPDATE_HEARTBEAT: LiteralString = "SELECT procrastinate_update_heartbeat_v1(%(worker_id)s)"

WORKER_REGISTERED: LiteralString = """
SELECT EXISTS (SELECT 1 FROM public.procrastinate_workers WHERE id = %(worker_id)s)
"""

#: Seconds since the server started: nobody could heartbeat while it was down.
SERVER_UPTIME: LiteralString = """
SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8 AS uptime
"""

#: Who runs a job now (a worker checks before it writes the job's end).
JOB_OWNER: LiteralString = """
SELECT status, worker_id FROM public.procrastinate_jobs WHERE id = %(job_id)s
"""

# --- migrations -----------------------------------------------------------

DATABASE_EXISTS: LiteralString = "SELECT 1 FROM pg_database WHERE datname = %(name)s"

ALEMBIC_TABLE: LiteralString = "SELECT to_regclass('public.alembic_version')"

ALEMBIC_REVISION: LiteralString = "SELECT version_num FROM public.alembic_version"

OPTIONS_SCHEMA_TABLE: LiteralString = "SELECT to_regclass('public.fullpass_options_schema')"

STORE_OPTIONS_SCHEMA: LiteralString = """
INSERT INTO public.fullpass_options_schema (id, schema) VALUES (true, %(schema)s)
ON CONFLICT (id) DO UPDATE SET schema = EXCLUDED.schema, updated_at = now()
"""

# --- search ---------------------------------------------------------------------

#: The type and declared size of ``conversation_chunks.embedding`` (no row: no column).
EMBEDDING_COLUMN: LiteralString = """
SELECT t.typname AS type, nullif(a.atttypmod, -1) AS dimension
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = to_regclass('public.conversation_chunks') AND a.attname = 'embedding'
   AND a.attnum > 0 AND NOT a.attisdropped
"""

#: The app's retrieval (revision 0005). ``embedding`` is sent as text of unknown
#: type: it becomes the function's ``vector`` (or, without pgvector, is NULL).
SEARCH_CHUNKS: LiteralString = """
SELECT id, conversation_id, title, content, created_at, chunk_tier, text_rank,
       vector_similarity, score
  FROM public.search_chunks(p_user_id => %(user_id)s::uuid, query_text => %(query)s::text,
                            query_embedding => %(embedding)s, match_count => %(k)s::int,
                            p_tiers => %(tiers)s::text[])
"""

# --- the fleet's rate budget (revision 0010) -----------------------------------

#: Takes a call's request and input tokens from the shared budget: how long to
#: wait before sending, and for how long the fleet is paused.
RATE_DRAW: LiteralString = """
SELECT wait_seconds, paused_seconds
  FROM public.fullpass_rate_draw(%(name)s, %(rpm)s, %(itpm)s, %(tokens)s, %(burst)s)
"""

#: Lowers the budget to what the API said is left; gives back input tokens drawn too many.
RATE_OBSERVE: LiteralString = """
SELECT public.fullpass_rate_observe(%(name)s, %(rpm)s, %(itpm)s, %(burst)s,
                                    %(requests_left)s, %(tokens_left)s, %(refund)s)
"""

#: Nobody in the fleet sends for ``seconds`` (the API answered 429 with retry-after).
RATE_PAUSE: LiteralString = "SELECT public.fullpass_rate_pause(%(name)s, %(seconds)s)"
