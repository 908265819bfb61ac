"""Embeddings settings, read from the environment, checked before anything runs.

Which provider, which model, how many dimensions, how many texts a request:
everything is resolved and validated here, once, from a small catalogue of
the models whose limits are known. A combination the service would refuse on
every call (a Titan dimension it does not offer, a batch above Cohere's 96)
is refused at startup with a message naming the variable to change, instead
of failing each request of each import.

=================================  =========================================
variable                           meaning
=================================  =========================================
``FULLPASS_EMBEDDINGS``            ``local`` (default), ``bedrock``,
                                   ``openai`` or ``none``
``FULLPASS_EMBEDDINGS_MODEL``      model id (default per provider)
``FULLPASS_EMBEDDINGS_DIMENSION``  vector size (default: the model's)
``FULLPASS_EMBEDDINGS_BATCH``      texts per request (default per model)
``FULLPASS_EMBEDDINGS_CONCURRENCY`` requests in flight at once (4)
``FULLPASS_EMBEDDINGS_MAX_INPUT_CHARS`` characters of a text sent (default
                                   the model's limit; may only lower it)
``FULLPASS_EMBEDDINGS_URL``        OpenAI-compatible base URL
``FULLPASS_EMBEDDINGS_API_KEY``    its key (else ``OPENAI_API_KEY``; a local
                                   server may need none)
``FULLPASS_BEDROCK_ENDPOINT_URL``  Bedrock runtime endpoint override
``AWS_REGION``                     Bedrock region (or ``AWS_DEFAULT_REGION``;
                                   credentials: the standard AWS chain)
``FULLPASS_EMBEDDINGS_TIMEOUT``    seconds to wait for an answer (60)
``FULLPASS_EMBEDDINGS_CONNECT_TIMEOUT`` seconds to connect (10)
``FULLPASS_EMBEDDINGS_MAX_RETRIES`` retries of a failed request (4)
=================================  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Provider = Literal["local", "bedrock", "openai", "none"]
#: How a model is called: its request and answer shapes.
Family = Literal["cohere", "titan", "openai", "wordllama"]

OPENAI_DEFAULT_URL: Final = "https://api.openai.com/v1"
#: OpenAI's limit of inputs in one request.
OPENAI_MAX_BATCH: Final = 2048
#: 8191 tokens at ~3.7 characters a token; the provider halves a text the
#: service still finds too long, so this need not be exact.
OPENAI_MAX_INPUT_CHARS: Final = 30_000
#: OpenAI refuses requests over 300,000 tokens in all; at 2 characters a
#: token (dense text) this many characters stay under it.
OPENAI_MAX_REQUEST_CHARS: Final = 600_000


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What is known of one model: its sizes and limits."""

    provider: Provider
    family: Family
    model: str
    #: The size the model answers with when not asked for another.
    native_dimension: int | None
    #: Sizes it can be asked for; ``None``: any from 1 to the native size.
    dimensions: frozenset[int] | None
    default_batch: int
    max_batch: int
    max_input_chars: int
    #: List price, US dollars per million input tokens (None: not known).
    usd_per_million: float | None = None


def _cohere(model: str) -> ModelSpec:
    return ModelSpec("bedrock", "cohere", model, 1024, frozenset({1024}), 96, 96, 2048, 0.10)


#: The models whose limits are known, by provider and id.
CATALOGUE: Final[dict[tuple[Provider, str], ModelSpec]] = {
    (spec.provider, spec.model): spec
    for spec in (
        _cohere("cohere.embed-english-v3"),
        _cohere("cohere.embed-multilingual-v3"),
        ModelSpec(
            "bedrock",
            "titan",
            "amazon.titan-embed-text-v2:0",
            1024,
            frozenset({256, 512, 1024}),
            1,
            1,
            50_000,
            0.02,
        ),
        ModelSpec(
            "openai",
            "openai",
            "text-embedding-3-small",
            1536,
            None,
            256,
            OPENAI_MAX_BATCH,
            OPENAI_MAX_INPUT_CHARS,
            0.02,
        ),
        ModelSpec(
            "openai",
            "openai",
            "text-embedding-3-large",
            3072,
            None,
            256,
            OPENAI_MAX_BATCH,
            OPENAI_MAX_INPUT_CHARS,
            0.13,
        ),
        ModelSpec(
            "openai",
            "openai",
            "text-embedding-ada-002",
            1536,
            frozenset({1536}),
            256,
            OPENAI_MAX_BATCH,
            OPENAI_MAX_INPUT_CHARS,
            0.10,
        ),
        ModelSpec(
            "local",
            "wordllama",
            "wordllama-l2-supercat-256",
            256,
            frozenset({256}),
            256,
            4096,
            32_000,
            0.0,
        ),
    )
}

DEFAULT_MODELS: Final[dict[Provider, str]] = {
    "bedrock": "cohere.embed-english-v3",
    "openai": "text-embedding-3-small",
    "local": "wordllama-l2-supercat-256",
}


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """The configured model with every default applied and checked."""

    provider: Provider
    family: Family
    model: str
    dimension: int
    batch: int
    max_input_chars: int
    #: The model's own size, when known (OpenAI's ``dimensions`` is sent
    #: only when ``dimension`` differs from it).
    native_dimension: int | None
    #: List price, US dollars per million input tokens (None: not known).
    usd_per_million: float | None = None


