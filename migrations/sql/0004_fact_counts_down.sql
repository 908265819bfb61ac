-- Undoes 0004_fact_counts_up.sql.
ALTER TABLE public.chunk_facts DROP COLUMN fact_count;
