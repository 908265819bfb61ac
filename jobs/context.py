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
from worker.options import Options
from worker.settings import Settings


@dataclass(frozen=True, slots=True)
class ImportRow:
    id: UUID
    user_id: UUID
    storage_path: str
    options: dict[str, Any]
    generation: int
    #: Drawn by this job's claim of the stage: the fencing token of every write.
    lease: UUID

    def fence(self, stage: str) -> dict[str, Any]:
        """The parameters every fenced statement takes."""
        return {
            "import_id": self.id,
            "generation": self.generation,
            "stage": stage,
            "lease": self.lease,
        }


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
    #: The environment's defaults with this import's ``options`` on top.
    options: Options
