"""Settings, read once from the environment.

Every knob an operator may turn lives here, so the worker, the CLI and the
tests agree on names and defaults. Secrets are ``SecretStr`` so that a
settings object that ends up in a log line or a traceback never prints them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.embeddings.settings import EmbeddingSettings
from worker.errors import NeedsOperator
from worker.options import EnvOptions, Options

DEFAULT_MODEL = "claude-haiku-4-5-20251001"

#: The stages that call a language model, each with the variable that picks its
#: model (``FULLPASS_MODEL`` when unset).
MODEL_STAGES: Final = ("extract", "reduce", "memory", "regenerate")


class ModelPrice(BaseModel):
    """A model's list prices: US dollars per million tokens, and the batch discount.

    Cache writes (5-minute) cost 1.25x input and cache reads 0.1x unless given;
    Message Batches bill every token at ``batch`` times these prices.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float | None = Field(default=None, ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    batch: float = Field(default=0.5, gt=0, le=1)

    def cost(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
        batch: bool = False,
    ) -> float:
        """What these tokens cost, in US dollars (``input_tokens``: the uncached ones)."""
        write = self.cache_write if self.cache_write is not None else self.input * 1.25
        read = self.cache_read if self.cache_read is not None else self.input * 0.1
        usd = (
            input_tokens * self.input
            + output_tokens * self.output
            + cache_creation_tokens * write
            + cache_read_tokens * read
        ) / 1e6
        return usd * self.batch if batch else usd


#: The list prices of the models fullpass knows, by name without the date
#: suffix (``claude-haiku-4-5-20251001`` is priced as ``claude-haiku-4-5``).
#: ``FULLPASS_MODEL_PRICES`` adds models or overrides these.
MODEL_PRICES: Final[dict[str, ModelPrice]] = {
    "claude-opus-4-5": ModelPrice(input=5.0, output=25.0),
    "claude-opus-4-1": ModelPrice(input=15.0, output=75.0),
    "claude-opus-4": ModelPrice(input=15.0, output=75.0),
    "claude-sonnet-4-5": ModelPrice(input=3.0, output=15.0),
    "claude-sonnet-4": ModelPrice(input=3.0, output=15.0),
    "claude-3-7-sonnet": ModelPrice(input=3.0, output=15.0),
    "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0),
    "claude-3-5-haiku": ModelPrice(input=0.8, output=4.0),
    "claude-3-haiku": ModelPrice(input=0.25, output=1.25),
    # The offline provider's rules: no model, nothing billed.
    "offline-rules-v1": ModelPrice(input=0.0, output=0.0),
}

_DATED = re.compile(r"-(?:\d{8}|latest)$")


class Settings(BaseSettings):
    """Environment-driven configuration (see README, "Configuration")."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    home: Path = Field(default=Path.home() / ".fullpass", alias="FULLPASS_HOME")

    anthropic_api_key: SecretStr | None = Field(default=None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, alias="ANTHROPIC_BASE_URL")
    model: str = Field(default=DEFAULT_MODEL, alias="FULLPASS_MODEL")
    #: Per-stage models (None: ``FULLPASS_MODEL``).
    model_extract: str | None = Field(default=None, alias="FULLPASS_MODEL_EXTRACT")
    model_reduce: str | None = Field(default=None, alias="FULLPASS_MODEL_REDUCE")
    model_memory: str | None = Field(default=None, alias="FULLPASS_MODEL_MEMORY")
    model_regenerate: str | None = Field(default=None, alias="FULLPASS_MODEL_REGENERATE")
    #: Prices of models the built-in table lacks, or overrides of it (JSON:
    #: ``{"model": {"input": 1, "output": 5}}``, US dollars per million tokens).
    model_prices: dict[str, ModelPrice] = Field(default_factory=dict, alias="FULLPASS_MODEL_PRICES")
    llm: Literal["anthropic", "offline"] | None = Field(default=None, alias="FULLPASS_LLM")
    llm_timeout: float = Field(default=120.0, alias="FULLPASS_LLM_TIMEOUT")
    llm_max_retries: int = Field(default=4, alias="FULLPASS_LLM_MAX_RETRIES")
    #: The pipeline's knobs (``FULLPASS_<NAME>``): defaults every import may override.
    options: EnvOptions = Field(default_factory=lambda: EnvOptions())
    global_concurrency: int = Field(default=20, ge=1, le=500, alias="FULLPASS_GLOBAL_CONCURRENCY")
    #: The organisation's rate limits the fleet shares (None: no limit; worker/llm/budget.py).
    rate_rpm: int | None = Field(default=None, ge=1, alias="FULLPASS_RATE_RPM")
    rate_itpm: int | None = Field(default=None, ge=1, alias="FULLPASS_RATE_ITPM")
    rate_burst_seconds: float = Field(default=5.0, gt=0, le=60, alias="FULLPASS_RATE_BURST_SECONDS")
    rate_budget: str = Field(
        default="anthropic", min_length=1, max_length=100, alias="FULLPASS_RATE_BUDGET"
    )
    #: Embeddings of the chunks (``FULLPASS_EMBEDDINGS*``, see worker/embeddings/settings.py).
    embeddings: EmbeddingSettings = Field(default_factory=lambda: EmbeddingSettings())

    supabase_url: str | None = Field(default=None, alias="SUPABASE_URL")
    supabase_service_role_key: SecretStr | None = Field(
        default=None, alias="SUPABASE_SERVICE_ROLE_KEY"
    )
    storage_dir: Path | None = Field(default=None, alias="FULLPASS_STORAGE_DIR")

    alert_webhook: str | None = Field(default=None, alias="FULLPASS_ALERT_WEBHOOK")
    webhook_timeout: float = Field(default=10.0, gt=0, alias="FULLPASS_WEBHOOK_TIMEOUT")
    #: The completion callback (:mod:`worker.outbox`): where, signed with what, how hard to try.
    callback_url: str | None = Field(default=None, alias="FULLPASS_CALLBACK_URL")
    callback_secret: SecretStr | None = Field(default=None, alias="FULLPASS_CALLBACK_SECRET")
    callback_attempts: int = Field(default=12, ge=1, le=100, alias="FULLPASS_CALLBACK_ATTEMPTS")
    callback_timeout: float = Field(default=10.0, gt=0, le=300, alias="FULLPASS_CALLBACK_TIMEOUT")
    callback_retry_base_seconds: float = Field(
        default=5.0, ge=0, alias="FULLPASS_CALLBACK_RETRY_BASE_SECONDS"
    )

    worker_concurrency: int = Field(default=4, ge=1, alias="FULLPASS_WORKER_CONCURRENCY")
    max_attempts: int = Field(default=4, ge=1, alias="FULLPASS_MAX_ATTEMPTS")
    retry_base_seconds: int = Field(default=2, ge=0, alias="FULLPASS_RETRY_BASE_SECONDS")
    heartbeat_seconds: float = Field(default=5.0, gt=0, alias="FULLPASS_HEARTBEAT_SECONDS")
    stalled_seconds: float = Field(default=30.0, gt=0, alias="FULLPASS_STALLED_SECONDS")
    #: Whether a pass replaces the chunks the app wrote itself (no import_id):
    #: ``auto`` when that keeps at least as many chunks with an embedding.
    replace_app_chunks: Literal["auto", "always", "never"] = Field(
        default="auto", alias="FULLPASS_REPLACE_APP_CHUNKS"
    )
    maintenance_seconds: float = Field(default=30.0, gt=0, alias="FULLPASS_MAINTENANCE_SECONDS")
    log_format: Literal["text", "json"] = Field(default="text", alias="FULLPASS_LOG_FORMAT")
    log_level: str = Field(default="INFO", alias="FULLPASS_LOG_LEVEL")

    max_download_bytes: int = Field(default=2 * 1024**3, alias="FULLPASS_MAX_DOWNLOAD_BYTES")
    max_uncompressed_bytes: int = Field(
        default=8 * 1024**3, alias="FULLPASS_MAX_UNCOMPRESSED_BYTES"
    )
    max_zip_members: int = Field(default=10_000, alias="FULLPASS_MAX_ZIP_MEMBERS")
    max_zip_ratio: float = Field(default=200.0, alias="FULLPASS_MAX_ZIP_RATIO")

    @model_validator(mode="before")
    @classmethod
    def _route_options(cls, data: Any) -> Any:
        """``Settings(FULLPASS_CONCURRENCY=4)`` sets the option, and
        ``Settings(FULLPASS_EMBEDDINGS="none")`` the embeddings, as the environment would."""
        if not isinstance(data, dict):
            return data
        knobs, embeddings = {}, {}
        for key in list(data):
            if not isinstance(key, str):
                continue
            name = key.lower().removeprefix("fullpass_")
            if key.lower().startswith("fullpass_") and name in Options.model_fields:
                knobs[name] = data.pop(key)
            elif key.upper() in _EMBEDDING_VARIABLES:
                embeddings[key.upper()] = data.pop(key)
        if knobs:
            data["options"] = EnvOptions(**knobs)
        if embeddings:
            data["embeddings"] = EmbeddingSettings(**embeddings)
        return data

    @model_validator(mode="after")
    def _resolve_llm(self) -> Settings:
        if self.llm is None:
            self.llm = "anthropic" if self.anthropic_api_key else "offline"
        return self

    def stage_model(self, stage: str) -> str:
        """The model ``stage`` calls: its own setting, else ``FULLPASS_MODEL``."""
        if stage not in MODEL_STAGES:
            raise ValueError(f"stage {stage!r} calls no model")
        own: str | None = getattr(self, f"model_{stage}")
        return own or self.model

    def price_of(self, model: str) -> ModelPrice | None:
        """The list prices of ``model`` (None: unknown, set ``FULLPASS_MODEL_PRICES``)."""
        for name in (model, _DATED.sub("", model)):
            price = self.model_prices.get(name) or MODEL_PRICES.get(name)
            if price is not None:
                return price
        return None

    def unpriced_models(self) -> list[str]:
        """The configured models without a known price (their cost is recorded as unknown)."""
        models = dict.fromkeys(self.stage_model(s) for s in MODEL_STAGES)
        return [m for m in models if self.price_of(m) is None]

    @property
    def resolved_storage_dir(self) -> Path:
        """Where local storage paths resolve when Supabase Storage is not configured."""
        return self.storage_dir or self.home / "storage"

    @property
    def uses_supabase_storage(self) -> bool:
        return bool(self.supabase_url and self.supabase_service_role_key)

    def secrets(self) -> list[str]:
        """Secret values that must never reach a log line or an ``error`` column."""
        out = []
        for secret in (
            self.anthropic_api_key,
            self.supabase_service_role_key,
            self.callback_secret,
        ):
            if secret is not None and secret.get_secret_value():
                out.append(secret.get_secret_value())
        out += self.embeddings.secrets()
        if self.callback_secret is not None:
            # The signing key without its prefixes ("v1,", "whsec_"), should it show up alone.
            bare = self.callback_secret.get_secret_value().strip()
            bare = bare.removeprefix("v1,").removeprefix("whsec_")
            if bare and bare not in out:
                out.append(bare)
        return out


def _variables(model: type[BaseSettings]) -> frozenset[str]:
    names: set[str] = set()
    for field in model.model_fields.values():
        if isinstance(field.validation_alias, AliasChoices):
            names.update(str(c).upper() for c in field.validation_alias.choices)
        elif field.alias:
            names.add(field.alias.upper())
    return frozenset(names)


_EMBEDDING_VARIABLES = _variables(EmbeddingSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings from the environment; :class:`NeedsOperator` naming what is wrong.

    Only the variables and the problems are quoted, never the values given
    (one may be a key).
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise NeedsOperator(f"settings: {problems}") from None
