"""Chaos: three worker processes share the queue.

* Every stage of every import runs exactly once per generation (one
  procrastinate job that succeeded, one attempt), with no duplicate chunk or
  checkpoint — also for an import requeued from ``extract`` while its
  extraction runs (it completes as generation 2) and next to an import
  cancelled mid-extraction (it stays cancelled, with nothing left queued or
  running and nothing written after the cancel).
* Fairness: a small import submitted while a large one is extracting is not
  queued behind it.
"""

from __future__ import annotations

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
    audit_extractions,
    check_chunks_and_facts,
    export_file,
    queued_or_running,
    record_figures,
    statuses,
    submit_export,
    wait_all_final,
)
from tests.chaos.services import SlowStorage, StagedFake
from tests.conftest import query
from tests.helpers import jobs_of

pytestmark = pytest.mark.slow

WORKERS = 3
OPTIONS = {"concurrency": 3, "pack_tokens": 2000}


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _extracting(dsn: str, import_id: uuid.UUID, min_done: int = 3) -> bool:
    """The import's extract stage runs and has checkpointed a few chunks."""
    row = query(
        dsn,
        "select s.status, (select count(*) from public.chunk_facts f"
        " where f.import_id = s.import_id) as done"
        " from public.import_stages s where s.import_id = %s and s.stage = 'extract'",
        (import_id,),
    )[0]
    return bool(row["status"] == "running" and row["done"] >= min_done)


def test_three_workers_run_every_stage_once_and_honour_requeue_and_cancel(
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    fleet_factory: FleetFactory,
) -> None:
    dsn = audited_dsn
    staged_fake.extract_latency = (0.1, 0.2)
    staged_fake.kind_latency = {"memory": 0.3, "sections": 0.3}
    storage.download_seconds = 0.3
    storage.callback_seconds = 0.1
    cache = tmp_path.parent / "chaos-exports"
    with ThreadPoolExecutor(2) as pool:
        sources = list(pool.map(lambda s: export_file(cache, 60, s), range(501, 509)))
    fleet = fleet_factory(concurrency=2)
    for slot in range(WORKERS):
        fleet.start(slot)

    started = time.monotonic()
    ids = [submit_export(dsn, storage.root, src, OPTIONS)[0] for src in sources]
    requeued, cancelled = ids[0], ids[1]

    _wait(lambda: _extracting(dsn, requeued), 60, "the import to requeue to extract")
    requeue_at = time.time()
    query(dsn, "select public.requeue_import(%s, 'extract')", (requeued,))
    _wait(lambda: _extracting(dsn, cancelled), 60, "the import to cancel to extract")
    cancel_at = time.time()
    assert query(dsn, "select public.cancel_import(%s) as ok", (cancelled,))[0]["ok"]

    rows = wait_all_final(dsn, ids, timeout=120, fleet=fleet)
    elapsed = time.monotonic() - started
    _wait(lambda: queued_or_running(dsn) == 0, 20, "the queue to drain")
    time.sleep(2.0)  # nothing wakes the cancelled import up again
    rows = statuses(dsn, ids)
    states = {str(k): (r["status"], r["stage"], r["error"]) for k, r in rows.items()}
    assert rows[cancelled]["status"] == "cancelled", states
    assert all(r["status"] == "complete" for k, r in rows.items() if k != cancelled), states
    assert rows[requeued]["generation"] == 2
    assert not fleet.exited(), "a worker process died"

    # Exactly once: one succeeded job and one attempt per stage and generation.
    for import_id in ids:
        jobs = jobs_of(dsn, import_id)
        assert not [j for j in jobs if j["status"] in ("todo", "doing")], jobs
        if import_id == cancelled:
            continue
        generation = rows[import_id]["generation"]
        ran = Counter(
            (j["task_name"].removeprefix("fullpass."), j["args"]["generation"])
            for j in jobs
            if j["status"] == "succeeded" and "lane" not in j["args"]
        )
        expected = {(s, 1) for s in STAGES}
        if import_id == requeued:
            # Requeued from extract: extract and what comes after it again;
            # download and chunk kept; embed (beside extract, not after it)
            # kept if it had finished, else redone: once either way.
            expected = {("download", 1), ("chunk", 1)} | {
                (s, 2) for s in ("extract", "reduce", "memory", "regenerate", "finalize")
            }
            embedded = sorted(g for (s, g), n in ran.items() if s == "embed" for _ in range(n))
            assert embedded in ([1], [2], [1, 2]), (import_id, ran)
            if embedded != [1]:
                expected.add(("embed", 2))
        assert set(ran) >= expected and all(ran[k] == 1 for k in expected), (import_id, ran)
        assert all(k[1] < generation for k in set(ran) - expected), (
            f"stray job of the current generation: {ran}"
        )
        attempts = query(
            dsn,
            "select stage, attempts from public.import_stages where import_id = %s",
            (import_id,),
        )
        assert all(a["attempts"] == 1 for a in attempts), (import_id, attempts)

    # The cancelled import: nothing runs, nothing was written after the cancel.
    stages = query(
        dsn,
        "select stage, status from public.import_stages where import_id = %s",
        (cancelled,),
    )
    assert "running" not in {s["status"] for s in stages}, stages
    late = query(
        dsn,
        "select count(*) as n, max(at) as last from public.chaos_fact_writes"
        " where import_id = %s and at > to_timestamp(%s)",
        (cancelled, cancel_at + 0.5),
    )[0]
    assert late["n"] == 0, late

    # No duplicate chunks or checkpoints; no checkpointed chunk paid for twice.
    done = [i for i in ids if i != cancelled]
    totals = check_chunks_and_facts(dsn, done)
    audit = audit_extractions(dsn, staged_fake, ids)
    assert audit.unmatched_calls == 0
    assert max(audit.writes_per_chunk.values()) == 1, "a chunk's facts were written twice"
    assert not [c for c, _ in audit.repeats_after_checkpoint if audit.import_of[c] != requeued]
    assert max(audit.served.values()) <= 2  # the requeued import's chunks: once per generation
    second = audit_extractions(dsn, staged_fake, [requeued], generation=2, since=requeue_at)
    assert second.repeats_after_checkpoint == []
    # The first run's extraction was under way, and stopped writing at the requeue.
    first_run = query(
        dsn,
        "select count(*) as n, count(*) filter (where at > to_timestamp(%s)) as late"
        " from public.chaos_fact_writes where import_id = %s and generation = 1",
        (requeue_at + 0.5, requeued),
    )[0]
    assert first_run["n"] >= 3 and first_run["late"] == 0, first_run
    cancelled_chunks = set(audit.chunks_of(cancelled))
    offset = time.time() - time.monotonic()
    last_call = max(
        (
            c.started + offset
            for c in staged_fake.calls("extract", ok=True)
            if c.started + offset > cancel_at and audit.members(c) & cancelled_chunks
        ),
        default=cancel_at,
    )
    # The running job is aborted at once (LISTEN/NOTIFY), or stops at its next
    # generation check: no new call for the cancelled import after that.
    assert last_call - cancel_at < 2.0, last_call - cancel_at

    figures = {
        "workers": WORKERS,
        "imports": len(ids),
        "chunks": totals["chunks"],
        "duration_s": round(elapsed, 1),
        "requeued_generation": rows[requeued]["generation"],
        "cancelled_status": rows[cancelled]["status"],
        "extraction_calls_for_cancelled_after_cancel_s": round(last_call - cancel_at, 2),
        "extraction_calls": audit.calls,
    }
    record_figures("three_workers_exactly_once", figures)


