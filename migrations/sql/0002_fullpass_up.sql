-- fullpass schema: tables, trigger, progress view, operator functions, RLS.
--
-- Written to run on a plain PostgreSQL (15+) as well as on Supabase: the
-- Supabase roles and auth.uid() are created only where they are missing, and
-- the app's own tables (conversation_chunks, user_profiles) are created when
-- absent or completed with the missing columns when present. Everything done
-- to the app's tables goes through the helpers of fullpass_ledger.sql (run
-- just before this file): every column, policy, index and constraint added and
-- every privilege changed is recorded, policies, indexes and constraints are
-- named fullpass_..., and the downgrade takes back exactly that.

-- Supabase roles (stand-ins on plain PostgreSQL) ---------------------------
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another database's migration
            END;
        END IF;
    END LOOP;
    BEGIN
        ALTER ROLE service_role BYPASSRLS;
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;  -- managed platforms configure service_role themselves
    END;
END
$$;

CREATE SCHEMA IF NOT EXISTS auth;
DO $$
BEGIN
    IF to_regprocedure('auth.uid()') IS NULL THEN
        -- The same contract as Supabase's auth.uid(): the JWT "sub" claim.
        CREATE FUNCTION auth.uid() RETURNS uuid
            LANGUAGE sql STABLE
            AS $f$
                SELECT nullif(
                    coalesce(
                        nullif(current_setting('request.jwt.claim.sub', true), ''),
                        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
                    ), '')::uuid
            $f$;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

-- Every function pins its search_path with pg_temp named last: left out, the
-- session's temporary schema is searched *first* for tables and types, and a
-- caller's temporary table could stand in for one a security-definer function
-- (or the unqualified SQL of procrastinate's functions it calls) writes to.

-- The stage list: the one place SQL learns the pipeline's order and weights.
-- worker/stages.py holds the same list; a test keeps the two in step.
CREATE FUNCTION public.fullpass_stages()
    RETURNS TABLE (stage text, "position" smallint, weight smallint)
    LANGUAGE sql IMMUTABLE
AS $$
    VALUES ('download'::text, 1::smallint, 3::smallint),
           ('chunk', 2, 12),
           ('extract', 3, 55),
           ('reduce', 4, 5),
           ('memory', 5, 8),
           ('regenerate', 6, 14),
           ('finalize', 7, 3)
$$;

-- imports -----------------------------------------------------------------
CREATE TABLE public.imports (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL,
    storage_path text NOT NULL CHECK (length(storage_path) BETWEEN 3 AND 1024),
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'complete', 'failed', 'cancelled')),
    stage text,
    attempts int NOT NULL DEFAULT 0,
    error text,
    conversation_count int,
    chunk_count int,
    fact_count int,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    completed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    options jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(options) = 'object'),
    -- Bumped by requeue/cancel: a job carrying an older generation is stale and
    -- stops without writing anything.
    generation int NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX imports_one_active_per_user ON public.imports (user_id)
    WHERE status IN ('pending', 'processing');
CREATE INDEX imports_user_created_idx ON public.imports (user_id, created_at DESC);

-- import_stages -----------------------------------------------------------
CREATE TABLE public.import_stages (
    import_id uuid NOT NULL REFERENCES public.imports (id) ON DELETE CASCADE,
    stage text NOT NULL,
    "position" smallint NOT NULL,
    weight smallint NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed', 'skipped')),
    attempts int NOT NULL DEFAULT 0,
    items_total int,
    items_done int NOT NULL DEFAULT 0,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    error text,
    output jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (import_id, stage)
);

-- chunk_facts: the map step's checkpoint ----------------------------------
CREATE TABLE public.chunk_facts (
    import_id uuid NOT NULL REFERENCES public.imports (id) ON DELETE CASCADE,
    chunk_id uuid NOT NULL,
    user_id uuid NOT NULL,
    content_hash text NOT NULL,
    facts jsonb NOT NULL DEFAULT '{}'::jsonb,
    model text,
    input_tokens int NOT NULL DEFAULT 0,
    output_tokens int NOT NULL DEFAULT 0,
    cache_read_tokens int NOT NULL DEFAULT 0,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (import_id, chunk_id)
);
CREATE INDEX chunk_facts_user_idx ON public.chunk_facts (user_id);

-- conversation_chunks: the app's table, created or completed ---------------
SELECT public.fullpass_create_table('conversation_chunks',
                                    'id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id uuid NOT NULL');
