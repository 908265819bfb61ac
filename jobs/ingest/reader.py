"""Read an export file into normalised conversations: the ingestion library's entry point.

``read_export`` ties the layers together: :mod:`~jobs.ingest.containers` finds
the JSON streams inside the file (ZIP, gzip or plain JSON, with size guards) and
:mod:`~jobs.ingest.formats` parses each one conversation at a time. Nothing is
collected along the way, so memory does not grow with the export.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from jobs.ingest.containers import Limits, open_json_streams
from jobs.ingest.formats import ReadStats, iter_conversations
from jobs.ingest.model import Conversation
from worker.errors import BadInput

__all__ = ["Limits", "ReadStats", "read_export"]


def read_export(path: Path, limits: Limits, stats: ReadStats) -> Iterator[Conversation]:
    """Yield every usable conversation of the export at ``path``, in file order.

    ``stats`` is filled in as the iterator advances, so it is complete only once
    the iterator is exhausted. Raises :class:`BadInput` when the export is
    unusable (not an export, corrupt, truncated, over a limit) or holds no
    conversation with any text; the message says what and where.
    """
    for stream in open_json_streams(path, limits):
        stats.container = stream.container
        stats.members.append(stream.name)
        yield from iter_conversations(stream, stats)
    if stats.conversations == 0:
        raise BadInput(_nothing_read(path, stats))


def _nothing_read(path: Path, stats: ReadStats) -> str:
    where = ", ".join(stats.members) or path.name
    if stats.entries == 0:
        return f"{where}: the export contains no conversations"
    if stats.skipped_conversations == stats.entries:
        example = f"; first: {stats.problems[0]}" if stats.problems else ""
        return (
            f"{where}: none of the {stats.entries:,} conversations could be read "
            f"(not ChatGPT, Claude or simplified conversations){example}"
        )
    return f"{where}: none of the {stats.entries:,} conversations holds any user or assistant text"
