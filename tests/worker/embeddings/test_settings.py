"""Embeddings settings: defaults per provider and model, refused combinations, dimensions."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.embeddings import (
    EmbeddingSettings,
    check_dimension,
    expected_dimension,
    make_embedder,
)
from worker.embeddings import local as local_module
from worker.errors import NeedsOperator


def settings(**env: Any) -> EmbeddingSettings:
    return EmbeddingSettings(**env)


@pytest.mark.parametrize(
    ("env", "model", "dimension", "batch", "max_chars"),
    [
        ({}, "wordllama-l2-supercat-256", 256, 256, 32_000),
        ({"FULLPASS_EMBEDDINGS": "bedrock"}, "cohere.embed-english-v3", 1024, 96, 2048),
        (
            {
                "FULLPASS_EMBEDDINGS": "bedrock",
                "FULLPASS_EMBEDDINGS_MODEL": "cohere.embed-multilingual-v3",
            },
            "cohere.embed-multilingual-v3",
            1024,
            96,
            2048,
        ),
        (
            {
                "FULLPASS_EMBEDDINGS": "bedrock",
                "FULLPASS_EMBEDDINGS_MODEL": "amazon.titan-embed-text-v2:0",
            },
            "amazon.titan-embed-text-v2:0",
            1024,
            1,
            50_000,
        ),
        ({"FULLPASS_EMBEDDINGS": "openai"}, "text-embedding-3-small", 1536, 256, 30_000),
        (
            {
                "FULLPASS_EMBEDDINGS": "openai",
                "FULLPASS_EMBEDDINGS_MODEL": "text-embedding-3-large",
            },
            "text-embedding-3-large",
            3072,
            256,
            30_000,
        ),
    ],
)
def test_defaults_per_provider_and_model(
    env: dict[str, str], model: str, dimension: int, batch: int, max_chars: int
) -> None:
    s = settings(**env)
    resolved = s.resolved
    assert (resolved.model, resolved.dimension, resolved.batch, resolved.max_input_chars) == (
        model,
        dimension,
        batch,
        max_chars,
    )
    assert expected_dimension(s) == dimension
    assert s.concurrency == 4


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULLPASS_EMBEDDINGS", "bedrock")
    monkeypatch.setenv("FULLPASS_EMBEDDINGS_MODEL", "amazon.titan-embed-text-v2:0")
    monkeypatch.setenv("FULLPASS_EMBEDDINGS_DIMENSION", "512")
    monkeypatch.setenv("FULLPASS_EMBEDDINGS_CONCURRENCY", "7")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    s = EmbeddingSettings()
    assert expected_dimension(s) == 512
    assert s.concurrency == 7
    assert s.aws_region == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert EmbeddingSettings().aws_region == "eu-central-1"


@pytest.mark.parametrize("dimension", [256, 512, 1024])
def test_titan_offers_three_dimensions(dimension: int) -> None:
    s = settings(
        FULLPASS_EMBEDDINGS="bedrock",
        FULLPASS_EMBEDDINGS_MODEL="amazon.titan-embed-text-v2:0",
        FULLPASS_EMBEDDINGS_DIMENSION=dimension,
    )
    assert expected_dimension(s) == dimension


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {
                "FULLPASS_EMBEDDINGS_MODEL": "amazon.titan-embed-text-v2:0",
                "FULLPASS_EMBEDDINGS_DIMENSION": 768,
            },
            ["FULLPASS_EMBEDDINGS_DIMENSION=768", "256/512/1024"],
        ),
        ({"FULLPASS_EMBEDDINGS_DIMENSION": 512}, ["FULLPASS_EMBEDDINGS_DIMENSION=512", "1024"]),
        ({"FULLPASS_EMBEDDINGS_BATCH": 97}, ["FULLPASS_EMBEDDINGS_BATCH=97", "96"]),
        (
            {
                "FULLPASS_EMBEDDINGS_MODEL": "amazon.titan-embed-text-v2:0",
                "FULLPASS_EMBEDDINGS_BATCH": 2,
            },
            ["FULLPASS_EMBEDDINGS_BATCH=2", "(1)"],
        ),
        (
            {"FULLPASS_EMBEDDINGS_MODEL": "cohere.embed-v9"},
            ["cohere.embed-v9", "cohere.embed-english-v3", "amazon.titan-embed-text-v2:0"],
        ),
        (
            {"FULLPASS_EMBEDDINGS_MAX_INPUT_CHARS": 5000},
            ["FULLPASS_EMBEDDINGS_MAX_INPUT_CHARS=5000", "2048"],
        ),
    ],
)
def test_bedrock_combinations_refused_with_the_variable_named(
    env: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(FULLPASS_EMBEDDINGS="bedrock", **env)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"FULLPASS_EMBEDDINGS_DIMENSION": 2000}, ["2000", "1536"]),
        (
            {
                "FULLPASS_EMBEDDINGS_MODEL": "text-embedding-ada-002",
                "FULLPASS_EMBEDDINGS_DIMENSION": 512,
            },
            ["512", "1536"],
        ),
        (
            {"FULLPASS_EMBEDDINGS_MODEL": "nomic-embed-text"},
            ["FULLPASS_EMBEDDINGS_DIMENSION", "nomic"],
        ),
        ({"FULLPASS_EMBEDDINGS_BATCH": 5000}, ["FULLPASS_EMBEDDINGS_BATCH=5000", "2048"]),
    ],
)
def test_openai_combinations_refused(env: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(FULLPASS_EMBEDDINGS="openai", **env)
    for word in words:
        assert word in str(caught.value)


def test_openai_models_shortened_or_unlisted() -> None:
    short = settings(FULLPASS_EMBEDDINGS="openai", FULLPASS_EMBEDDINGS_DIMENSION=512).resolved
    assert (short.dimension, short.native_dimension) == (512, 1536)
    own = settings(
        FULLPASS_EMBEDDINGS="openai",
        FULLPASS_EMBEDDINGS_MODEL="nomic-embed-text",
        FULLPASS_EMBEDDINGS_DIMENSION=768,
        FULLPASS_EMBEDDINGS_URL="http://127.0.0.1:11434/v1/",
    )
    assert (own.resolved.dimension, own.resolved.native_dimension) == (768, None)
    assert own.base_url == "http://127.0.0.1:11434/v1"
    assert settings(FULLPASS_EMBEDDINGS="openai").base_url == "https://api.openai.com/v1"


def test_api_key_falls_back_to_openai_api_key_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-variable-0001")
    s = EmbeddingSettings(FULLPASS_EMBEDDINGS="openai")
    assert s.secrets() == ["sk-from-openai-variable-0001"]
    assert "sk-from-openai" not in repr(s) and "sk-from-openai" not in str(s.model_dump())
    monkeypatch.setenv("FULLPASS_EMBEDDINGS_API_KEY", "sk-own-variable-0002")
    assert EmbeddingSettings(FULLPASS_EMBEDDINGS="openai").secrets() == ["sk-own-variable-0002"]


def test_local_input_bound_may_be_raised_remote_only_lowered() -> None:
    assert settings(FULLPASS_EMBEDDINGS_MAX_INPUT_CHARS=100_000).resolved.max_input_chars == 100_000
    lowered = settings(FULLPASS_EMBEDDINGS="openai", FULLPASS_EMBEDDINGS_MAX_INPUT_CHARS=1000)
    assert lowered.resolved.max_input_chars == 1000


def test_none_means_no_embedder_and_no_dimension() -> None:
    s = settings(FULLPASS_EMBEDDINGS="none")
    assert not s.enabled
    assert make_embedder(s) is None
    with pytest.raises(ValueError, match="FULLPASS_EMBEDDINGS=none"):
        expected_dimension(s)
    check_dimension(s, 1536)  # nothing to compare


def test_check_dimension_refuses_a_column_of_another_size() -> None:
    s = settings(FULLPASS_EMBEDDINGS="bedrock")
    check_dimension(s, 1024)
    with pytest.raises(NeedsOperator) as caught:
        check_dimension(s, 1536)
    message = str(caught.value)
    assert "cohere.embed-english-v3" in message
    assert "1024" in message and "1536" in message
    assert "FULLPASS_EMBEDDINGS_MODEL" in message


def test_expected_dimension_loads_nothing_and_needs_no_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_module, "_model", None)
    assert expected_dimension(settings()) == 256
    assert local_module._model is None
    # No AWS credentials or region anywhere: the size is still known.
    assert expected_dimension(settings(FULLPASS_EMBEDDINGS="bedrock")) == 1024
