"""Pytest fixtures for the fake Anthropic API (register with ``pytest_plugins``).

One server per test session (starting threads and sockets per test would be
wasted time); each test gets it reset: no faults, no latency, no records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.fakes.fake_anthropic import FakeAnthropicServer
from worker.llm.anthropic_provider import AnthropicProvider
from worker.settings import Settings

_open: list[AnthropicProvider] = []


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
