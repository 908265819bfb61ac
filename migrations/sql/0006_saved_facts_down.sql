-- Undoes 0006_saved_facts_up.sql.
DROP TABLE public.chunk_saved_facts;
