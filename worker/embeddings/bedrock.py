"""Amazon Bedrock embeddings (Cohere Embed v3, Titan Text Embeddings v2) through boto3.

boto3 is synchronous, so each ``invoke_model`` runs in this provider's own
pool of ``concurrency`` threads (never the event loop's default pool, which
other work shares), with one client for all of them (botocore clients are
thread-safe and keep a connection pool of the same size).

botocore's own retries are off: every attempt goes through
:mod:`worker.embeddings.remote`, which retries throttling and outages with
the project's backoff rule and turns the rest into the project's error kinds.
Credentials and region come from the standard AWS chain (environment,
profile, container or instance role); ``FULLPASS_BEDROCK_ENDPOINT_URL``
points the client elsewhere (a VPC endpoint, or the tests' fake).
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from worker.embeddings.base import EmbedUsage, InputKind
from worker.embeddings.batching import GroupResult
from worker.embeddings.remote import FailureKind, RemoteEmbedder, RequestFailed, retry_after_seconds
from worker.embeddings.settings import EmbeddingSettings
from worker.errors import NeedsOperator, Unusable

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime.client import BedrockRuntimeClient

#: Bedrock's header with the input tokens an invocation was billed for.
BILLED_INPUT_HEADER: Final = "x-amzn-bedrock-input-token-count"

_THROTTLED: Final = frozenset({"ThrottlingException", "TooManyRequestsException"})
_UNAVAILABLE: Final = frozenset(
    {
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelTimeoutException",
        "ModelErrorException",
        "ModelNotReadyException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalFailure",
    }
)
_OPERATOR: Final = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidClientTokenId",
        "ResourceNotFoundException",
        "ServiceQuotaExceededException",
    }
)
#: A ValidationException about the length of an input rather than its content.
_TOO_LONG: Final = re.compile(
    r"too many (input )?tokens|too long|maxlength|max(imum)? (input )?(tokens|length)",
    re.IGNORECASE,
)
#: A ValidationException about the configuration: every request would fail alike.
_MISCONFIGURED: Final = re.compile(
    r"model identifier is invalid|on-demand throughput|don't have access|do not have access",
    re.IGNORECASE,
)


class BedrockEmbedder(RemoteEmbedder):
    """:class:`~worker.embeddings.base.Embedder` on Amazon Bedrock's ``InvokeModel``.

    ``session`` replaces the default ``boto3`` session (the standard chain
    for credentials and region); ``knobs`` go to :class:`RemoteEmbedder`
    (backoff in tests). Raises :class:`NeedsOperator` when no region or no
    credentials are found: nothing can be sent without them.
    """

    name = "bedrock"

    def __init__(
        self,
        settings: EmbeddingSettings,
        *,
        session: boto3.session.Session | None = None,
        **knobs: Any,
    ) -> None:
        resolved = settings.resolved
        if resolved.provider != "bedrock":
            raise ValueError(f"{resolved.model} is not a Bedrock model")
        session = session or boto3.session.Session(region_name=settings.aws_region)
        secrets = [*settings.secrets(), *_credential_secrets(session)]
        super().__init__(
            model=resolved.model,
            dimension=resolved.dimension,
            max_batch=resolved.batch,
            max_input_chars=resolved.max_input_chars,
            concurrency=settings.concurrency,
            max_retries=settings.max_retries,
            secrets=secrets,
            **knobs,
        )
        self.family = resolved.family
        self._client = _client(session, settings)
        self._executor = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="fullpass-bedrock"
        )

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # ------------------------------------------------------------------ one request

    async def _request(self, texts: list[str], kind: InputKind) -> GroupResult:
        body = json.dumps(self._body(texts, kind), ensure_ascii=False).encode()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._invoke, body)

    def _body(self, texts: list[str], kind: InputKind) -> dict[str, Any]:
        if self.family == "titan":
            return {"inputText": texts[0], "dimensions": self.dimension, "normalize": True}
        input_type = "search_query" if kind == "query" else "search_document"
        return {"texts": texts, "input_type": input_type, "truncate": "END"}

    def _invoke(self, body: bytes) -> GroupResult:
        """The blocking call and the parsing of its answer (megabytes of JSON), in a pool thread."""
        try:
            response = self._client.invoke_model(
                modelId=self.model,
                body=body,
                contentType="application/json",
                accept="application/json",
            )
            payload = response["body"].read()
        except ClientError as exc:
            raise _client_failure(exc) from None
        except BotoCoreError as exc:
            raise _botocore_failure(exc) from None
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return self._parse(payload, {k.lower(): v for k, v in headers.items()})

    def _parse(self, payload: bytes, headers: dict[str, str]) -> GroupResult:
        try:
            data = json.loads(payload)
        except ValueError:
            raise Unusable(self._safe(f"{self.label}: the answer is not JSON")) from None
        if not isinstance(data, dict):
            raise Unusable(self._safe(f"{self.label}: the answer is not a JSON object"))
        tokens = _int(headers.get(BILLED_INPUT_HEADER))
        if self.family == "titan":
            vectors: object = [data["embedding"]] if "embedding" in data else None
            tokens = tokens or _int(data.get("inputTextTokenCount"))
        else:
            vectors = data.get("embeddings")
            if isinstance(vectors, dict):  # asked with embedding_types: {"float": [...]}
                vectors = vectors.get("float")
        return vectors, EmbedUsage(input_tokens=tokens, calls=1)


def _client(session: boto3.session.Session, settings: EmbeddingSettings) -> BedrockRuntimeClient:
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.timeout,
        max_pool_connections=settings.concurrency,
        user_agent_extra="fullpass",
    )
    if session.region_name is None:
        raise NeedsOperator("Bedrock embeddings need a region: set AWS_REGION")
    try:
        return session.client(
            "bedrock-runtime", endpoint_url=settings.bedrock_endpoint_url, config=config
        )
    except ValueError as exc:  # a malformed endpoint URL
        raise NeedsOperator(f"FULLPASS_BEDROCK_ENDPOINT_URL is not usable: {exc}") from None


def _credential_secrets(session: boto3.session.Session) -> list[str]:
    """The secret parts of the session's credentials, or :class:`NeedsOperator` if none."""
    try:
        credentials = session.get_credentials()
    except (CredentialRetrievalError, PartialCredentialsError) as exc:
        raise NeedsOperator(f"Bedrock embeddings: AWS credentials are unusable: {exc}") from None
    if credentials is None:
        raise NeedsOperator(
            "Bedrock embeddings need AWS credentials (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a container or instance role)"
        )
    frozen = credentials.get_frozen_credentials()
    return [s for s in (frozen.secret_key, frozen.token) if s]


