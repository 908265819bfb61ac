"""A fake Amazon Bedrock runtime (``InvokeModel``) for embeddings, on 127.0.0.1.

The real ``boto3`` client talks to it through ``endpoint_url``: requests are
SigV4-signed as for AWS (the fake checks an ``AWS4-HMAC-SHA256`` authorization
naming its access key id and the ``bedrock`` service, without verifying the
signature), and answers carry the real service's headers
(``X-Amzn-Bedrock-Input-Token-Count``, ``x-amzn-RequestId``) and error shape
(``x-amzn-ErrorType`` header, ``{"message": ...}`` body), so botocore raises
the same ``ClientError`` codes as in production.

Models: ``cohere.embed-english-v3`` and ``cohere.embed-multilingual-v3``
(``{"texts", "input_type", "truncate", "embedding_types"}``, up to 96 texts
of at most 2,048 characters, 1024 dimensions) and
``amazon.titan-embed-text-v2:0`` (``{"inputText", "dimensions",
"normalize"}``, one text of at most 50,000 characters and 8,192 tokens).
Validation errors are ``ValidationException`` with the service's wording.

Usage::

    with FakeBedrockServer() as fake:
        for name, value in fake.settings_env().items():
            monkeypatch.setenv(name, value)
        embedder = BedrockEmbedder(EmbeddingSettings())
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Final, NoReturn
from urllib.parse import unquote

from tests.fakes.embedding_server import (
    EmbedRecord,
    FakeEmbeddingServer,
    Fault,
    Handler,
    lexical_vector,
    retry_headers,
)

DEFAULT_ACCESS_KEY: Final = "AKIAFAKEFULLPASS0001"
DEFAULT_SECRET_KEY: Final = "fAkE/SeCrEt+0123456789abcdefghijklmnopqrS"
DEFAULT_REGION: Final = "us-east-1"

COHERE_MODELS: Final = frozenset({"cohere.embed-english-v3", "cohere.embed-multilingual-v3"})
TITAN_MODEL: Final = "amazon.titan-embed-text-v2:0"
COHERE_MAX_TEXTS: Final = 96
COHERE_MAX_CHARS: Final = 2048
COHERE_MAX_TOKENS: Final = 512
COHERE_DIMENSION: Final = 1024
TITAN_MAX_CHARS: Final = 50_000
TITAN_MAX_TOKENS: Final = 8192
TITAN_DIMENSIONS: Final = frozenset({256, 512, 1024})
INPUT_TYPES: Final = frozenset({"search_document", "search_query", "classification", "clustering"})
_ERROR_NAMESPACE: Final = "http://internal.amazon.com/coral/com.amazon.bedrock/"

#: An HTTP fault's status, error code and the service's message.
_FAULTS: Final[dict[str, tuple[int, str, str]]] = {
    "throttle": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    "server_error": (500, "InternalServerException", "The server encountered an internal error."),
    "unavailable": (
        503,
        "ServiceUnavailableException",
        "Bedrock is unable to process your request.",
    ),
    "invalid": (400, "ValidationException", "Malformed input request, please reformat your input."),
    "unauthorized": (
        403,
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    "quota": (400, "ServiceQuotaExceededException", "Your request exceeds the service quota."),
}


class FakeBedrockServer(FakeEmbeddingServer):
    """A thread-backed fake of ``POST /model/{modelId}/invoke`` for embedding models."""

    def __init__(
        self,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.access_key = access_key
        #: Never sent by a client (SigV4 signs with it); kept for settings_env.
        self.secret_key = secret_key
        self.region = region
        #: Answer Cohere requests as ``{"embeddings": {"float": [...]}}`` even
        #: when no ``embedding_types`` were asked for.
        self.cohere_by_type = False

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.cohere_by_type = False

    @property
    def endpoint_url(self) -> str:
        return self.origin

    def settings_env(self, model: str | None = None) -> dict[str, str]:
        """Environment that points ``EmbeddingSettings()`` and boto3's chain here."""
        env = {
            "FULLPASS_EMBEDDINGS": "bedrock",
            "FULLPASS_BEDROCK_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            # Never ask an instance metadata service for credentials.
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if model is not None:
            env["FULLPASS_EMBEDDINGS_MODEL"] = model
        return env

    # ------------------------------------------------------------------ routing

    def _route(self, h: Handler, record: EmbedRecord) -> None:
        parts = record.path.split("/")
        if h.command != "POST" or len(parts) != 4 or parts[1] != "model" or parts[3] != "invoke":
            self._error(h, record, 404, "UnknownOperationException", "")
        self._authorize(h, record)
        record.model = unquote(parts[2])
        body = record.body
        if not isinstance(body, dict):
            self._invalid(h, record, "Malformed input request: expected a JSON object")
        if record.model in COHERE_MODELS:
            self._cohere(h, record, body)
        if record.model == TITAN_MODEL:
            self._titan(h, record, body)
        self._invalid(h, record, "The provided model identifier is invalid.")

    def _authorize(self, h: Handler, record: EmbedRecord) -> None:
        """An ``AWS4-HMAC-SHA256`` signature by this fake's key for ``bedrock``."""
        authorization = h.headers.get("authorization") or ""
        if not authorization.startswith("AWS4-HMAC-SHA256 ") or not h.headers.get("x-amz-date"):
            self._error(
                h,
                record,
                403,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        fields = dict(
            part.strip().split("=", 1)
            for part in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(",")
            if "=" in part
        )
        scope = fields.get("Credential", "").split("/")
        if len(scope) != 5 or scope[0] != self.access_key:
            self._error(
                h,
                record,
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        if scope[2] != self.region or scope[3] != "bedrock" or "Signature" not in fields:
            self._error(
                h,
                record,
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )

    # ------------------------------------------------------------------ Cohere

    def _cohere(self, h: Handler, record: EmbedRecord, body: dict[str, Any]) -> NoReturn:
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            self._invalid(h, record, "Malformed input request: #/texts: expected type: JSONArray")
        record.texts = list(texts)
        record.input_type = body.get("input_type")
        if len(texts) > COHERE_MAX_TEXTS:
            self._invalid(
                h,
                record,
                f"Malformed input request: #/texts: expected maximum item count: "
                f"{COHERE_MAX_TEXTS}, found: {len(texts)}, please reformat your input "
                "and try again.",
            )
        for position, text in enumerate(texts):
            if not text or len(text) > COHERE_MAX_CHARS:
                bound = "minLength: 1" if not text else f"maxLength: {COHERE_MAX_CHARS}"
                self._invalid(
                    h,
                    record,
                    f"Malformed input request: #/texts/{position}: expected {bound}, "
                    f"actual: {len(text)}, please reformat your input and try again.",
                )
        if record.input_type not in INPUT_TYPES:
            self._invalid(h, record, "Malformed input request: #/input_type: invalid value")
        truncate = body.get("truncate", "NONE")
        if truncate not in ("NONE", "START", "END"):
            self._invalid(h, record, "Malformed input request: #/truncate: invalid value")
        counts = [self.tokens_of(t) for t in texts]
        if truncate == "NONE" and any(n > COHERE_MAX_TOKENS for n in counts):
            self._invalid(h, record, "input is too long for the model; use truncate")
        record.tokens = sum(min(n, COHERE_MAX_TOKENS) for n in counts)
        fault = self._admit(h, record)
        vectors = [lexical_vector(t, COHERE_DIMENSION) for t in texts]
        by_type = self.cohere_by_type or body.get("embedding_types") is not None
        request_id = str(uuid.uuid4())

        def build(spoiled: list[list[float]]) -> dict[str, Any]:
            if by_type:
                return {
                    "id": request_id,
                    "texts": texts,
                    "embeddings": {"float": spoiled},
                    "response_type": "embeddings_by_type",
                }
            return {
                "id": request_id,
                "texts": texts,
                "embeddings": spoiled,
                "response_type": "embeddings_floats",
            }

        self._answer_vectors(h, record, fault, vectors, build, self._headers(record, request_id))

    # ------------------------------------------------------------------ Titan

    def _titan(self, h: Handler, record: EmbedRecord, body: dict[str, Any]) -> NoReturn:
        text = body.get("inputText")
        if not isinstance(text, str):
            self._invalid(
                h, record, "Malformed input request: #: required key [inputText] not found"
            )
        record.texts = [text]
        if not text or len(text) > TITAN_MAX_CHARS:
            bound = "minLength: 1" if not text else f"maxLength: {TITAN_MAX_CHARS}"
            self._invalid(
                h,
                record,
                f"Malformed input request: #/inputText: expected {bound}, actual: {len(text)}, "
                "please reformat your input and try again.",
            )
        tokens = self.tokens_of(text)
        if tokens > TITAN_MAX_TOKENS:
            self._invalid(
                h,
                record,
                f"400 Bad Request: Too many input tokens. Max input tokens: {TITAN_MAX_TOKENS}, "
                f"request input token count: {tokens} ",
            )
        dimensions = body.get("dimensions", 1024)
        record.dimensions = dimensions
        if dimensions not in TITAN_DIMENSIONS:
            self._invalid(
                h,
                record,
                f"Malformed input request: #/dimensions: {dimensions} is not a valid enum value",
            )
        normalize = body.get("normalize", True)
        if not isinstance(normalize, bool):
            self._invalid(h, record, "Malformed input request: #/normalize: expected type: Boolean")
        record.tokens = tokens
        fault = self._admit(h, record)
        vector = lexical_vector(text, dimensions)
        if not normalize:
            vector = [x * math.sqrt(dimensions) for x in vector]

        def build(spoiled: list[list[float]]) -> dict[str, Any]:
            if not spoiled:  # wrong_count: the embedding is missing
                return {"inputTextTokenCount": tokens}
            return {
                "embedding": spoiled[0],
                "inputTextTokenCount": tokens,
                "embeddingsByType": {"float": spoiled[0]},
            }

        request_id = str(uuid.uuid4())
        self._answer_vectors(h, record, fault, [vector], build, self._headers(record, request_id))

    # ------------------------------------------------------------------ answers

    def _headers(self, record: EmbedRecord, request_id: str) -> dict[str, str]:
        return {
            "x-amzn-RequestId": request_id,
            "X-Amzn-Bedrock-Invocation-Latency": str(max(1, int(self.latency * 1000))),
            "X-Amzn-Bedrock-Input-Token-Count": str(record.tokens),
        }

    def _garbage(self) -> Any:
        return {"Output": {"__type": "com.amazon.coral.service#UnknownOperationException"}}

    def _fault_answer(self, h: Handler, record: EmbedRecord, fault: Fault) -> NoReturn:
        if fault.kind == "status":
            status, code, message = fault.status, fault.error_type or "InternalServerException", ""
        else:
            status, code, message = _FAULTS[fault.kind]
        self._error(h, record, status, code, fault.message or message, retry_headers(fault))

    def _invalid(self, h: Handler, record: EmbedRecord, message: str) -> NoReturn:
        self._error(h, record, 400, "ValidationException", message)

    def _error(
        self,
        h: Handler,
        record: EmbedRecord,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> NoReturn:
        record.error_type = code
        all_headers = {
            "x-amzn-RequestId": str(uuid.uuid4()),
            "x-amzn-ErrorType": f"{code}:{_ERROR_NAMESPACE}",
            **(headers or {}),
        }
        self._send(h, record, status, {"message": message}, headers=all_headers)


__all__ = [
    "COHERE_MODELS",
    "DEFAULT_ACCESS_KEY",
    "DEFAULT_REGION",
    "DEFAULT_SECRET_KEY",
    "TITAN_MODEL",
    "FakeBedrockServer",
]
