"""The embed stage: every chunk of a pass embedded before the pass publishes.

Through real PostgreSQL (with pgvector where the server has it) and, for the
network providers, the real SDKs against the fake services on 127.0.0.1.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import USER_A, make_settings, query, stores_embeddings
from tests.fakes.embedding_server import Fault
from tests.fakes.fake_bedrock import FakeBedrockServer
from tests.fakes.fake_openai_embeddings import FakeOpenAIEmbeddingsServer
from tests.helpers import drive, import_row, progress_row, stage_rows, submit
from worker import runner
from worker import store as store_module
from worker.embeddings import Embedded, Embedder, make_embedder
from worker.errors import Transient
from worker.llm.offline import OfflineProvider
from worker.settings import Settings
from worker.store import Store

LOCAL_MODEL = "wordllama-l2-supercat-256+centred-logtf"


@pytest.fixture
def pgvector(db_dsn: str) -> None:
    if not stores_embeddings(db_dsn):
        pytest.skip("pgvector is not installed on this server")


def make_deps(
    settings: Settings, pool: AsyncConnectionPool[Any], embedder: Embedder | None = None
) -> runner.Deps:
    return runner.Deps(
        settings=settings,
        store=Store(pool),
        llm=OfflineProvider(),
        embedder=embedder or make_embedder(settings.embeddings),
    )


def published(dsn: str) -> list[dict[str, Any]]:
    return query(
        dsn,
        "select id, embedding is not null as embedded, embedding_model from conversation_chunks"
        " where user_id = %s order by id",
        (USER_A,),
    )


def embedding_status(dsn: str) -> str | None:
    rows = query(dsn, "select embedding_status from user_profiles where user_id = %s", (USER_A,))
    return rows[0]["embedding_status"] if rows else None


async def test_every_chunk_is_embedded_before_the_pass_publishes(
    pgvector: None, settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    deps = make_deps(settings, pool)
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id, until="embed")
    # Embedded while the pass runs, but published only with it.
    assert embedding_status(db_dsn) == "processing"
    assert published(db_dsn) == []
    p = progress_row(db_dsn, import_id)
    assert p["embed_status"] == "done" and p["embedded"] == p["embed_total"] > 0

    await drive(deps, db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert row["status"] == "complete"
    chunks = published(db_dsn)
    assert len(chunks) == row["chunk_count"] > 0
    assert {(c["embedded"], c["embedding_model"]) for c in chunks} == {(True, LOCAL_MODEL)}
    assert embedding_status(db_dsn) == "complete"
    out = stage_rows(db_dsn, import_id)["embed"]["output"]
    assert out["provider"] == "local" and out["model"] == LOCAL_MODEL and out["dimension"] == 256
    assert out["chunks"] == out["embedded_now"] == len(chunks)
    assert out["calls"] >= 1 and out["tokens"] > 0 and out["cost_usd"] == 0.0
    assert row["embedding_tokens"] == out["tokens"]
    assert row["input_tokens"] == sum(
        s["input_tokens"] for s in stage_rows(db_dsn, import_id).values()
    )


async def test_embeddings_turned_off_skip_the_stage(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    settings = make_settings(db_dsn, tmp_path, FULLPASS_EMBEDDINGS="none")
    deps = make_deps(settings, pool)
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    embed = stage_rows(db_dsn, import_id)["embed"]
    assert embed["status"] == "skipped"
    assert "FULLPASS_EMBEDDINGS=none" in progress_row(db_dsn, import_id)["note"]
    assert embedding_status(db_dsn) is None


async def test_without_pgvector_the_stage_is_skipped_and_text_search_still_works(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    if stores_embeddings(db_dsn):
        pytest.skip("pgvector is installed on this server")
    import_id = submit(settings, USER_A)
    await drive(make_deps(settings, pool), db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    assert "pgvector is not installed" in progress_row(db_dsn, import_id)["note"]
    (title,) = query(
        db_dsn, "select title from conversation_chunks where user_id = %s limit 1", (USER_A,)
    )
    hits = query(
        db_dsn,
        "select title from search_chunks(%s, %s, null, 5)",
        (USER_A, title["title"]),
    )
    assert title in hits


async def test_openai_compatible_service_throttling_is_ridden_out(
    pgvector: None,
    db_dsn: str,
    tmp_path: Path,
    pool: AsyncConnectionPool[Any],
    fake_openai_embeddings: FakeOpenAIEmbeddingsServer,
) -> None:
    fake_openai_embeddings.inject(Fault.throttle(retry_after=0.01), times=3)
    settings = make_settings(
        db_dsn,
        tmp_path,
        **fake_openai_embeddings.settings_env("text-embedding-3-small"),
        FULLPASS_EMBEDDINGS_DIMENSION=256,
        FULLPASS_EMBEDDINGS_BATCH=16,
    )
    import_id = submit(settings, USER_A)
    await drive(make_deps(settings, pool), db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert row["status"] == "complete", row["error"]
    assert fake_openai_embeddings.pending_faults == 0
    assert len(fake_openai_embeddings.calls(status=429)) == 3
    texts = fake_openai_embeddings.embedded_texts()
    assert len(texts) == row["chunk_count"] == len(set(texts))  # each chunk paid once
    assert {c["embedding_model"] for c in published(db_dsn)} == {"text-embedding-3-small"}
    out = stage_rows(db_dsn, import_id)["embed"]["output"]
    assert out["tokens"] == row["embedding_tokens"] > 0
    assert out["cost_usd"] == pytest.approx(out["tokens"] * 0.02 / 1e6, abs=1e-6)


async def test_bedrock_titan_through_the_aws_sdk(
    pgvector: None,
    db_dsn: str,
    tmp_path: Path,
    pool: AsyncConnectionPool[Any],
    fake_bedrock: FakeBedrockServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = fake_bedrock.settings_env("amazon.titan-embed-text-v2:0")
    for name, value in env.items():  # boto3 reads its credential chain from the environment
        monkeypatch.setenv(name, value)
    settings = make_settings(db_dsn, tmp_path, **env, FULLPASS_EMBEDDINGS_DIMENSION=256)
    import_id = submit(settings, USER_A)
    await drive(make_deps(settings, pool), db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert row["status"] == "complete", row["error"]
    assert {c["embedding_model"] for c in published(db_dsn)} == {"amazon.titan-embed-text-v2:0"}
    assert len(fake_bedrock.embedded_texts()) == row["chunk_count"]


async def test_a_service_that_keeps_failing_fails_the_import_with_a_clear_error(
    pgvector: None,
    db_dsn: str,
    tmp_path: Path,
    pool: AsyncConnectionPool[Any],
    fake_openai_embeddings: FakeOpenAIEmbeddingsServer,
) -> None:
    settings = make_settings(
        db_dsn,
        tmp_path,
        **fake_openai_embeddings.settings_env("text-embedding-3-small"),
        FULLPASS_EMBEDDINGS_DIMENSION=256,
        FULLPASS_EMBEDDINGS_MAX_RETRIES=1,
    )
    fake_openai_embeddings.set_random_faults(1.0, ["server_error"])
    import_id = submit(settings, USER_A)
    embedder = make_embedder(settings.embeddings, backoff_base=0.001, backoff_max=0.01)
    await drive(make_deps(settings, pool, embedder), db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert row["status"] == "failed"
    assert row["error"].startswith("embed: ") and "500" in row["error"]
    assert "Traceback" not in row["error"] and fake_openai_embeddings.api_key not in row["error"]
    assert stage_rows(db_dsn, import_id)["embed"]["attempts"] == settings.max_attempts
    assert embedding_status(db_dsn) == "failed"
    # The user's chunks were not swapped for unembedded ones.
    profile = query(db_dsn, "select full_pass_status from user_profiles")[0]
    assert profile["full_pass_status"] == "failed"
    assert published(db_dsn) == []


async def test_a_requeue_from_embed_embeds_what_another_model_embedded(
    pgvector: None, settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    deps = make_deps(settings, pool)
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id)
    chunks = published(db_dsn)
    stale = [c["id"] for c in chunks[::3]]
    # The bare model name: vectors of the local model pooled by the plain mean.
    query(
        db_dsn,
        "update conversation_chunks set embedding_model = 'wordllama-l2-supercat-256'"
        " where id = any(%s)",
        (stale,),
    )
    query(db_dsn, "select public.requeue_import(%s, 'embed')", (import_id,))
    assert {s for s, r in stage_rows(db_dsn, import_id).items() if r["status"] != "done"} == {
        "embed",
        "finalize",
    }
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    assert stage_rows(db_dsn, import_id)["embed"]["output"]["embedded_now"] == len(stale)
    assert {c["embedding_model"] for c in published(db_dsn)} == {LOCAL_MODEL}
    assert len(published(db_dsn)) == len(chunks)


class Interrupted:
    """A real embedder that fails (as a service would) after ``after`` requests once."""

    def __init__(self, inner: Embedder, after: int) -> None:
        self.inner = inner
        self.after = after
        self.texts: Counter[str] = Counter()
        self.name, self.model, self.dimension = inner.name, inner.model, inner.dimension
        self.max_batch, self.max_input_chars = 8, inner.max_input_chars

    async def embed_documents(self, texts: Sequence[str]) -> Embedded:
        if self.after == 0:
            self.after = -1
            raise Transient("the embeddings service went away")
        self.after -= 1
        result = await self.inner.embed_documents(texts)
        self.texts.update(texts)  # paid for
        return result

    async def embed_query(self, text: str) -> list[float]:
        return await self.inner.embed_query(text)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_stage_interrupted_mid_way_never_embeds_a_stored_batch_again(
    pgvector: None, settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    local = make_embedder(settings.embeddings)
    assert local is not None
    embedder = Interrupted(local, after=3)
    import_id = submit(settings, USER_A, options='{"page_chunks": 100000}')
    await drive(make_deps(settings, pool, embedder), db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    embed = stage_rows(db_dsn, import_id)["embed"]
    assert embed["attempts"] == 2  # interrupted once, resumed
    assert max(embedder.texts.values()) == 1
    assert sum(embedder.texts.values()) == import_row(db_dsn, import_id)["chunk_count"]


async def test_a_job_that_lost_the_stage_stores_no_vectors(
    pgvector: None, db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    settings = make_settings(db_dsn, tmp_path, FULLPASS_EMBEDDINGS_CONCURRENCY=1)
    local = make_embedder(settings.embeddings)
    assert local is not None

    class HandedOver(Interrupted):
        async def embed_documents(self, texts: Sequence[str]) -> Embedded:
            if self.after == 0:  # another job claims the stage now
                query(
                    db_dsn,
                    "update import_stages set lease = gen_random_uuid() where stage = 'embed'",
                )
            self.after -= 1
            return await self.inner.embed_documents(texts)

    import_id = submit(settings, USER_A, options='{"page_chunks": 100000}')
    deps = make_deps(settings, pool, HandedOver(local, after=2))
    await drive(deps, db_dsn, import_id, until="chunk")
    (job,) = query(
        db_dsn,
        "select id from procrastinate_jobs where task_name = 'fullpass.embed' and status = 'todo'",
    )
    await runner.run_stage(deps, "embed", import_id, 1, job_id=job["id"])
    stored = query(
        db_dsn,
        "select count(*) as n from import_chunks where import_id = %s and embedding is not null",
        (import_id,),
    )[0]["n"]
    assert 0 < stored < import_row(db_dsn, import_id)["chunk_count"]
    assert stage_rows(db_dsn, import_id)["embed"]["status"] == "running"  # the other job's now
    assert uuid.UUID(str(import_id))


def test_vectors_reach_the_database_bit_for_bit_in_a_short_text_form(db_dsn: str) -> None:
    """pgvector keeps float32: nine significant digits carry every bit of one.

    The text form is what a batch of 256 x 1,536 floats is written as, so its
    size and the time to format it are the stage's own cost (repr gave ~21
    characters a float, ~3x the time of one format of a cached template).
    """
    if not stores_embeddings(db_dsn):
        pytest.skip("pgvector is not installed on this server")
    rng = random.Random(3)
    vector = [float(np.float32(rng.gauss(0.0, 0.05))) for _ in range(1536)]
    vector[:4] = [float(np.float32(1e-05)), -3.4028234663852886e38, 1.401298464324817e-45, 0.0]
    text = store_module._vector_text(vector)
    assert len(text) <= 16 * len(vector)
    (row,) = query(db_dsn, "select %s::vector::real[] as back", (text,))
    back = np.asarray(row["back"], dtype=np.float32)
    assert np.array_equal(back, np.asarray(vector, dtype=np.float32))
    assert store_module._vector_text([0.5, -2.0]) == "[0.5,-2]"
