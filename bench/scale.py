"""Benchmark: the pipeline on a fleet of workers, and how fast an idle worker picks up an import.

    .venv/bin/python bench/scale.py [--scenario six|large|pickup|all] [--latency 1.0]
                                    [--worker-concurrency 4] [--concurrency 10]
                                    [--global-concurrency 20] [--repeat 1] [--keep]

Scenarios (each run on a fresh database, with real ``fullpass worker`` processes
and the fake Messages API in a process of its own answering every call after
``--latency`` seconds):

``six``
    six imports of ``--six-conversations`` (420) generated conversations each,
    inserted at once, on one worker and on three: wall time from the first
    insert to the last import complete (the database's clock), LLM calls, the
    peak and mean number of calls in flight at the fake server, and the ratio
    one / three (target ≥ 2.7).
``large``
    one import of ``--large-conversations`` (9600) conversations, ~25,000 chunks,
    whose map step spreads over lanes, on one worker and on three (target ≥ 2.5);
    another size is recorded as ``large-<n>``.
``pickup``
    queue pickup latency: ``--samples`` imports inserted one after the other,
    each into an idle worker, each waited for until it completes; the latency
    of one is from the insert (``imports.created_at``) to the ``download``
    stage's ``started_at``, split at the job's fetch (its ``started`` event).
    Reports p50, p90 and max (target p50 ≤ 10 ms). Its imports are below
    ``min_conversations``: no model call.

The worker settings are set explicitly (and reported): ``--worker-concurrency``
stage jobs per worker, ``FULLPASS_CONCURRENCY`` and ``FULLPASS_GLOBAL_CONCURRENCY``;
embeddings are ``none`` unless ``--embeddings`` says otherwise (the local model
is CPU-bound: on a small machine it measures the machine's cores, not the
fleet). Uses ``DATABASE_URL`` when set (a new database per run, dropped after),
else an embedded server of its own. Prints a table and writes
``bench/results/scale.json`` (or ``--results``), each scenario over its own
earlier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from tests.gen_export import Options, write_export  # noqa: E402
from worker import embedded, migrate  # noqa: E402
from worker.options import Options as PipelineOptions  # noqa: E402

RESULTS = REPO / "bench" / "results" / "scale.json"
#: The large import: ~25,000 chunks, 1,400 calls of the map step.
LARGE_CONVERSATIONS = 9600
#: The fake Messages API in its own process; on stdin's end it prints what it served.
FAKE_SERVER = """
import json, sys
sys.path.insert(0, sys.argv[2])
from tests.fakes.fake_anthropic import FakeAnthropicServer
with FakeAnthropicServer(latency=float(sys.argv[1])) as fake:
    print(json.dumps(fake.settings_env()), flush=True)
    sys.stdin.read()
    served = [r for r in fake.requests if r.finished is not None]
    print(json.dumps({
        "calls": len(served),
        "extract_calls": sum(1 for r in served if r.kind == "extract"),
        "max_in_flight": fake.max_in_flight,
        "busy_s": sum(r.finished - r.started for r in served),
        "first": min((r.started for r in served), default=None),
        "last": max((r.finished for r in served), default=None),
    }), flush=True)
