-- Saved memories and custom instructions, filed as facts when the export is
-- chunked: facts about the user by construction, kept whatever the model
-- answers, each with the date it was saved.
CREATE TABLE public.chunk_saved_facts (
    import_id uuid NOT NULL REFERENCES public.imports (id) ON DELETE CASCADE,
    chunk_id uuid NOT NULL,
    ordinal int NOT NULL,
    user_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('memory', 'instructions')),
    said_at timestamptz,
    facts jsonb NOT NULL,
    fact_count int NOT NULL DEFAULT 0,
    PRIMARY KEY (import_id, chunk_id, ordinal)
);
CREATE INDEX chunk_saved_facts_user_idx ON public.chunk_saved_facts (user_id);
ALTER TABLE public.chunk_saved_facts ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.chunk_saved_facts FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.chunk_saved_facts TO authenticated;
GRANT ALL ON public.chunk_saved_facts TO service_role;
CREATE POLICY chunk_saved_facts_select_own ON public.chunk_saved_facts
    FOR SELECT TO authenticated USING (user_id = auth.uid());
