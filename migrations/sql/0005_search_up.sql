-- Search: the embedding column at the configured model's size, the model
-- behind each embedding, the profile's embedding status, full-text search, a
-- vector index, and public.search_chunks(), the app's hybrid retrieval.
--
-- Everything on the app's tables (conversation_chunks, user_profiles) goes
-- through the ledger's helpers (fullpass_ledger.sql, run just before this
-- file), recorded under 0005 and taken back by 0005_search_down.sql. An app
-- column is never altered: only a column the ledger holds as fullpass's own
-- is ever re-created.

-- The embedding column --------------------------------------------------------
-- fullpass.embedding_dimension is the configured model's vector size, set by
-- `fullpass migrate` (migrations/env.py); unset, nothing is resized.
DO $$
DECLARE
    vector_schema name;
    wanted int := nullif(current_setting('fullpass.embedding_dimension', true), '')::int;
    col record;
BEGIN
    SELECT n.nspname INTO vector_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector';
    IF vector_schema IS NULL THEN
        RAISE NOTICE 'pgvector is not installed: no embedding column, search_chunks searches text only';
        RETURN;
    END IF;
    -- pgvector installed after 0002 ran: the column is created now (and is 0005's).
    PERFORM public.fullpass_add_column('conversation_chunks', 'embedding',
                                       format('%I.vector(%s)', vector_schema, coalesce(wanted, 1536)));

    SELECT t.typname, a.atttypmod INTO col
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = 'public.conversation_chunks'::regclass AND a.attname = 'embedding'
       AND a.attnum > 0 AND NOT a.attisdropped;
    -- A database migrated before the size followed the configuration has
    -- fullpass's vector(1536). Only when the ledger holds it as fullpass's and
    -- no row has an embedding yet is it re-created at the configured size
    -- (dropped and added: no table rewrite); otherwise the worker refuses to
    -- start and says which settings to change.
    IF wanted IS NOT NULL AND col.typname = 'vector' AND col.atttypmod IS DISTINCT FROM wanted
       AND public.fullpass_recorded('conversation_chunks', 'embedding') THEN
        IF EXISTS (SELECT 1 FROM public.conversation_chunks WHERE embedding IS NOT NULL) THEN
            RAISE NOTICE 'conversation_chunks.embedding holds % dimensions and has embeddings: '
                         'left as it is (the configured model gives %)', col.atttypmod, wanted;
            RETURN;
        END IF;
        BEGIN
            ALTER TABLE public.conversation_chunks DROP COLUMN embedding;
            EXECUTE format('ALTER TABLE public.conversation_chunks ADD COLUMN embedding %I.vector(%s)',
                           vector_schema, wanted);
            RAISE NOTICE 'conversation_chunks.embedding (fullpass''s, empty) re-created: % -> % dimensions',
                col.atttypmod, wanted;
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'conversation_chunks.embedding is used by another object: left at % dimensions',
                col.atttypmod;
        END;
    END IF;
END
$$;

-- Which model produced a row's embedding (NULL: unknown, or the app's own).
SELECT public.fullpass_add_column('conversation_chunks', 'embedding_model', 'text');

-- user_profiles.embedding_status: processing, complete, failed, or NULL ------
SELECT public.fullpass_add_column('user_profiles', 'embedding_status', 'text');
DO $$
BEGIN
    -- A column of the app's own under that name keeps the app's values.
    IF public.fullpass_recorded('user_profiles', 'embedding_status') THEN
        PERFORM public.fullpass_add_constraint('user_profiles',
            'fullpass_user_profiles_embedding_status_check',
            $d$CHECK (embedding_status IN ('processing', 'complete', 'failed'))$d$);
    ELSE
        RAISE NOTICE 'user_profiles.embedding_status is the app''s own: not constrained';
    END IF;
END
$$;

