"""What the CLI does, as async functions over the public SQL contract."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg.types.json import Jsonb
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from worker import queries
from worker.db import connect, resolve_dsn
from worker.settings import Settings

TERMINAL = ("complete", "failed", "cancelled")


class OperatorError(Exception):
    """A database refusal worth showing as is (unknown import, import in progress, ...)."""


async def submit(
    settings: Settings, file: Path, user_id: UUID, bucket: str, options: dict[str, Any]
) -> UUID:
    """Store ``file`` in the user's folder and insert the import row (the trigger queues it)."""
    if not file.is_file():
        raise OperatorError(f"no such file: {file}")
    storage_path = f"{bucket}/{user_id}/{file.name}"
    await store(settings, file, storage_path)
    return await _insert(settings, user_id, storage_path, "export", options)


async def backfill(settings: Settings, user_id: UUID, options: dict[str, Any]) -> UUID:
    """Start a pass over the chunks the user already has (no export file)."""
    return await _insert(settings, user_id, None, "chunks", options)


async def _insert(
    settings: Settings,
    user_id: UUID,
    storage_path: str | None,
    source: str,
    options: dict[str, Any],
) -> UUID:
    params = {
        "user_id": user_id,
        "storage_path": storage_path,
        "source": source,
        "options": Jsonb(options),
    }
    async with connect(resolve_dsn(settings)) as conn:
        try:
            row = await (await conn.execute(queries.INSERT_IMPORT, params)).fetchone()
        except (psycopg.errors.UniqueViolation, psycopg.errors.InvalidParameterValue) as exc:
            raise OperatorError(exc.diag.message_primary or str(exc)) from None
    assert row is not None
    return UUID(str(row["id"]))


async def store(settings: Settings, file: Path, storage_path: str) -> None:
    """Put the export where the download stage will look for it."""
    if settings.uses_supabase_storage:
        assert settings.supabase_url and settings.supabase_service_role_key
        key = settings.supabase_service_role_key.get_secret_value()
        url = f"{settings.supabase_url.rstrip('/')}/storage/v1/object/{storage_path}"
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
            with file.open("rb") as f:
                response = await client.post(
                    url,
                    content=f.read(),
                    headers={
                        "Authorization": f"Bearer {key}",
                        "apikey": key,
                        "x-upsert": "true",
                        "Content-Type": "application/octet-stream",
                    },
                )
            if not response.is_success:
                raise OperatorError(f"storage upload failed: HTTP {response.status_code}")
        return
    target = settings.resolved_storage_dir / storage_path
    target.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(shutil.copyfile, file, target)


async def requeue(settings: Settings, import_id: UUID, from_stage: str | None) -> int:
    return int(
        await _call(settings, queries.REQUEUE, {"import_id": import_id, "stage": from_stage})
    )


async def cancel(settings: Settings, import_id: UUID) -> bool:
    return bool(await _call(settings, queries.CANCEL, {"import_id": import_id}))


async def memory(settings: Settings, import_id: UUID) -> str | None:
    async with connect(resolve_dsn(settings)) as conn:
        row = await (await conn.execute(queries.MEMORY_OF, {"import_id": import_id})).fetchone()
    return None if row is None else row["memory_md"]


async def _call(settings: Settings, sql: Any, params: dict[str, Any]) -> Any:
    async with connect(resolve_dsn(settings)) as conn:
        try:
            row = await (await conn.execute(sql, params)).fetchone()
        except psycopg.Error as exc:
            diag = exc.diag
            text = diag.message_primary or str(exc)
            if diag.message_hint:
                text += f" ({diag.message_hint})"
            raise OperatorError(text) from None
    assert row is not None
    return next(iter(row.values()))


# --- status ---------------------------------------------------------------


async def status(settings: Settings, import_id: UUID | None, *, watch: bool, limit: int) -> int:
    console = make_console()
    async with connect(resolve_dsn(settings)) as conn:
        if import_id is None:
            rows = await (await conn.execute(queries.PROGRESS_RECENT, {"limit": limit})).fetchall()
            console.print(imports_table(rows))
            return 0
        progress, stages = await snapshot(conn, import_id)
        if progress is None:
            raise OperatorError(f"import {import_id} does not exist")
        if not watch:
            console.print(import_panel(progress, stages))
            return 0 if progress["status"] != "failed" else 1
        progress = await follow(conn, import_id, console, interval=1.0, first=(progress, stages))
        return 0 if progress["status"] == "complete" else 1


