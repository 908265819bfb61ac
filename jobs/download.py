"""Stage ``download``: fetch the export from storage into the import's scratch dir.

The checkpoint records where the file landed and its SHA-256. The next stage
may run on another machine: :func:`local_export` fetches the file again when
it is not on this one (or changed), which is cheap next to re-running the pass.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

from jobs.context import StageContext, StageResult
from jobs.outputs import DownloadOutput, Skipped
from worker.storage import fetch_export


async def download(ctx: StageContext) -> StageResult:
    if ctx.imp.storage_path is None:
        return StageResult(Skipped(skipped="backfill from the user's chunks: no export file"))
    fetched = await fetch_export(
        ctx.imp.storage_path, str(ctx.imp.user_id), ctx.settings, ctx.workdir
    )
    await ctx.store.report_progress(1, 1)
    return StageResult(
        DownloadOutput(
            path=str(fetched.path),
            size=fetched.size,
            sha256=fetched.sha256,
            source=fetched.source,
            host=socket.gethostname(),
        )
    )


async def local_export(ctx: StageContext) -> Path:
    """The export file on this machine, fetched again if missing or different."""
    pointer = ctx.outputs.get(DownloadOutput)
    path = Path(pointer.path)
    if path.is_file() and _sha256(path) == pointer.sha256:
        return path
    assert ctx.imp.storage_path is not None  # there was a file: download ran
    fetched = await fetch_export(
        ctx.imp.storage_path, str(ctx.imp.user_id), ctx.settings, ctx.workdir
    )
    refreshed: Path = fetched.path
    return refreshed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
