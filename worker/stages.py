"""The pipeline's stage order: the Python twin of SQL ``public.fullpass_stages()``.

A test checks that both lists agree.
"""

from __future__ import annotations

STAGES: tuple[str, ...] = (
    "download",
    "chunk",
    "extract",
    "reduce",
    "memory",
    "regenerate",
    "finalize",
)
QUEUE = "imports"


def task_name(stage: str) -> str:
    return f"fullpass.{stage}"


def next_stage(stage: str) -> str | None:
    i = STAGES.index(stage)
    return STAGES[i + 1] if i + 1 < len(STAGES) else None