class EmbeddingSettings(BaseSettings):
    """Environment-driven embeddings configuration (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    provider: Provider = Field(default="local", alias="FULLPASS_EMBEDDINGS")
    model: str | None = Field(default=None, alias="FULLPASS_EMBEDDINGS_MODEL")
    dimension: int | None = Field(default=None, ge=1, alias="FULLPASS_EMBEDDINGS_DIMENSION")
    batch: int | None = Field(default=None, ge=1, alias="FULLPASS_EMBEDDINGS_BATCH")
    concurrency: int = Field(default=4, ge=1, le=64, alias="FULLPASS_EMBEDDINGS_CONCURRENCY")
    max_input_chars: int | None = Field(
        default=None, ge=1, alias="FULLPASS_EMBEDDINGS_MAX_INPUT_CHARS"
    )

    url: str | None = Field(default=None, alias="FULLPASS_EMBEDDINGS_URL")
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FULLPASS_EMBEDDINGS_API_KEY", "OPENAI_API_KEY")
    )

    aws_region: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    bedrock_endpoint_url: str | None = Field(default=None, alias="FULLPASS_BEDROCK_ENDPOINT_URL")

    timeout: float = Field(default=60.0, gt=0, alias="FULLPASS_EMBEDDINGS_TIMEOUT")
    connect_timeout: float = Field(default=10.0, gt=0, alias="FULLPASS_EMBEDDINGS_CONNECT_TIMEOUT")
    max_retries: int = Field(default=4, ge=0, le=20, alias="FULLPASS_EMBEDDINGS_MAX_RETRIES")

    _resolved: ResolvedModel | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> EmbeddingSettings:
        self._resolved = None if self.provider == "none" else resolve_model(self)
        return self

    @property
    def resolved(self) -> ResolvedModel:
        """The configured model; ``FULLPASS_EMBEDDINGS=none`` has none (``ValueError``)."""
        if self._resolved is None:
            raise ValueError("embeddings are off (FULLPASS_EMBEDDINGS=none)")
        return self._resolved

    @property
    def enabled(self) -> bool:
        return self.provider != "none"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, without a trailing slash."""
        return (self.url or OPENAI_DEFAULT_URL).rstrip("/")

    def secrets(self) -> list[str]:
        """Secret values that must never reach a log line or an error message."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return [self.api_key.get_secret_value()]
        return []


def resolve_model(settings: EmbeddingSettings) -> ResolvedModel:
    """Apply defaults and check the combination (``ValueError`` naming the variable)."""
    provider = settings.provider
    if provider == "none":
        raise ValueError("embeddings are off (FULLPASS_EMBEDDINGS=none)")
    model = settings.model or DEFAULT_MODELS[provider]
    spec = CATALOGUE.get((provider, model))
    if spec is None:
        spec = _unlisted(provider, model, settings.dimension)
    dimension = _dimension(spec, settings.dimension)
    batch = settings.batch or spec.default_batch
    if batch > spec.max_batch:
        raise ValueError(
            f"FULLPASS_EMBEDDINGS_BATCH={batch} is more than {model} takes in one request "
            f"({spec.max_batch})"
        )
    max_chars = spec.max_input_chars
    if settings.max_input_chars is not None:
        if provider != "local" and settings.max_input_chars > spec.max_input_chars:
            raise ValueError(
                f"FULLPASS_EMBEDDINGS_MAX_INPUT_CHARS={settings.max_input_chars} is more than "
                f"{model} accepts ({spec.max_input_chars} characters)"
            )
        max_chars = settings.max_input_chars
    return ResolvedModel(
        provider,
        spec.family,
        model,
        dimension,
        batch,
        max_chars,
        spec.native_dimension,
        spec.usd_per_million,
    )


def _unlisted(provider: Provider, model: str, dimension: int | None) -> ModelSpec:
    """An OpenAI-compatible model not in the catalogue (a local server's, say)."""
    if provider != "openai":
        known = sorted(m for p, m in CATALOGUE if p == provider)
        raise ValueError(
            f"FULLPASS_EMBEDDINGS_MODEL={model} is not a supported {provider} embeddings model "
            f"(supported: {', '.join(known)})"
        )
    if dimension is None:
        raise ValueError(
            f"FULLPASS_EMBEDDINGS_DIMENSION must be set for {model}: its vector size is not known"
        )
    return ModelSpec(
        "openai",
        "openai",
        model,
        None,
        frozenset({dimension}),
        256,
        OPENAI_MAX_BATCH,
        OPENAI_MAX_INPUT_CHARS,
    )


def _dimension(spec: ModelSpec, wanted: int | None) -> int:
    if wanted is None:
        if spec.native_dimension is None:  # pragma: no cover - _unlisted requires it
            raise ValueError(f"FULLPASS_EMBEDDINGS_DIMENSION must be set for {spec.model}")
        return spec.native_dimension
    if spec.dimensions is not None and wanted not in spec.dimensions:
        allowed = "/".join(str(d) for d in sorted(spec.dimensions))
        raise ValueError(
            f"FULLPASS_EMBEDDINGS_DIMENSION={wanted} is not offered by {spec.model} "
            f"(it gives {allowed})"
        )
    if spec.native_dimension is not None and wanted > spec.native_dimension:
        raise ValueError(
            f"FULLPASS_EMBEDDINGS_DIMENSION={wanted} is more than {spec.model} gives "
            f"({spec.native_dimension})"
        )
    return wanted
