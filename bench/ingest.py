"""Benchmark: download + chunk of a large ChatGPT export against a bare ijson pass.

    .venv/bin/python bench/ingest.py [--target-mb 90] [--seed 7] [--repeat 1] [--keep]
                                     [--no-cache] [--results PATH]

1. A ~90 MB ChatGPT export ZIP is generated with ``python -m tests.gen_export``
   (cached under ``bench/.cache/``, keyed by size and seed; ``--no-cache`` makes a
   fresh one in a temp dir). It runs in a process of its own, so that the
   generator's memory is not this process's.
2. Baseline: ``conversations.json`` is extracted to a temp file (not timed) and one
   bare ``ijson.items(f, "item")`` pass with the ``yajl2_c`` backend is timed: the
   floor for anything that parses the export.
3. Ingest: in a fresh child process (so that neither the generator nor the baseline
   weighs on its memory figure), a fresh migrated database gets an import row and
   the real ``download`` and ``chunk`` stages run through
   :func:`worker.runner.run_stage`, exactly as a worker would run them. Reported:
   wall time, chunks/s, and the child's peak RSS (``ru_maxrss``), which includes the
   interpreter and every imported library.

Targets: ingest <= 10x the ijson pass, peak RSS < 200 MB. The database is
``DATABASE_URL`` when set (a fresh database is created on that server), else an
embedded PostgreSQL in a temp dir that is stopped afterwards. ``--repeat N`` runs the
ingest N times, each on a fresh database, and reports the run of median ingest time
(every run's times are kept under ``runs``). ``--keep`` keeps the last benchmark
database, the scratch dir and the embedded server. Results go to
``bench/results/ingest.json`` (or ``--results``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "bench" / ".cache"
RESULTS = REPO / "bench" / "results" / "ingest.json"
USER_ID = uuid.UUID("bbbbbbbb-0000-4000-8000-0000000000be")
MB = 1024 * 1024
TARGET_RATIO = 10.0
TARGET_RSS_MB = 200.0


# --------------------------------------------------------------------------- export


def export_zip(target_mb: float, seed: int, work: Path, use_cache: bool) -> tuple[Path, bool]:
    """The benchmark export (and whether it came from the cache)."""
    name = f"chatgpt-{target_mb:g}mb-seed{seed}.zip"
    out = CACHE / name if use_cache else work / name
    if out.is_file():
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    print(f"generating a {target_mb:g} MB export (seed {seed}) ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.gen_export",
            "--target-mb",
            f"{target_mb:g}",
            "--seed",
            str(seed),
            "--zip",
            "-o",
            str(partial),
        ],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    partial.replace(out)
    return out, False


def extract_json(zip_path: Path, dest: Path) -> Path:
    with (
        zipfile.ZipFile(zip_path) as archive,
        archive.open("conversations.json") as src,
        dest.open("wb") as sink,
    ):
        shutil.copyfileobj(src, sink, 4 * MB)
    return dest


def ijson_pass(json_path: Path) -> tuple[float, int]:
    """Seconds for one bare ``ijson.items(f, 'item')`` pass (yajl2_c), and the items seen."""
    import ijson

    backend = ijson.get_backend("yajl2_c")
    started = time.perf_counter()
    n = 0
    with json_path.open("rb") as f:
        for _ in backend.items(f, "item"):
            n += 1
    return time.perf_counter() - started, n


# --------------------------------------------------------------------------- database


def server_dsn(pg_home: Path) -> tuple[str, bool]:
    """A DSN of the server to use, and whether it is an embedded one we started."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, False
    from worker import embedded

    print("starting an embedded PostgreSQL ...", flush=True)
    return embedded.ensure_server(pg_home), True


