"""``fullpass``: the operator's command line.

Every command that touches the database goes through the same SQL the app
uses (insert a row, read ``import_progress``, call ``requeue_import`` /
``cancel_import``), so the CLI is a convenience, never a second code path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from worker.settings import Settings, get_settings
from worker.stages import STAGES


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    handler = _COMMANDS[args.command]
    try:
        settings = get_settings()
        from worker.logs import setup_logging

        setup_logging(settings)
        return int(handler(settings, args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from worker.errors import NeedsOperator
        from worker.operator import OperatorError

        if not isinstance(exc, CliError | OperatorError | NeedsOperator):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


class CliError(Exception):
    """A user-facing failure: printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fullpass",
        description="Full pass over a chat-history export: chunks, MEMORY and persona sections.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("migrate", help="apply database migrations (alembic + procrastinate schema)")
    m.add_argument(
        "--downgrade",
        nargs="?",
        const="base",
        default=None,
        metavar="REVISION",
        help="downgrade to REVISION instead; without one, to base: remove fullpass entirely",
    )

    w = sub.add_parser("worker", help="run a worker until SIGTERM/SIGINT")
    w.add_argument("--concurrency", type=int, default=None, help="jobs run at once")
    w.add_argument("--queues", default=None, help="comma-separated queues (default: imports)")

    s = sub.add_parser(
        "submit",
        help="store an export and start a full pass for a user (or --from-chunks: a pass over"
        " the chunks the user already has)",
    )
    s.add_argument("file", type=Path, nargs="?")
    s.add_argument(
        "--from-chunks",
        action="store_true",
        help="no export: build MEMORY and the sections from the user's existing chunks",
    )
    s.add_argument("--user", required=True, help="the user's UUID")
    s.add_argument("--bucket", default="user-imports")
    s.add_argument("--options", default="{}", help="JSON object of per-import overrides")

    st = sub.add_parser("status", help="show progress (all recent imports, or one)")
    st.add_argument("import_id", nargs="?")
    st.add_argument("--watch", action="store_true", help="refresh until the import finishes")
    st.add_argument("--limit", type=int, default=20)

    r = sub.add_parser("requeue", help="run an import again from its failed stage, or --from")
    r.add_argument("import_id")
    r.add_argument("--from", dest="from_stage", choices=STAGES, default=None)

    c = sub.add_parser("cancel", help="cancel a pending or running import")
    c.add_argument("import_id")

    i = sub.add_parser("inspect", help="parse and chunk an export locally (no database)")
    i.add_argument("file", type=Path)
    i.add_argument("--jsonl", action="store_true", help="print every chunk as a JSON line")

    h = sub.add_parser("health", help="exit non-zero when the pipeline is unhealthy")
    h.add_argument("--stuck-minutes", type=float, default=30.0)

    se = sub.add_parser("search", help="search a user's chunks as the app does (search_chunks)")
    se.add_argument("query")
    se.add_argument("--user", required=True, help="the user's UUID")
    se.add_argument("-k", type=int, default=10, help="hits to show, 1 to 200 (default 10)")
    se.add_argument(
        "--tier",
        dest="tiers",
        action="append",
        default=None,
        metavar="TIER",
        help="only chunks of this tier (micro, medium, macro); repeatable; default all",
    )
    se.add_argument("--jsonl", action="store_true", help="print every hit as a JSON line")

    sub.add_parser("memory", help="print the MEMORY of an import's user").add_argument("import_id")
    d = sub.add_parser("demo", help="run the bundled sample export end to end")
    d.add_argument("--file", type=Path, default=None, help="another export to use")
    return p


