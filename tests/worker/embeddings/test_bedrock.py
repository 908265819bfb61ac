"""Bedrock embeddings through the real boto3 client, against the fake runtime over HTTP."""

from __future__ import annotations

import logging
import math
import socket
import time

import boto3
import pytest

from tests.fakes.embedding_server import Fault, FaultKind, cosine, lexical_vector
from tests.fakes.fake_bedrock import DEFAULT_SECRET_KEY, TITAN_MODEL, FakeBedrockServer
from tests.fakes.plugin import closing
from tests.worker.embeddings.conftest import FAST, Build
from worker.embeddings import EmbeddingSettings
from worker.embeddings.bedrock import BedrockEmbedder
from worker.errors import NeedsOperator, Transient, Unusable

TEXTS = [
    "I love hiking in the mountains on weekends.",
    "My favourite trails are mountain hikes with a view.",
    "The quarterly tax report is due to the accountant on Friday.",
]
TITAN = {"FULLPASS_EMBEDDINGS_MODEL": TITAN_MODEL}


# ---------------------------------------------------------------------- Cohere


async def test_cohere_vectors_in_order_with_usage(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    embedder = bedrock_embedder()
    assert (embedder.name, embedder.model, embedder.dimension) == (
        "bedrock",
        "cohere.embed-english-v3",
        1024,
    )
    result = await embedder.embed_documents(TEXTS)
    assert result.model == "cohere.embed-english-v3"
    assert result.vectors == [lexical_vector(t, 1024) for t in TEXTS]
    assert cosine(result.vectors[0], result.vectors[1]) > cosine(
        result.vectors[0], result.vectors[2]
    )
    (request,) = fake_bedrock.requests
    assert request.path == "/model/cohere.embed-english-v3/invoke"
    assert request.texts == TEXTS
    assert request.input_type == "search_document"
    assert request.body["truncate"] == "END"
    # SigV4-signed by boto3 (the fake refuses anything else; the value is not recorded).
    assert request.headers["authorization"] == "[redacted]"
    assert "x-amz-date" in request.headers
    assert result.usage.calls == 1
    assert (
        result.usage.input_tokens == request.tokens == sum(fake_bedrock.tokens_of(t) for t in TEXTS)
    )


async def test_query_is_embedded_as_a_search_query(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    vector = await bedrock_embedder().embed_query("hiking trails")
    assert vector == lexical_vector("hiking trails", 1024)
    assert fake_bedrock.requests[0].input_type == "search_query"


async def test_large_inputs_split_into_requests_of_96_in_flight_bounded(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.latency = 0.03
    embedder = bedrock_embedder({"FULLPASS_EMBEDDINGS_CONCURRENCY": "2"})
    texts = [f"note number {i} about topic {i % 7}" for i in range(250)]
    result = await embedder.embed_documents(texts)
    assert result.vectors == [lexical_vector(t, 1024) for t in texts]
    assert sorted(r.count for r in fake_bedrock.requests) == [58, 96, 96]
    assert result.usage.calls == 3
    assert result.usage.input_tokens == fake_bedrock.total_tokens()
    assert fake_bedrock.max_in_flight <= 2


async def test_configured_batch_size(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    embedder = bedrock_embedder({"FULLPASS_EMBEDDINGS_BATCH": "10"})
    assert embedder.max_batch == 10
    await embedder.embed_documents([f"text {i}" for i in range(25)])
    assert sorted(r.count for r in fake_bedrock.requests) == [5, 10, 10]


async def test_long_texts_are_cut_to_the_model_limit(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    long = "word " * 2000  # 10,000 characters; Cohere takes 2,048
    result = await bedrock_embedder().embed_documents([long, "short"])
    assert len(result.vectors) == 2
    assert [len(t) for t in fake_bedrock.requests[0].texts] == [2048, 5]


async def test_blank_texts_are_not_sent_and_get_zero_vectors(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    embedder = bedrock_embedder()
    result = await embedder.embed_documents(["", "hiking", "  \n", "tax"])
    assert result.vectors[0] == result.vectors[2] == [0.0] * 1024
    assert result.vectors[1] == lexical_vector("hiking", 1024)
    assert fake_bedrock.requests[0].texts == ["hiking", "tax"]
    assert (await embedder.embed_documents([" ", ""])).vectors == [[0.0] * 1024] * 2
    assert await embedder.embed_query("   ") == [0.0] * 1024
    assert len(fake_bedrock.requests) == 1


async def test_broken_unicode_is_sent_as_valid_utf8(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    result = await bedrock_embedder().embed_documents(["caf\ud800 au lait", "ok"])
    assert len(result.vectors) == 2
    assert fake_bedrock.requests[0].texts[0] == "caf\ufffd au lait"


async def test_cohere_answer_by_embedding_type_is_accepted(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.cohere_by_type = True
    result = await bedrock_embedder().embed_documents(TEXTS)
    assert result.vectors == [lexical_vector(t, 1024) for t in TEXTS]


# ---------------------------------------------------------------------- Titan


async def test_titan_one_text_a_call_at_the_configured_dimension(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    embedder = bedrock_embedder({**TITAN, "FULLPASS_EMBEDDINGS_DIMENSION": "512"})
    assert (embedder.max_batch, embedder.dimension, embedder.max_input_chars) == (1, 512, 50_000)
    result = await embedder.embed_documents(TEXTS)
    assert result.vectors == [lexical_vector(t, 512) for t in TEXTS]
    for vector in result.vectors:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0)
    assert len(fake_bedrock.requests) == 3
    for request in fake_bedrock.requests:
        assert request.body["dimensions"] == 512
        assert request.body["normalize"] is True
        assert request.path == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert result.usage == type(result.usage)(fake_bedrock.total_tokens(), 3)


async def test_titan_text_over_its_token_limit_is_halved_until_accepted(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    """Dense text (1 char a token here) under the 50,000-character bound still fits."""
    fake_bedrock.chars_per_token = 1
    dense = "x" * 40_000
    result = await bedrock_embedder(TITAN).embed_documents([dense])
    assert len(result.vectors[0]) == 1024
    sent = [(r.status, len(r.texts[0])) for r in fake_bedrock.requests]
    assert sent == [(400, 40_000), (400, 20_000), (400, 10_000), (200, 5_000)]
    assert result.usage == type(result.usage)(5_000, 1)


async def test_too_long_in_a_batch_splits_it(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    """A request refused for length is split until the long text is alone, then halved."""
    fake_bedrock.inject(
        Fault.error(400, "ValidationException", "Input is too long for requested model.")
    )
    texts = [f"text {i}" for i in range(4)]
    result = await bedrock_embedder().embed_documents(texts)
    assert result.vectors == [lexical_vector(t, 1024) for t in texts]
    assert [r.count for r in fake_bedrock.requests] == [4, 2, 2]


# ---------------------------------------------------------------------- throttling and outages


async def test_throttling_waits_the_retry_after_then_recovers(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.inject(Fault.throttle(retry_after=0.2))
    started = time.monotonic()
    result = await bedrock_embedder().embed_documents(TEXTS)
    assert time.monotonic() - started >= 0.2
    assert len(result.vectors) == 3
    assert [(r.status, r.error_type) for r in fake_bedrock.requests] == [
        (429, "ThrottlingException"),
        (200, None),
    ]
    assert result.usage.calls == 1


async def test_persistent_throttling_is_transient_with_retry_after(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.inject("throttle", times=10)
    embedder = bedrock_embedder({"FULLPASS_EMBEDDINGS_MAX_RETRIES": "2"})
    with pytest.raises(Transient) as caught:
        await embedder.embed_documents(TEXTS)
    assert "ThrottlingException" in str(caught.value)
    assert "gave up after 3 attempts" in str(caught.value)
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert len(fake_bedrock.requests) == 3


async def test_requests_per_second_limit_is_absorbed_by_backoff(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.requests_per_second = 15
    embedder = bedrock_embedder(
        {**TITAN, "FULLPASS_EMBEDDINGS_MAX_RETRIES": "10"}, backoff_base=0.05, backoff_max=0.4
    )
    texts = [f"short text {i}" for i in range(20)]
    result = await embedder.embed_documents(texts)
    assert result.vectors == [lexical_vector(t, 1024) for t in texts]
    assert fake_bedrock.calls(status=429)  # the limit was hit...
    assert len(fake_bedrock.calls(ok=True)) == 20  # ...and every text made it


@pytest.mark.parametrize("kind", ["server_error", "unavailable"])
async def test_server_errors_are_retried(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer, kind: FaultKind
) -> None:
    fake_bedrock.inject(kind, times=2)
    result = await bedrock_embedder().embed_documents(TEXTS)
    assert len(result.vectors) == 3
    assert [r.status for r in fake_bedrock.requests][-1] == 200
    assert len(fake_bedrock.requests) == 3


async def test_persistent_outage_is_transient(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.inject("unavailable", times=5)
    embedder = bedrock_embedder({"FULLPASS_EMBEDDINGS_MAX_RETRIES": "1"})
    with pytest.raises(Transient, match="ServiceUnavailableException"):
        await embedder.embed_documents(TEXTS)
    assert len(fake_bedrock.requests) == 2


async def test_timeout_is_transient(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.inject(Fault.hang(1.5), times=2)
    embedder = bedrock_embedder(
        {"FULLPASS_EMBEDDINGS_TIMEOUT": "0.2", "FULLPASS_EMBEDDINGS_MAX_RETRIES": "1"}
    )
    with pytest.raises(Transient, match="ReadTimeoutError"):
        await embedder.embed_documents(TEXTS)


async def test_connection_refused_is_transient(bedrock_embedder: Build) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    embedder = bedrock_embedder(
        {"FULLPASS_BEDROCK_ENDPOINT_URL": closed, "FULLPASS_EMBEDDINGS_MAX_RETRIES": "1"}
    )
    with pytest.raises(Transient, match="EndpointConnectionError"):
        await embedder.embed_documents(TEXTS)


# ---------------------------------------------------------------------- credentials and input


async def test_access_denied_needs_an_operator_at_once(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.inject("unauthorized")
    with pytest.raises(NeedsOperator, match="AccessDeniedException"):
        await bedrock_embedder().embed_documents(TEXTS)
    assert len(fake_bedrock.requests) == 1


async def test_unknown_access_key_needs_an_operator(fake_bedrock: FakeBedrockServer) -> None:
    session = boto3.session.Session(
        aws_access_key_id="AKIAUNKNOWNKEY000000",
        aws_secret_access_key="another/secret+key0000000000000000000000",
        region_name=fake_bedrock.region,
    )
    settings = EmbeddingSettings(
        FULLPASS_EMBEDDINGS="bedrock", FULLPASS_BEDROCK_ENDPOINT_URL=fake_bedrock.endpoint_url
    )
    embedder = closing(BedrockEmbedder(settings, session=session, **FAST))
    with pytest.raises(NeedsOperator, match="UnrecognizedClientException") as caught:
        await embedder.embed_documents(TEXTS)
    assert "another/secret" not in str(caught.value)


def test_missing_credentials_need_an_operator(
    fake_bedrock: FakeBedrockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fake_bedrock.settings_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(NeedsOperator, match="AWS credentials"):
        BedrockEmbedder(EmbeddingSettings())


def test_missing_region_needs_an_operator(
    fake_bedrock: FakeBedrockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fake_bedrock.settings_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(NeedsOperator, match="AWS_REGION"):
        BedrockEmbedder(EmbeddingSettings())


async def test_rejected_input_is_unusable(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer
) -> None:
    fake_bedrock.inject("invalid")
    with pytest.raises(Unusable, match="ValidationException"):
        await bedrock_embedder().embed_documents(TEXTS)
    assert len(fake_bedrock.requests) == 1


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("malformed", "not JSON"),
        ("garbage", "no list of vectors"),
        ("wrong_count", "2 vectors for 3 texts"),
        ("wrong_dimension", "1023 dimensions, expected 1024"),
        ("non_finite", "NaN"),
    ],
)
async def test_garbage_answers_are_unusable(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer, kind: FaultKind, words: str
) -> None:
    fake_bedrock.inject(kind)
    with pytest.raises(Unusable) as caught:
        await bedrock_embedder().embed_documents(TEXTS)
    assert words in str(caught.value)
    assert "cohere.embed-english-v3" in str(caught.value)


@pytest.mark.parametrize("kind", ["wrong_count", "wrong_dimension", "garbage"])
async def test_titan_garbage_is_unusable(
    bedrock_embedder: Build, fake_bedrock: FakeBedrockServer, kind: FaultKind
) -> None:
    fake_bedrock.inject(kind)
    with pytest.raises(Unusable):
        await bedrock_embedder(TITAN).embed_documents(["one text"])


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.error(403, "AccessDeniedException", "denied for {secret}"), NeedsOperator),
        (Fault.error(400, "ValidationException", "bad input near {secret}"), Unusable),
        (Fault.error(503, "ServiceUnavailableException", "busy {secret}"), Transient),
    ],
)
async def test_secret_access_key_never_appears_in_errors_or_logs(
    bedrock_embedder: Build,
    fake_bedrock: FakeBedrockServer,
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
    error: type[Exception],
) -> None:
    echoed = Fault.error(
        fault.status, fault.error_type, fault.message.format(secret=DEFAULT_SECRET_KEY)
    )
    fake_bedrock.inject(echoed, times=3)
    caplog.set_level(logging.DEBUG, logger="fullpass")
    embedder = bedrock_embedder({"FULLPASS_EMBEDDINGS_MAX_RETRIES": "2"})
    with pytest.raises(error) as caught:
        await embedder.embed_documents(TEXTS)
    assert DEFAULT_SECRET_KEY not in str(caught.value)
    assert "[REDACTED]" in str(caught.value)
    assert DEFAULT_SECRET_KEY not in caplog.text
