-- Undoes 0011_costs_up.sql: back to 0009's view and columns.

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
       i.updated_at,
       i.generation,
       i.spent_input_tokens,
       i.spent_output_tokens,
       i.source,
       -- MEMORY is published as soon as the memory stage finishes.
       coalesce(mem.status = 'done', false) AS memory_ready,
       -- The sections are published with the whole pass.
       (i.status = 'complete' AND coalesce(reg.status = 'done', false)) AS sections_ready,
       p.note,
       -- The embed stage runs beside the map step: its own progress.
       emb.status AS embed_status,
       emb.items_done AS embedded,
       emb.items_total AS embed_total,
       i.embedding_tokens
  FROM public.imports i
  LEFT JOIN public.import_stages cur ON cur.import_id = i.id AND cur.stage = i.stage
  LEFT JOIN public.import_stages mem ON mem.import_id = i.id AND mem.stage = 'memory'
  LEFT JOIN public.import_stages reg ON reg.import_id = i.id AND reg.stage = 'regenerate'
  LEFT JOIN public.import_stages emb ON emb.import_id = i.id AND emb.stage = 'embed'
  LEFT JOIN LATERAL (
      SELECT CASE WHEN i.status = 'complete' THEN 100.0
             ELSE round(100.0 * sum(CASE
                     WHEN s.status IN ('done', 'skipped') THEN s.weight
                     WHEN s.status = 'running' AND s.items_total > 0
                         THEN s.weight * least(s.items_done, s.items_total)::numeric / s.items_total
                     ELSE 0 END) / nullif(sum(s.weight), 0), 1)
             END AS progress,
             string_agg(DISTINCT s.output ->> 'skipped', '; ')
                 FILTER (WHERE s.status = 'skipped') AS note
        FROM public.import_stages s
       WHERE s.import_id = i.id
  ) p ON true;
REVOKE ALL ON public.import_progress FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.import_progress TO authenticated;
GRANT ALL ON public.import_progress TO service_role;

DROP TRIGGER import_stages_reset ON public.import_stages;
DROP FUNCTION public.fullpass_stage_reset();
DROP INDEX public.chunk_facts_reuse_idx;
ALTER TABLE public.chunk_facts
    DROP COLUMN prompt_version,
    DROP COLUMN requested_model,
    DROP COLUMN reused_from_import,
    DROP COLUMN reused_from_chunk;
ALTER TABLE public.imports DROP COLUMN spent_cost_usd;
ALTER TABLE public.import_stages
    DROP COLUMN model,
    DROP COLUMN cost_usd,
    DROP COLUMN items_reused;
