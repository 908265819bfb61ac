"""Benchmark: a fleet of workers under one organisation's rate limit.

    .venv/bin/python bench/ratelimit.py [--workers 3] [--latency 1.0] [--concurrency 2]
                                        [--rpm N] [--imports 6] [--repeat 3] [--no-budget]

Three worker processes (``fullpass worker``, one job at a time each) extract
imports against the fake Messages API, which answers every call after
``--latency`` seconds and enforces a requests-per-minute limit: by default
half of what the fleet would send (workers x concurrency / latency a second).
The workers draw from the shared budget in PostgreSQL (``FULLPASS_RATE_RPM``
set to the same limit) unless ``--no-budget``.

Reports, per run and as the median of ``--repeat`` runs: Messages calls, the
share refused with 429, the requests per minute achieved against the limit
(over the whole run, and steady: from 10 s after the first call, once the
bursts are spent, to the 90th percentile call, before the imports run out of
calls), and the wall time from the first import inserted to the last complete.
Results go to ``bench/results/ratelimit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import drop_database, fresh_database, rows  # noqa: E402
from tests.gen_export import Options, write_export  # noqa: E402
from worker import embedded, migrate  # noqa: E402

RESULTS = REPO / "bench" / "results" / "ratelimit.json"
#: Seconds after the first call before the steady rate is measured (the bursts are spent).
SETTLE_S = 10.0
#: The fake Messages API in its own process, with the organisation's limit.
FAKE_SERVER = """
import json, sys
sys.path.insert(0, sys.argv[4])
from tests.fakes.fake_anthropic import FakeAnthropicServer
with FakeAnthropicServer(latency=float(sys.argv[1])) as fake:
    fake.set_rate_limits(rpm=int(sys.argv[2]), burst_seconds=float(sys.argv[3]))
    print(json.dumps(fake.settings_env()), flush=True)
    sys.stdin.read()
    messages = [r for r in fake.requests if r.path == "/v1/messages"]
    print(json.dumps({
        "calls": len(messages),
        "answered": sorted(r.started for r in messages if r.status == 200),
        "rate_limited": len(fake.rate_limited()),
        "other_errors": sum(1 for r in messages if r.status not in (200, 429)),
        "max_in_flight": fake.max_in_flight,
    }), flush=True)
