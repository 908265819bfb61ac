"""What a stage receives and what it hands back.

A stage is a plain async function ``(StageContext) -> StageResult`` over
data: the import row, its options, earlier stages' outputs (typed,
:mod:`jobs.outputs`), a model provider, and a :class:`~worker.store.StageStore`
for its reads and fenced writes (the map step checkpoints each chunk's facts
as they arrive). It returns its final writes in the :class:`StageResult`; the
runner applies them in the transaction that marks the stage done and defers
the next one, so a stage's effect is applied once or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.outputs import Outputs
from worker.embeddings import Embedder
from worker.llm.base import LLMProvider
from worker.options import Options
from worker.settings import Settings
from worker.store import (
    FinalWrite,
    ImportRow,
    Page,
    PageSource,
    PublishMemory,
    PublishPass,
    ReplaceChunks,
    StageExistingChunks,
    StageResult,
    StageStore,
)

__all__ = [
    "FinalWrite",
    "ImportRow",
    "Page",
    "PageSource",
    "PublishMemory",
    "PublishPass",
    "ReplaceChunks",
    "StageContext",
    "StageExistingChunks",
    "StageResult",
]


@dataclass(slots=True)
class StageContext:
    imp: ImportRow
    stage: str
    attempt: int
    settings: Settings
    #: The environment's defaults with this import's ``options`` on top.
    options: Options
    store: StageStore
    llm: LLMProvider
    #: The embeddings provider (None: embeddings are off).
    embedder: Embedder | None
    #: The outputs of the stages that have finished.
    outputs: Outputs
    #: Scratch directory of this import on this machine.
    workdir: Path
