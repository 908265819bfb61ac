"""Hermetic environment for the embeddings tests.

Settings and boto3 both read the environment: every test here starts with no
embeddings, OpenAI or AWS variables, no AWS config files and no instance
metadata lookups, so the machine's own configuration can neither leak into a
test nor send a request anywhere but the fakes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_bedrock import FakeBedrockServer
from tests.fakes.fake_openai_embeddings import FakeOpenAIEmbeddingsServer
from tests.fakes.plugin import closing
from worker.embeddings import EmbeddingSettings, make_embedder
from worker.embeddings.base import Embedder

_PREFIXES = ("FULLPASS_EMBEDDINGS", "FULLPASS_BEDROCK", "OPENAI_", "AWS_")

#: Backoff in milliseconds: retries are exercised, not waited for.
FAST: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.01}


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    yield


Build = Callable[..., Embedder]


def _builder(monkeypatch: pytest.MonkeyPatch, base_env: Callable[[], dict[str, str]]) -> Build:
    def build(env: dict[str, str] | None = None, **knobs: Any) -> Embedder:
        for name, value in {**base_env(), **(env or {})}.items():
            monkeypatch.setenv(name, value)
        embedder = make_embedder(EmbeddingSettings(), **{**FAST, **knobs})
        assert embedder is not None
        return closing(embedder)

    return build


@pytest.fixture
def bedrock_embedder(fake_bedrock: FakeBedrockServer, monkeypatch: pytest.MonkeyPatch) -> Build:
    """``bedrock_embedder(env, **knobs)``: a Bedrock embedder on the fake, through boto3's chain."""
    return _builder(monkeypatch, fake_bedrock.settings_env)


@pytest.fixture
def openai_embedder(
    fake_openai_embeddings: FakeOpenAIEmbeddingsServer, monkeypatch: pytest.MonkeyPatch
) -> Build:
    """``openai_embedder(env, **knobs)``: an OpenAI-compatible embedder on the fake."""
    return _builder(monkeypatch, fake_openai_embeddings.settings_env)