def test_small_import_is_not_starved_by_a_large_one(
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    fleet_factory: FleetFactory,
) -> None:
    dsn = audited_dsn
    staged_fake.extract_latency = (0.2, 0.3)
    staged_fake.kind_latency = {"memory": 0.3, "sections": 0.3}
    storage.download_seconds = 0.3
    storage.callback_seconds = 0.1
    cache = tmp_path.parent / "chaos-exports"
    large_src = export_file(cache, 600, 700)
    small_src = export_file(cache, 20, 701)
    fleet = fleet_factory(concurrency=2)
    for slot in range(WORKERS):
        fleet.start(slot)

    # Default per-import concurrency (10 calls in flight), smaller packs and
    # pastes sent whole: a long extraction (about 500 calls).
    large, _ = submit_export(dsn, storage.root, large_src, {"pack_tokens": 2000, "paste_chars": 0})
    _wait(lambda: _extracting(dsn, large, min_done=20), 90, "the large import to extract")
    small, _ = submit_export(dsn, storage.root, small_src)
    small_row = wait_all_final(dsn, [small], timeout=60, fleet=fleet)[small]
    large_status_then = statuses(dsn, [large])[large]["status"]
    large_row = wait_all_final(dsn, [large], timeout=180, fleet=fleet)[large]
    assert small_row["status"] == large_row["status"] == "complete"

    small_s = (small_row["completed_at"] - small_row["created_at"]).total_seconds()
    large_s = (large_row["completed_at"] - large_row["created_at"]).total_seconds()
    print(f"\nfairness: small import {small_s:.1f}s, large import {large_s:.1f}s")
    assert large_status_then == "processing", "the large import ended before the small one"
    assert small_s < 30, small_s
    assert small_s < 0.25 * large_s, (small_s, large_s)
    check_chunks_and_facts(dsn, [large, small])
    figures = {
        "workers": WORKERS,
        "large_conversations": 600,
        "small_conversations": 20,
        "large_chunks": statuses(dsn, [large])[large]["chunk_count"],
        "large_import_s": round(large_s, 1),
        "small_import_s": round(small_s, 1),
        "small_over_large": round(small_s / large_s, 3),
    }
    record_figures("fairness", figures)
