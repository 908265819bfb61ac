"""Embeddings from any OpenAI-compatible ``POST {base}/embeddings`` endpoint, with httpx.

OpenAI itself, or a server on the operator's own machines (Text Embeddings
Inference, vLLM, Ollama, LiteLLM) that speaks the same API: the key is
optional, and a model not in the catalogue is used at the dimension the
operator states. Answers are ordered by their ``index`` (the API does not
promise input order), and ``usage.prompt_tokens`` is the cost when present.

A request holds at most ``FULLPASS_EMBEDDINGS_BATCH`` texts and at most
600,000 characters, so it stays under OpenAI's 300,000-token limit on a
whole request even for dense text.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Final

import httpx

from worker.embeddings.base import EmbedUsage, InputKind
from worker.embeddings.batching import GroupResult
from worker.embeddings.remote import (
    RemoteEmbedder,
    RequestFailed,
    failure_for_status,
    retry_after_seconds,
)
from worker.embeddings.settings import OPENAI_MAX_REQUEST_CHARS, EmbeddingSettings
from worker.errors import Unusable

#: An error about the length of an input (OpenAI's, TEI's and vLLM's wordings).
_TOO_LONG: Final = re.compile(
    r"maximum context length|too many tokens|too long|reduce (the length|your prompt)"
    r"|must have less than \d+ tokens|max(imum)? \d* ?tokens|exceeds? .*tokens",
    re.IGNORECASE,
)
#: Answers longer than this are parsed in a thread: 256 vectors of 1536
#: floats are 8 MB of JSON, ~0.1 s of parsing the event loop should not wait.
PARSE_IN_THREAD_ABOVE: Final = 256 * 1024
#: 429s that waiting will not cure: the account is out of credit.
_QUOTA: Final = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


class OpenAIEmbedder(RemoteEmbedder):
    """:class:`~worker.embeddings.base.Embedder` on an OpenAI-compatible API.

    ``client`` replaces the httpx client (its base URL and headers are then
    the caller's business); ``knobs`` go to :class:`RemoteEmbedder`.
    """

    name = "openai"

    def __init__(
        self,
        settings: EmbeddingSettings,
        *,
        client: httpx.AsyncClient | None = None,
        **knobs: Any,
    ) -> None:
        resolved = settings.resolved
        if resolved.provider != "openai":
            raise ValueError(f"{resolved.model} is not an OpenAI-compatible model")
        super().__init__(
            model=resolved.model,
            dimension=resolved.dimension,
            max_batch=resolved.batch,
            max_input_chars=resolved.max_input_chars,
            concurrency=settings.concurrency,
            max_retries=settings.max_retries,
            max_request_chars=OPENAI_MAX_REQUEST_CHARS,
            secrets=settings.secrets(),
            **knobs,
        )
        #: ``dimensions`` is sent only to shorten a known model's vectors:
        #: servers of other models may refuse the parameter.
        native = resolved.native_dimension
        self._send_dimensions = native is not None and resolved.dimension != native
        self._url = f"{settings.base_url}/embeddings"
        self._owns_client = client is None
        self._client = client or _http_client(settings)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # ------------------------------------------------------------------ one request

    async def _request(self, texts: list[str], kind: InputKind) -> GroupResult:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self._send_dimensions:
            body["dimensions"] = self.dimension
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.TimeoutException:
            raise RequestFailed("unavailable", "the request timed out") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise RequestFailed(
                "operator", f"FULLPASS_EMBEDDINGS_URL is not usable: {exc}"
            ) from None
        except httpx.TransportError as exc:
            raise RequestFailed(
                "unavailable", f"connection error: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 300:
            raise _status_failure(response)
        if len(response.content) > PARSE_IN_THREAD_ABOVE:
            return await asyncio.to_thread(self._parse, response.content)
        return self._parse(response.content)

    def _parse(self, content: bytes) -> GroupResult:
        try:
            data = json.loads(content)
        except ValueError:
            raise Unusable(self._safe(f"{self.label}: the answer is not JSON")) from None
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise Unusable(self._safe(f"{self.label}: the answer has no list of embeddings"))
        vectors = self._in_order(items)
        usage = data.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        tokens = tokens if type(tokens) is int and tokens > 0 else 0
        return vectors, EmbedUsage(input_tokens=tokens, calls=1)

    def _in_order(self, items: list[dict[str, Any]]) -> list[object]:
        """The embeddings by ``index`` (by position when a server gives none)."""
        indexes = [item.get("index", position) for position, item in enumerate(items)]
        if sorted(indexes) != list(range(len(items))):
            raise Unusable(self._safe(f"{self.label}: the answer's indexes are not 0..n-1"))
        ordered: list[object] = [None] * len(items)
        for index, item in zip(indexes, items, strict=True):
            ordered[index] = item.get("embedding")
        return ordered


def _http_client(settings: EmbeddingSettings) -> httpx.AsyncClient:
    headers = {"Accept": "application/json", "User-Agent": "fullpass"}
    secrets = settings.secrets()
    if secrets:
        headers["Authorization"] = f"Bearer {secrets[0]}"
    concurrency = settings.concurrency
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


def _status_failure(response: httpx.Response) -> RequestFailed:
    """The kind of an error answer, from its status and OpenAI-style error body."""
    status = response.status_code
    message, code = _error_detail(response)
    text = f"{status} {message}".strip()
    if status < 400:
        return RequestFailed("operator", f"{status}: redirected; check FULLPASS_EMBEDDINGS_URL")
    if status == 429 and code in _QUOTA:
        return RequestFailed("operator", text)
    if status == 413:
        return RequestFailed("too_long", text)
    too_long = status in (400, 422) and bool(_TOO_LONG.search(message))
    return failure_for_status(
        status, text, retry_after=retry_after_seconds(response.headers), too_long=too_long
    )


def _error_detail(response: httpx.Response) -> tuple[str, str]:
    """An error answer's message and code (OpenAI's ``{"error": {...}}``, or a plain one)."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200], ""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        kind = str(error.get("type") or "")
        code = str(error.get("code") or kind)
        message = str(error.get("message") or "")
        label = f"{kind}: " if kind else ""
        return f"{label}{message}".strip(), code
    return str(error)[:200], ""