SELECT public.fullpass_add_column('conversation_chunks', 'id', 'uuid DEFAULT gen_random_uuid()');
SELECT public.fullpass_add_column('conversation_chunks', 'user_id', 'uuid');
SELECT public.fullpass_add_column('conversation_chunks', 'import_id', 'uuid');
SELECT public.fullpass_add_column('conversation_chunks', 'conversation_id', 'text');
SELECT public.fullpass_add_column('conversation_chunks', 'title', 'text');
SELECT public.fullpass_add_column('conversation_chunks', 'content', 'text');
SELECT public.fullpass_add_column('conversation_chunks', 'token_count', 'int');
SELECT public.fullpass_add_column('conversation_chunks', 'chunk_index', 'int');
SELECT public.fullpass_add_column('conversation_chunks', 'total_chunks', 'int');
SELECT public.fullpass_add_column('conversation_chunks', 'chunk_tier', $d$text DEFAULT 'medium'$d$);
SELECT public.fullpass_add_column('conversation_chunks', 'message_count', 'int');
SELECT public.fullpass_add_column('conversation_chunks', 'is_recent', 'boolean DEFAULT false');
SELECT public.fullpass_add_column('conversation_chunks', 'created_at', 'timestamptz DEFAULT now()');
SELECT public.fullpass_add_column('conversation_chunks', 'content_hash', 'text');
DO $$
DECLARE
    vector_schema name;
    -- The configured embeddings model's vector size, set by `fullpass migrate`
    -- (worker.migrate); 1536 when the migration runs without it.
    dimension int := coalesce(
        nullif(current_setting('fullpass.embedding_dimension', true), '')::int, 1536);
BEGIN
    -- Embeddings are backfilled later; the column exists only where pgvector does.
    BEGIN
        CREATE EXTENSION IF NOT EXISTS vector;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pgvector is not available: conversation_chunks.embedding not created';
    END;
    -- Supabase keeps extensions in their own schema, not always on the search_path.
    SELECT n.nspname INTO vector_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector';
    IF vector_schema IS NOT NULL THEN
        PERFORM public.fullpass_add_column('conversation_chunks', 'embedding',
                                           format('%I.vector(%s)', vector_schema, dimension));
    END IF;
END
$$;
SELECT public.fullpass_create_index('conversation_chunks',
                                    'fullpass_conversation_chunks_import_chunk_key',
                                    '(import_id, conversation_id, chunk_tier, chunk_index)',
                                    p_unique => true);
SELECT public.fullpass_create_index('conversation_chunks', 'fullpass_conversation_chunks_user_idx',
                                    '(user_id)');

-- user_profiles: the app's table, created or completed ---------------------
SELECT public.fullpass_create_table('user_profiles',
                                    'user_id uuid PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now()');
SELECT public.fullpass_add_column('user_profiles', 'user_id', 'uuid');
SELECT public.fullpass_add_column('user_profiles', 'soul_md', 'text');
SELECT public.fullpass_add_column('user_profiles', 'identity_md', 'text');
SELECT public.fullpass_add_column('user_profiles', 'user_md', 'text');
SELECT public.fullpass_add_column('user_profiles', 'agents_md', 'text');
SELECT public.fullpass_add_column('user_profiles', 'tools_md', 'text');
SELECT public.fullpass_add_column('user_profiles', 'soulprint_text', 'text');
SELECT public.fullpass_add_column('user_profiles', 'import_status', 'text');
SELECT public.fullpass_add_column('user_profiles', 'memory_md', 'text');
SELECT public.fullpass_add_column('user_profiles', 'full_pass_status', $d$text DEFAULT 'pending'$d$);
SELECT public.fullpass_add_column('user_profiles', 'full_pass_started_at', 'timestamptz');
SELECT public.fullpass_add_column('user_profiles', 'full_pass_completed_at', 'timestamptz');
SELECT public.fullpass_add_column('user_profiles', 'full_pass_error', 'text');
SELECT public.fullpass_add_column('user_profiles', 'updated_at', 'timestamptz DEFAULT now()');
SELECT public.fullpass_add_constraint('user_profiles', 'fullpass_user_profiles_full_pass_status_check',
    $d$CHECK (full_pass_status IN ('pending', 'processing', 'complete', 'failed'))$d$);
SELECT public.fullpass_create_index('user_profiles', 'fullpass_user_profiles_user_id_idx', '(user_id)');

