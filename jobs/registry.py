"""Stage name → stage function: the one table the runner dispatches on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from jobs.chunk import chunk
from jobs.context import StageContext, StageResult
from jobs.download import download
from jobs.extract import extract
from jobs.finalize import finalize
from jobs.memory import memory
from jobs.reduce import reduce
from jobs.regenerate import regenerate

StageFunction = Callable[[StageContext], Awaitable[StageResult]]

STAGE_FUNCTIONS: dict[str, StageFunction] = {
    "download": download,
    "chunk": chunk,
    "extract": extract,
    "reduce": reduce,
    "memory": memory,
    "regenerate": regenerate,
    "finalize": finalize,
}