async def follow(
    conn: Any,
    import_id: UUID,
    console: Console,
    *,
    interval: float,
    alive: Callable[[], None] | None = None,
    first: tuple[dict[str, Any], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Show an import's progress until it ends; return its last progress row.

    In a terminal the panel redraws in place, and anything written to stdout or
    stderr meanwhile (log lines) goes above it. Piped, it prints one plain line
    each time the status, stage or whole percentage changes, then the final
    panel once: a log file never fills with redraw codes. ``alive`` is called on
    each tick (the demo uses it to surface a failed in-process worker).
    ``first``: the import's progress and stages when the caller has just read them.
    """
    progress, stages = first or await snapshot(conn, import_id)
    assert progress is not None
    if console.is_terminal:
        with Live(
            import_panel(progress, stages),
            console=console,
            refresh_per_second=4,
            redirect_stdout=True,
            redirect_stderr=True,
        ) as live:
            while progress["status"] not in TERMINAL:
                if alive is not None:
                    alive()
                await asyncio.sleep(interval)
                progress, stages = await snapshot(conn, import_id)
                assert progress is not None
                live.update(import_panel(progress, stages))
        return progress
    last: tuple[Any, ...] | None = None
    while True:
        seen = (progress["status"], progress["stage"], int(float(progress["progress"] or 0)))
        if seen != last:
            console.print(progress_line(progress), markup=False, highlight=False, soft_wrap=True)
            last = seen
        if progress["status"] in TERMINAL:
            break
        if alive is not None:
            alive()
        await asyncio.sleep(interval)
        progress, stages = await snapshot(conn, import_id)
        assert progress is not None
    console.print(import_panel(progress, stages))
    return progress


def progress_line(progress: dict[str, Any]) -> str:
    """One plain line: time, status, stage, whole percentage (what a log needs)."""
    pct = int(float(progress["progress"] or 0))
    stage = f"stage {progress['stage_index'] or '-'}/{progress['stage_count']} {progress['stage']}"
    return f"{datetime.now():%H:%M:%S} {progress['status']:<10} {stage:<22} {pct:3d}%"


def make_console() -> Console:
    """A console; piped output gets a wide one so ids and tables are never cut."""
    return Console() if sys.stdout.isatty() else Console(width=160)


async def snapshot(
    conn: Any, import_id: UUID
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    progress = await (await conn.execute(queries.PROGRESS_ONE, {"import_id": import_id})).fetchone()
    stages = await (await conn.execute(queries.STAGES_OF, {"import_id": import_id})).fetchall()
    return progress, stages


_STATUS_STYLE = {
    "pending": "dim",
    "queued": "dim",
    "running": "cyan",
    "processing": "cyan",
    "done": "green",
    "complete": "green",
    "failed": "red",
    "cancelled": "yellow",
    "skipped": "dim",
}


def import_panel(progress: dict[str, Any], stages: list[dict[str, Any]]) -> Group:
    pct = float(progress["progress"] or 0)
    status = progress["status"]
    head = Table.grid(padding=(0, 1))
    head.add_row(
        f"[bold]{progress['import_id']}[/]",
        f"[{_STATUS_STYLE.get(status, 'default')}]{status}[/]",
        f"stage {progress['stage_index'] or '-'}/{progress['stage_count']} {progress['stage']}",
        f"{pct:5.1f}%",
        f"eta {progress['eta']:%H:%M:%S}" if progress["eta"] and status not in TERMINAL else "",
    )
    # A progress bar renders without a line end: alone in a grid row it keeps
    # the stage table on lines of its own.
    bar = Table.grid()
    bar.add_row(ProgressBar(total=100, completed=pct, width=60))
    table = Table(show_edge=False, pad_edge=False, box=None)
    for col in ("stage", "status", "items", "attempts", "model", "tokens in/out", "cost", "error"):
        table.add_column(col)
    for s in stages:
        items = (
            f"{s['items_done']}/{s['items_total']}"
            if s["items_total"]
            else str(s["items_done"] or "")
        )
        if s.get("items_reused"):
            items += f" ({s['items_reused']} reused)"
        table.add_row(
            s["stage"],
            f"[{_STATUS_STYLE.get(s['status'], 'default')}]{s['status']}[/]",
            items,
            str(s["attempts"]),
            s.get("model") or "",
            f"{s['input_tokens']}/{s['output_tokens']}",
            usd(s.get("cost_usd"), s["input_tokens"] + s["output_tokens"] > 0),
            (s["error"] or "")[:80],
        )
    parts: list[Any] = [head, bar, table]
    if "cost_usd" in progress:
        cost = f"cost {usd(progress['cost_usd'])}"
        if progress.get("spent_cost_usd") != progress["cost_usd"]:
            cost += f" (every run: {usd(progress.get('spent_cost_usd'))})"
        parts.append(cost)
    if progress["error"]:
        parts.append(f"[red]error:[/] {progress['error']}")
    return Group(*parts)


def usd(value: Any, spent: bool = True) -> str:
    """A cost as shown: dollars, or "unknown" (a model without a price)."""
    if value is None:
        return "unknown" if spent else ""
    return f"${float(value):.4f}"


def imports_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="imports")
    table.add_column("import", no_wrap=True, min_width=36)
    for col in ("user", "status", "stage", "progress", "tokens in/out", "cost", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["import_id"]),
            str(r["user_id"])[:8],
            f"[{_STATUS_STYLE.get(r['status'], 'default')}]{r['status']}[/]",
            r["stage"] or "",
            f"{float(r['progress'] or 0):5.1f}%",
            f"{r['input_tokens']}/{r['output_tokens']}",
            usd(r.get("cost_usd")),
            f"{r['created_at']:%Y-%m-%d %H:%M}",
        )
    return table