-- Deferring jobs ----------------------------------------------------------
-- The one wrapper around procrastinate's versioned SQL API. Its name changes
-- between procrastinate releases; only this function needs to follow.
-- queueing_lock = the import id: at most one queued job per import. No
-- procrastinate ``lock``: it would keep the next stage waiting until the
-- finishing job is marked done, past the NOTIFY that should start it at once.
-- Stale jobs are fenced by ``imports.generation`` instead.
CREATE FUNCTION public.fullpass_defer(
    p_import_id uuid, p_stage text, p_generation int, p_scheduled_at timestamptz DEFAULT NULL
)
    RETURNS bigint
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT (public.procrastinate_defer_jobs_v1(ARRAY[
        ROW(
            'imports',
            'fullpass.' || p_stage,
            0,
            NULL,
            p_import_id::text,
            jsonb_build_object('import_id', p_import_id, 'generation', p_generation),
            p_scheduled_at
        )::public.procrastinate_job_to_defer_v1
    ]))[1]
$$;

-- Stops every queued job of an import and asks running ones to abort.
CREATE FUNCTION public.fullpass_cancel_jobs(p_import_id uuid)
    RETURNS int
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    j record;
    n int := 0;
BEGIN
    FOR j IN
        SELECT id, status FROM public.procrastinate_jobs
         WHERE queueing_lock = p_import_id::text AND status IN ('todo', 'doing')
         FOR UPDATE
    LOOP
        PERFORM public.procrastinate_cancel_job_v1(j.id, j.status = 'doing', false);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Mirrors the import's state into the app's profile row (created if absent).
CREATE FUNCTION public.fullpass_mirror_profile(
    p_user_id uuid, p_status text, p_error text DEFAULT NULL
)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    UPDATE public.user_profiles
       SET full_pass_status = p_status,
           full_pass_error = p_error,
           full_pass_started_at = CASE WHEN p_status = 'processing'
                                       THEN coalesce(full_pass_started_at, now())
                                       WHEN p_status = 'pending' THEN NULL
                                       ELSE full_pass_started_at END,
           full_pass_completed_at = CASE WHEN p_status IN ('complete', 'failed') THEN now()
                                         ELSE NULL END,
           updated_at = now()
     WHERE user_id = p_user_id;
    IF NOT FOUND THEN
        INSERT INTO public.user_profiles (user_id, full_pass_status, full_pass_error,
                                          full_pass_started_at)
        VALUES (p_user_id, p_status, p_error,
                CASE WHEN p_status = 'processing' THEN now() END);
    END IF;
END
$$;

-- Insert triggers ---------------------------------------------------------
-- SECURITY INVOKER on purpose: the "already in progress" check sees only the
-- rows the inserting role may read, so an insert for another user is refused by
-- RLS instead of naming that user's running import.
CREATE FUNCTION public.imports_before_insert()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    active uuid;
BEGIN
    -- A new import always starts from the beginning, whatever the insert said.
    NEW.status := 'pending';
    NEW.stage := 'download';
    NEW.attempts := 0;
    NEW.error := NULL;
    NEW.generation := 1;
    NEW.input_tokens := 0;
    NEW.output_tokens := 0;
    NEW.started_at := NULL;
    NEW.completed_at := NULL;
    NEW.created_at := now();
    NEW.updated_at := now();
    SELECT id INTO active FROM public.imports
     WHERE user_id = NEW.user_id AND status IN ('pending', 'processing')
     LIMIT 1;
    IF active IS NOT NULL THEN
        RAISE EXCEPTION 'user % already has a full pass in progress (import %)', NEW.user_id, active
            USING ERRCODE = 'unique_violation',
                  HINT = 'Wait for it to finish, or stop it with public.cancel_import().';
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION public.imports_after_insert()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    INSERT INTO public.import_stages (import_id, stage, "position", weight)
    SELECT NEW.id, s.stage, s.position, s.weight FROM public.fullpass_stages() s;
    PERFORM public.fullpass_mirror_profile(NEW.user_id, 'pending');
    PERFORM public.fullpass_defer(NEW.id, 'download', NEW.generation);
    RETURN NULL;
END
$$;

CREATE TRIGGER imports_before_insert BEFORE INSERT ON public.imports
    FOR EACH ROW EXECUTE FUNCTION public.imports_before_insert();
CREATE TRIGGER imports_after_insert AFTER INSERT ON public.imports
    FOR EACH ROW EXECUTE FUNCTION public.imports_after_insert();

