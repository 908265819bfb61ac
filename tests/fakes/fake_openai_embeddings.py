"""A fake OpenAI embeddings API (``POST /v1/embeddings``) on 127.0.0.1.

Answers as OpenAI does: ``{"object": "list", "data": [{"object":
"embedding", "index": i, "embedding": [...]}], "model", "usage":
{"prompt_tokens", "total_tokens"}}``, ``float`` or ``base64`` encodings,
``dimensions`` for the ``text-embedding-3`` models only, and errors as
``{"error": {"message", "type", "param", "code"}}`` with OpenAI's wording:
401 ``invalid_api_key`` (the key masked, unless ``echo_key_in_errors``),
429 ``rate_limit_exceeded`` (with ``retry-after`` when the fault names one)
or ``insufficient_quota``, 400 for an empty input, an input over 8,192
tokens, or a request over 300,000 tokens.

Models not in OpenAI's list answer at ``default_dimension``, like a local
server (TEI, vLLM, Ollama) would. ``shuffle`` answers ``data`` out of order
(the API does not promise input order); ``require_api_key=False`` accepts
requests without a key.
"""

from __future__ import annotations

import base64
import random
import struct
import uuid
from typing import Any, Final, NoReturn

from tests.fakes.embedding_server import (
    EmbedRecord,
    FakeEmbeddingServer,
    Fault,
    Handler,
    lexical_vector,
    retry_headers,
)

DEFAULT_API_KEY: Final = "sk-fake-embeddings-0123456789abcdefghijklmnop"
#: Native size and whether ``dimensions`` may shorten it.
MODELS: Final[dict[str, tuple[int, bool]]] = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
MAX_INPUTS: Final = 2048
MAX_INPUT_TOKENS: Final = 8192
MAX_REQUEST_TOKENS: Final = 300_000

#: An HTTP fault's status, error type, code and OpenAI's message.
_FAULTS: Final[dict[str, tuple[int, str, str | None, str]]] = {
    "throttle": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Limit 3000, Used 3000, Requested 1. "
        "Please try again in 20ms.",
    ),
    "quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "server_error": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "unavailable": (
        503,
        "server_error",
        None,
        "The engine is currently overloaded, please try again later.",
    ),
    "invalid": (400, "invalid_request_error", None, "'$.input' is invalid."),
    "unauthorized": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided.",
    ),
}


