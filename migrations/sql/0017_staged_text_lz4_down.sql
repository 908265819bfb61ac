-- Staged chunk text goes back to the server's default compression (values
-- already stored stay as they are: both methods read the same).
ALTER TABLE public.import_chunks ALTER COLUMN content SET COMPRESSION default;