-- Full-text search ------------------------------------------------------------
-- The 'english' configuration, named (never default_text_search_config, which
-- a session or database may change, and which a generated column cannot
-- follow): the chunks are mostly English, and its stemming lets "backups"
-- find "backup" and "running" find "ran"'s neighbours, while its stop words
-- keep an OR of a natural-language question's words from matching every
-- chunk (see search_chunks). Words of other languages still match as
-- written: the English stemmer treats query and chunk alike, so an identical
-- word gives an identical lexeme; only their inflections and stop words are
-- not known ('simple' would know no language's, English's included).
-- The title weighs more than the body (A against B in ts_rank). Inputs are
-- cut (1,000 and 100,000 characters, far above a chunk) so that no row of
-- the app's can exceed a tsvector's 1 MB limit and fail its insert.
SELECT public.fullpass_add_column('conversation_chunks', 'fullpass_fts',
    $d$tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('pg_catalog.english'::regconfig, left(coalesce(title, ''), 1000)), 'A')
        || setweight(to_tsvector('pg_catalog.english'::regconfig, left(coalesce(content, ''), 100000)), 'B')
    ) STORED$d$);
SELECT public.fullpass_create_index('conversation_chunks', 'fullpass_conversation_chunks_fts_idx',
                                    'USING gin (fullpass_fts)');

-- The vector index --------------------------------------------------------------
-- HNSW with cosine distance, where pgvector is installed and the column has a
-- size HNSW indexes (up to 2,000 dimensions), unless an index of the app's
-- already serves cosine search on it.
DO $$
DECLARE
    col record;
    existing regclass;
BEGIN
    SELECT n.nspname AS type_schema, a.atttypmod AS dims INTO col
      FROM pg_attribute a
      JOIN pg_type t ON t.oid = a.atttypid
      JOIN pg_namespace n ON n.oid = t.typnamespace
      JOIN pg_extension e ON e.extname = 'vector' AND e.extnamespace = t.typnamespace
     WHERE a.attrelid = 'public.conversation_chunks'::regclass AND a.attname = 'embedding'
       AND a.attnum > 0 AND NOT a.attisdropped AND t.typname = 'vector';
    IF NOT FOUND THEN
        RAISE NOTICE 'no pgvector embedding column: no vector index';
        RETURN;
    END IF;
    IF col.dims NOT BETWEEN 1 AND 2000 THEN
        RAISE NOTICE 'conversation_chunks.embedding has %: HNSW indexes 1 to 2,000 dimensions; '
                     'no vector index (search_chunks scans the user''s rows)',
            CASE WHEN col.dims > 0 THEN col.dims || ' dimensions' ELSE 'no fixed size' END;
        RETURN;
    END IF;
    SELECT i.indexrelid::regclass INTO existing
      FROM pg_index i
      JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_am am ON am.oid = ic.relam
      JOIN pg_opclass oc ON oc.oid = i.indclass[0]
     WHERE i.indrelid = 'public.conversation_chunks'::regclass
       AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                           WHERE attrelid = 'public.conversation_chunks'::regclass
                             AND attname = 'embedding')
       AND am.amname IN ('hnsw', 'ivfflat') AND oc.opcname = 'vector_cosine_ops'
       AND i.indpred IS NULL AND ic.relname NOT LIKE 'fullpass\_%'
     LIMIT 1;
    IF existing IS NOT NULL THEN
        RAISE NOTICE 'the app''s index % already serves cosine search: no vector index added', existing;
        RETURN;
    END IF;
    PERFORM public.fullpass_create_index('conversation_chunks',
                                         'fullpass_conversation_chunks_embedding_idx',
                                         format('USING hnsw (embedding %I.vector_cosine_ops)',
                                                col.type_schema));
END
$$;