class FakeOpenAIEmbeddingsServer(FakeEmbeddingServer):
    """A thread-backed fake of OpenAI's embeddings endpoint."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        require_api_key: bool = True,
        default_dimension: int = 768,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.api_key = api_key
        self.require_api_key = require_api_key
        self.default_dimension = default_dimension
        #: Answer ``data`` in a shuffled order (indexes still right).
        self.shuffle = False
        #: Put the whole key in 401 messages (to test that callers scrub it).
        self.echo_key_in_errors = False
        #: Answer in this encoding whatever was asked (some servers do).
        self.answer_encoding: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def settings_env(self, model: str | None = None) -> dict[str, str]:
        """Environment that points ``EmbeddingSettings()`` at this server."""
        env = {
            "FULLPASS_EMBEDDINGS": "openai",
            "FULLPASS_EMBEDDINGS_URL": self.base_url,
            "FULLPASS_EMBEDDINGS_API_KEY": self.api_key,
        }
        if model is not None:
            env["FULLPASS_EMBEDDINGS_MODEL"] = model
        return env

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.shuffle = False
            self.echo_key_in_errors = False
            self.require_api_key = True
            self.answer_encoding = None

    # ------------------------------------------------------------------ routing

    def _route(self, h: Handler, record: EmbedRecord) -> None:
        if h.command != "POST" or record.path.rstrip("/") != "/v1/embeddings":
            self._error(
                h, record, 404, "invalid_request_error", f"Invalid URL ({h.command} {record.path})"
            )
        self._authorize(h, record)
        body = record.body
        if not isinstance(body, dict):
            self._error(
                h,
                record,
                400,
                "invalid_request_error",
                "We could not parse the JSON body of your request.",
            )
        self._embeddings(h, record, body)

    def _authorize(self, h: Handler, record: EmbedRecord) -> None:
        if not self.require_api_key:
            return
        header = h.headers.get("authorization") or ""
        if not header.startswith("Bearer "):
            self._error(
                h,
                record,
                401,
                "invalid_request_error",
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        key = header.removeprefix("Bearer ").strip()
        if key != self.api_key:
            shown = key if self.echo_key_in_errors else _mask(key)
            self._error(
                h,
                record,
                401,
                "invalid_request_error",
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    # ------------------------------------------------------------------ /v1/embeddings

    def _embeddings(self, h: Handler, record: EmbedRecord, body: dict[str, Any]) -> NoReturn:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._error(
                h, record, 400, "invalid_request_error", "you must provide a model parameter"
            )
        record.model = model
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            self._error(
                h, record, 400, "invalid_request_error", "'$.input' is invalid.", param="input"
            )
        record.texts = list(texts)
        if len(texts) > MAX_INPUTS:
            self._error(
                h,
                record,
                400,
                "invalid_request_error",
                f"'$.input' is invalid: at most {MAX_INPUTS} inputs are allowed",
                param="input",
            )
        if any(not t for t in texts):
            self._error(
                h, record, 400, "invalid_request_error", "'$.input' is invalid.", param="input"
            )
        counts = [self.tokens_of(t) for t in texts]
        longest = max(counts)
        if longest > MAX_INPUT_TOKENS:
            self._error(
                h,
                record,
                400,
                "invalid_request_error",
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                f"requested {longest} tokens ({longest} in your prompt; 0 for the completion). "
                "Please reduce your prompt; or completion length.",
            )
        if sum(counts) > MAX_REQUEST_TOKENS:
            self._error(
                h,
                record,
                400,
                "invalid_request_error",
                f"Requested {sum(counts)} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
                code="max_tokens_per_request",
            )
        dimension = self._dimension(h, record, model, body.get("dimensions"))
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            self._error(
                h, record, 400, "invalid_request_error", "encoding_format must be float or base64"
            )
        encoding = self.answer_encoding or encoding
        record.tokens = sum(counts)
        fault = self._admit(h, record)
        vectors = [lexical_vector(t, dimension) for t in texts]
        order = list(range(len(texts)))
        if self.shuffle:
            random.Random(record.index).shuffle(order)

        def build(spoiled: list[list[float]]) -> dict[str, Any]:
            data = [
                {"object": "embedding", "index": i, "embedding": _encode(spoiled[i], encoding)}
                for i in order
                if i < len(spoiled)
            ]
            return {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": record.tokens, "total_tokens": record.tokens},
            }

        headers = {
            "x-request-id": f"req_{uuid.uuid4().hex}",
            "openai-processing-ms": str(max(1, int(self.latency * 1000))),
            "openai-model": model,
        }
        self._answer_vectors(h, record, fault, vectors, build, headers)

    def _dimension(self, h: Handler, record: EmbedRecord, model: str, asked: object) -> int:
        native, shortens = MODELS.get(model, (self.default_dimension, False))
        if asked is None:
            return native
        if not shortens:
            self._error(
                h,
                record,
                400,
                "invalid_request_error",
                "This model does not support specifying dimensions.",
            )
        if not isinstance(asked, int) or isinstance(asked, bool) or not 1 <= asked <= native:
            self._error(
                h,
                record,
                400,
                "invalid_request_error",
                f"Invalid value for 'dimensions' = {asked}. Must be between 1 and {native}.",
                param="dimensions",
            )
        record.dimensions = asked
        return asked

    # ------------------------------------------------------------------ answers

    def _garbage(self) -> Any:
        return {"object": "list", "data": "embeddings are temporarily unavailable"}

    def _fault_answer(self, h: Handler, record: EmbedRecord, fault: Fault) -> NoReturn:
        if fault.kind == "status":
            status, kind, code, message = fault.status, fault.error_type or "server_error", None, ""
        else:
            status, kind, code, message = _FAULTS[fault.kind]
        self._error(
            h,
            record,
            status,
            kind,
            fault.message or message,
            code=code,
            headers=retry_headers(fault),
        )

    def _error(
        self,
        h: Handler,
        record: EmbedRecord,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> NoReturn:
        record.error_type = code or error_type
        payload = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        all_headers = {"x-request-id": f"req_{uuid.uuid4().hex}", **(headers or {})}
        self._send(h, record, status, payload, headers=all_headers)


def _mask(key: str) -> str:
    """A key as OpenAI shows it in errors: its start and end only."""
    return f"{key[:3]}{'*' * 10}{key[-4:]}" if len(key) > 8 else "***"


def _encode(vector: list[float], encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


__all__ = ["DEFAULT_API_KEY", "MODELS", "FakeOpenAIEmbeddingsServer"]
