"""Search in SQL (``public.search_chunks``) and the embedding column it relies on.

Chunks are inserted directly with SQL. With pgvector (the embedded server),
hand-made unit vectors make the vector side of the ranking predictable;
without it (the system PostgreSQL 15), the same function searches text
only. Row-level security is exercised with the real roles and JWT claims.
"""

from __future__ import annotations

import math
import random
import string
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.conftest import USER_A, USER_B, query
from tests.gen_export import filler, with_sentence
from tests.test_security import denied, session
from worker import migrate, search
from worker.db import connect
from worker.embeddings import EmbeddingSettings, make_embedder
from worker.errors import NeedsOperator

#: A dozen chunks of one user's history, each about one thing.
CORPUS: dict[str, str] = {
    "Postgres backups": "We set up nightly pg_dump backups to S3 with a retention of 14 days."
    " The restore drill takes about 20 minutes.",
    "Sourdough starter": "My sourdough starter needs feeding twice a day; I keep it at 24"
    " degrees and use rye flour.",
    "Trip to Lisbon": "Planning a trip to Lisbon in May: three nights in Alfama, a day trip to"
    " Sintra, and pastel de nata tasting.",
    "Job interview prep": "Practising system design questions: rate limiters, consistent"
    " hashing, and how to shard a database.",
    "Kubernetes migration": "Moving the workers from EC2 to Kubernetes; the queue consumers"
    " need graceful shutdown on SIGTERM.",
    "Running plan": "Training for a half marathon: long runs on Sundays, intervals on Tuesdays,"
    " and an easy recovery run on Thursdays.",
    "Database indexing": "Why the query was slow: the planner chose a sequential scan because"
    " the index on user_id was missing.",
    "Birthday gift ideas": "Gift ideas for my sister: a ceramics class, a Kindle, or"
    " noise-cancelling headphones.",
    "Garden": "Tomatoes are blooming; the basil was eaten by slugs again. Need copper tape.",
    "Dîner": "Je voudrais réserver une table pour deux personnes ce soir, près de la fenêtre.",
    "Budget": "Monthly budget: rent 1400, groceries 450, savings 600, and a small amount for"
    " books.",
    "Python async": "asyncio gather vs TaskGroup: TaskGroup cancels the remaining tasks when"
    " one fails.",
}

#: Questions as a user asks them in a chat, and the chunk each is about. An AND
#: of their words (websearch_to_tsquery) finds only half of them: no chunk
#: holds every word of a question.
QUESTIONS: list[tuple[str, str]] = [
    ("how did I set up backups for my postgres database?", "Postgres backups"),
    ("what was my half marathon training schedule", "Running plan"),
    ("why was my sql query so slow", "Database indexing"),
    ("ideas for my sister's birthday", "Birthday gift ideas"),
    ("réserver une table", "Dîner"),
    ("lisbon", "Trip to Lisbon"),
    ("what happens to the other tasks when one fails in asyncio", "Python async"),
    ("graceful shutdown of queue workers on kubernetes", "Kubernetes migration"),
]


# --------------------------------------------------------------------------- helpers


def embedding_type(dsn: str) -> str | None:
    """``vector(N)`` of conversation_chunks.embedding; None without the column."""
    rows = query(
        dsn,
        "select format_type(atttypid, atttypmod) as t from pg_attribute"
        " where attrelid = 'public.conversation_chunks'::regclass and attname = 'embedding'"
        " and not attisdropped",
    )
    return str(rows[0]["t"]).rsplit(".", 1)[-1] if rows else None


def dimension_of(dsn: str) -> int:
    """The embedding column's size (the test is skipped without pgvector)."""
    kind = embedding_type(dsn)
    if kind is None:
        pytest.skip("pgvector is not installed on this server")
    return int(kind.removeprefix("vector(").removesuffix(")"))


def has_pgvector(dsn: str) -> bool:
    return bool(query(dsn, "select 1 from pg_available_extensions where name = 'vector'"))


