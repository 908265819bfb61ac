"""Housekeeping every worker does in the background, and once at start.

* **Imports left without a job.** A pending or processing import always has
  a queued or running job: every hand-over defers the next job in the same
  transaction. One without (a job aborted or deleted by hand, a bug) would
  never move again, so every worker looks for them and re-defers the first
  unfinished stage (``public.fullpass_repair_import``: same generation, so
  still fenced against anything older). An import that keeps losing its job
  fails after a few repairs instead of looping forever.
* **Scratch files.** Exports are copied under ``$FULLPASS_HOME/work/<import>``;
  a directory whose import is no longer pending or processing (complete,
  failed, cancelled, deleted) is removed, however the import ended.
* **Staged chunks of published passes.** A worker drops a pass's staged
  chunks right after publishing them (conversation_chunks holds their copy);
  those of a complete import that are still there a minute later (the worker
  stopped in between) are dropped here.
* **Callback events.** An event undelivered a day after it was written is
  given up, and finished ones are deleted after a week
  (:func:`worker.outbox.housekeeping`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import uuid
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from worker import outbox, queries
from worker.db import Conn
from worker.redact import error_text
from worker.settings import Settings

logger = logging.getLogger("fullpass.maintenance")

#: An import must have been without a job this long before it is repaired
#: (nothing legitimate leaves one without, even for an instant; this only keeps
#: the check clear of transactions that are committing as it runs).
ORPHAN_GRACE_SECONDS = 5.0
#: Repairs of one import (per generation) before it is failed instead.
MAX_REPAIRS = 5
#: How long after its import completed a published pass's staged chunks are
#: left to the worker that published them.
STAGING_GRACE_SECONDS = 60.0


def scratch_root(settings: Settings) -> Path:
    return settings.home / "work"


def workdir_for(settings: Settings, import_id: uuid.UUID) -> Path:
    """Where an import's scratch files live on this machine."""
    return scratch_root(settings) / str(import_id)


async def repair_orphans(pool: AsyncConnectionPool[Conn]) -> list[tuple[uuid.UUID, str]]:
    """Re-defer (or fail) every import left without a job; returns what was done."""
    done: list[tuple[uuid.UUID, str]] = []
    async with pool.connection() as conn:
        orphans = await (
            await conn.execute(queries.ORPHANED_IMPORTS, {"grace": ORPHAN_GRACE_SECONDS})
        ).fetchall()
        for orphan in orphans:
            row = await (
                await conn.execute(
                    queries.REPAIR_IMPORT,
                    {"import_id": orphan["import_id"], "max_repairs": MAX_REPAIRS},
                )
            ).fetchone()
            action = row["action"] if row else None
            if action is None:
                continue  # another worker repaired it, or a job appeared
            extra = {"import_id": str(orphan["import_id"]), "stage": orphan["stage"]}
            if action == "failed":
                logger.error(
                    "import had no job again after %d repairs: failed", MAX_REPAIRS, extra=extra
                )
            else:
                logger.warning(
                    "import was %s with no job queued or running (aborted or deleted job?):"
                    " re-deferred stage %s",
                    orphan["status"],
                    action,
                    extra=extra,
                )
            done.append((orphan["import_id"], action))
    return done


async def clean_scratch(pool: AsyncConnectionPool[Conn], settings: Settings) -> list[uuid.UUID]:
    """Remove the scratch directories of imports that are no longer running."""
    root = scratch_root(settings)
    if not root.is_dir():
        return []
    found: dict[uuid.UUID, Path] = {}
    for path in root.iterdir():
        try:
            found[uuid.UUID(path.name)] = path
        except ValueError:
            continue  # not ours
    if not found:
        return []
    async with pool.connection() as conn:
        rows = await (await conn.execute(queries.LIVE_IMPORTS, {"ids": list(found)})).fetchall()
    live = {r["id"] for r in rows}
    removed = [i for i in found if i not in live]
    for import_id in removed:
        await asyncio.to_thread(shutil.rmtree, found[import_id], True)
    if removed:
        logger.info("removed the scratch files of %d finished import(s)", len(removed))
    return removed


async def drop_leftover_staging(pool: AsyncConnectionPool[Conn]) -> list[uuid.UUID]:
    """Drop the staged chunks of complete imports (published: a copy is in
    conversation_chunks); returns the imports whose rows were dropped."""
    dropped: list[uuid.UUID] = []
    async with pool.connection() as conn:
        leftovers = await (
            await conn.execute(queries.LEFTOVER_STAGING, {"grace": STAGING_GRACE_SECONDS})
        ).fetchall()
        for row in leftovers:
            params = {"import_id": row["import_id"], "generation": row["generation"]}
            if (await conn.execute(queries.DROP_PUBLISHED_STAGING, params)).rowcount:
                dropped.append(row["import_id"])
    if dropped:
        logger.info("dropped the staged chunks of %d published import(s)", len(dropped))
    return dropped


async def run_once(pool: AsyncConnectionPool[Conn], settings: Settings) -> None:
    for step in (
        repair_orphans(pool),
        clean_scratch(pool, settings),
        drop_leftover_staging(pool),
        outbox.housekeeping(pool, settings),
    ):
        try:
            await step
        except Exception as exc:
            logger.warning("maintenance step failed: %s", error_text(exc))


async def loop(pool: AsyncConnectionPool[Conn], settings: Settings) -> None:
    """Run the housekeeping now, then every ``FULLPASS_MAINTENANCE_SECONDS`` (jittered)."""
    while True:
        await run_once(pool, settings)
        await asyncio.sleep(settings.maintenance_seconds * random.uniform(0.8, 1.2))