"""


def rows(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _dsn_with(dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def _dbname(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, by linear interpolation."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Bench:
    """A server, a migrated template database, and the scratch directory."""

    args: argparse.Namespace
    work: Path
    server_dsn: str
    template: str = ""
    databases: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        name = f"fullpass_scale_tpl_{uuid.uuid4().hex[:8]}"
        self._execute(f'create database "{name}"')
        self.template = _dsn_with(self.server_dsn, name)
        self.databases.append(self.template)
        migrate.upgrade(self.template)

    def fresh_database(self) -> str:
        name = f"fullpass_scale_{uuid.uuid4().hex[:8]}"
        self._execute(f'create database "{name}" template "{_dbname(self.template)}"')
        dsn = _dsn_with(self.server_dsn, name)
        self.databases.append(dsn)
        return dsn

    def drop_databases(self) -> None:
        for dsn in reversed(self.databases):
            with suppress(psycopg.Error):
                self._execute(f'drop database if exists "{_dbname(dsn)}" with (force)')
        self.databases.clear()

    def _execute(self, statement: str) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(statement.encode())

    def worker_env(self, dsn: str, fake_env: dict[str, str]) -> dict[str, str]:
        keep = {
            k: v for k, v in os.environ.items() if not k.startswith(("FULLPASS_", "ANTHROPIC_"))
        }
        keep.pop("DATABASE_URL", None)
        return {
            **keep,
            "DATABASE_URL": dsn,
            "FULLPASS_STORAGE_DIR": str(self.work / "storage"),
            "FULLPASS_WORKER_CONCURRENCY": str(self.args.worker_concurrency),
            "FULLPASS_CONCURRENCY": str(self.args.concurrency),
            "FULLPASS_GLOBAL_CONCURRENCY": str(self.args.global_concurrency),
            "FULLPASS_EMBEDDINGS": self.args.embeddings,
            "FULLPASS_FANOUT": str(self.args.fanout),
            "FULLPASS_PAGE_CHUNKS": str(self.args.page_chunks),
            "FULLPASS_LOG_FORMAT": "json",
            "FULLPASS_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **fake_env,
        }

    def settings_report(self) -> dict[str, Any]:
        return {
            "FULLPASS_WORKER_CONCURRENCY": self.args.worker_concurrency,
            "FULLPASS_CONCURRENCY": self.args.concurrency,
            "FULLPASS_GLOBAL_CONCURRENCY": self.args.global_concurrency,
            "FULLPASS_EMBEDDINGS": self.args.embeddings,
            "FULLPASS_FANOUT": self.args.fanout,
            "FULLPASS_PAGE_CHUNKS": self.args.page_chunks,
            "latency_s": self.args.latency,
        }


@contextmanager
def fake_server(latency: float) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """The fake Messages API: yields its settings and, once the block ends, what it served."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_SERVER, str(latency), str(REPO)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    served: dict[str, Any] = {}
    try:
        env = json.loads(proc.stdout.readline())
        yield env, served
        proc.stdin.close()
        served.update(json.loads(proc.stdout.readline()))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def fleet(bench: Bench, dsn: str, env: dict[str, str], n: int) -> Iterator[list[Any]]:
    """``n`` worker processes, registered before the block runs; stopped after it."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = bench.work / "logs"
    logs.mkdir(exist_ok=True)
    try:
        for i in range(n):
            home = bench.work / f"home-{uuid.uuid4().hex[:6]}"
            with (logs / f"{_dbname(dsn)}-{i}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "worker.cli", "worker"],
                        cwd=REPO,
                        env={**env, "FULLPASS_HOME": str(home)},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        while len(rows(dsn, "select 1 from procrastinate_workers")) < n:
            for p in procs:
                if p.poll() is not None:
                    raise SystemExit(f"a worker exited with status {p.returncode} (logs: {logs})")
            time.sleep(0.05)
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def place(bench: Bench, export: Path) -> tuple[uuid.UUID, str]:
    """A new user with ``export`` in their storage folder."""
    user = uuid.uuid4()
    path = f"user-imports/{user}/export.zip"
    target = bench.work / "storage" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(export, target)
    return user, path


def wait_done(dsn: str, ids: Sequence[uuid.UUID], procs: Sequence[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        while True:
            left = conn.execute(
                "select count(*) as n from imports where id = any(%s)"
                " and status not in ('complete', 'failed', 'cancelled')",
                (list(ids),),
            ).fetchone()
            assert left is not None
            if left["n"] == 0:
                return
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a worker exited during the run")
            if time.monotonic() > deadline:
                raise SystemExit(f"{left['n']} import(s) not finished after {timeout:.0f} s")
            time.sleep(0.1)


def run_fleet(bench: Bench, exports: Sequence[Path], workers: int) -> dict[str, Any]:
    """Insert one import per export at once into ``workers`` workers; wait for all."""
    dsn = bench.fresh_database()
    with fake_server(bench.args.latency) as (fake_env, served):
        env = bench.worker_env(dsn, fake_env)
        placed = [place(bench, e) for e in exports]
        with fleet(bench, dsn, env, workers) as procs:
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
                ids = [
                    conn.execute(
                        "insert into imports (user_id, storage_path) values (%s, %s) returning id",
                        p,
                    ).fetchone()["id"]  # type: ignore[index]
                    for p in placed
                ]
            wait_done(dsn, ids, procs, timeout=1800)
    imports = rows(
        dsn,
        "select id, status, error, created_at, completed_at, chunk_count from imports"
        " where id = any(%s)",
        (ids,),
    )
    failed = [i for i in imports if i["status"] != "complete"]
    if failed:
        raise SystemExit(f"{len(failed)} import(s) did not complete: {failed[0]['error']}")
    first = min(i["created_at"] for i in imports)
    last = max(i["completed_at"] for i in imports)
    wall = (last - first).total_seconds()
    stages = rows(
        dsn,
        "select stage, extract(epoch from max(finished_at - started_at)) as longest"
        " from import_stages where import_id = any(%s) and started_at is not null"
        " group by stage",
        (ids,),
    )
    # Where the wall time went: until every export is chunked (CPU), the map
    # step (model calls), and from the last map step to the last publish.
    span = rows(
        dsn,
        "select extract(epoch from max(finished_at) filter (where stage = 'chunk') - %(t0)s)"
        "         as chunked,"
        "       extract(epoch from min(started_at) filter (where stage = 'extract') - %(t0)s)"
        "         as extract_from,"
        "       extract(epoch from max(finished_at) filter (where stage = 'extract') - %(t0)s)"
        "         as extract_to"
        "  from import_stages where import_id = any(%(ids)s)",
        {"t0": first, "ids": ids},
    )[0]
    lanes = rows(
        dsn,
        "select import_id, count(*) filter (where pages_done > 0) as working,"
        " count(*) as lanes from import_lanes where import_id = any(%s) and stage = 'extract'"
        " group by import_id",
        (ids,),
    )
    return {
        "workers": workers,
        "imports": len(ids),
        "chunks": sum(i["chunk_count"] or 0 for i in imports),
        "wall_s": round(wall, 2),
        "calls": served["calls"],
        "extract_calls": served["extract_calls"],
        "max_in_flight": served["max_in_flight"],
        "mean_in_flight": round(served["busy_s"] / wall, 1) if wall else None,
        "phases_s": {
            "all_chunked": round(float(span["chunked"]), 2),
            "first_extract_started": round(float(span["extract_from"]), 2),
            "last_extract_finished": round(float(span["extract_to"]), 2),
            "after_last_extract": round(wall - float(span["extract_to"]), 2),
        },
        "per_import_s": sorted(
            round((i["completed_at"] - i["created_at"]).total_seconds(), 2) for i in imports
        ),
        "longest_stage_s": {r["stage"]: round(float(r["longest"]), 2) for r in stages},
        "extract_lanes_working": sorted(int(r["working"]) for r in lanes),
    }


def compare(bench: Bench, name: str, exports: Sequence[Path], target: float) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in bench.args.workers}
    for _ in range(bench.args.repeat):
        for n in bench.args.workers:
            run = run_fleet(bench, exports, n)
            runs[n].append(run)
            print(
                f"  {name}: {n} worker(s) {run['wall_s']:.2f} s, {run['calls']} calls,"
                f" peak {run['max_in_flight']} in flight",
                file=sys.stderr,
            )
    walls = {n: statistics.median(r["wall_s"] for r in rs) for n, rs in runs.items()}
    return {
        "one_worker_s": walls.get(1),
        "three_workers_s": walls.get(3),
        "ratio": round(walls[1] / walls[3], 2) if 1 in walls and 3 in walls else None,
        "target_ratio": target,
        "runs": {str(k): v for k, v in runs.items()},
    }


def scenario_six(bench: Bench) -> dict[str, Any]:
    exports = []
    for i in range(bench.args.six_imports):
        path = bench.work / f"six-{i}.zip"
        opts = Options(conversations=bench.args.six_conversations, seed=100 + i)
        write_export(path, opts, zipped=True)
        exports.append(path)
    return {
        "conversations_per_import": bench.args.six_conversations,
        **compare(bench, "six", exports, 2.7),
    }


def scenario_large(bench: Bench) -> dict[str, Any]:
    path = bench.work / "large.zip"
    write_export(path, Options(conversations=bench.args.large_conversations, seed=7), zipped=True)
    return {
        "conversations": bench.args.large_conversations,
        **compare(bench, "large", [path], 2.5),
    }


def scenario_pickup(bench: Bench) -> dict[str, Any]:
    export = bench.work / "small.zip"
    write_export(export, Options(conversations=3, seed=3), zipped=True)
    dsn = bench.fresh_database()
    env = bench.worker_env(dsn, {"FULLPASS_LLM": "offline"})
    total: list[float] = []
    fetch: list[float] = []
    claim: list[float] = []
    with (
        fleet(bench, dsn, env, 1) as procs,
        psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn,
    ):
        for i in range(bench.args.samples + 1):
            user, path = place(bench, export)
            time.sleep(0.3)  # the worker is idle, waiting for a notification
            row = conn.execute(
                "insert into imports (user_id, storage_path, options)"
                " values (%s, %s, '{\"min_conversations\": 1000}') returning id",
                (user, path),
            ).fetchone()
            assert row is not None
            wait_done(dsn, [row["id"]], procs, timeout=60)
            if i == 0:
                continue  # the worker's first job warms its connections up
            got = conn.execute(
                "select extract(epoch from s.started_at - i.created_at) as total,"
                "       extract(epoch from e.at - i.created_at) as fetch"
                "  from imports i"
                "  join import_stages s on s.import_id = i.id and s.stage = 'download'"
                "  join procrastinate_jobs j on j.args ->> 'import_id' = i.id::text"
                "   and j.task_name = 'fullpass.download'"
                "  join procrastinate_events e on e.job_id = j.id and e.type = 'started'"
                " where i.id = %s order by e.at limit 1",
                (row["id"],),
            ).fetchone()
            assert got is not None
            total.append(float(got["total"]) * 1000)
            fetch.append(float(got["fetch"]) * 1000)
            claim.append(total[-1] - fetch[-1])

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(values, 0.5), 1),
            "p90_ms": round(percentile(values, 0.9), 1),
            "max_ms": round(max(values), 1),
        }

    return {
        "samples": len(total),
        "target_p50_ms": 10.0,
        "insert_to_stage_started": summary(total),
        "insert_to_job_fetched": summary(fetch),
        "job_fetched_to_stage_started": summary(claim),
    }


def result_key(scenario: str, args: argparse.Namespace) -> str:
    """Where a scenario's figures go: a large import of another size keeps its own."""
    if scenario == "large" and args.large_conversations != LARGE_CONVERSATIONS:
        return f"large-{args.large_conversations}"
    return scenario


