"""``fullpass health``: is the pipeline able to make progress?

Unhealthy when the database cannot be reached, when no worker has sent a
heartbeat recently, or when an import has not moved for longer than the
threshold. Meant for liveness probes and cron alerts: it exits non-zero.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import psycopg

from worker.db import connect, resolve_dsn
from worker.redact import error_text
from worker.settings import Settings

FRESH_WORKERS = """
SELECT count(*) AS n FROM public.procrastinate_workers
 WHERE last_heartbeat > now() - %(seconds)s * interval '1 second'
"""

STUCK_IMPORTS = """
SELECT id, status, stage, updated_at FROM public.imports
 WHERE status IN ('pending', 'processing')
   AND updated_at < now() - %(minutes)s * interval '1 minute'
 ORDER BY updated_at LIMIT 20
"""


@dataclass
class HealthReport:
    database: bool = False
    fresh_workers: int = 0
    stuck_imports: list[dict[str, Any]] = field(default_factory=list)
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
                    await conn.execute(FRESH_WORKERS, {"seconds": settings.stalled_seconds})
                ).fetchone()
                report.fresh_workers = int(row["n"]) if row else 0
                stuck = await (
                    await conn.execute(STUCK_IMPORTS, {"minutes": stuck_minutes})
                ).fetchall()
                report.stuck_imports = [dict(r) for r in stuck]
            except psycopg.Error as exc:
                report.problems.append(f"health query failed: {error_text(exc)}")
                return report
    except Exception as exc:
        report.problems.append(f"database unreachable: {error_text(exc)}")
        return report
    if report.fresh_workers == 0:
        report.problems.append(
            f"no worker has sent a heartbeat in the last {settings.stalled_seconds:g}s"
        )
    if report.stuck_imports:
        report.problems.append(
            f"{len(report.stuck_imports)} import(s) have not progressed for "
            f"{stuck_minutes:g} minutes"
        )
    return report
