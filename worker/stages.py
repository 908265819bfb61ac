"""The pipeline's stages as a graph: the Python twin of SQL ``public.fullpass_stages()``
and ``public.fullpass_stage_after()``.

``embed`` runs beside the map step (``extract``), both after ``chunk``;
``finalize`` waits for both. The database queues a stage once every stage it
comes after is done or skipped. ``STAGES`` is the display order (an import's
current stage is its first unfinished one). A test checks that both
definitions agree.
"""

from __future__ import annotations

from collections.abc import Mapping

STAGES: tuple[str, ...] = (
    "download",
    "chunk",
    "extract",
    "reduce",
    "memory",
    "regenerate",
    "embed",
    "finalize",
)
#: The stages each stage comes after.
AFTER: Mapping[str, tuple[str, ...]] = {
    "download": (),
    "chunk": ("download",),
    "extract": ("chunk",),
    "embed": ("chunk",),
    "reduce": ("extract",),
    "memory": ("reduce",),
    "regenerate": ("memory",),
    "finalize": ("regenerate", "embed"),
}
#: Stages whose work list may be spread over lanes (see :mod:`worker.runner`).
FANNED_OUT: tuple[str, ...] = ("extract", "embed")
QUEUE = "imports"
#: The task of a lane of a fanned-out stage.
LANE_TASK = "fullpass.lane"


def task_name(stage: str) -> str:
    return f"fullpass.{stage}"