"""


def run_once(args: argparse.Namespace, server_dsn: str, work: Path, rpm: int) -> dict[str, Any]:
    dsn = fresh_database(server_dsn)
    fake = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FAKE_SERVER,
            str(args.latency),
            str(rpm),
            str(args.fake_burst),
            str(REPO),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        assert fake.stdin is not None and fake.stdout is not None
        fake_env = json.loads(fake.stdout.readline())
        migrate.upgrade(dsn)
        storage = work / "storage"
        paths = []
        for n in range(args.imports):
            user = uuid.uuid4()
            path = f"user-imports/{user}/export.zip"
            (storage / path).parent.mkdir(parents=True)
            shutil.copyfile(work / f"export-{n}.zip", storage / path)
            paths.append((user, path))
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "FULLPASS_STORAGE_DIR": str(storage),
            "FULLPASS_CONCURRENCY": str(args.concurrency),
            "FULLPASS_FANOUT": "1",
            "FULLPASS_EMBEDDINGS": "none",
            "FULLPASS_MIN_CONVERSATIONS": "0",
            "FULLPASS_LOG_LEVEL": "WARNING",
            "FULLPASS_RATE_BURST_SECONDS": str(args.budget_burst),
            **fake_env,
        }
        if args.budget:
            env["FULLPASS_RATE_RPM"] = str(rpm)
        for n in range(args.workers):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "1"],
                    cwd=REPO,
                    env={**env, "FULLPASS_HOME": str(work / f"home-{n}")},
                )
            )
        while len(rows(dsn, "select 1 from procrastinate_workers")) < args.workers:
            if any(w.poll() is not None for w in workers):
                raise SystemExit("a worker exited")
            time.sleep(0.1)
        options = json.dumps({"pack_tokens": args.pack_tokens})
        started = time.monotonic()
        ids = [
            rows(
                dsn,
                "insert into imports (user_id, storage_path, options) values (%s, %s, %s)"
                " returning id",
                (user, path, options),
            )[0]["id"]
            for user, path in paths
        ]
        while True:
            statuses = rows(dsn, "select status, error from imports where id = any(%s)", (ids,))
            if all(s["status"] in ("complete", "failed") for s in statuses):
                break
            if any(w.poll() is not None for w in workers):
                raise SystemExit("a worker exited")
            time.sleep(0.2)
        wall = time.monotonic() - started
        failed = [s["error"] for s in statuses if s["status"] != "complete"]
        budget = rows(dsn, "select draws, pauses from fullpass_rate_budget")
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=60)
        served: dict[str, Any] = {}
        if fake.poll() is None and fake.stdin is not None and fake.stdout is not None:
            fake.stdin.close()
            served = json.loads(fake.stdout.readline() or "{}")
            fake.wait(timeout=30)
        drop_database(server_dsn, dsn)
    answered = served["answered"]
    span = answered[-1] - answered[0]
    start, end = answered[0] + SETTLE_S, answered[int(len(answered) * 0.9)]
    steady = sum(1 for t in answered if start <= t <= end) / (end - start) * 60
    return {
        "imports_failed": len(failed),
        "calls": served["calls"],
        "answered": len(answered),
        "rate_limited": served["rate_limited"],
        "rate_limited_share": round(served["rate_limited"] / served["calls"], 4),
        "other_errors": served["other_errors"],
        "limit_rpm": rpm,
        "achieved_rpm": round(len(answered) / span * 60, 1),
        "steady_rpm": round(steady, 1),
        "steady_share_of_limit": round(steady / rpm, 3),
        "wall_s": round(wall, 1),
        "max_in_flight": served["max_in_flight"],
        "budget": budget[0] if budget else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    demand_rpm = round(args.workers * args.concurrency / args.latency * 60)
    rpm = args.rpm or demand_rpm // 2
    work = Path(tempfile.mkdtemp(prefix="fullpass-bench-rate-"))
    server_dsn = os.environ.get("DATABASE_URL")
    embedded_home = None if server_dsn else work / "pg"
    try:
        if embedded_home is not None:
            server_dsn = embedded.ensure_server(embedded_home)
        assert server_dsn is not None
        for n in range(args.imports):
            options = Options(conversations=args.conversations, seed=900 + n)
            write_export(work / f"export-{n}.zip", options, zipped=True)
        runs = []
        for _ in range(args.repeat):
            runs.append(run_once(args, server_dsn, work, rpm))
            print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        if embedded_home is not None:
            embedded.stop_server(embedded_home)
        shutil.rmtree(work, ignore_errors=True)
    keys = ("calls", "rate_limited_share", "achieved_rpm", "steady_rpm", "wall_s")
    result: dict[str, Any] = {
        "date": date.today().isoformat(),
        "workers": args.workers,
        "jobs_per_worker": 1,
        "concurrency": args.concurrency,
        "latency_s": args.latency,
        "demand_rpm": demand_rpm,
        "limit_rpm": rpm,
        "fake_burst_s": args.fake_burst,
        "budget": args.budget,
        "budget_burst_s": args.budget_burst if args.budget else None,
        "imports": args.imports,
        "conversations": args.conversations,
        "pack_tokens": args.pack_tokens,
        "median": {k: statistics.median(r[k] for r in runs) for k in keys},
        "runs": runs,
    }
    out = RESULTS if args.budget else RESULTS.with_name("ratelimit-no-budget.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--latency", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=2, help="calls in flight per import")
    p.add_argument("--rpm", type=int, default=None, help="the limit (default: half the demand)")
    p.add_argument("--fake-burst", type=float, default=10.0, help="seconds the API's bucket holds")
    p.add_argument("--budget-burst", type=float, default=5.0, help="FULLPASS_RATE_BURST_SECONDS")
    p.add_argument("--imports", type=int, default=6)
    p.add_argument("--conversations", type=int, default=40)
    p.add_argument("--pack-tokens", type=int, default=600)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-budget", dest="budget", action="store_false")
    result = run(p.parse_args())
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
