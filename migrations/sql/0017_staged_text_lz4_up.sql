-- A staged chunk's text is compressed with lz4 rather than pglz.
--
-- The chunk stage writes every chunk of an export through COPY, and the
-- server compresses each chunk's text as it stores it: with pglz that was
-- most of the server's work (its CPU for a 26,629-chunk export on PostgreSQL
-- 15: 3.36 s with pglz, 1.38 s with lz4). Publishing copies the compressed text into
-- conversation_chunks as it is (PostgreSQL does not recompress a value it
-- copies), so the app reads lz4 values there too; every reader of a server
-- built with lz4 does so transparently. A server built without lz4 keeps
-- pglz.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_settings
                WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE public.import_chunks ALTER COLUMN content SET COMPRESSION lz4;
    END IF;
END
$$;
