"""The fake Messages API enforces an organisation's rate limits like the real API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.fakes.fake_anthropic import FakeAnthropicServer

BODY: dict[str, Any] = {
    "model": "claude-haiku-4-5-20251001",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello there, " * 40}],
}


@pytest.fixture
def fake() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as server:
        yield server


def post(fake: FakeAnthropicServer, body: dict[str, Any] = BODY) -> httpx.Response:
    # A fresh client each time: the limits are the organisation's, not a connection's.
    with httpx.Client(base_url=fake.base_url) as client:
        return client.post(
            "/v1/messages",
            json=body,
            headers={"x-api-key": fake.api_key, "anthropic-version": "2023-06-01"},
        )


def reset_of(response: httpx.Response, name: str) -> float:
    """Seconds from now to the ``-reset`` time of ``name`` (an RFC 3339 timestamp)."""
    value = response.headers[f"anthropic-ratelimit-{name}-reset"]
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.tzinfo is not None
    return (moment - datetime.now(UTC)).total_seconds()


def test_requests_per_minute_are_shared_by_every_client(fake: FakeAnthropicServer) -> None:
    fake.set_rate_limits(rpm=3)
    answers = [post(fake) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["anthropic-ratelimit-requests-remaining"] for a in answers] == [
        "2",
        "1",
        "0",
    ]
    assert {a.headers["anthropic-ratelimit-requests-limit"] for a in answers} == {"3"}
    # Refilled at 3 a minute: full again in about a minute.
    assert 55 <= reset_of(answers[-1], "requests") <= 61

    refused = post(fake)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 19 <= int(refused.headers["retry-after"]) <= 20  # one request back in 20 s
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert [r.limited for r in fake.rate_limited()] == ["requests"]
    assert len(fake.calls(status=200)) == 3


def test_buckets_refill_continuously(fake: FakeAnthropicServer) -> None:
    fake.set_rate_limits(rpm=120, burst_seconds=0.5)  # one request, back in 0.5 s
    assert post(fake).status_code == 200
    refused = post(fake)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"  # whole seconds, rounded up
    time.sleep(0.55)
    assert post(fake).status_code == 200


def test_input_tokens_per_minute(fake: FakeAnthropicServer) -> None:
    fake.set_rate_limits(itpm=200)
    first = post(fake)
    assert first.status_code == 200
    used = first.json()["usage"]["input_tokens"]
    assert 100 < used < 200
    assert first.headers["anthropic-ratelimit-input-tokens-limit"] == "200"
    assert int(first.headers["anthropic-ratelimit-input-tokens-remaining"]) == 200 - used
    refused = post(fake)
    assert refused.status_code == 429
    assert fake.rate_limited()[0].limited == "input_tokens"
    assert "requests" not in " ".join(refused.headers)  # only the limits that are set


def test_output_tokens_are_taken_when_the_answer_goes(fake: FakeAnthropicServer) -> None:
    fake.set_rate_limits(otpm=1)
    first = post(fake)
    assert first.status_code == 200
    assert first.json()["usage"]["output_tokens"] >= 1
    assert first.headers["anthropic-ratelimit-output-tokens-remaining"] == "0"
    assert post(fake).status_code == 429
    assert fake.rate_limited()[0].limited == "output_tokens"


def test_no_limits_no_headers(fake: FakeAnthropicServer) -> None:
    answer = post(fake)
    assert answer.status_code == 200
    assert not [h for h in answer.headers if h.startswith("anthropic-ratelimit")]
