"""Search over a user's conversation chunks, and the embedding column it relies on.

The database does the searching (``public.search_chunks``, revision 0005:
full text, and cosine similarity where pgvector is installed, fused by
reciprocal rank); this module finds out what the ``embedding`` column holds,
refuses an embeddings model whose vectors would not fit it, and runs a search
the way the app does (``fullpass search``).

The column's size is read from the catalogue, never assumed: fullpass creates
it at the configured model's size (``fullpass migrate``), but an app's own
column keeps whatever size the app gave it, and a worker embedding chunks
for it must agree.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from worker import queries
from worker.db import Conn, connect, resolve_dsn
from worker.embeddings import (
    EmbeddingSettings,
    check_dimension,
    expected_dimension,
    make_embedder,
)
from worker.errors import NeedsOperator
from worker.settings import Settings

#: pgvector's largest vector.
MAX_DIMENSION = 16_000
#: What ``search_chunks`` returns at most, whatever ``match_count`` asks.
MAX_MATCHES = 200


def embedding_settings() -> EmbeddingSettings:
    """The ``FULLPASS_EMBEDDINGS*`` settings, or :class:`NeedsOperator` naming what is wrong.

    Only the fields and messages are quoted, never the values given (one
    may be a key).
    """
    try:
        return EmbeddingSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise NeedsOperator(f"embeddings settings: {problems}") from None


def configured_dimension(settings: EmbeddingSettings | None = None) -> int | None:
    """The configured model's vector size; ``None`` when embeddings are off."""
    settings = settings or embedding_settings()
    return expected_dimension(settings) if settings.enabled else None


async def column_dimension(conn: Conn) -> int | None:
    """The size of ``conversation_chunks.embedding``.

    ``None`` when there is no such column (no pgvector), when it is not a
    pgvector ``vector``, or when it was declared without a size (any fits).
    """
    row = await (await conn.execute(queries.EMBEDDING_COLUMN)).fetchone()
    if row is None or row["type"] != "vector" or row["dimension"] is None:
        return None
    dimension = int(row["dimension"])
    return dimension if dimension > 0 else None


async def check_embedding_column(
    source: AsyncConnectionPool[Conn] | Conn, settings: EmbeddingSettings | None = None
) -> int | None:
    """Refuse (:class:`NeedsOperator`) a model whose vectors do not fit the column.

    Returns the column's size (``None``: no column, or any size fits). Run
    when a worker starts: embedding a whole import only to fail every write
    would waste the model calls and leave the import failed.
    """
    if isinstance(source, AsyncConnectionPool):
        async with source.connection() as conn:
            dimension = await column_dimension(conn)
    else:
        dimension = await column_dimension(source)
    if dimension is not None:
        check_dimension(settings or embedding_settings(), dimension)
    return dimension


@dataclass(frozen=True, slots=True)
class Hit:
    """One row of ``search_chunks``."""

    id: UUID
    conversation_id: str | None
    title: str | None
    content: str | None
    created_at: datetime | None
    chunk_tier: str | None
    #: ``ts_rank`` where the chunk matches the text query.
    text_rank: float | None
    #: Cosine similarity to the query's embedding, where both exist.
    vector_similarity: float | None
    #: Reciprocal-rank fusion of the two rankings (higher is better).
    score: float

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["id"] = str(self.id)
        out["created_at"] = self.created_at.isoformat() if self.created_at else None
        return out


async def search(
    settings: Settings,
    user_id: UUID,
    text: str,
    *,
    k: int = 10,
    tiers: Sequence[str] | None = None,
    embed: bool = True,
) -> list[Hit]:
    """Search ``user_id``'s chunks as the app does: the query embedded, then ``search_chunks``.

    The query is embedded with the configured provider when there is one and
    the column exists (text only otherwise); a model of another size than the
    column is refused as at worker start.
    """
    async with connect(resolve_dsn(settings)) as conn:
        vector: list[float] | None = None
        if embed:
            emb = settings.embeddings
            dimension = await check_embedding_column(conn, emb)
            embedder = make_embedder(emb) if dimension is not None else None
            if embedder is not None:
                try:
                    vector = await embedder.embed_query(text)
                finally:
                    await embedder.aclose()
        rows = await (
            await conn.execute(
                queries.SEARCH_CHUNKS,
                {
                    "user_id": user_id,
                    "query": text,
                    # pgvector's text form; the function's parameter type decides.
                    "embedding": _vector_text(vector) if vector is not None else None,
                    "k": k,
                    "tiers": list(tiers) if tiers else None,
                },
            )
        ).fetchall()
    return [Hit(**row) for row in rows]


def _vector_text(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w{3,}")


def excerpt(content: str | None, query: str, width: int = 100) -> str:
    """One line of ``content`` around the first word of ``query`` it contains."""
    flat = _SPACE.sub(" ", content or "").strip()
    lower = flat.lower()
    found = [p for w in _WORD.findall(query.lower()) if (p := lower.find(w)) >= 0]
    start = max(0, min(found) - width // 4) if found else 0
    piece = flat[start : start + width]
    prefix = "…" if start > 0 else ""
    suffix = "…" if start + width < len(flat) else ""
    return prefix + piece + suffix


def render_table(hits: Sequence[Hit], query: str) -> str:
    """A compact table: score, date, title, a one-line excerpt."""
    lines = [f"{'score':>7}  {'date':10}  {'title':28}  excerpt"]
    for hit in hits:
        date = hit.created_at.date().isoformat() if hit.created_at else "-"
        title = textwrap.shorten(_SPACE.sub(" ", hit.title or "-"), 28, placeholder="…")
        lines.append(f"{hit.score:7.4f}  {date:10}  {title:28}  {excerpt(hit.content, query)}")
    return "\n".join(lines)


def render_jsonl(hits: Sequence[Hit]) -> str:
    """One JSON object per hit, every column of ``search_chunks``."""
    return "\n".join(json.dumps(hit.as_json(), ensure_ascii=False) for hit in hits)
