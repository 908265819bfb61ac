-- Undoes 0008_outbox_up.sql (fullpass's own objects only: nothing to take back
-- from the app's tables). Events not yet delivered are dropped with the table.
DROP TRIGGER imports_final_event ON public.imports;
DROP FUNCTION public.imports_final_event();
DROP TABLE public.import_events;
