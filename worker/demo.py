"""``fullpass demo`` (``make demo``): the whole pipeline on the bundled sample.

Migrates the database (the embedded server when ``DATABASE_URL`` is unset),
submits the sample export for a fresh demo user, runs a worker in this process
while showing live progress, and prints the MEMORY it produced.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from worker import migrate, operator
from worker.db import connect, resolve_dsn
from worker.service import run_worker
from worker.settings import Settings

SAMPLE = Path(__file__).parent / "samples" / "sample-export.zip"


async def run(settings: Settings, file: Path | None = None) -> int:
    console = operator.make_console()
    dsn = resolve_dsn(settings)
    console.print(f"[bold]database[/]: {'DATABASE_URL' if settings.database_url else dsn}")
    await asyncio.to_thread(migrate.upgrade, dsn)
    user = uuid.uuid4()
    export = file or SAMPLE
    # The bundled sample is small (40 conversations): build its memory anyway.
    options = {} if file else {"min_conversations": 0}
    import_id = await operator.submit(settings, export, user, "user-imports", options)
    console.print(f"[bold]submitted[/] {export.name} for user {user}: import {import_id}")
    worker = asyncio.create_task(
        run_worker(settings, dsn=dsn, install_signal_handlers=False, concurrency=2)
    )
    status = "pending"

    def alive() -> None:
        if worker.done():
            worker.result()  # surfaces the worker's error

    try:
        async with connect(dsn) as conn:
            progress = await operator.follow(conn, import_id, console, interval=0.5, alive=alive)
            status = progress["status"]
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    if status != "complete":
        console.print(f"[red]import ended {status}[/]")
        return 1
    text = await operator.memory(settings, import_id)
    console.rule("MEMORY")
    console.print(text or "", markup=False, highlight=False)
    console.rule()
    console.print(
        f"import {import_id} complete: inspect it with `fullpass status {import_id}` "
        "or query public.import_progress"
    )
    return 0
