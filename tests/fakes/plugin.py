"""Pytest fixtures for the fake services (register with ``pytest_plugins``).

One server per service per test session (starting threads and sockets per
test would be wasted time); each test gets it reset: no faults, no latency,
no limits, no records. Fakes: the Anthropic Messages API, Amazon Bedrock's
embeddings runtime, OpenAI's embeddings API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import pytest

from tests.fakes.fake_anthropic import FakeAnthropicServer
from tests.fakes.fake_bedrock import FakeBedrockServer
from tests.fakes.fake_openai_embeddings import FakeOpenAIEmbeddingsServer
from worker.embeddings.base import Embedder
from worker.llm.anthropic_provider import AnthropicProvider
from worker.settings import Settings

_open: list[AnthropicProvider] = []
_open_embedders: list[Embedder] = []

E = TypeVar("E", bound=Embedder)


def anthropic_provider(settings: Settings, **kw: Any) -> AnthropicProvider:
    """An :class:`AnthropicProvider` closed when the test ends (its HTTP session with it)."""
    provider = AnthropicProvider(settings, **kw)
    _open.append(provider)
    return provider


@pytest.fixture(autouse=True)
async def _close_anthropic_providers() -> AsyncIterator[None]:
    yield
    while _open:
        await _open.pop().aclose()


@pytest.fixture(scope="session")
def fake_anthropic_server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def fake_anthropic(fake_anthropic_server: FakeAnthropicServer) -> Iterator[FakeAnthropicServer]:
    """The session's fake server, reset before and after the test."""
    fake_anthropic_server.reset()
    yield fake_anthropic_server
    fake_anthropic_server.reset()


def closing(embedder: E) -> E:
    """``embedder``, closed when the test ends (its connections and threads with it)."""
    _open_embedders.append(embedder)
    return embedder


@pytest.fixture(autouse=True)
async def _close_embedders() -> AsyncIterator[None]:
    yield
    while _open_embedders:
        await _open_embedders.pop().aclose()


@pytest.fixture(scope="session")
def fake_bedrock_server() -> Iterator[FakeBedrockServer]:
    with FakeBedrockServer() as server:
        yield server


@pytest.fixture
def fake_bedrock(fake_bedrock_server: FakeBedrockServer) -> Iterator[FakeBedrockServer]:
    """The session's fake Bedrock runtime, reset before and after the test."""
    fake_bedrock_server.reset()
    yield fake_bedrock_server
    fake_bedrock_server.reset()


@pytest.fixture(scope="session")
def fake_openai_embeddings_server() -> Iterator[FakeOpenAIEmbeddingsServer]:
    with FakeOpenAIEmbeddingsServer() as server:
        yield server


@pytest.fixture
def fake_openai_embeddings(
    fake_openai_embeddings_server: FakeOpenAIEmbeddingsServer,
) -> Iterator[FakeOpenAIEmbeddingsServer]:
    """The session's fake OpenAI embeddings API, reset before and after the test."""
    fake_openai_embeddings_server.reset()
    yield fake_openai_embeddings_server
    fake_openai_embeddings_server.reset()