def _with_db(dsn: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = name
    return make_conninfo(**params)  # type: ignore[arg-type]


def create_database(dsn: str) -> tuple[str, str]:
    import psycopg
    from psycopg import sql

    from worker import migrate

    name = f"fullpass_bench_ingest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    db = _with_db(dsn, name)
    migrate.upgrade(db)
    return name, db


def drop_database(dsn: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def server_version(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("show server_version").fetchone()
    return str(row[0]) if row else "?"


# --------------------------------------------------------------------------- ingest (child)


def rss_mb() -> float:
    """The current resident set size in MB (Linux), 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def backend_cpu(conn: Any) -> dict[int, float] | None:
    """CPU seconds used so far by each server process connected to this database.

    Read from ``/proc``: None when the server is not on this machine (or not
    readable). The pool's connections stay open through the stages, so the
    processes that did the stages' work are all still there at the end.
    """
    rows = await (
        await conn.execute("select pid from pg_stat_activity where datname = current_database()")
    ).fetchall()
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for row in rows:
        try:
            stat = Path(f"/proc/{row['pid']}/stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()
        out[row["pid"]] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB


async def _next_job(conn: Any, import_id: uuid.UUID) -> tuple[int, str, int] | None:
    """Claim the import's next queued job, the way a worker would (cf. tests.helpers.drive)."""
    row = await (
        await conn.execute(
            "update procrastinate_jobs set status = 'doing' where id = ("
            " select id from procrastinate_jobs where queueing_lock = %s and status = 'todo'"
            " order by id limit 1) returning id, task_name, args",
            (str(import_id),),
        )
    ).fetchone()
    if row is None:
        return None
    return (
        int(row["id"]),
        str(row["task_name"]).removeprefix("fullpass."),
        row["args"]["generation"],
    )


async def ingest(db: str, zip_path: Path, home: Path) -> dict[str, Any]:
    """Run the real download and chunk stages of one import; return timings and counts."""
    from jobs.chunk import start_reader
    from worker import runner
    from worker.llm.offline import OfflineProvider
    from worker.service import make_pool
    from worker.settings import Settings
    from worker.store import Store

    env: dict[str, Any] = {
        "DATABASE_URL": db,
        "FULLPASS_HOME": str(home / "home"),
        "FULLPASS_STORAGE_DIR": str(home / "storage"),
        "FULLPASS_LLM": "offline",
        "FULLPASS_MAX_ATTEMPTS": 1,
        "ANTHROPIC_API_KEY": None,
        "SUPABASE_URL": None,
        "SUPABASE_SERVICE_ROLE_KEY": None,
    }
    settings = Settings(**env)
    storage_path = f"user-imports/{USER_ID}/export.zip"
    target = settings.resolved_storage_dir / storage_path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(zip_path, target)

    start_reader()  # as a worker does when it starts
    pool = make_pool(db, max_size=4)
    await pool.open(wait=True)
    deps = runner.Deps(settings=settings, store=Store(pool), llm=OfflineProvider())
    timings: dict[str, float] = {}
    try:
        async with pool.connection() as conn:  # autocommit, dict rows (make_pool)
            row = await (
                await conn.execute(
                    "insert into public.imports (user_id, storage_path) values (%s, %s)"
                    " returning id",
                    (USER_ID, storage_path),
                )
            ).fetchone()
            assert row is not None
            import_id = uuid.UUID(str(row["id"]))
        async with pool.connection() as conn:
            cpu_before = await backend_cpu(conn)
        rss_before = rss_mb()
        started = time.perf_counter()
        for expected in ("download", "chunk"):
            async with pool.connection() as conn:
                job = await _next_job(conn, import_id)
            if job is None or job[1] != expected:
                raise SystemExit(f"expected a queued {expected} job, found {job}")
            job_id, stage, generation = job
            t0 = time.perf_counter()
            await runner.run_stage(deps, stage, import_id, generation)
            timings[stage] = time.perf_counter() - t0
            async with pool.connection() as conn:
                await conn.execute(
                    "update procrastinate_jobs set status = 'succeeded' where id = %s", (job_id,)
                )
        elapsed = time.perf_counter() - started
        async with pool.connection() as conn:
            cpu_after = await backend_cpu(conn)
            imp = await (
                await conn.execute(
                    "select status, stage, error, conversation_count, chunk_count"
                    " from public.imports where id = %s",
                    (import_id,),
                )
            ).fetchone()
            stored = await (
                await conn.execute(
                    "select count(*) as n, coalesce(sum(length(content)), 0) as chars"
                    " from public.import_chunks where import_id = %s",
                    (import_id,),
                )
            ).fetchone()
            out = await (
                await conn.execute(
                    "select output from public.import_stages"
                    " where import_id = %s and stage = 'chunk'",
                    (import_id,),
                )
            ).fetchone()
    finally:
        await pool.close()
    assert imp is not None and stored is not None and out is not None
    if imp["error"] or imp["stage"] != "extract":
        raise SystemExit(f"ingest did not finish: {imp}")
    output = dict(out["output"] or {})
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        spent = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_after.items())
        server_cpu = round(spent, 2)
    return {
        "import_status": imp["status"],
        "conversations": imp["conversation_count"],
        "chunks": imp["chunk_count"],
        "chunks_stored": stored["n"],
        "chunk_chars": int(stored["chars"]),
        "messages": output.get("messages"),
        "skipped_conversations": output.get("skipped_conversations"),
        "download_s": round(timings["download"], 3),
        "chunk_s": round(timings["chunk"], 3),
        "ingest_s": round(elapsed, 3),
        "rss_before_mb": round(rss_before, 1),
        # The database server's own CPU for the stages (a local server only).
        "server_cpu_s": server_cpu,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # The export is parsed in a process of its own (jobs/ingest/isolated.py).
        "reader_peak_rss_mb": round(
            (output.get("stats") or {}).get("reader_peak_rss_kb", 0) / 1024, 1
        ),
    }


def run_child(db: str, zip_path: Path, home: Path) -> dict[str, Any]:
    """The ingest in a fresh interpreter; its result comes back as the last stdout line."""
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            json.dumps({"db": db, "zip": str(zip_path), "home": str(home)}),
        ],
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ingest child failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def child_main(spec: str) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = json.loads(spec)
    result = asyncio.run(ingest(args["db"], Path(args["zip"]), Path(args["home"])))
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- report


def write_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def _peak(r: dict[str, Any]) -> float:
    """The larger peak RSS of the two processes (each has the same target)."""
    return max(float(r["peak_rss_mb"]), float(r.get("reader_peak_rss_mb") or 0.0))


def table(r: dict[str, Any]) -> str:
    ratio_ok = "ok" if r["ratio"] <= TARGET_RATIO else "OVER TARGET"
    server = r.get("server_cpu_s")
    rss_ok = "ok" if _peak(r) < TARGET_RSS_MB else "OVER TARGET"
    lines = [
        ("export ZIP", f"{r['export_zip_mb']:.1f} MB"),
        ("conversations.json", f"{r['export_json_mb']:.1f} MB"),
        ("conversations", f"{r['conversations']:,}"),
        ("chunks", f"{r['chunks']:,}"),
        ("ijson pass (yajl2_c)", f"{r['ijson_s']:.2f} s"),
        ("download", f"{r['download_s']:.2f} s"),
        ("chunk (parse+chunk+COPY)", f"{r['chunk_s']:.2f} s"),
        ("ingest (download+chunk)", f"{r['ingest_s']:.2f} s"),
        ("database server CPU", "n/a" if server is None else f"{server:.2f} s"),
        ("ratio ingest / ijson", f"{r['ratio']:.1f}x  (target <= {TARGET_RATIO:g}x: {ratio_ok})"),
        ("chunks/s", f"{r['chunks_per_s']:,.0f}"),
        ("JSON MB/s", f"{r['json_mb_per_s']:.1f}"),
        ("RSS before stages", f"{r['rss_before_mb']:.0f} MB"),
        ("peak RSS, worker", f"{r['peak_rss_mb']:.0f} MB"),
        (
            "peak RSS, export reader",
            f"{r['reader_peak_rss_mb']:.0f} MB  (each < {TARGET_RSS_MB:g} MB: {rss_ok})",
        ),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target-mb", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database and scratch files")
    parser.add_argument("--no-cache", action="store_true", help="generate a fresh export")
    parser.add_argument("--repeat", type=int, default=1, help="ingest runs (median)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON file to write")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args.child)

    work = Path(tempfile.mkdtemp(prefix="fullpass-bench-ingest-"))
    pg_home = work / "pg"
    dsn = db_name = None
    embedded_started = False
    try:
        zip_path, cached = export_zip(args.target_mb, args.seed, work, not args.no_cache)
        with zipfile.ZipFile(zip_path) as archive:
            json_bytes = archive.getinfo("conversations.json").file_size
        json_path = extract_json(zip_path, work / "conversations.json")
        print("timing the bare ijson pass ...", flush=True)
        ijson_s, ijson_items = ijson_pass(json_path)
        json_path.unlink()

        dsn, embedded_started = server_dsn(pg_home)
        runs = []
        for n in range(max(args.repeat, 1)):
            if db_name is not None:
                drop_database(dsn, db_name)
            db_name, db = create_database(dsn)
            print(f"running download + chunk in a child process ({n + 1}) ...", flush=True)
            runs.append(run_child(db, zip_path, work / f"ingest-{n}"))
        child = sorted(runs, key=lambda r: r["ingest_s"])[(len(runs) - 1) // 2]
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "args": {"target_mb": args.target_mb, "seed": args.seed},
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "postgres": server_version(db),
                "database": "DATABASE_URL" if not embedded_started else "embedded",
            },
            "export_cached": cached,
            "export_zip_mb": round(zip_path.stat().st_size / MB, 2),
            "export_json_mb": round(json_bytes / MB, 2),
            "ijson_items": ijson_items,
            "ijson_s": round(ijson_s, 3),
            **child,
            "runs": [
                {
                    k: r[k]
                    for k in ("download_s", "chunk_s", "ingest_s", "server_cpu_s", "peak_rss_mb")
                }
                for r in runs
            ],
        }
        results["ratio"] = round(child["ingest_s"] / ijson_s, 2)
        results["chunks_per_s"] = round(child["chunks"] / child["ingest_s"], 1)
        results["json_mb_per_s"] = round(json_bytes / MB / child["ingest_s"], 2)
        results["targets"] = {
            "ratio_max": TARGET_RATIO,
            "ratio_ok": results["ratio"] <= TARGET_RATIO,
            "peak_rss_mb_max": TARGET_RSS_MB,
            "peak_rss_ok": _peak(child) < TARGET_RSS_MB,
        }
        write_results(results, args.results)
        print(f"\ningest benchmark ({args.results}):")
        print(table(results))
        if args.keep:
            print(f"\nkept: database {db_name} ({dsn}), scratch {work}")
        return 0
    finally:
        if not args.keep:
            if dsn is not None and db_name is not None:
                drop_database(dsn, db_name)
            if embedded_started:
                from worker import embedded

                embedded.stop_server(pg_home)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
