"""Chaos: the PostgreSQL server restarts (fast shutdown) while imports run.

Every session is cut at each restart: the workers' pool connections, the
LISTEN connection, transactions in flight. The workers must ride it out —
keep running, reconnect with backoff, retry the interrupted stages from their
checkpoints — and every import must complete with no duplicate chunk, fact or
paid-for extraction.
"""

from __future__ import annotations

import random
import re
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import FleetFactory
from tests.chaos.harness import (
    audit_extractions,
    check_chunks_and_facts,
    export_file,
    record_figures,
    restart_postgres,
    statuses,
    submit_export,
    tail,
    wait_all_final,
)
from tests.chaos.services import SlowStorage, StagedFake
from tests.conftest import query

pytestmark = pytest.mark.slow
_GAP = re.compile(r"heartbeat resumed after a ([0-9.]+)s gap")

#: Seconds the server stays down at each restart: mostly a fast restart, once
#: longer than the stalled-worker timeout (nobody can heartbeat meanwhile).
DOWNTIMES = (0.0, 0.0, 4.0, 0.0, 1.0)
IN_FLIGHT = 4
MAX_IMPORTS = 40  # a bound, not a target: imports are added to keep IN_FLIGHT running
OPTIONS = {"concurrency": 3, "pack_tokens": 2000}


def test_workers_survive_postgres_restarts(
    server_dsn: str,
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    fleet_factory: FleetFactory,
) -> None:
    dsn = audited_dsn
    rng = random.Random(5)
    staged_fake.extract_latency = (0.1, 0.25)
    staged_fake.kind_latency = {"memory": 0.6, "sections": 0.6}
    storage.download_seconds = 0.5
    storage.callback_seconds = 0.3
    cache = tmp_path.parent / "chaos-exports"
    with ThreadPoolExecutor(2) as pool:
        sources = list(
            pool.map(lambda s: export_file(cache, 60, s), range(101, 101 + IN_FLIGHT * 3))
        )
    fleet = fleet_factory(concurrency=3)
    workers = [fleet.start(0), fleet.start(1)]

    started = time.monotonic()
    ids: list[uuid.UUID] = []

    def top_up() -> dict[uuid.UUID, dict[str, Any]]:
        rows = statuses(dsn, ids)
        active = sum(1 for r in rows.values() if r["status"] in ("pending", "processing"))
        while active < IN_FLIGHT and len(ids) < MAX_IMPORTS:
            if len(ids) == len(sources):  # a slow server: more exports than foreseen
                sources.append(export_file(cache, 60, 101 + len(sources)))
            ids.append(submit_export(dsn, storage.root, sources[len(ids)], OPTIONS)[0])
            active += 1
        return statuses(dsn, ids)

    restarts: list[dict[str, Any]] = []
    for down in DOWNTIMES:
        # Restart while work is under way: wait for an import in extract.
        deadline = time.monotonic() + 90
        while True:
            rows = top_up()
            if any(r["stage"] == "extract" and r["status"] == "processing" for r in rows.values()):
                break
            assert time.monotonic() < deadline, "no import reached extract"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        at = sorted(
            f"{r['stage']}" for r in statuses(dsn, ids).values() if r["status"] == "processing"
        )
        seconds = restart_postgres(server_dsn, down_seconds=down)
        restarts.append({"seconds": round(seconds, 2), "down_s": down, "processing": at})
        # Time to reconnect and get going again before the next one.
        time.sleep(rng.uniform(2.0, 4.0))

    rows = wait_all_final(dsn, ids, timeout=150, fleet=fleet)
    elapsed = time.monotonic() - started
    failed = {str(k): (r["status"], r["stage"], r["error"]) for k, r in rows.items()}
    assert all(r["status"] == "complete" for r in rows.values()), failed

    # The same worker processes did all of it: none died or was replaced.
    dead = [(w.slot, w.proc.returncode, tail(w.log_path)) for w in workers if not w.alive]
    assert not dead, f"worker processes exited on a database restart: {dead}"
    assert len(fleet.processes) == 2

    totals = check_chunks_and_facts(dsn, ids)
    audit = audit_extractions(dsn, staged_fake, ids)
    assert audit.unmatched_calls == 0
    assert audit.repeats_after_checkpoint == [], audit.repeats_after_checkpoint[:5]
    assert max(audit.writes_per_chunk.values()) == 1
    extra = sum(audit.repeated(i) for i in ids)
    for import_id in ids:
        # A call in flight when the session dropped may be asked again, once per restart.
        assert audit.max_calls_per_chunk(import_id) <= 1 + len(restarts), import_id

    # No worker died, so none may have been declared dead: jobs were never
    # requeued behind a live worker's back, even after 4 s without heartbeats.
    assert fleet.count_logged("requeued a stalled job") == 0
    assert fleet.count_logged("was declared dead") == 0

    # Both workers are registered and heartbeating again, and LISTEN/NOTIFY
    # works again: an idle worker picks a new import up at once (the polling
    # fallback would take up to 2 s).
    def live() -> int:
        return int(
            query(
                dsn,
                "select count(*) as n from procrastinate_workers"
                " where last_heartbeat > now() - interval '5 seconds'",
            )[0]["n"]
        )

    # Generous under load (two cores shared with PostgreSQL and the fake API):
    # what matters is that both workers heartbeat again, not how fast.
    deadline = time.monotonic() + 20
    while live() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live() == 2, "a worker stopped heartbeating"
    pickups = []
    for i in range(3):
        source = export_file(tmp_path.parent / "chaos-exports", 5, 300 + i)
        probe, _ = submit_export(dsn, storage.root, source)
        row = wait_all_final(dsn, [probe], timeout=60, fleet=fleet)[probe]
        assert row["status"] == "complete", row
        first = query(
            dsn,
            "select min(started_at) as s from public.import_stages where import_id = %s",
            (probe,),
        )[0]["s"]
        pickups.append((first - row["created_at"]).total_seconds())
    assert statistics.median(pickups) < 0.5, pickups

    stage_retries = query(
        dsn,
        "select coalesce(sum(attempts - 1), 0) as n from public.import_stages"
        " where import_id = any(%s) and attempts > 1",
        (ids,),
    )[0]["n"]
    figures = {
        "restarts": len(restarts),
        "restart_seconds": [r["seconds"] for r in restarts],
        "imports": len(ids),
        "restart_down_s": [r["down_s"] for r in restarts],
        "imports_processing_at_restarts": [r["processing"] for r in restarts],
        "duration_s": round(elapsed, 1),
        "stage_retries": int(stage_retries),
        "extraction_calls": audit.calls,
        "chunk_extractions_repeated_in_flight": extra,
        "chunks": totals["chunks"],
        "worker_processes_replaced": 0,
        "pickup_after_restarts_s": [round(p, 3) for p in pickups],
        "database_unavailable_log_lines": fleet.count_logged("database unavailable"),
        "longest_heartbeat_gap_s": max(
            (float(m) for m in _GAP.findall("".join(w.log_path.read_text() for w in workers))),
            default=0.0,
        ),
    }
    record_figures("postgres_restarts", figures)
