-- Each checkpoint row carries its number of facts, computed by the worker from
-- the fact model (jobs/facts.py), so SQL never spells out the categories.
ALTER TABLE public.chunk_facts ADD COLUMN fact_count int NOT NULL DEFAULT 0;
UPDATE public.chunk_facts f
   SET fact_count = (SELECT coalesce(sum(jsonb_array_length(v)), 0)::int
                       FROM jsonb_each(f.facts) e(k, v)
                      WHERE jsonb_typeof(v) = 'array');
