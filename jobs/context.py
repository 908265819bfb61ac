"""What a stage receives and what it hands back.

A stage is a plain async function ``(StageContext) -> StageResult``. It reads
its inputs (the import row, earlier stages' outputs, SQL, storage), may commit
its own fine-grained checkpoints (the map step commits each chunk's facts as
they arrive), and returns its final writes as ``StageResult.commit``: the
runner applies them in the same transaction that marks the stage done and
defers the next one, so a stage's effect is applied once or not at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from worker.db import Conn
from worker.llm.base import LLMProvider, Usage
from worker.settings import Settings

#: Per-import options that take numbers, and the range each is clamped to.
OPTION_BOUNDS: dict[str, tuple[float, float]] = {
    "concurrency": (1, 50),
    "pack_tokens": (1, 50_000),
    "reduce_max_tokens": (100, 1_000_000),
    "reduce_batch_tokens": (100, 200_000),
    "sample_conversations": (1, 1_000),
    "context_window_tokens": (20_000, 1_000_000),
    "batch_poll_seconds": (0.1, 3_600),
}


class StaleJob(Exception):
    """The import was requeued or cancelled while this job ran: stop, write nothing."""


@dataclass(frozen=True, slots=True)
class ImportRow:
    id: UUID
    user_id: UUID
    storage_path: str
    options: dict[str, Any]
    generation: int


@dataclass(slots=True)
class StageResult:
    output: dict[str, Any] = field(default_factory=dict)
    conversation_count: int | None = None
    chunk_count: int | None = None
    fact_count: int | None = None
    #: Final writes, run inside the transaction that completes the stage.
    commit: Callable[[Conn], Awaitable[None]] | None = None
    #: Best-effort work after that transaction (e.g. the completion callback).
    after_commit: Callable[[], Awaitable[None]] | None = None
    #: Not finished: save ``output`` and run this stage again in that many seconds.
    reschedule_in: float | None = None


@dataclass(slots=True)
class StageContext:
    imp: ImportRow
    stage: str
    attempt: int
    settings: Settings
    pool: AsyncConnectionPool[Conn]
    llm: LLMProvider
    #: ``import_stages.output`` of every finished stage, by stage name.
    outputs: dict[str, dict[str, Any]]
    #: Scratch directory of this import on this machine.
    workdir: Path
    report_progress: Callable[[int, int | None], Awaitable[None]]
    record_usage: Callable[[Usage], Awaitable[None]]
    ensure_current: Callable[[], Awaitable[None]]

    def option(self, name: str, default: Any) -> Any:
        """A per-import override from ``imports.options``, else the default.

        Users write ``options`` themselves, so numeric overrides are clamped to
        sane bounds (no one raises their own model spend or concurrency without
        limit) and a value of the wrong type falls back to the default.
        """
        value = self.imp.options.get(name, default)
        bounds = OPTION_BOUNDS.get(name)
        if bounds is None or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return default
        low, high = bounds
        return type(default)(min(max(value, low), high))