-- Operator functions ------------------------------------------------------
CREATE FUNCTION public.requeue_import(p_import_id uuid, p_from_stage text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    imp public.imports;
    from_stage text := p_from_stage;
    from_pos smallint;
    other uuid;
BEGIN
    SELECT * INTO imp FROM public.imports WHERE id = p_import_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'import % does not exist', p_import_id USING ERRCODE = 'no_data_found';
    END IF;

    IF from_stage IS NULL THEN
        -- Resume: the first stage that has not finished (the failed one, or
        -- the one that was running); a complete import redoes its last stage.
        SELECT s.stage INTO from_stage FROM public.import_stages s
         WHERE s.import_id = p_import_id AND s.status NOT IN ('done', 'skipped')
         ORDER BY s.position LIMIT 1;
        IF from_stage IS NULL THEN
            SELECT s.stage INTO from_stage FROM public.fullpass_stages() s
             ORDER BY s.position DESC LIMIT 1;
        END IF;
    END IF;

    SELECT s.position INTO from_pos FROM public.fullpass_stages() s WHERE s.stage = from_stage;
    IF from_pos IS NULL THEN
        RAISE EXCEPTION 'unknown stage "%"', from_stage
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Stages: ' || (SELECT string_agg(stage, ', ' ORDER BY position)
                                          FROM public.fullpass_stages());
    END IF;

    SELECT id INTO other FROM public.imports
     WHERE user_id = imp.user_id AND status IN ('pending', 'processing') AND id <> imp.id
     LIMIT 1;
    IF other IS NOT NULL THEN
        RAISE EXCEPTION 'user % already has another full pass in progress (import %)',
            imp.user_id, other USING ERRCODE = 'unique_violation';
    END IF;

    PERFORM public.fullpass_cancel_jobs(p_import_id);

    UPDATE public.import_stages s
       SET status = 'pending', attempts = 0, items_done = 0, items_total = NULL,
           input_tokens = 0, output_tokens = 0, started_at = NULL, finished_at = NULL,
           error = NULL, output = '{}'::jsonb, updated_at = now()
     WHERE s.import_id = p_import_id
       AND (s.position >= from_pos OR s.status NOT IN ('done', 'skipped'));
    IF from_pos <= (SELECT position FROM public.fullpass_stages() WHERE stage = 'extract') THEN
        DELETE FROM public.chunk_facts WHERE import_id = p_import_id;
    END IF;

    UPDATE public.imports
       SET status = 'pending', stage = from_stage, attempts = 0, error = NULL,
           completed_at = NULL, generation = generation + 1, updated_at = now(),
           input_tokens = (SELECT coalesce(sum(input_tokens), 0) FROM public.import_stages
                            WHERE import_id = p_import_id),
           output_tokens = (SELECT coalesce(sum(output_tokens), 0) FROM public.import_stages
                             WHERE import_id = p_import_id)
     WHERE id = p_import_id
     RETURNING * INTO imp;
    PERFORM public.fullpass_mirror_profile(imp.user_id, 'pending');
    RETURN public.fullpass_defer(p_import_id, from_stage, imp.generation);
END
$$;

CREATE FUNCTION public.cancel_import(p_import_id uuid)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    imp public.imports;
BEGIN
    SELECT * INTO imp FROM public.imports WHERE id = p_import_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'import % does not exist', p_import_id USING ERRCODE = 'no_data_found';
    END IF;
    IF imp.status NOT IN ('pending', 'processing') THEN
        RETURN false;  -- already finished: nothing to stop
    END IF;
    PERFORM public.fullpass_cancel_jobs(p_import_id);
    UPDATE public.import_stages
       SET status = 'failed', error = 'cancelled', finished_at = now(), updated_at = now()
     WHERE import_id = p_import_id AND status = 'running';
    UPDATE public.imports
       SET status = 'cancelled', error = 'cancelled by operator', completed_at = now(),
           generation = generation + 1, updated_at = now()
     WHERE id = p_import_id;
    PERFORM public.fullpass_mirror_profile(imp.user_id, 'failed', 'cancelled by operator');
    RETURN true;
END
$$;

