-- Undoes 0010_rate_budget_up.sql. The budget is state of the moment: nothing
-- of value is lost with it.
DROP FUNCTION public.fullpass_rate_pause(text, float8);
DROP FUNCTION public.fullpass_rate_observe(text, int, int, float8, int, int, int);
DROP FUNCTION public.fullpass_rate_draw(text, int, int, int, float8);
DROP TABLE public.fullpass_rate_budget;