def print_table(result: dict[str, Any]) -> None:
    print(f"{'scenario':<10} {'measure':<38} {'result':>14}  target")
    for name in result:
        if name == "pickup":
            continue
        r = result[name]
        for n, key in ((1, "one_worker_s"), (3, "three_workers_s")):
            if r[key] is None:
                continue
            peaks = [run["max_in_flight"] for run in r["runs"][str(n)]]
            print(f"{name:<10} {f'wall, {n} worker(s) (s)':<38} {r[key]:>14.2f}")
            print(f"{'':<10} {f'peak calls in flight, {n} worker(s)':<38} {max(peaks):>14}")
        if r["ratio"] is not None:
            ratio = f"{r['ratio']:.2f}"
            print(f"{'':<10} {'ratio one / three':<38} {ratio:>14}  ≥ {r['target_ratio']}")
    if "pickup" in result:
        p = result["pickup"]
        for label, key in (
            ("insert → stage started", "insert_to_stage_started"),
            ("insert → job fetched", "insert_to_job_fetched"),
            ("job fetched → stage started", "job_fetched_to_stage_started"),
        ):
            s = p[key]
            figures = f"{s['p50_ms']}/{s['p90_ms']}/{s['max_ms']}"
            target = "p50 ≤ 10" if key == "insert_to_stage_started" else ""
            print(f"{'pickup':<10} {label + ' p50/p90/max ms':<38} {figures:>14}  {target}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenario", choices=("six", "large", "pickup", "all"), default="all")
    p.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    p.add_argument("--worker-concurrency", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=10, help="FULLPASS_CONCURRENCY")
    p.add_argument("--global-concurrency", type=int, default=20)
    p.add_argument("--results", default=str(RESULTS), help="the JSON file figures go to")
    p.add_argument("--fanout", type=int, default=PipelineOptions().fanout, help="FULLPASS_FANOUT")
    p.add_argument(
        "--page-chunks",
        type=int,
        default=PipelineOptions().page_chunks,
        help="FULLPASS_PAGE_CHUNKS",
    )
    p.add_argument("--embeddings", default="none", help="FULLPASS_EMBEDDINGS of the workers")
    p.add_argument("--six-imports", type=int, default=6)
    p.add_argument("--six-conversations", type=int, default=420)
    p.add_argument("--large-conversations", type=int, default=LARGE_CONVERSATIONS)
    p.add_argument("--samples", type=int, default=60, help="pickup samples")
    p.add_argument(
        "--workers",
        type=lambda v: tuple(int(n) for n in v.split(",")),
        default=(1, 3),
        help="fleet sizes of six and large, e.g. 1,3 (the ratio needs both)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of six and large (median)")
    p.add_argument("--keep", action="store_true", help="keep the databases and scratch files")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fullpass-scale-"))
    server_dsn = os.environ.get("DATABASE_URL")
    embedded_home = None if server_dsn else work / "pg"
    if embedded_home is not None:
        server_dsn = embedded.ensure_server(embedded_home)
    assert server_dsn is not None
    bench = Bench(args, work, server_dsn)
    result: dict[str, Any] = {}
    run = {"six": scenario_six, "large": scenario_large, "pickup": scenario_pickup}
    try:
        bench.prepare()
        with psycopg.connect(bench.template, autocommit=True) as conn:
            version = conn.execute("show server_version").fetchone()
        scenarios = tuple(run) if args.scenario == "all" else (args.scenario,)
        for name in scenarios:
            print(f"{name} ...", file=sys.stderr)
            result[result_key(name, args)] = {
                "date": date.today().isoformat(),
                "server": f"PostgreSQL {version[0] if version else '?'}"
                + (" (embedded)" if embedded_home else ""),
                "settings": bench.settings_report(),
                **run[name](bench),
            }
    finally:
        if args.keep:
            print(f"kept: {bench.databases}, scratch {work}", file=sys.stderr)
        else:
            bench.drop_databases()
            if embedded_home is not None:
                embedded.stop_server(embedded_home)
            shutil.rmtree(work, ignore_errors=True)
    print_table(result)
    # A scenario run alone replaces its own figures only.
    results = Path(args.results)
    saved = json.loads(results.read_text()) if results.exists() else {}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({**saved, **result}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
