"""Settings, read once from the environment.

Every knob an operator may turn lives here, so the worker, the CLI and the
tests agree on names and defaults. Secrets are ``SecretStr`` so that a
settings object that ends up in a log line or a traceback never prints them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.embeddings.settings import EmbeddingSettings
from worker.errors import NeedsOperator
from worker.options import EnvOptions, Options

DEFAULT_MODEL = "claude-haiku-4-5-20251001"


class Settings(BaseSettings):
    """Environment-driven configuration (see README, "Configuration")."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    home: Path = Field(default=Path.home() / ".fullpass", alias="FULLPASS_HOME")

    anthropic_api_key: SecretStr | None = Field(default=None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, alias="ANTHROPIC_BASE_URL")
    model: str = Field(default=DEFAULT_MODEL, alias="FULLPASS_MODEL")
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
