"""Stage name → stage function (and lane function, for the stages that fan
out): the tables the runner dispatches on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from jobs.chunk import chunk
from jobs.context import PageSource, StageContext, StageResult
from jobs.download import download
from jobs.embed import embed, embed_lane
from jobs.extract import extract, extract_lane
from jobs.finalize import finalize
from jobs.memory import memory
from jobs.reduce import reduce
from jobs.regenerate import regenerate

StageFunction = Callable[[StageContext], Awaitable[StageResult]]
#: A lane of a fanned-out stage: works through the pages it takes.
LaneFunction = Callable[[StageContext, PageSource], Awaitable[None]]

STAGE_FUNCTIONS: dict[str, StageFunction] = {
    "download": download,
    "chunk": chunk,
    "extract": extract,
    "embed": embed,
    "reduce": reduce,
    "memory": memory,
    "regenerate": regenerate,
    "finalize": finalize,
}

LANE_FUNCTIONS: dict[str, LaneFunction] = {
    "extract": extract_lane,
    "embed": embed_lane,
}