def unit(dimension: int, *weights: tuple[int, float]) -> str:
    """A unit vector (pgvector's text form) with the given axis weights."""
    vector = [0.0] * dimension
    for axis, weight in weights:
        vector[axis] = weight
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return "[" + ",".join(repr(x / norm) for x in vector) + "]"


def insert_chunk(
    dsn: str,
    user: uuid.UUID,
    title: str,
    content: str,
    *,
    tier: str = "medium",
    embedding: str | None = None,
    created_at: datetime | None = None,
) -> uuid.UUID:
    chunk_id = uuid.uuid4()
    columns = "id, user_id, conversation_id, title, content, chunk_tier, chunk_index, created_at"
    values = "%s, %s, %s, %s, %s, %s, 0, %s"
    params: list[Any] = [chunk_id, user, f"conv-{title}", title, content, tier]
    params.append(created_at or datetime(2025, 1, 1, tzinfo=UTC))
    if embedding is not None:
        columns += ", embedding"
        values += ", %s"
        params.append(embedding)
    query(dsn, f"insert into public.conversation_chunks ({columns}) values ({values})", params)
    return chunk_id


def insert_corpus(dsn: str, user: uuid.UUID) -> dict[str, uuid.UUID]:
    return {title: insert_chunk(dsn, user, title, body) for title, body in CORPUS.items()}


def search_rows(dsn: str, user: uuid.UUID, text: str | None, **kw: Any) -> list[dict[str, Any]]:
    args = ", ".join(f"{name} => %({name})s" for name in kw)
    return query(
        dsn,
        f"select * from public.search_chunks(%(user)s, %(text)s{', ' if args else ''}{args})",
        {"user": user, "text": text, **kw},
    )


def titles(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [r["title"] for r in rows]


# --------------------------------------------------------------------------- text


def test_each_question_finds_its_chunk_first(db_dsn: str) -> None:
    """The OR of a question's words finds what an AND of them misses."""
    insert_corpus(db_dsn, USER_A)
    insert_corpus(db_dsn, USER_B)
    with_and = 0
    for question, expected in QUESTIONS:
        rows = search_rows(db_dsn, USER_A, question, match_count=3)
        assert titles(rows)[:1] == [expected], (question, titles(rows))
        matched = query(
            db_dsn,
            "select count(*) as n from conversation_chunks where user_id = %s"
            " and fullpass_fts @@ websearch_to_tsquery('english', %s)",
            (USER_A, question),
        )
        with_and += matched[0]["n"] > 0
    assert with_and == 4  # the measurement the OR was chosen on (0005_search_up.sql)


def test_results_are_the_users_own_ranked_by_text_relevance(db_dsn: str) -> None:
    mine = insert_chunk(db_dsn, USER_A, "Backups", "postgres backups, backups, and more backups")
    insert_chunk(db_dsn, USER_A, "Notes", "a line about backups among other things said here")
    insert_chunk(db_dsn, USER_A, "Cooking", "a recipe for soup")
    theirs = insert_chunk(db_dsn, USER_B, "Backups", "postgres backups")
    rows = search_rows(db_dsn, USER_A, "Postgres backup")
    assert titles(rows) == ["Backups", "Notes"]
    assert rows[0]["id"] == mine and theirs not in {r["id"] for r in rows}
    assert rows[0]["text_rank"] > rows[1]["text_rank"] > 0
    # text only: reciprocal rank of the text ranking alone, no similarity
    assert [r["score"] for r in rows] == pytest.approx([1 / 61, 1 / 62])
    assert all(r["vector_similarity"] is None for r in rows)
    assert set(rows[0]) == {
        "id",
        "conversation_id",
        "title",
        "content",
        "created_at",
        "chunk_tier",
        "text_rank",
        "vector_similarity",
        "score",
    }
    assert rows[0]["chunk_tier"] == "medium" and rows[0]["conversation_id"] == "conv-Backups"


def test_a_title_weighs_more_than_the_body(db_dsn: str) -> None:
    insert_chunk(db_dsn, USER_A, "Weekend", "we talked about the sourdough starter at length")
    insert_chunk(db_dsn, USER_A, "Sourdough", "we talked about the weekend at length")
    assert titles(search_rows(db_dsn, USER_A, "sourdough")) == ["Sourdough", "Weekend"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        (None, []),
        ("   ", []),
        ("the and of a", []),  # only stop words
        ("'", []),
        ("a & b | !c <-> d:*", []),
        ("it's C:\\path 'quoted' \\", []),
        ("()", []),
        ("!tomato & (x | y)", ["Garden"]),  # operators are words like any other
        ("TOMATOES?", ["Garden"]),
    ],
)
def test_queries_without_words_or_with_operators_never_fail(
    db_dsn: str, text: str | None, expected: list[str]
) -> None:
    insert_chunk(db_dsn, USER_A, "Garden", "tomato plants")
    assert titles(search_rows(db_dsn, USER_A, text)) == expected


