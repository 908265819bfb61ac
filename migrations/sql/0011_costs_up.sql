-- What each stage costs and with which model, and facts a re-import reuses.
--
-- * Every stage records the model it calls (`model`) and what its calls cost
--   at that model's list price (`cost_usd`; NULL: a model without a known
--   price). The import's whole spend, every generation, is `spent_cost_usd`.
-- * A chunk of a new import whose content an earlier import of the same user
--   already extracted, with the same model and prompt version, takes those
--   facts instead of a model call: the copy names where it came from
--   (`reused_from_import`, `reused_from_chunk`), and the extract stage counts
--   such chunks (`items_reused`).

ALTER TABLE public.import_stages
    ADD COLUMN model text,
    ADD COLUMN cost_usd numeric(14, 6) DEFAULT 0,
    ADD COLUMN items_reused int NOT NULL DEFAULT 0;
ALTER TABLE public.imports ADD COLUMN spent_cost_usd numeric(14, 6) DEFAULT 0;
-- Stages and imports recorded before costs were: unknown.
UPDATE public.import_stages SET cost_usd = NULL WHERE input_tokens + output_tokens > 0;
UPDATE public.imports SET spent_cost_usd = NULL
 WHERE spent_input_tokens + spent_output_tokens > 0;

ALTER TABLE public.chunk_facts
    ADD COLUMN prompt_version text,
    ADD COLUMN requested_model text,
    ADD COLUMN reused_from_import uuid,
    ADD COLUMN reused_from_chunk uuid;
-- The user's earlier extractions of a chunk's content.
CREATE INDEX chunk_facts_reuse_idx ON public.chunk_facts (user_id, content_hash)
    WHERE error IS NULL AND prompt_version IS NOT NULL;

-- A stage that is redone (a requeue resets it: no start, no tokens) starts
-- again from no cost and no reused chunk.
CREATE FUNCTION public.fullpass_stage_reset()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    NEW.cost_usd := 0;
    NEW.items_reused := 0;
    NEW.model := NULL;
    RETURN NEW;
END
$$;
CREATE TRIGGER import_stages_reset BEFORE UPDATE ON public.import_stages
    FOR EACH ROW
    WHEN (OLD.started_at IS NOT NULL AND NEW.started_at IS NULL)
    EXECUTE FUNCTION public.fullpass_stage_reset();
REVOKE ALL ON FUNCTION public.fullpass_stage_reset() FROM PUBLIC, anon, authenticated;

-- The progress view: 0009's, with the costs, the map step's model and the
-- chunks it reused.
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
       i.embedding_tokens,
       -- What this generation's stages cost at their models' list prices (NULL:
       -- a model without a known price), and what every generation cost.
       p.cost_usd,
       i.spent_cost_usd,
       ext.model AS extract_model,
       -- Chunks whose facts an earlier import of the user's already had.
       ext.items_reused AS reused_chunks
  FROM public.imports i
  LEFT JOIN public.import_stages cur ON cur.import_id = i.id AND cur.stage = i.stage
  LEFT JOIN public.import_stages mem ON mem.import_id = i.id AND mem.stage = 'memory'
  LEFT JOIN public.import_stages reg ON reg.import_id = i.id AND reg.stage = 'regenerate'
  LEFT JOIN public.import_stages emb ON emb.import_id = i.id AND emb.stage = 'embed'
  LEFT JOIN public.import_stages ext ON ext.import_id = i.id AND ext.stage = 'extract'
  LEFT JOIN LATERAL (
      SELECT CASE WHEN i.status = 'complete' THEN 100.0
             ELSE round(100.0 * sum(CASE
                     WHEN s.status IN ('done', 'skipped') THEN s.weight
                     WHEN s.status = 'running' AND s.items_total > 0
                         THEN s.weight * least(s.items_done, s.items_total)::numeric / s.items_total
                     ELSE 0 END) / nullif(sum(s.weight), 0), 1)
             END AS progress,
             string_agg(DISTINCT s.output ->> 'skipped', '; ')
                 FILTER (WHERE s.status = 'skipped') AS note,
             CASE WHEN bool_and(s.cost_usd IS NOT NULL) THEN sum(s.cost_usd) END AS cost_usd
        FROM public.import_stages s
       WHERE s.import_id = i.id
  ) p ON true;
REVOKE ALL ON public.import_progress FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.import_progress TO authenticated;
GRANT ALL ON public.import_progress TO service_role;
