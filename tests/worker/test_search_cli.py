"""``fullpass search``, and the embedding column's size checked by the worker and ``health``.

Run the way an operator runs them: ``worker.cli.main`` in process, and a real
``fullpass worker`` process for the refusal to start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import USER_A, USER_B, query
from tests.test_search import CORPUS, embedding_type, insert_corpus
from worker import migrate
from worker.cli import main
from worker.embeddings import EmbeddingSettings, make_embedder
from worker.settings import get_settings


@pytest.fixture
def env(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = {
        "DATABASE_URL": db_dsn,
        "FULLPASS_HOME": str(tmp_path / "home"),
        "FULLPASS_STORAGE_DIR": str(tmp_path / "storage"),
        "FULLPASS_LLM": "offline",
        "FULLPASS_HEARTBEAT_SECONDS": "0.5",
    }
    for key in ("ANTHROPIC_API_KEY", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    get_settings.cache_clear()  # each run reads the environment, as a new process would
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def needs_pgvector(dsn: str) -> None:
    if embedding_type(dsn) is None:
        pytest.skip("pgvector is not installed on this server")


async def embed_corpus(dsn: str) -> None:
    """Embeddings of the chunks by the configured (local) model, as the embed stage stores them."""
    embedder = make_embedder(EmbeddingSettings())
    assert embedder is not None
    try:
        rows = query(dsn, "select id, title, content from conversation_chunks order by id")
        done = await embedder.embed_documents([f"{r['title']}\n{r['content']}" for r in rows])
    finally:
        await embedder.aclose()
    for row, vector in zip(rows, done.vectors, strict=True):
        query(
            dsn,
            "update conversation_chunks set embedding = %s, embedding_model = %s where id = %s",
            ("[" + ",".join(map(repr, vector)) + "]", done.model, row["id"]),
        )


# --------------------------------------------------------------------------- search


def test_search_prints_a_table_or_json_lines(
    env: dict[str, str], db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_corpus(db_dsn, USER_A)
    insert_corpus(db_dsn, USER_B)
    pgvector = embedding_type(db_dsn) is not None
    if pgvector:
        asyncio.run(embed_corpus(db_dsn))
    question = "how did I set up backups for my postgres database?"

    code, out, _ = run(capsys, "search", "--user", str(USER_A), question)
    assert code == 0
    header, first, *rest = out.splitlines()
    assert header.split()[:3] == ["score", "date", "title"]
    assert "Postgres backups" in first and "2025-01-01" in first and "backups" in first
    assert 1 <= len(rest) <= 9 and all(len(line) < 160 for line in out.splitlines())

    code, out, _ = run(capsys, "search", "--user", str(USER_A), question, "--jsonl", "-k", "3")
    hits = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(hits) == 3
    assert hits[0]["title"] == "Postgres backups"
    assert hits[0]["content"] == CORPUS["Postgres backups"]
    assert set(hits[0]) == {
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
    # with pgvector the query was embedded by the configured model: both sides ranked
    assert (hits[0]["vector_similarity"] is not None) == pgvector
    assert hits[0]["text_rank"] > 0
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    code, out, _ = run(capsys, "search", "--user", str(USER_A), "lisbon", "--tier", "macro")
    assert (code, out.strip()) == (0, "no matches")
    code, out, _ = run(capsys, "search", "--user", str(USER_A), "lisbon", "--tier", "medium")
    assert code == 0 and "Trip to Lisbon" in out


def test_search_without_embeddings_searches_text_only(
    env: dict[str, str],
    db_dsn: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    insert_corpus(db_dsn, USER_A)
    monkeypatch.setenv("FULLPASS_EMBEDDINGS", "none")
    code, out, _ = run(capsys, "search", "--user", str(USER_A), "sourdough", "--jsonl")
    hits = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [h["title"] for h in hits] == ["Sourdough starter"]
    assert hits[0]["vector_similarity"] is None


def test_search_refuses_bad_arguments_and_an_old_schema(
    env: dict[str, str], db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "search", "--user", "nobody", "x")
    assert code == 1 and "not a valid user id" in err
    for k in ("0", "201"):
        code, _, err = run(capsys, "search", "--user", str(USER_A), "x", "-k", k)
        assert code == 1 and "-k must be between 1 and 200" in err
    code, out, _ = run(capsys, "search", "--user", str(USER_A), "x", "--jsonl")
    assert (code, out) == (0, "")
    migrate.downgrade(db_dsn, "0004")
    code, _, err = run(capsys, "search", "--user", str(USER_A), "x")
    assert code == 1 and "run `fullpass migrate`" in err


# --------------------------------------------------------------------------- the column's size


def test_a_model_that_does_not_fit_the_column_is_reported(
    env: dict[str, str],
    db_dsn: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs_pgvector(db_dsn)
    size = embedding_type(db_dsn)
    code, out, _ = run(capsys, "health")
    assert json.loads(out)["embedding_dimension"] == int(str(size)[7:-1])
    assert not any("embedding" in p for p in json.loads(out)["problems"])

    monkeypatch.setenv("FULLPASS_EMBEDDINGS", "bedrock")  # Cohere: 1024
    code, out, _ = run(capsys, "health")
    problems = json.loads(out)["problems"]
    assert code == 1
    assert [p for p in problems if "1024-dimension vectors" in p and f"holds {size[7:-1]}" in p]
    code, _, err = run(capsys, "search", "--user", str(USER_A), "x")
    assert code == 1 and "1024-dimension vectors" in err and "FULLPASS_EMBEDDINGS_MODEL" in err


def start_worker(env: dict[str, str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "1"],
        env={**os.environ, **env, **extra},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def test_the_worker_refuses_to_start_on_a_mismatch(
    env: dict[str, str], db_dsn: str, tmp_path: Path
) -> None:
    needs_pgvector(db_dsn)
    log = tmp_path / "worker.log"
    proc = start_worker(env, log, FULLPASS_EMBEDDINGS="bedrock")
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "error: the embeddings model cohere.embed-english-v3 (bedrock)" in output, output
    assert "1024-dimension vectors" in output and "Traceback" not in output
    assert query(db_dsn, "select count(*) as n from procrastinate_workers") == [{"n": 0}]


def test_the_worker_starts_when_the_model_fits(
    env: dict[str, str], db_dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)  # the configured model made the column (or there is none)
    try:
        deadline = time.monotonic() + 60
        while not query(db_dsn, "select 1 from procrastinate_workers"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