def test_match_count_is_bounded(db_dsn: str) -> None:
    query(
        db_dsn,
        "insert into conversation_chunks (user_id, conversation_id, title, content, chunk_index)"
        " select %s, 'c' || g, 'note ' || g, 'garden note number ' || g, g"
        " from generate_series(1, 210) g",
        (USER_A,),
    )
    assert len(search_rows(db_dsn, USER_A, "garden")) == 10
    assert len(search_rows(db_dsn, USER_A, "garden", match_count=None)) == 10
    assert len(search_rows(db_dsn, USER_A, "garden", match_count=25)) == 25
    assert len(search_rows(db_dsn, USER_A, "garden", match_count=1000)) == 200
    assert len(search_rows(db_dsn, USER_A, "garden", match_count=0)) == 1
    assert len(search_rows(db_dsn, USER_A, "garden", match_count=-5)) == 1


def test_tiers_all_by_default_or_those_asked_for(db_dsn: str) -> None:
    for tier in ("micro", "medium", "macro"):
        insert_chunk(db_dsn, USER_A, f"garden {tier}", "tomatoes in the garden", tier=tier)
    assert {r["chunk_tier"] for r in search_rows(db_dsn, USER_A, "garden")} == {
        "micro",
        "medium",
        "macro",
    }
    rows = search_rows(db_dsn, USER_A, "garden", p_tiers=["medium"])
    assert [r["chunk_tier"] for r in rows] == ["medium"]
    rows = search_rows(db_dsn, USER_A, "garden", p_tiers=["micro", "macro"])
    assert {r["chunk_tier"] for r in rows} == {"micro", "macro"}


def test_an_oversized_row_of_the_apps_still_inserts(db_dsn: str) -> None:
    """to_tsvector fails past 1 MB of tsvector: the generated column reads a bounded prefix."""
    rng = random.Random(7)
    words = (
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
        for _ in range(400_000)
    )
    content = " ".join(words) + " needle"
    assert len(content) > 2_000_000
    insert_chunk(db_dsn, USER_A, "Huge", content)
    insert_chunk(db_dsn, USER_A, "Small", "a needle in a haystack")
    assert titles(search_rows(db_dsn, USER_A, "haystack")) == ["Small"]


# --------------------------------------------------------------------------- vectors


