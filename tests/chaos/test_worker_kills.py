"""Chaos: worker processes are SIGKILLed at random moments, in every stage.

Two worker processes serve a rolling set of imports. A chaos loop kills a busy
one (``kill -9``) every one to two seconds — at random, and preferring workers
that run the stage hit least so far — and starts a replacement at once.
Nothing is recovered by hand: the killed worker's jobs are put back in the
queue by the stalled-job sweeper of a live worker once the dead one's
heartbeat is stale, and resume from their checkpoints.

Afterwards: every import is complete; chunks are not duplicated and match
``imports.chunk_count``; each chunk has exactly one ``chunk_facts`` row,
written once; no chunk's extraction was paid for again after its checkpoint
was committed, and a chunk was extracted at most once plus once per kill that
interrupted its import's ``extract``; stage attempts are explained by the
kills.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import FleetFactory
from tests.chaos.harness import (
    STAGES,
    WorkerProcess,
    audit_extractions,
    check_chunks_and_facts,
    doing_jobs,
    export_file,
    queued_or_running,
    record_figures,
    statuses,
    submit_export,
    wait_all_final,
)
from tests.chaos.services import SlowStorage, StagedFake
from tests.conftest import query, stores_embeddings

pytestmark = pytest.mark.slow

WORKERS = 2
IN_FLIGHT = 6  # imports processing at once
MAX_IMPORTS = 30
MIN_KILLS = 22
KILL_PHASE_SECONDS = 120.0
IMPORT_CONCURRENCY = 3  # LLM calls in flight per import
#: Smaller packs than the default: more, shorter extraction calls per import.
OPTIONS = {"concurrency": IMPORT_CONCURRENCY, "pack_tokens": 2000}
#: Stages every run must have killed a worker in; the rest are very short
#: (reduce is pure CPU over the facts) and are reported, not required.
REQUIRED = {"download", "chunk", "extract", "memory", "regenerate"}


def test_sigkilled_workers_lose_nothing_and_repeat_nothing(
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    fleet_factory: FleetFactory,
) -> None:
    dsn = audited_dsn
    rng = random.Random(20)
    # Widen every stage's window: exports stream in for ~1 s (and again for
    # `chunk` on a worker that lacks the file), MEMORY and sections calls take
    # ~1 s; the completion callback's receiver answers after ~0.8 s (a worker's
    # callback sender waits on it, not a stage).
    staged_fake.extract_latency = (0.1, 0.25)
    staged_fake.kind_latency = {"memory": 1.0, "sections": 1.0}
    storage.download_seconds = 1.0
    storage.callback_seconds = 0.8
    cache = tmp_path.parent / "chaos-exports"
    with ThreadPoolExecutor(2) as pool:
        sources = list(pool.map(lambda s: export_file(cache, 60, s), range(1, MAX_IMPORTS + 1)))

    fleet = fleet_factory(concurrency=3)
    for slot in range(WORKERS):
        fleet.start(slot)

    ids: list[uuid.UUID] = []

    topped_up = 0.0

    def top_up() -> None:
        nonlocal topped_up
        if time.monotonic() - topped_up < 0.5:
            return
        topped_up = time.monotonic()
        rows = statuses(dsn, ids)
        active = sum(1 for r in rows.values() if r["status"] in ("pending", "processing"))
        while active < IN_FLIGHT and len(ids) < len(sources):
            ids.append(submit_export(dsn, storage.root, sources[len(ids)], OPTIONS)[0])
            active += 1

    kills: list[dict[str, Any]] = []
    hits: Counter[tuple[uuid.UUID, str]] = Counter()  # (import, stage) -> kills
    stage_kills: Counter[str] = Counter()
    started = time.monotonic()
    last_kill = started
    next_kill = started + 1.5

    def kill(victim: WorkerProcess, why: str) -> None:
        nonlocal last_kill
        fleet.kill(victim)
        at = time.monotonic() - started
        # The dead worker's jobs stay `doing` under its id until a sweeper
        # requeues them (>= 3 s): this snapshot is exactly what it was running.
        hit = [j for j in doing_jobs(dsn) if j["worker_id"] == victim.worker_id]
        entry = {
            "t": round(at, 2),
            "slot": victim.slot,
            "why": why,
            "stages": sorted({str(j["stage"]) for j in hit}),
            "tasks": sorted(j["task_name"].removeprefix("fullpass.") for j in hit),
        }
        kills.append(entry)
        for j in hit:
            stage = str(j["stage"])
            hits[(uuid.UUID(j["import_id"]), stage)] += 1
            stage_kills[stage] += 1
        fleet.start(victim.slot, wait_registered=False)
        last_kill = time.monotonic()

    while True:
        now = time.monotonic()
        n_hits = sum(1 for k in kills if k["stages"])
        covered = set(stage_kills) >= REQUIRED
        if (n_hits >= MIN_KILLS and covered) or now - started > KILL_PHASE_SECONDS:
            break
        top_up()
        by_worker: dict[int, list[dict[str, Any]]] = {}
        for j in doing_jobs(dsn):
            by_worker.setdefault(j["worker_id"], []).append(j)
        live = [wp for wp in fleet.live() if fleet.refresh(wp) is not None]
        busy = [wp for wp in live if by_worker.get(wp.worker_id or -1)]
        # Opportunistic: the least-hit stage (first: one never hit) runs right now.
        least = min(stage_kills.get(s, 0) for s in STAGES)
        rare = [
            wp
            for wp in busy
            if any(
                stage_kills.get(str(j["stage"]), 0) == least for j in by_worker[wp.worker_id or -1]
            )
        ]
        if rare and now - last_kill > 0.5 and (least == 0 or now >= next_kill):
            kill(rng.choice(rare), "rare stage")
            next_kill = time.monotonic() + rng.uniform(2.0, 3.5)
        elif busy and now >= next_kill:
            kill(rng.choice(busy), "random")
            next_kill = time.monotonic() + rng.uniform(2.0, 3.5)
        time.sleep(0.03)
    kill_phase = time.monotonic() - started

    rows = wait_all_final(dsn, ids, timeout=120, fleet=fleet)
    elapsed = time.monotonic() - started
    not_done = {str(k): (r["status"], r["stage"], r["error"]) for k, r in rows.items()}
    assert all(r["status"] == "complete" for r in rows.values()), not_done
    assert storage.alerts == []

    # The run actually was chaotic, in every stage that lasts long enough.
    stage_hits = [k for k in kills if k["stages"]]
    log = f"kill phase {kill_phase:.1f}s, kills: {kills}"
    assert len(stage_hits) >= 20, log
    assert set(stage_kills) >= REQUIRED, (stage_kills, log)

    # Nothing was lost or duplicated.
    totals = check_chunks_and_facts(dsn, ids)
    audit = audit_extractions(dsn, staged_fake, ids)
    assert audit.unmatched_calls == 0
    assert max(audit.writes_per_chunk.values()) == 1, "a chunk's facts were written twice"
    assert audit.repeats_after_checkpoint == [], audit.repeats_after_checkpoint[:5]
    for import_id in ids:
        extract_kills = hits[(import_id, "extract")]
        # Only calls in flight at a kill may be repeated (never a checkpointed one).
        assert audit.max_calls_per_chunk(import_id) <= 1 + extract_kills, import_id
        in_flight = extract_kills * IMPORT_CONCURRENCY * audit.max_members
        assert audit.repeated(import_id) <= in_flight, import_id

    # Every attempt beyond the first is explained by a kill of that stage.
    stage_rows = query(
        dsn,
        "select import_id, stage, status, attempts from public.import_stages"
        " where import_id = any(%s)",
        (ids,),
    )
    embeds = stores_embeddings(dsn)
    for s in stage_rows:
        # Without pgvector there is nothing to embed: that stage is skipped.
        expected = "done" if embeds or s["stage"] != "embed" else "skipped"
        assert s["status"] == expected, s
        assert 1 <= s["attempts"] <= 1 + hits[(s["import_id"], s["stage"])], s
    for r in query(
        dsn,
        "select i.id, i.attempts, s.attempts as final_attempts from public.imports i"
        " join public.import_stages s on s.import_id = i.id and s.stage = 'finalize'"
        " where i.id = any(%s)",
        (ids,),
    ):
        assert r["attempts"] == r["final_attempts"], r
    # A job killed after its stage committed (e.g. right after finalize's
    # commit) is still swept up and ends: the queue drains.
    drain_deadline = time.monotonic() + 20
    while (left := queued_or_running(dsn)) and time.monotonic() < drain_deadline:
        time.sleep(0.2)
    assert left == 0

    # Recovery was the sweeper's doing.
    requeued = fleet.count_logged("requeued a stalled job")
    assert requeued >= 1
    retries = sum(s["attempts"] - 1 for s in stage_rows)
    durations = [(r["completed_at"] - r["created_at"]).total_seconds() for r in rows.values()]
    figures = {
        "workers": WORKERS,
        "imports": len(ids),
        "chunks": totals["chunks"],
        "kills": len(kills),
        "kills_of_idle_workers": len(kills) - len(stage_hits),
        "interrupted_jobs_per_stage": dict(sorted(stage_kills.items())),
        "kill_phase_s": round(kill_phase, 1),
        "duration_s": round(elapsed, 1),
        "import_duration_s": {
            "min": round(min(durations), 1),
            "median": round(sorted(durations)[len(durations) // 2], 1),
            "max": round(max(durations), 1),
        },
        "stalled_jobs_requeued_by_sweeper": requeued,
        "stage_attempts_beyond_first": retries,
        "extraction_calls": audit.calls,
        "chunk_extractions_repeated_in_flight": sum(audit.repeated(i) for i in ids),
        "extraction_repeats_after_checkpoint": len(audit.repeats_after_checkpoint),
        "completion_callbacks": len(storage.callbacks),
        "kill_log": kills,
    }
    record_figures("worker_kills", figures)