def _client_failure(exc: ClientError) -> RequestFailed:
    """The kind of an error the service answered."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or "")
    meta = exc.response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    headers = meta.get("HTTPHeaders") or {}
    text = f"{status} {code}: {message}".strip().rstrip(":")
    retry_after = retry_after_seconds(headers)
    kind: FailureKind
    if code in _THROTTLED or (status == 429 and code not in _UNAVAILABLE):
        kind = "throttled"
    elif code in _UNAVAILABLE or status >= 500 or status == 408:
        kind = "unavailable"
    elif code in _OPERATOR or status in (401, 403, 404) or _MISCONFIGURED.search(message):
        kind = "operator"
    elif _TOO_LONG.search(message):
        kind = "too_long"
    else:
        kind = "input"
    return RequestFailed(kind, text, retry_after=retry_after)


def _botocore_failure(exc: BotoCoreError) -> RequestFailed:
    """The kind of an error raised before or while talking to the service."""
    name = type(exc).__name__
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return RequestFailed("operator", f"AWS credentials are missing or unusable ({name})")
    if isinstance(exc, NoRegionError):
        return RequestFailed("operator", "no AWS region: set AWS_REGION")
    if isinstance(exc, ParamValidationError):
        return RequestFailed("operator", f"the request was refused by the SDK: {exc}")
    # Connection refused or reset, timeouts, a body cut short: may pass.
    return RequestFailed("unavailable", f"{name}: {exc}")


def _int(value: object) -> int:
    try:
        return max(0, int(str(value)))
    except (TypeError, ValueError):
        return 0