-- public.search_chunks: hybrid retrieval --------------------------------------
-- Candidates from full-text search and, given a query embedding of the
-- column's size, from cosine distance (over the HNSW index), 4 x match_count
-- from each side, fused by reciprocal rank: score = sum of 1 / (60 + rank).
--
-- SECURITY INVOKER: the caller's privileges and row-level security apply, so
-- a signed-in user finds only the rows they may read (their own), whatever
-- p_user_id says; service_role (BYPASSRLS) finds the asked user's.
--
-- The text query is the OR of the query's lexemes, not websearch_to_tsquery's
-- AND: chat messages and questions name more words than any one chunk holds
-- ("how did I set up backups for my postgres database?" finds no chunk with
-- AND: the chunk never says "database"). On eight such questions over a
-- dozen chunks (tests/test_search.py), AND found the right chunk for 4, the
-- OR for all 8, each ranked first. ts_rank (normalised by the log of the
-- length, so long chunks do not win by size) puts the chunks matching more
-- of the words first, and English stop words are dropped, so the OR does not
-- match everything ('simple', keeping them, matched 3 times as many chunks).
--
-- Without pgvector the function exists all the same, with query_embedding
-- real[] (ignored): the app's call works and searches text only. The body is
-- built here because the vector type's schema (extensions on Supabase) and
-- the column's size are only known now.
--
-- search_path: pg_catalog first, pg_temp last (see 0002); public and the
-- vector schema because the app's row-level security policies may call
-- functions of its own that do not pin theirs.
DO $$
DECLARE
    vector_schema name;
    vector_version int[];
    dims int;            -- the embedding column's size (-1: any); NULL: no vector column
    embedding_type text;
    path text;
    extra_settings text := '';
    usable text := 'false';
    similarity text := 'NULL::double precision';
    vector_hits text := 'SELECT NULL::uuid AS chunk_id, NULL::double precision AS distance WHERE false';
    fn regprocedure;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'search_chunks'
                                       AND pronamespace = 'public'::regnamespace) THEN
        RAISE EXCEPTION 'public.search_chunks already exists and is not fullpass''s'
            USING ERRCODE = 'duplicate_function',
                  HINT = 'Rename or drop the app''s function, then run fullpass migrate again.';
    END IF;

    SELECT n.nspname, (regexp_match(e.extversion, '^(\d+)\.(\d+)'))::int[]
      INTO vector_schema, vector_version
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector';
    IF vector_schema IS NOT NULL THEN
        SELECT a.atttypmod INTO dims
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = 'public.conversation_chunks'::regclass AND a.attname = 'embedding'
           AND a.attnum > 0 AND NOT a.attisdropped
           AND t.typname = 'vector' AND t.typnamespace = vector_schema::regnamespace;
    END IF;

    IF vector_schema IS NULL THEN
        embedding_type := 'real[]';
        path := 'pg_catalog, public, pg_temp';
    ELSE
        embedding_type := format('%I.vector', vector_schema);
        path := CASE WHEN vector_schema = 'public' THEN 'pg_catalog, public, pg_temp'
                     ELSE format('pg_catalog, public, %I, pg_temp', vector_schema) END;
        -- pgvector 0.8+: the index scan goes on until enough of *this user's*
        -- rows are found, instead of stopping at ef_search rows of anyone's.
        -- (The type is used first so that pgvector's settings are defined.)
        IF vector_version >= ARRAY[0, 8] THEN
            EXECUTE format('SELECT %L::%I.vector', '[1]', vector_schema);
            extra_settings := 'SET hnsw.iterative_scan = relaxed_order';
        END IF;
    END IF;

    IF dims IS NOT NULL THEN
        -- A query vector of another size is ignored (text only), never an error.
        usable := CASE WHEN dims > 0
                       THEN format('%I.vector_dims(search_chunks.query_embedding) = %s',
                                   vector_schema, dims)
                       ELSE 'true' END;
        similarity := format(
            'nullif(1 - (c.embedding OPERATOR(%1$I.<=>) _qvec), ''NaN''::double precision)',
            vector_schema);
        vector_hits := format($v$
            SELECT c.id AS chunk_id, c.embedding OPERATOR(%1$I.<=>) _qvec AS distance
              FROM public.conversation_chunks c
             WHERE _qvec IS NOT NULL AND c.user_id = search_chunks.p_user_id
               AND c.embedding IS NOT NULL
               AND (search_chunks.p_tiers IS NULL OR c.chunk_tier = ANY (search_chunks.p_tiers))
               %2$s
             ORDER BY c.embedding OPERATOR(%1$I.<=>) _qvec
             LIMIT _vpool$v$,
            vector_schema,
            CASE WHEN dims > 0 THEN ''
                 ELSE format('AND %1$I.vector_dims(c.embedding) = %1$I.vector_dims(_qvec)',
                             vector_schema) END);
        IF dims <= 0 THEN
            -- A column without a size may hold vectors of several.
            similarity := format('CASE WHEN %1$I.vector_dims(c.embedding) = %1$I.vector_dims(_qvec) '
                                 'THEN %2$s END', vector_schema, similarity);
        END IF;
    END IF;

    EXECUTE format($f$
CREATE FUNCTION public.search_chunks(
    p_user_id uuid,
    query_text text,
    query_embedding %1$s DEFAULT NULL,
    match_count int DEFAULT 10,
    p_tiers text[] DEFAULT NULL
)
    RETURNS TABLE (id uuid, conversation_id text, title text, content text,
                   created_at timestamptz, chunk_tier text, text_rank real,
                   vector_similarity double precision, score double precision)
    LANGUAGE plpgsql
    STABLE
    SECURITY INVOKER
    SET search_path = %2$s
    %3$s
AS $body$
DECLARE
    -- match_count is bounded: 1 to 200, 10 when NULL.
    _limit int := least(greatest(coalesce(search_chunks.match_count, 10), 1), 200);
    _pool int := 4 * _limit;
    _tsq tsquery;
    _qvec %1$s;
    _vpool int := 0;
BEGIN
    IF search_chunks.query_embedding IS NOT NULL AND %4$s THEN
        _qvec := search_chunks.query_embedding;
        _vpool := _pool;
    END IF;
    -- The OR of the query's lexemes (already normalised: quoted, taken as they are).
    SELECT string_agg('''' || replace(replace(l.lexeme, '\', '\\'), '''', '''''') || '''', ' | ')::tsquery
      INTO _tsq
      FROM unnest(tsvector_to_array(to_tsvector('pg_catalog.english'::regconfig,
                                                left(coalesce(search_chunks.query_text, ''), 4000))))
           AS l (lexeme);

    RETURN QUERY
    WITH text_hits AS MATERIALIZED (
        SELECT c.id AS chunk_id, ts_rank(c.fullpass_fts, _tsq, 1) AS rank
          FROM public.conversation_chunks c
         WHERE _tsq IS NOT NULL AND c.user_id = search_chunks.p_user_id AND c.fullpass_fts @@ _tsq
           AND (search_chunks.p_tiers IS NULL OR c.chunk_tier = ANY (search_chunks.p_tiers))
         ORDER BY 2 DESC, 1
         LIMIT _pool
    ), text_ranked AS (
        SELECT t.chunk_id, row_number() OVER (ORDER BY t.rank DESC, t.chunk_id) AS pos
          FROM text_hits t
    ), vector_hits AS MATERIALIZED (%5$s
    ), vector_ranked AS (
        -- Zero vectors (blank texts) have no direction: their distance is NaN.
        SELECT v.chunk_id, row_number() OVER (ORDER BY v.distance, v.chunk_id) AS pos
          FROM vector_hits v
         WHERE v.distance < 'NaN'::double precision
    ), fused AS (
        SELECT coalesce(t.chunk_id, v.chunk_id) AS chunk_id,
               coalesce(1.0 / (60 + t.pos), 0) + coalesce(1.0 / (60 + v.pos), 0) AS rrf
          FROM text_ranked t FULL JOIN vector_ranked v ON v.chunk_id = t.chunk_id
    )
    SELECT c.id::uuid, c.conversation_id::text, c.title::text, c.content::text,
           c.created_at::timestamptz, c.chunk_tier::text,
           CASE WHEN c.fullpass_fts @@ _tsq THEN ts_rank(c.fullpass_fts, _tsq, 1) END,
           (%6$s)::double precision,
           f.rrf::double precision
      FROM fused f JOIN public.conversation_chunks c ON c.id = f.chunk_id
     ORDER BY 9 DESC, 7 DESC NULLS LAST, 8 DESC NULLS LAST, 1
     LIMIT _limit;
END
$body$
$f$, embedding_type, path, extra_settings, usable, vector_hits, similarity);

    fn := to_regprocedure(format('public.search_chunks(uuid, text, %s, int, text[])', embedding_type));
    EXECUTE format($c$COMMENT ON FUNCTION %s IS %L$c$, fn,
        'fullpass: hybrid search of a user''s conversation chunks (full text, and cosine '
        'similarity when query_embedding is given and pgvector is installed), fused by '
        'reciprocal rank. Row-level security applies: a signed-in user finds only their own.');
    -- Signed-in users and the service role only (a platform's default
    -- privileges may have granted it to anon as well).
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon', fn);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO authenticated, service_role', fn);
END
$$;