def test_hybrid_ranking_and_a_chunk_found_by_meaning_only(db_dsn: str) -> None:
    dim = dimension_of(db_dsn)
    both = insert_chunk(
        db_dsn, USER_A, "Tomatoes", "staking the tomato plants", embedding=unit(dim, (0, 1.0))
    )
    text_only = insert_chunk(
        db_dsn, USER_A, "Sauce", "a tomato sauce recipe", embedding=unit(dim, (1, 1.0))
    )
    meaning = insert_chunk(
        db_dsn,
        USER_A,
        "Greenhouse",
        "the courgettes and peppers in the greenhouse",
        embedding=unit(dim, (0, 0.9), (2, 0.1)),
    )
    far = insert_chunk(db_dsn, USER_A, "Taxes", "filing the return", embedding=unit(dim, (3, 1.0)))
    blank = insert_chunk(db_dsn, USER_A, "Blank", "", embedding="[" + ",".join(["0"] * dim) + "]")
    insert_chunk(db_dsn, USER_B, "Tomatoes", "tomato plants", embedding=unit(dim, (0, 1.0)))

    rows = search_rows(db_dsn, USER_A, "tomato plants", query_embedding=unit(dim, (0, 1.0)))
    ids = [r["id"] for r in rows]
    assert ids[0] == both  # first on both sides
    assert set(ids) == {both, text_only, meaning, far}  # no zero vector, nobody else's
    assert ids.index(meaning) < ids.index(far)
    found = {r["id"]: r for r in rows}
    assert found[meaning]["text_rank"] is None  # by meaning alone
    assert found[meaning]["vector_similarity"] == pytest.approx(0.9 / math.sqrt(0.82))
    assert found[both]["vector_similarity"] == pytest.approx(1.0)
    assert found[both]["score"] == pytest.approx(2 / 61)
    assert found[text_only]["vector_similarity"] == pytest.approx(0.0, abs=1e-6)
    assert blank not in found
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)

    # the same query without its vector: text only
    assert {r["id"] for r in search_rows(db_dsn, USER_A, "tomato plants")} == {both, text_only}
    # a vector alone still finds by meaning
    rows = search_rows(db_dsn, USER_A, "", query_embedding=unit(dim, (0, 1.0)), match_count=2)
    assert [r["id"] for r in rows] == [both, meaning]


#: Things a user said once in a long conversation about other matters, and a
#: question naming each in other words (no word in common with the fact).
LOST_FACTS: list[tuple[str, str]] = [
    ("My sister's wedding is on October 26.", "when does my sibling get married"),
    (
        "I really prefer walking meetings over video calls.",
        "do I like to talk things over on a stroll outside rather than on Zoom",
    ),
    ("My son's graduation is on August 29.", "when does my boy get his diploma"),
    (
        "We decided to pause the newsletter because nobody had time to write it.",
        "why did we stop sending the email digest for a while",
    ),
    (
        "I strongly believe small teams ship better software.",
        "my view that tiny groups of engineers deliver higher quality programs",
    ),
    ("My house move is on July 24.", "when are we relocating to the new home"),
    (
        "I really prefer a light theme with high contrast.",
        "what colour scheme do I like on screen, a pale background",
    ),
    ("My mother's seventieth birthday is on May 2.", "when is mum turning 70"),
    (
        "We decided to hire a second designer because the backlog of mockups kept growing.",
        "why did we recruit one more UI person",
    ),
    ("I really prefer evening deep-work sessions.", "when do I concentrate best, late at night"),
    (
        "I strongly believe documentation is part of the product.",
        "my opinion that the docs belong to what we ship",
    ),
    ("My citizenship interview is on April 21.", "when is my naturalisation appointment"),
]


async def test_a_fact_said_once_in_a_long_chunk_is_found_by_meaning(db_dsn: str) -> None:
    """A long chunk's vector still carries what it says once among words it repeats.

    A chunk of a long conversation holds up to ~8,000 characters, most of it words
    said again and again. With mean pooling (a token weighing as often as it
    occurs) they drowned the one sentence a question is about: over five
    draws of the filler, 11 of these 60 questions found their chunk in the top 3
    of 24, by meaning alone. With a token said n times weighing 1 / (1 + ln n)
    in all, 38 do (37 before the token table was centred: the same, within a
    draw's noise; one draw alone moves by two or three either way).
    """
    dimension_of(db_dsn)
    embedder = make_embedder(EmbeddingSettings(FULLPASS_EMBEDDINGS="local"))
    assert embedder is not None
    found = []
    try:
        for draw in range(5):
            user = uuid.uuid4()  # each draw's chunks searched apart
            rng = random.Random(draw)
            contents = [filler(rng, 1200) for _ in range(len(LOST_FACTS) * 2)]
            for i, (fact, _) in enumerate(LOST_FACTS):
                contents[i] = with_sentence(rng, contents[i], fact)
            names = [f"Notes {i}" for i in range(len(contents))]
            embedded = await embedder.embed_documents(
                [f"{name}\n\n{content}" for name, content in zip(names, contents, strict=True)]
            )
            ids = [
                insert_chunk(db_dsn, user, name, content, embedding=search._vector_text(vector))
                for name, content, vector in zip(names, contents, embedded.vectors, strict=True)
            ]
            for i, (fact, question) in enumerate(LOST_FACTS):
                if draw == 0:
                    (common,) = query(
                        db_dsn,
                        "select tsvector_to_array(to_tsvector('english', %s))"
                        " && tsvector_to_array(to_tsvector('english', %s)) as shared",
                        (fact, question),
                    )
                    assert not common["shared"], question  # no word in common
                vector = search._vector_text(await embedder.embed_query(question))
                rows = search_rows(db_dsn, user, None, query_embedding=vector, match_count=3)
                found.append(ids[i] in {r["id"] for r in rows})
    finally:
        await embedder.aclose()
    assert len(found) == 60
    assert sum(found) >= 33, sum(found)


