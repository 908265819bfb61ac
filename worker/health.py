"""``fullpass health``: is the pipeline able to make progress?

Unhealthy when the database cannot be reached, when no worker has sent a
heartbeat recently, when an import is pending or processing with no job
queued or running (reported at once: nothing will move it until a worker
repairs it), when an import has not moved for longer than the threshold, or
when the configured embeddings model's vectors do not fit
``conversation_chunks.embedding`` (no worker would start).
Meant for liveness probes and cron alerts: it exits non-zero.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import psycopg

from worker import maintenance, queries, search
from worker.db import connect, resolve_dsn
from worker.embeddings import check_dimension
from worker.errors import NeedsOperator
from worker.redact import error_text
from worker.settings import Settings


@dataclass
class HealthReport:
    database: bool = False
    fresh_workers: int = 0
    stuck_imports: list[dict[str, Any]] = field(default_factory=list)
    orphaned_imports: list[dict[str, Any]] = field(default_factory=list)
    #: The size of conversation_chunks.embedding (None: no column, or any size).
    embedding_dimension: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "database": self.database,
            "fresh_workers": self.fresh_workers,
            "stuck_imports": self.stuck_imports,
            "orphaned_imports": self.orphaned_imports,
            "embedding_dimension": self.embedding_dimension,
            "problems": self.problems,
        }


async def check(settings: Settings, *, stuck_minutes: float = 30.0) -> HealthReport:
    report = HealthReport()
    try:
        dsn = resolve_dsn(settings)
        async with asyncio.timeout(10), connect(dsn) as conn:
            report.database = True
            try:
                row = await (
                    await conn.execute(queries.FRESH_WORKERS, {"seconds": settings.stalled_seconds})
                ).fetchone()
                report.fresh_workers = int(row["n"]) if row else 0
                stuck = await (
                    await conn.execute(queries.STUCK_IMPORTS, {"minutes": stuck_minutes})
                ).fetchall()
                report.stuck_imports = [dict(r) for r in stuck]
                orphaned = await (
                    await conn.execute(
                        queries.ORPHANED_IMPORTS, {"grace": maintenance.ORPHAN_GRACE_SECONDS}
                    )
                ).fetchall()
                report.orphaned_imports = [dict(r) for r in orphaned]
                report.embedding_dimension = await search.column_dimension(conn)
            except psycopg.Error as exc:
                report.problems.append(f"health query failed: {error_text(exc)}")
                return report
    except Exception as exc:
        report.problems.append(f"database unreachable: {error_text(exc)}")
        return report
    if report.embedding_dimension is not None:
        try:
            check_dimension(settings.embeddings, report.embedding_dimension)
        except NeedsOperator as exc:
            report.problems.append(str(exc))
    if report.fresh_workers == 0:
        report.problems.append(
            f"no worker has sent a heartbeat in the last {settings.stalled_seconds:g}s"
        )
    if report.orphaned_imports:
        report.problems.append(
            f"{len(report.orphaned_imports)} import(s) are pending or processing with no job"
            " queued or running (a worker repairs them within"
            f" {settings.maintenance_seconds:g}s)"
        )
    if report.stuck_imports:
        report.problems.append(
            f"{len(report.stuck_imports)} import(s) have not progressed for "
            f"{stuck_minutes:g} minutes"
        )
    return report
