"""Pytest fixtures for the fake Anthropic API (register with ``pytest_plugins``).

One server per test session (starting threads and sockets per test would be
wasted time); each test gets it reset: no faults, no latency, no records.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.fake_anthropic import FakeAnthropicServer


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
