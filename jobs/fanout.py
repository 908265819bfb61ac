"""Spreading a stage's work list over the fleet.

A map-like stage (``extract``, ``embed``) whose work list is longer than one
page returns it split into pages (:func:`fan_out`) instead of working through
it; the runner queues ``fanout`` lanes, and every lane takes pages until none
is left (see :mod:`worker.runner`). A lane does per page exactly what the
stage would do inline, with the same checkpoints, fenced by the lane's own
lease. The stage runs again once every page is done and finds nothing left.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobs.context import StageContext, StageResult
from jobs.outputs import FannedOut


def fan_out(ctx: StageContext, todo: Sequence[str], total: int) -> StageResult | None:
    """``todo`` split into pages for lanes, or None when one worker should do it here.

    A list of one page or less, or an import limited to one worker
    (``fanout`` 1), is worked through inline.
    """
    size = ctx.options.page_chunks
    if ctx.options.fanout <= 1 or len(todo) <= size:
        return None
    pages = [list(todo[i : i + size]) for i in range(0, len(todo), size)]
    output = FannedOut(
        pages=len(pages),
        lanes=min(ctx.options.fanout, len(pages)),
        done=total - len(todo),
        total=total,
    )
    return StageResult(output, fan_out=pages)
