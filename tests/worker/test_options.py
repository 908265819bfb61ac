"""Import options: one model, checked the same way by the database and by the worker."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import USER_A, query
from tests.test_security import PATH_A, session
from worker.options import EnvOptions, InvalidOptions, Options

DEFAULTS = Options()


def deep(levels: int) -> str:
    """``{"a": {"a": ... {} }}`` as JSON text (too deep for Python's own encoder)."""
    return '{"a":' * levels + "{}" + "}" * levels


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": "no"}, 'options.batch must be a boolean, not "no"'),
        ({"batch": 1}, "options.batch must be a boolean, not 1"),
        ({"concurrency": 500}, "options.concurrency must be between 1 and 100, not 500"),
        ({"paste_chars": -1}, "options.paste_chars must be between 0 and 200000, not -1"),
        ({"paste_chars": "2000"}, 'options.paste_chars must be an integer, not "2000"'),
        ({"sample_tokens": 10}, "options.sample_tokens must be between 1000 and 1000000, not 10"),
        ({"concurrency": 4.5}, "options.concurrency must be an integer, not 4.5"),
        ({"concurrency": "4"}, 'options.concurrency must be an integer, not "4"'),
        ({"colour": "red"}, 'options: unknown key "colour"'),
        ({"chunk_tiers": ["huge"]}, "options.chunk_tiers[0] must be one of"),
        ({"chunk_tiers": []}, "options.chunk_tiers must hold between 1 and 3 items"),
        ({"chunk_tiers": ["medium", "medium"]}, "options.chunk_tiers must not repeat an item"),
        ({"chunk_tiers": "medium"}, "options.chunk_tiers must be a list"),
        (deep(3000), "options are larger than 4096 bytes"),
        (deep(300), 'options: unknown key "a"'),
        ({"pack_tokens": 1, "x" * 5000: 1}, "options are larger than 4096 bytes"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else "",
)
def test_bad_options_are_refused_at_insert(
    db_dsn: str, options: dict[str, Any] | str, message: str
) -> None:
    text = options if isinstance(options, str) else json.dumps(options)
    with (
        session(db_dsn, "authenticated", USER_A) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue) as caught,
    ):
        conn.execute(
            "insert into public.imports (user_id, storage_path, options) values (%s, %s, %s)",
            (USER_A, PATH_A, text),
        )
    assert message in str(caught.value)
    assert query(db_dsn, "select count(*) as n from public.imports") == [{"n": 0}]


def test_good_options_are_accepted_and_used(db_dsn: str) -> None:
    options = {"concurrency": 4, "batch": True, "batch_poll_seconds": 5, "chunk_tiers": ["macro"]}
    with session(db_dsn, "authenticated", USER_A) as conn:
        conn.execute(
            "insert into public.imports (user_id, storage_path, options) values (%s, %s, %s)",
            (USER_A, PATH_A, json.dumps(options)),
        )
    merged = DEFAULTS.merged(options)
    assert (merged.concurrency, merged.batch, merged.chunk_tiers) == (4, True, ("macro",))
    assert merged.batch_poll_seconds == 5.0


def test_environment_sets_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULLPASS_CONCURRENCY", "7")
    monkeypatch.setenv("FULLPASS_BATCH", "1")
    monkeypatch.setenv("FULLPASS_CHUNK_TIERS", '["medium", "macro"]')
    env = EnvOptions()
    assert (env.concurrency, env.batch, env.chunk_tiers) == (7, True, ("medium", "macro"))
    assert env.merged({"concurrency": 3}).concurrency == 3
    with pytest.raises(InvalidOptions, match=r"options\.batch"):
        env.merged({"batch": "yes"})


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2_000_000),
    st.floats(-10, 5000, allow_nan=False),
    st.sampled_from(["medium", "micro", "macro", "huge", "4", ""]),
    st.lists(st.sampled_from(["micro", "medium", "macro", "huge"]), max_size=4),
)
_keys = st.sampled_from([*Options.model_fields, "colour", "Concurrency"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(options=st.dictionaries(_keys, _values, max_size=3))
def test_database_and_worker_agree_on_every_options_object(
    db_dsn: str, options: dict[str, Any]
) -> None:
    try:
        DEFAULTS.merged(options)
        worker_accepts = True
    except InvalidOptions:
        worker_accepts = False
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        try:
            conn.execute("select public.fullpass_check_options(%s::jsonb)", (json.dumps(options),))
            database_accepts = True
        except psycopg.errors.InvalidParameterValue:
            database_accepts = False
    assert database_accepts == worker_accepts, options