-- Progress view -----------------------------------------------------------
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
       i.updated_at
  FROM public.imports i
  LEFT JOIN public.import_stages cur ON cur.import_id = i.id AND cur.stage = i.stage
  LEFT JOIN LATERAL (
      SELECT CASE WHEN i.status = 'complete' THEN 100.0
             ELSE round(100.0 * sum(CASE
                     WHEN s.status IN ('done', 'skipped') THEN s.weight
                     WHEN s.status = 'running' AND s.items_total > 0
                         THEN s.weight * least(s.items_done, s.items_total)::numeric / s.items_total
                     ELSE 0 END) / nullif(sum(s.weight), 0), 1)
             END AS progress
        FROM public.import_stages s
       WHERE s.import_id = i.id
  ) p ON true;

-- Privileges and row-level security ---------------------------------------
ALTER TABLE public.imports ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.import_stages ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.chunk_facts ENABLE ROW LEVEL SECURITY;
SELECT public.fullpass_enable_rls('conversation_chunks');
SELECT public.fullpass_enable_rls('user_profiles');

REVOKE ALL ON public.imports, public.import_stages, public.chunk_facts, public.import_progress
    FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.imports, public.import_stages, public.chunk_facts, public.import_progress
    TO authenticated;
-- Users choose only who and what; the triggers set everything else.
GRANT INSERT (user_id, storage_path, options) ON public.imports TO authenticated;
GRANT ALL ON public.imports, public.import_stages, public.chunk_facts, public.import_progress
    TO service_role;
-- The app's tables: each role's privileges are saved before they change, and
-- restored by the downgrade.
SELECT public.fullpass_grant(t, 'ALL', 'service_role'),
       public.fullpass_revoke(t, 'ALL', 'anon'),
       public.fullpass_grant(t, 'SELECT', 'authenticated')
  FROM unnest(ARRAY['conversation_chunks', 'user_profiles']) AS t;

CREATE POLICY imports_select_own ON public.imports
    FOR SELECT TO authenticated USING (user_id = auth.uid());
CREATE POLICY imports_insert_own ON public.imports
    FOR INSERT TO authenticated
    WITH CHECK (
        user_id = auth.uid()
        -- <bucket>/<user_id>/<file...>, with no empty, "." or ".." segment
        AND storage_path ~ ('^[A-Za-z0-9][A-Za-z0-9_.-]*/' || auth.uid()::text || '/[^/].*$')
        AND storage_path !~ '(^|/)\.{1,2}(/|$)'
        AND storage_path !~ '(//|/$)'
        AND storage_path !~ '[\\[:cntrl:]]'
    );
CREATE POLICY import_stages_select_own ON public.import_stages
    FOR SELECT TO authenticated
    USING (EXISTS (SELECT 1 FROM public.imports i
                    WHERE i.id = import_id AND i.user_id = auth.uid()));
CREATE POLICY chunk_facts_select_own ON public.chunk_facts
    FOR SELECT TO authenticated USING (user_id = auth.uid());
-- Alongside whatever policies the app has: permissive policies add up, and
-- these let a user read no more than their own rows.
SELECT public.fullpass_create_policy('conversation_chunks', 'fullpass_conversation_chunks_select_own',
                                     'FOR SELECT TO authenticated USING (user_id = auth.uid())');
SELECT public.fullpass_create_policy('user_profiles', 'fullpass_user_profiles_select_own',
                                     'FOR SELECT TO authenticated USING (user_id = auth.uid())');

DO $$
BEGIN
    IF to_regclass('public.alembic_version') IS NOT NULL THEN
        REVOKE ALL ON public.alembic_version FROM PUBLIC, anon, authenticated;
    END IF;
END
$$;

-- Functions: only the worker's roles may run them.
REVOKE ALL ON FUNCTION public.requeue_import(uuid, text), public.cancel_import(uuid),
                       public.fullpass_defer(uuid, text, int, timestamptz),
                       public.fullpass_cancel_jobs(uuid),
                       public.fullpass_mirror_profile(uuid, text, text),
                       public.imports_before_insert(), public.imports_after_insert()
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.requeue_import(uuid, text), public.cancel_import(uuid)
    TO service_role;

-- The queue's tables and functions are the worker's alone ----------------
CREATE FUNCTION public.fullpass_lock_down_queue()
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname LIKE 'procrastinate%'
           AND c.relkind IN ('r', 'S', 'v')
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, anon, authenticated', r.rel);
        IF r.relkind = 'r' THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', r.rel);
        END IF;
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure AS fn FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.proname LIKE 'procrastinate%'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon, authenticated', r.fn);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION public.fullpass_lock_down_queue() FROM PUBLIC, anon, authenticated;
SELECT public.fullpass_lock_down_queue();