def _uuid(value: str, what: str = "import id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CliError(f"not a valid {what}: {value!r}") from None


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from worker import migrate
    from worker.db import resolve_dsn

    dsn = resolve_dsn(settings)
    if args.downgrade is not None:
        return _downgrade(dsn, args.downgrade)
    migrate.upgrade(dsn)
    print(f"database at revision {migrate.current(dsn)}")
    return 0


def _downgrade(dsn: str, target: str) -> int:
    """Downgrade to ``target`` ("base": nothing of fullpass left), refusing what is not ours.

    A database without fullpass, or at a revision fullpass does not know (an
    ``alembic_version`` of the app's own, or of a newer fullpass), is left alone:
    alembic would otherwise fail half-way or run the wrong downgrades.
    """
    from worker import migrate

    known = migrate.revisions()
    current = migrate.current(dsn)
    if current is None:
        raise CliError("the database is not at a fullpass revision: nothing to downgrade")
    if current not in known:
        raise CliError(
            f"the database is at revision {current!r}, which is not one of fullpass's"
            f" ({', '.join(known)}): refusing to downgrade"
        )
    if target != "base" and target not in known:
        raise CliError(f"unknown revision {target!r}: expected base or one of {', '.join(known)}")
    if target != "base" and known.index(target) > known.index(current):
        raise CliError(f"revision {target} is newer than {current}: use `fullpass migrate`")
    migrate.downgrade(dsn, target)
    reached = migrate.current(dsn)
    if reached is None:
        print("database at revision base: fullpass removed")
    else:
        print(f"database at revision {reached}")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.service import run_worker

    queues = args.queues.split(",") if args.queues else None
    asyncio.run(run_worker(settings, concurrency=args.concurrency, queues=queues))
    return 0


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    from worker import operator

    user = _uuid(args.user, "user id")
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as exc:
        raise CliError(f"--options is not JSON: {exc}") from None
    if args.from_chunks == (args.file is not None):
        raise CliError("give an export file, or --from-chunks (not both)")
    if args.from_chunks:
        import_id = asyncio.run(operator.backfill(settings, user, options))
    else:
        import_id = asyncio.run(operator.submit(settings, args.file, user, args.bucket, options))
    print(import_id)
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from worker import operator

    import_id = _uuid(args.import_id) if args.import_id else None
    return asyncio.run(operator.status(settings, import_id, watch=args.watch, limit=args.limit))


def cmd_requeue(settings: Settings, args: argparse.Namespace) -> int:
    from worker import operator

    job = asyncio.run(operator.requeue(settings, _uuid(args.import_id), args.from_stage))
    print(f"requeued as job {job}")
    return 0


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    from worker import operator

    cancelled = asyncio.run(operator.cancel(settings, _uuid(args.import_id)))
    print("cancelled" if cancelled else "nothing to cancel: the import has already finished")
    return 0


def cmd_inspect(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.ingest.chunker import ChunkConfig
    from jobs.ingest.inspect import inspect_export
    from jobs.ingest.reader import Limits
    from worker.errors import BadInput

    if not args.file.is_file():
        raise CliError(f"no such file: {args.file}")
    try:
        inspect_export(
            args.file,
            limits=Limits.from_settings(settings),
            config=ChunkConfig(),
            jsonl=args.jsonl,
            out=sys.stdout,
        )
    except BadInput as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    from worker import health

    report = asyncio.run(health.check(settings, stuck_minutes=args.stuck_minutes))
    print(json.dumps(report.as_dict(), indent=2, default=str))
    return 0 if report.ok else 1


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from worker import search

    user = _uuid(args.user, "user id")
    if not 1 <= args.k <= search.MAX_MATCHES:
        raise CliError(f"-k must be between 1 and {search.MAX_MATCHES}, not {args.k}")
    try:
        hits = asyncio.run(search.search(settings, user, args.query, k=args.k, tiers=args.tiers))
    except psycopg.errors.UndefinedFunction:
        raise CliError("public.search_chunks does not exist: run `fullpass migrate`") from None
    if args.jsonl:
        if hits:
            print(search.render_jsonl(hits))
    elif hits:
        print(search.render_table(hits, args.query))
    else:
        print("no matches")
    return 0


def cmd_memory(settings: Settings, args: argparse.Namespace) -> int:
    from worker import operator

    text = asyncio.run(operator.memory(settings, _uuid(args.import_id)))
    if text is None:
        raise CliError("no MEMORY yet for this import's user")
    print(text)
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from worker import demo

    return asyncio.run(demo.run(settings, args.file))


_COMMANDS: dict[str, Any] = {
    "migrate": cmd_migrate,
    "worker": cmd_worker,
    "submit": cmd_submit,
    "status": cmd_status,
    "requeue": cmd_requeue,
    "cancel": cmd_cancel,
    "inspect": cmd_inspect,
    "health": cmd_health,
    "search": cmd_search,
    "memory": cmd_memory,
    "demo": cmd_demo,
}

if __name__ == "__main__":
    sys.exit(main())
