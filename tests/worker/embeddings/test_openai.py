"""OpenAI-compatible embeddings through httpx, against the fake API over HTTP."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from tests.fakes.embedding_server import Fault, FaultKind, cosine, lexical_vector
from tests.fakes.fake_openai_embeddings import DEFAULT_API_KEY, FakeOpenAIEmbeddingsServer
from tests.helpers import Lease
from tests.worker.embeddings.conftest import Build
from worker.errors import NeedsOperator, StaleJob, Transient, Unusable
from worker.llm.limiter import llm_scope

TEXTS = [
    "I love hiking in the mountains on weekends.",
    "My favourite trails are mountain hikes with a view.",
    "The quarterly tax report is due to the accountant on Friday.",
]


async def test_vectors_in_order_with_usage(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    embedder = openai_embedder()
    assert (embedder.name, embedder.model, embedder.dimension, embedder.max_batch) == (
        "openai",
        "text-embedding-3-small",
        1536,
        256,
    )
    result = await embedder.embed_documents(TEXTS)
    assert result.vectors == [lexical_vector(t, 1536) for t in TEXTS]
    assert cosine(result.vectors[0], result.vectors[1]) > cosine(
        result.vectors[0], result.vectors[2]
    )
    (request,) = fake_openai_embeddings.requests
    assert request.path == "/v1/embeddings"
    assert request.body == {
        "model": "text-embedding-3-small",
        "input": TEXTS,
        "encoding_format": "float",
    }
    assert request.headers["authorization"] == "[redacted]"
    assert result.usage == type(result.usage)(request.tokens, 1)
    assert result.model == "text-embedding-3-small"


async def test_answers_are_ordered_by_index(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.shuffle = True
    texts = [f"topic {i} words {i * 7}" for i in range(20)]
    result = await openai_embedder().embed_documents(texts)
    assert result.vectors == [lexical_vector(t, 1536) for t in texts]


async def test_base64_answers_are_decoded(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.answer_encoding = "base64"
    result = await openai_embedder().embed_documents(TEXTS)
    for vector, text in zip(result.vectors, TEXTS, strict=True):
        assert cosine(vector, lexical_vector(text, 1536)) == pytest.approx(1.0, abs=1e-6)


async def test_dimensions_sent_only_to_shorten(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    embedder = openai_embedder({"FULLPASS_EMBEDDINGS_DIMENSION": "256"})
    result = await embedder.embed_documents(TEXTS)
    assert {len(v) for v in result.vectors} == {256}
    assert fake_openai_embeddings.requests[0].body["dimensions"] == 256
    assert await embedder.embed_query("hiking") == lexical_vector("hiking", 256)


async def test_a_local_server_without_key_and_unlisted_model(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.require_api_key = False
    embedder = openai_embedder(
        {
            "FULLPASS_EMBEDDINGS_API_KEY": "",
            "FULLPASS_EMBEDDINGS_MODEL": "nomic-embed-text",
            "FULLPASS_EMBEDDINGS_DIMENSION": "768",
        }
    )
    result = await embedder.embed_documents(TEXTS)
    assert {len(v) for v in result.vectors} == {768}
    (request,) = fake_openai_embeddings.requests
    assert "authorization" not in request.headers
    assert "dimensions" not in request.body


async def test_batches_split_and_bounded_in_flight(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.latency = 0.03
    embedder = openai_embedder(
        {"FULLPASS_EMBEDDINGS_BATCH": "4", "FULLPASS_EMBEDDINGS_CONCURRENCY": "2"}
    )
    texts = [f"text {i}" for i in range(18)]
    result = await embedder.embed_documents(texts)
    assert result.vectors == [lexical_vector(t, 1536) for t in texts]
    assert sorted(r.count for r in fake_openai_embeddings.requests) == [2, 4, 4, 4, 4]
    assert result.usage.calls == 5
    assert result.usage.input_tokens == fake_openai_embeddings.total_tokens()
    assert fake_openai_embeddings.max_in_flight <= 2


async def test_large_answers_parsed_and_checked_off_the_event_loop(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    texts = [f"chunk {i} of a long conversation about topic {i % 13}" for i in range(120)]
    fake_openai_embeddings.inject("wrong_dimension")
    embedder = openai_embedder()
    with pytest.raises(Unusable, match="1535 dimensions"):
        await embedder.embed_documents(texts)
    result = await embedder.embed_documents(texts)
    assert result.vectors == [lexical_vector(t, 1536) for t in texts]


async def test_long_and_blank_texts(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    result = await openai_embedder().embed_documents(["x" * 100_000, "", "short"])
    assert result.vectors[1] == [0.0] * 1536
    assert [len(t) for t in fake_openai_embeddings.requests[0].texts] == [30_000, 5]


async def test_broken_unicode_is_sent_as_valid_utf8(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    result = await openai_embedder().embed_documents(["caf\ud800 au lait", "ok"])
    assert len(result.vectors) == 2
    assert fake_openai_embeddings.requests[0].texts[0] == "caf\ufffd au lait"


async def test_dense_text_over_the_token_limit_is_isolated_and_halved(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    """One text over 8,192 tokens: the request is split, that text halved; none is lost."""
    fake_openai_embeddings.chars_per_token = 1
    texts = ["first", "x" * 30_000, "third", "fourth"]
    result = await openai_embedder().embed_documents(texts)
    assert len(result.vectors) == 4
    assert result.vectors[0] == lexical_vector("first", 1536)
    assert result.vectors[3] == lexical_vector("fourth", 1536)
    sent = [(r.status, [len(t) for t in r.texts]) for r in fake_openai_embeddings.requests]
    assert sent[0] == (400, [5, 30_000, 5, 6])
    assert (200, [5, 6]) in sent
    assert (200, [7_500]) in sent


# ---------------------------------------------------------------------- throttling and outages


async def test_throttling_honours_retry_after_then_recovers(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.inject(Fault.throttle(retry_after=0.2))
    fake_openai_embeddings.inject(Fault("throttle", retry_after_ms=150))
    started = time.monotonic()
    result = await openai_embedder().embed_documents(TEXTS)
    assert time.monotonic() - started >= 0.35
    assert len(result.vectors) == 3
    assert [r.status for r in fake_openai_embeddings.requests] == [429, 429, 200]


async def test_persistent_throttling_is_transient_with_the_service_wait(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.inject(Fault.throttle(retry_after=0.05), times=5)
    embedder = openai_embedder({"FULLPASS_EMBEDDINGS_MAX_RETRIES": "1"})
    with pytest.raises(Transient, match=r"rate_limit|Rate limit") as caught:
        await embedder.embed_documents(TEXTS)
    assert caught.value.retry_after == pytest.approx(0.05)
    assert len(fake_openai_embeddings.requests) == 2


async def test_exhausted_quota_needs_an_operator(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.inject("quota")
    with pytest.raises(NeedsOperator, match="quota"):
        await openai_embedder().embed_documents(TEXTS)
    assert len(fake_openai_embeddings.requests) == 1


@pytest.mark.parametrize("kind", ["server_error", "unavailable"])
async def test_server_errors_are_retried(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer, kind: FaultKind
) -> None:
    fake_openai_embeddings.inject(kind, times=2)
    result = await openai_embedder().embed_documents(TEXTS)
    assert len(result.vectors) == 3
    assert [r.status for r in fake_openai_embeddings.requests][-1] == 200


async def test_persistent_outage_is_transient(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.inject("server_error", times=5)
    embedder = openai_embedder({"FULLPASS_EMBEDDINGS_MAX_RETRIES": "2"})
    with pytest.raises(Transient, match=r"500 .*gave up after 3 attempts"):
        await embedder.embed_documents(TEXTS)


async def test_random_faults_are_absorbed(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.set_random_faults(0.3, seed=7, retry_after=0.001)
    embedder = openai_embedder(
        {"FULLPASS_EMBEDDINGS_BATCH": "2", "FULLPASS_EMBEDDINGS_MAX_RETRIES": "8"}
    )
    texts = [f"text {i}" for i in range(40)]
    result = await embedder.embed_documents(texts)
    assert result.vectors == [lexical_vector(t, 1536) for t in texts]
    assert len(fake_openai_embeddings.calls(ok=False)) > 0


async def test_timeout_is_transient(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.inject(Fault.hang(1.5), times=2)
    embedder = openai_embedder(
        {"FULLPASS_EMBEDDINGS_TIMEOUT": "0.2", "FULLPASS_EMBEDDINGS_MAX_RETRIES": "1"}
    )
    with pytest.raises(Transient, match="timed out"):
        await embedder.embed_documents(TEXTS)


async def test_connection_refused_is_transient(openai_embedder: Build) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    embedder = openai_embedder(
        {"FULLPASS_EMBEDDINGS_URL": closed, "FULLPASS_EMBEDDINGS_MAX_RETRIES": "1"}
    )
    with pytest.raises(Transient, match="connection error"):
        await embedder.embed_documents(TEXTS)


async def test_an_unusable_url_needs_an_operator(openai_embedder: Build) -> None:
    embedder = openai_embedder({"FULLPASS_EMBEDDINGS_URL": "ftp://127.0.0.1/v1"})
    with pytest.raises(NeedsOperator, match="FULLPASS_EMBEDDINGS_URL"):
        await embedder.embed_documents(TEXTS)


async def test_a_wrong_path_needs_an_operator(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    embedder = openai_embedder({"FULLPASS_EMBEDDINGS_URL": fake_openai_embeddings.origin})
    with pytest.raises(NeedsOperator, match="404"):
        await embedder.embed_documents(TEXTS)


# ---------------------------------------------------------------------- credentials and input


async def test_refused_key_needs_an_operator_and_is_never_shown(
    openai_embedder: Build,
    fake_openai_embeddings: FakeOpenAIEmbeddingsServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_openai_embeddings.echo_key_in_errors = True
    wrong = "sk-wrong-0123456789abcdefghijklmnopqrstu"
    caplog.set_level(logging.DEBUG, logger="fullpass")
    with pytest.raises(NeedsOperator, match="401") as caught:
        await openai_embedder({"FULLPASS_EMBEDDINGS_API_KEY": wrong}).embed_documents(TEXTS)
    assert wrong not in str(caught.value)
    assert "[REDACTED]" in str(caught.value)
    assert wrong not in caplog.text
    assert len(fake_openai_embeddings.requests) == 1


async def test_missing_key_needs_an_operator(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    with pytest.raises(NeedsOperator, match="didn't provide an API key"):
        await openai_embedder({"FULLPASS_EMBEDDINGS_API_KEY": ""}).embed_documents(TEXTS)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.error(400, "invalid_request_error", "input rejected for {secret}"), Unusable),
        (Fault.error(502, "server_error", "upstream said {secret}"), Transient),
        (Fault("throttle", retry_after=0.001, message="slow down {secret}"), Transient),
        (Fault.error(400, "invalid_request_error", "input too long for {secret}"), Unusable),
    ],
)
async def test_api_key_never_appears_in_errors_or_logs(
    openai_embedder: Build,
    fake_openai_embeddings: FakeOpenAIEmbeddingsServer,
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
    error: type[Exception],
) -> None:
    echoed = Fault(
        fault.kind,
        retry_after=fault.retry_after,
        status=fault.status,
        error_type=fault.error_type,
        message=fault.message.format(secret=DEFAULT_API_KEY),
    )
    fake_openai_embeddings.inject(echoed, times=3)
    caplog.set_level(logging.DEBUG, logger="fullpass")
    embedder = openai_embedder({"FULLPASS_EMBEDDINGS_MAX_RETRIES": "2"})
    with pytest.raises(error) as caught:
        await embedder.embed_documents(TEXTS)
    assert DEFAULT_API_KEY not in str(caught.value)
    assert DEFAULT_API_KEY not in caplog.text


async def test_rejected_input_is_unusable(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    fake_openai_embeddings.inject("invalid")
    with pytest.raises(Unusable, match="400"):
        await openai_embedder().embed_documents(TEXTS)
    assert len(fake_openai_embeddings.requests) == 1


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("malformed", "not JSON"),
        ("garbage", "no list of embeddings"),
        ("wrong_count", "2 vectors for 3 texts"),
        ("wrong_dimension", "1535 dimensions, expected 1536"),
        ("non_finite", "NaN"),
    ],
)
async def test_garbage_answers_are_unusable(
    openai_embedder: Build,
    fake_openai_embeddings: FakeOpenAIEmbeddingsServer,
    kind: FaultKind,
    words: str,
) -> None:
    fake_openai_embeddings.inject(kind)
    with pytest.raises(Unusable) as caught:
        await openai_embedder().embed_documents(TEXTS)
    assert words in str(caught.value)


async def test_a_request_waiting_for_its_slot_is_not_sent_once_the_job_lost_its_stage(
    openai_embedder: Build, fake_openai_embeddings: FakeOpenAIEmbeddingsServer
) -> None:
    """The job's lease is checked once a request holds its slot, right before it is sent."""
    fake_openai_embeddings.latency = 0.3
    embedder = openai_embedder({"FULLPASS_EMBEDDINGS_CONCURRENCY": "1"})
    lease = Lease()
    with llm_scope("import-1", 1, guard=lease):
        first = asyncio.create_task(embedder.embed_documents(TEXTS[:1]))
        second = asyncio.create_task(embedder.embed_documents(TEXTS[1:2]))
        while fake_openai_embeddings.max_in_flight < 1:
            await asyncio.sleep(0.01)
        lease.lost = True  # the second still waits for the one slot
        assert len((await first).vectors) == 1
        with pytest.raises(StaleJob):
            await second
    assert lease.checks == 2
    assert len(fake_openai_embeddings.requests) == 1