def test_a_query_embedding_of_another_size_is_ignored(db_dsn: str) -> None:
    dim = dimension_of(db_dsn)
    insert_chunk(db_dsn, USER_A, "Garden", "tomato plants", embedding=unit(dim, (0, 1.0)))
    insert_chunk(db_dsn, USER_A, "Other", "nothing to see", embedding=unit(dim, (0, 1.0)))
    rows = search_rows(db_dsn, USER_A, "tomato", query_embedding=unit(dim + 1, (0, 1.0)))
    assert titles(rows) == ["Garden"] and rows[0]["vector_similarity"] is None


def test_without_pgvector_the_call_shape_still_works(db_dsn: str) -> None:
    if embedding_type(db_dsn) is not None:
        pytest.skip("pgvector is installed: query_embedding is a vector")
    insert_chunk(db_dsn, USER_A, "Garden", "tomato plants")
    rows = query(
        db_dsn,
        "select title, vector_similarity from public.search_chunks(%s, 'tomato',"
        " ARRAY[0.1, 0.2]::real[], 5)",
        (USER_A,),
    )
    assert rows == [{"title": "Garden", "vector_similarity": None}]
    signature = query(db_dsn, "select 'public.search_chunks'::regproc::regprocedure::text as s")
    assert signature == [{"s": "search_chunks(uuid,text,real[],integer,text[])"}]


# --------------------------------------------------------------------------- security


def test_signed_in_users_find_only_their_own_chunks(db_dsn: str) -> None:
    mine = insert_chunk(db_dsn, USER_A, "Mine", "postgres backups of mine")
    theirs = insert_chunk(db_dsn, USER_B, "Theirs", "postgres backups of theirs")
    with session(db_dsn, "authenticated", USER_A) as conn:
        for asked, expected in ((USER_A, [mine]), (USER_B, [])):
            rows = conn.execute(
                "select id from public.search_chunks(%s, 'postgres backups')", (asked,)
            ).fetchall()
            assert [r["id"] for r in rows] == expected, asked
    with session(db_dsn, "authenticated") as conn:  # signed in, no user in the token
        rows = conn.execute("select id from public.search_chunks(%s, 'backups')", (USER_A,))
        assert rows.fetchall() == []
    with session(db_dsn, "service_role") as conn:  # BYPASSRLS: the user asked for
        rows = conn.execute("select id from public.search_chunks(%s, 'backups')", (USER_B,))
        assert [r["id"] for r in rows.fetchall()] == [theirs]
    for user in (None, USER_A):  # not even with a forged user claim
        with session(db_dsn, "anon", user) as conn:
            denied(conn, "select * from public.search_chunks(%s, 'backups')", (USER_A,))


def test_search_chunks_runs_as_its_caller_with_a_pinned_search_path(db_dsn: str) -> None:
    rows = query(
        db_dsn,
        "select prosecdef, provolatile, proconfig from pg_proc"
        " where oid = 'public.search_chunks'::regproc",
    )
    assert len(rows) == 1
    assert rows[0]["prosecdef"] is False and rows[0]["provolatile"] == "s"
    paths = [c for c in rows[0]["proconfig"] if c.startswith("search_path=")]
    schemas = [s.strip() for s in paths[0].removeprefix("search_path=").split(",")]
    assert schemas[0] == "pg_catalog" and schemas[-1] == "pg_temp"


