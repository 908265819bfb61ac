-- The fleet's shared budget of Anthropic API calls (FULLPASS_RATE_RPM,
-- FULLPASS_RATE_ITPM): every worker draws from it before a call, so the
-- workers together stay inside the organisation's rate limits however many
-- there are.
--
-- Two token buckets per budget, as the API keeps them: requests and input
-- tokens, refilled continuously at the limit per minute and holding at most
-- `burst` seconds of it. A draw always takes what the call needs and returns
-- how long the caller waits before sending: the time the bucket needs to
-- refill what it is short of. A bucket may so go below zero; callers then
-- line up behind each other, in the order they drew, without asking again.
--
-- The API's answers correct the budget (its `anthropic-ratelimit-*-remaining`
-- headers lower a bucket that holds more than the API says is left: other
-- clients of the organisation spend from it too), and a 429 with
-- `retry-after` pauses every worker until it has passed (`paused_until`).
--
-- Each function is one short statement for the caller: the row is locked for
-- the time of one update, never across a call.

CREATE TABLE public.fullpass_rate_budget (
    name text PRIMARY KEY,
    -- The buckets' levels (NULL: that limit is not set), as of `refilled_at`.
    requests float8,
    input_tokens float8,
    refilled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Nobody sends before this (the API answered 429 with retry-after).
    paused_until timestamptz,
    -- The limits in force at the last draw, for operators.
    rpm int,
    itpm int,
    draws bigint NOT NULL DEFAULT 0,
    pauses bigint NOT NULL DEFAULT 0
);

ALTER TABLE public.fullpass_rate_budget ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.fullpass_rate_budget FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.fullpass_rate_budget TO service_role;

-- Take one request and `p_tokens` input tokens from budget `p_name` (created
-- on first use, full). Returns the seconds to wait before sending (0: now)
-- and the seconds the budget is paused for (0: not paused).
CREATE FUNCTION public.fullpass_rate_draw(
    p_name text, p_rpm int, p_itpm int, p_tokens int, p_burst float8,
    OUT wait_seconds float8, OUT paused_seconds float8
)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    b public.fullpass_rate_budget;
    at timestamptz := clock_timestamp();
    elapsed float8;
BEGIN
    SELECT * INTO b FROM public.fullpass_rate_budget WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO public.fullpass_rate_budget (name, refilled_at) VALUES (p_name, at)
            ON CONFLICT (name) DO NOTHING;
        SELECT * INTO b FROM public.fullpass_rate_budget WHERE name = p_name FOR UPDATE;
    END IF;
    elapsed := greatest(0, extract(epoch FROM at - b.refilled_at));
    wait_seconds := 0;
    IF p_rpm IS NULL THEN
        b.requests := NULL;
    ELSE
        b.requests := least(greatest(1, p_rpm * p_burst / 60),
                            coalesce(b.requests + elapsed * p_rpm / 60, p_rpm)) - 1;
        wait_seconds := greatest(wait_seconds, -b.requests * 60 / p_rpm);
    END IF;
    IF p_itpm IS NULL THEN
        b.input_tokens := NULL;
    ELSE
        b.input_tokens := least(greatest(1, p_itpm * p_burst / 60),
                                coalesce(b.input_tokens + elapsed * p_itpm / 60, p_itpm))
                          - greatest(p_tokens, 0);
        wait_seconds := greatest(wait_seconds, -b.input_tokens * 60 / p_itpm);
    END IF;
    paused_seconds := greatest(0, coalesce(extract(epoch FROM b.paused_until - at), 0));
    wait_seconds := greatest(wait_seconds, paused_seconds);
    UPDATE public.fullpass_rate_budget
       SET requests = b.requests, input_tokens = b.input_tokens, refilled_at = at,
           rpm = p_rpm, itpm = p_itpm, draws = b.draws + 1
     WHERE name = p_name;
END
$$;

-- What an answer said: its `remaining` headers (NULL: not sent) lower the
-- buckets to them, and `p_refund` input tokens drawn beyond what the call
-- counted (cache reads do not) go back.
CREATE FUNCTION public.fullpass_rate_observe(
    p_name text, p_rpm int, p_itpm int, p_burst float8,
    p_requests_left int, p_tokens_left int, p_refund int
)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    at timestamptz := clock_timestamp();
BEGIN
    UPDATE public.fullpass_rate_budget b
       SET requests = CASE WHEN p_rpm IS NOT NULL AND b.requests IS NOT NULL THEN
                          least(least(greatest(1, p_rpm * p_burst / 60),
                                      b.requests + greatest(0, extract(epoch FROM at - b.refilled_at))
                                                   * p_rpm / 60),
                                coalesce(p_requests_left, 'infinity'::float8))
                      END,
           input_tokens = CASE WHEN p_itpm IS NOT NULL AND b.input_tokens IS NOT NULL THEN
                          least(least(greatest(1, p_itpm * p_burst / 60),
                                      b.input_tokens + coalesce(p_refund, 0)
                                      + greatest(0, extract(epoch FROM at - b.refilled_at))
                                        * p_itpm / 60),
                                coalesce(p_tokens_left, 'infinity'::float8))
                          END,
           refilled_at = at
     WHERE b.name = p_name;
END
$$;

-- The API answered 429 with `retry-after`: nobody in the fleet sends before it has passed.
CREATE FUNCTION public.fullpass_rate_pause(p_name text, p_seconds float8)
    RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, public, pg_temp
AS $$
    INSERT INTO public.fullpass_rate_budget AS b (name, paused_until, pauses)
    VALUES (p_name, clock_timestamp() + make_interval(secs => p_seconds), 1)
    ON CONFLICT (name) DO UPDATE
       SET paused_until = greatest(b.paused_until, excluded.paused_until),
           pauses = b.pauses + 1;
$$;

REVOKE ALL ON FUNCTION public.fullpass_rate_draw(text, int, int, int, float8),
                       public.fullpass_rate_observe(text, int, int, float8, int, int, int),
                       public.fullpass_rate_pause(text, float8)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.fullpass_rate_draw(text, int, int, int, float8),
                          public.fullpass_rate_observe(text, int, int, float8, int, int, int),
                          public.fullpass_rate_pause(text, float8)
    TO service_role;
