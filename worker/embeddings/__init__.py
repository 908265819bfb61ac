"""Embeddings for conversation chunks: one protocol, three providers.

``make_embedder(EmbeddingSettings())`` builds the configured provider
(``local`` WordLlama by default, Amazon ``bedrock``, or any ``openai``
-compatible API), or ``None`` when embeddings are off. The vector size is
known from the settings alone (:func:`expected_dimension`), so the worker
can refuse to start against a column of another size before it loads a
model or calls a service (:func:`check_dimension`).
"""

from __future__ import annotations

from typing import Any

from worker.embeddings.base import Embedded, Embedder, EmbedUsage, InputKind
from worker.embeddings.settings import EmbeddingSettings, ResolvedModel
from worker.errors import NeedsOperator


def make_embedder(settings: EmbeddingSettings, **knobs: Any) -> Embedder | None:
    """The configured provider, or ``None`` for ``FULLPASS_EMBEDDINGS=none``.

    Nothing is loaded or called yet (the local model loads on first use);
    a Bedrock provider without a region or credentials raises
    :class:`NeedsOperator`. ``knobs`` go to the network providers (the
    backoff knobs of :class:`~worker.embeddings.remote.RemoteEmbedder`, for
    tests); the local one, which has no retries, takes only ``threads``.
    Providers are imported here so that a worker without Bedrock never
    imports boto3.
    """
    if not settings.enabled:
        return None
    provider = settings.resolved.provider
    if provider == "bedrock":
        from worker.embeddings.bedrock import BedrockEmbedder

        return BedrockEmbedder(settings, **knobs)
    if provider == "openai":
        from worker.embeddings.openai import OpenAIEmbedder

        return OpenAIEmbedder(settings, **knobs)
    from worker.embeddings.local import LocalEmbedder

    return LocalEmbedder(settings, threads=int(knobs.get("threads", 1)))


def expected_dimension(settings: EmbeddingSettings) -> int:
    """The size of the vectors the configured model gives, from the settings alone.

    ``ValueError`` when embeddings are off (there is no model to ask about).
    """
    return settings.resolved.dimension


def check_dimension(settings: EmbeddingSettings, column_dimension: int) -> None:
    """Refuse (:class:`NeedsOperator`) a model whose vectors do not fit the column.

    Called at startup with the size of ``conversation_chunks.embedding``;
    does nothing when embeddings are off.
    """
    if not settings.enabled:
        return
    resolved = settings.resolved
    if resolved.dimension == column_dimension:
        return
    raise NeedsOperator(
        f"the embeddings model {resolved.model} ({resolved.provider}) gives "
        f"{resolved.dimension}-dimension vectors but conversation_chunks.embedding holds "
        f"{column_dimension}: set FULLPASS_EMBEDDINGS_MODEL / FULLPASS_EMBEDDINGS_DIMENSION "
        f"to match the column, or migrate the column (and re-embed) to {resolved.dimension}"
    )


__all__ = [
    "EmbedUsage",
    "Embedded",
    "Embedder",
    "EmbeddingSettings",
    "InputKind",
    "ResolvedModel",
    "check_dimension",
    "expected_dimension",
    "make_embedder",
]
