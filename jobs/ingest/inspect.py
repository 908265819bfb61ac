"""Parse and chunk an export locally, without a database (``fullpass inspect``).

Operators use it to see what the pipeline would make of a file before (or
instead of) submitting it: the statistics, or the chunks themselves as JSON
lines for diffing and scripting.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from jobs.ingest.chunker import ChunkConfig, chunk_conversation
from jobs.ingest.reader import Limits, ReadStats, read_export

#: Chunk ids printed by ``inspect`` are stable for a file, but not those of any import.
INSPECT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "fullpass:inspect")


def inspect_export(
    path: Path, *, limits: Limits, config: ChunkConfig, jsonl: bool, out: TextIO
) -> ReadStats:
    """Read and chunk ``path``; print one JSON line per chunk (``jsonl``) or a summary.

    Raises :class:`jobs.errors.BadInput` like the pipeline would.
    """
    stats = ReadStats()
    started = time.perf_counter()
    now = datetime.now(UTC)
    chunks: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for conv in read_export(path, limits, stats):
        for chunk in chunk_conversation(conv, namespace=INSPECT_NAMESPACE, now=now, config=config):
            chunks[chunk.chunk_tier] += 1
            tokens[chunk.chunk_tier] += chunk.token_count
            if jsonl:
                record = {
                    "conversation_id": chunk.conversation_id,
                    "chunk_index": chunk.chunk_index,
                    "total_chunks": chunk.total_chunks,
                    "chunk_tier": chunk.chunk_tier,
                    "token_count": chunk.token_count,
                    "content": chunk.content,
                    "content_hash": chunk.content_hash,
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    if not jsonl:
        _summary(out, path, stats, chunks, tokens, time.perf_counter() - started)
    return stats


def _summary(
    out: TextIO,
    path: Path,
    stats: ReadStats,
    chunks: Counter[str],
    tokens: Counter[str],
    seconds: float,
) -> None:
    lines = [
        f"file:            {path}",
        f"container:       {stats.container} ({', '.join(stats.members)})",
        f"format:          {stats.format}",
        f"json bytes:      {stats.json_bytes:,}",
        f"conversations:   {stats.conversations:,}",
        f"messages:        {stats.messages:,}",
        f"skipped convs:   {stats.skipped_conversations:,}",
    ]
    for tier in sorted(chunks):
        lines.append(
            f"chunks ({tier}):  {chunks[tier]:,} chunks, {tokens[tier]:,} tokens "
            f"(~{tokens[tier] // max(chunks[tier], 1):,} per chunk)"
        )
    if stats.skipped_items:
        lines.append("skipped items:")
        width = max(len(reason) for reason in stats.skipped_items)
        for reason, count in sorted(stats.skipped_items.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason:<{width}}  {count:,}")
    if stats.problems:
        lines.append("problems:")
        lines.extend(f"  {problem}" for problem in stats.problems)
    lines.append(f"time:            {seconds:.2f}s")
    out.write("\n".join(lines) + "\n")