# --------------------------------------------------------------------------- schema


def test_embedding_status_takes_the_known_values(db_dsn: str) -> None:
    for status in ("processing", "complete", "failed", None):
        query(
            db_dsn,
            "insert into user_profiles (user_id, embedding_status) values (%s, %s)"
            " on conflict (user_id) do update set embedding_status = excluded.embedding_status",
            (USER_A, status),
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        query(db_dsn, "update user_profiles set embedding_status = 'pending'")


def test_embedding_model_is_recorded_beside_the_embedding(db_dsn: str) -> None:
    columns = query(
        db_dsn,
        "select column_name, data_type, is_generated from information_schema.columns"
        " where table_name = 'conversation_chunks'"
        " and column_name in ('embedding_model', 'fullpass_fts')",
    )
    assert {(c["column_name"], c["data_type"], c["is_generated"]) for c in columns} == {
        ("embedding_model", "text", "NEVER"),
        ("fullpass_fts", "tsvector", "NEVER"),  # kept current by a trigger
    }


def test_the_downgrade_of_0005_takes_back_exactly_what_it_did(db_dsn: str) -> None:
    def state() -> dict[str, Any]:
        return {
            "columns": query(
                db_dsn,
                "select table_name, column_name, data_type from information_schema.columns"
                " where table_schema = 'public' order by 1, 2",
            ),
            "indexes": query(db_dsn, "select indexname from pg_indexes order by 1"),
            "constraints": query(db_dsn, "select conname from pg_constraint order by 1"),
            "functions": query(
                db_dsn, "select oid::regprocedure::text as f from pg_proc order by 1"
            ),
            "ledger": query(db_dsn, "select * from fullpass_schema_additions order by 1, 2"),
        }

    migrate.downgrade(db_dsn, "0004")
    at_0004 = state()
    assert not [f for f in at_0004["functions"] if f["f"].startswith("search_chunks")]
    assert {"fullpass_fts", "embedding_model", "embedding_status"}.isdisjoint(
        c["column_name"] for c in at_0004["columns"]
    )
    migrate.upgrade(db_dsn)
    migrate.downgrade(db_dsn, "0004")
    assert state() == at_0004


# --------------------------------------------------------------------------- the column's size


def test_the_column_follows_the_configured_model(
    empty_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not has_pgvector(empty_db_dsn):
        pytest.skip("pgvector is not installed on this server")
    monkeypatch.setenv("FULLPASS_EMBEDDINGS", "bedrock")  # Cohere: 1024
    monkeypatch.delenv("FULLPASS_EMBEDDINGS_MODEL", raising=False)
    monkeypatch.delenv("FULLPASS_EMBEDDINGS_DIMENSION", raising=False)
    migrate.upgrade(empty_db_dsn)
    assert embedding_type(empty_db_dsn) == "vector(1024)"
    typmod = query(
        empty_db_dsn,
        "select atttypmod from pg_attribute where attrelid = 'conversation_chunks'::regclass"
        " and attname = 'embedding'",
    )
    assert typmod == [{"atttypmod": 1024}]
    assert query(
        empty_db_dsn,
        "select 1 from pg_indexes where indexname = 'fullpass_conversation_chunks_embedding_idx'",
    )

    monkeypatch.setenv("FULLPASS_EMBEDDINGS", "openai")
    monkeypatch.setenv("FULLPASS_EMBEDDINGS_DIMENSION", "1024")
    assert search.configured_dimension() == 1024
    monkeypatch.setenv("FULLPASS_EMBEDDINGS", "local")
    monkeypatch.delenv("FULLPASS_EMBEDDINGS_DIMENSION")
    assert search.configured_dimension() == 256


async def test_an_app_column_of_another_size_is_never_altered(empty_db_dsn: str) -> None:
    if not has_pgvector(empty_db_dsn):
        pytest.skip("pgvector is not installed on this server")
    query(
        empty_db_dsn,
        "create extension vector;"
        " create table public.conversation_chunks (id uuid primary key default gen_random_uuid(),"
        " user_id uuid, title text, content text, embedding vector(768))",
    )
    query(
        empty_db_dsn,
        "insert into conversation_chunks (user_id, title, content, embedding)"
        " values (%s, 'Titan', 'embedded by the app', %s)",
        (USER_A, unit(768, (0, 1.0))),
    )
    migrate.upgrade(empty_db_dsn, embedding_dimension=256)
    assert embedding_type(empty_db_dsn) == "vector(768)"
    recorded = query(
        empty_db_dsn,
        "select column_name from fullpass_schema_additions"
        " where table_name = 'conversation_chunks' and revision = '0005'",
    )
    assert {r["column_name"] for r in recorded} == {
        "embedding_model",
        "fullpass_fts",
        "index:fullpass_conversation_chunks_fts_idx",
        "index:fullpass_conversation_chunks_embedding_idx",
    }
    rows = search_rows(empty_db_dsn, USER_A, "app", query_embedding=unit(768, (0, 1.0)))
    assert [(r["title"], r["vector_similarity"]) for r in rows] == [("Titan", pytest.approx(1.0))]
    # a worker configured for another size refuses to start
    async with connect(empty_db_dsn) as conn:
        with pytest.raises(NeedsOperator, match=r"256-dimension vectors .* holds 768"):
            await search.check_embedding_column(
                conn, EmbeddingSettings(FULLPASS_EMBEDDINGS="local")
            )

    migrate.downgrade(empty_db_dsn, "base")
    assert embedding_type(empty_db_dsn) == "vector(768)"
    assert query(empty_db_dsn, "select title from conversation_chunks") == [{"title": "Titan"}]
    indexes = query(
        empty_db_dsn, "select indexname from pg_indexes where indexname like 'fullpass%%'"
    )
    assert indexes == []


def test_an_apps_cosine_index_is_used_instead_of_a_second_one(empty_db_dsn: str) -> None:
    if not has_pgvector(empty_db_dsn):
        pytest.skip("pgvector is not installed on this server")
    query(
        empty_db_dsn,
        "create extension vector;"
        " create table public.conversation_chunks (id uuid primary key, user_id uuid,"
        " embedding vector(3));"
        " create index app_chunks_embedding on conversation_chunks"
        " using hnsw (embedding vector_cosine_ops)",
    )
    migrate.upgrade(empty_db_dsn)
    indexes = query(
        empty_db_dsn,
        "select indexname from pg_indexes where tablename = 'conversation_chunks'"
        " and indexdef like '%%hnsw%%'",
    )
    assert indexes == [{"indexname": "app_chunks_embedding"}]


def test_fullpass_s_own_empty_column_is_re_created_at_the_configured_size(
    empty_db_dsn: str,
) -> None:
    if not has_pgvector(empty_db_dsn):
        pytest.skip("pgvector is not installed on this server")
    dsn = empty_db_dsn
    migrate.upgrade(dsn, "0004", embedding_dimension=1536)  # what 0002 always made before
    assert embedding_type(dsn) == "vector(1536)"
    insert_chunk(dsn, USER_A, "Old", "an old chunk, not embedded yet")
    migrate.upgrade(dsn, embedding_dimension=256)
    assert embedding_type(dsn) == "vector(256)"
    assert query(
        dsn,
        "select revision from fullpass_schema_additions where column_name = 'embedding'",
    ) == [{"revision": "0002"}]
    assert titles(search_rows(dsn, USER_A, "old chunk")) == ["Old"]
    assert query(
        dsn,
        "select 1 from pg_indexes where indexname = 'fullpass_conversation_chunks_embedding_idx'",
    )
    migrate.downgrade(dsn, "0004")  # 0002's column, at the size 0002 now gives it
    assert embedding_type(dsn) == "vector(256)"
    migrate.downgrade(dsn, "base")
    assert query(dsn, "select to_regclass('public.conversation_chunks') as t") == [{"t": None}]


def test_fullpass_s_own_column_with_embeddings_keeps_its_size(empty_db_dsn: str) -> None:
    if not has_pgvector(empty_db_dsn):
        pytest.skip("pgvector is not installed on this server")
    dsn = empty_db_dsn
    migrate.upgrade(dsn, "0004", embedding_dimension=1536)
    insert_chunk(dsn, USER_A, "Embedded", "already embedded", embedding=unit(1536, (0, 1.0)))
    migrate.upgrade(dsn, embedding_dimension=256)
    assert embedding_type(dsn) == "vector(1536)"
    assert query(dsn, "select count(embedding) as n from conversation_chunks") == [{"n": 1}]


def test_a_column_too_large_for_hnsw_is_searched_without_an_index(empty_db_dsn: str) -> None:
    if not has_pgvector(empty_db_dsn):
        pytest.skip("pgvector is not installed on this server")
    migrate.upgrade(empty_db_dsn, embedding_dimension=3072)  # text-embedding-3-large
    assert embedding_type(empty_db_dsn) == "vector(3072)"
    assert not query(
        empty_db_dsn,
        "select 1 from pg_indexes where indexname = 'fullpass_conversation_chunks_embedding_idx'",
    )
    chunk = insert_chunk(empty_db_dsn, USER_A, "Big", "x", embedding=unit(3072, (9, 1.0)))
    rows = search_rows(empty_db_dsn, USER_A, "", query_embedding=unit(3072, (9, 1.0)))
    assert [r["id"] for r in rows] == [chunk]


def test_created_at_and_ties(db_dsn: str) -> None:
    """Equal text ranks come back in a stable order, dates as stored."""
    when = datetime(2024, 5, 1, 12, tzinfo=UTC)
    for i in range(3):
        insert_chunk(db_dsn, USER_A, f"Same {i}", "identical words", created_at=when + timedelta(i))
    first = search_rows(db_dsn, USER_A, "identical words")
    assert first == search_rows(db_dsn, USER_A, "identical words")
    assert {r["created_at"] for r in first} == {when + timedelta(i) for i in range(3)}


def fts(dsn: str, chunk_id: uuid.UUID) -> str:
    row = query(
        dsn, "select fullpass_fts::text as v from conversation_chunks where id = %s", (chunk_id,)
    )
    return str(row[0]["v"])


def test_a_chunks_text_entry_follows_its_title_and_content(db_dsn: str) -> None:
    """Written by the app (no entry given), a chunk gets its entry; a changed title or
    content recomputes it, and the entry cannot be set apart from them."""
    chunk = insert_chunk(db_dsn, USER_A, "Beekeeping", "The hives on my roof need checking.")
    expected = query(
        db_dsn,
        "select (setweight(to_tsvector('english', 'Beekeeping'), 'A')"
        " || setweight(to_tsvector('english', 'The hives on my roof need checking.'), 'B'))::text"
        " as v",
    )[0]["v"]
    assert fts(db_dsn, chunk) == expected
    assert titles(search_rows(db_dsn, USER_A, "hive")) == ["Beekeeping"]
    query(
        db_dsn,
        "update conversation_chunks set content = 'Sourdough starter' where id = %s",
        (chunk,),
    )
    assert search_rows(db_dsn, USER_A, "hive") == []
    assert titles(search_rows(db_dsn, USER_A, "sourdough")) == ["Beekeeping"]
    query(
        db_dsn,
        "update conversation_chunks set fullpass_fts = to_tsvector('english', 'zebra')"
        " where id = %s",
        (chunk,),
    )
    assert search_rows(db_dsn, USER_A, "zebra") == []
    assert titles(search_rows(db_dsn, USER_A, "sourdough")) == ["Beekeeping"]
    # Other columns leave it alone (an embedding written later, say).
    before = fts(db_dsn, chunk)
    query(db_dsn, "update conversation_chunks set token_count = 7 where id = %s", (chunk,))
    assert fts(db_dsn, chunk) == before
