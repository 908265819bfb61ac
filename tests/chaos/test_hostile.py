"""Chaos: a hostile user and a worker that freezes, against real worker processes.

* Anyone may NOTIFY on any channel: a signed-in user (and ``anon``) floods the
  queue's channel with spoofed ``abort_job_requested`` notifications for every
  running job of other users, spoofed ``job_inserted`` ones and garbage
  payloads. A notification is only a hint: every import completes, no job is
  aborted, the worker stays up.
* A worker frozen (SIGSTOP) past the stalled timeout has its extraction handed
  to another worker; when it wakes up (SIGCONT) it must stop at once: no call
  for a chunk already checkpointed, no checkpoint row overwritten, and every
  token the fake served is in the imports' whole spend.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.chaos.conftest import FleetFactory
from tests.chaos.harness import (
    audit_extractions,
    check_chunks_and_facts,
    doing_jobs,
    export_file,
    record_figures,
    statuses,
    submit_export,
    wait_all_final,
)
from tests.chaos.services import SlowStorage, StagedFake
from tests.conftest import query

pytestmark = pytest.mark.slow

OPTIONS = {"concurrency": 2, "pack_tokens": 1500}
CHANNELS = ("procrastinate_queue_v1#imports", "procrastinate_any_queue_v1")


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _extracting(dsn: str, import_id: uuid.UUID, min_done: int = 2) -> bool:
    row = query(
        dsn,
        "select s.status, (select count(*) from public.chunk_facts f"
        " where f.import_id = s.import_id) as done"
        " from public.import_stages s where s.import_id = %s and s.stage = 'extract'",
        (import_id,),
    )[0]
    return bool(row["status"] == "running" and row["done"] >= min_done)


class Spoofer(threading.Thread):
    """Sends forged queue notifications as an API role until stopped."""

    def __init__(self, dsn: str, role: str, user: uuid.UUID | None) -> None:
        super().__init__(daemon=True)
        self.dsn, self.role, self.user = dsn, role, user
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(self.role)))
            claims = {"role": self.role, **({"sub": str(self.user)} if self.user else {})}
            conn.execute(
                "select set_config('request.jwt.claims', %s, false)", (json.dumps(claims),)
            )
            while not self.stop.is_set():
                # Job ids are sequential: an attacker aims at the whole range.
                for job_id in range(1, 80):
                    payloads = [
                        {"type": "abort_job_requested", "job_id": job_id},
                        {"type": "job_inserted", "job_id": job_id},
                    ]
                    for channel in CHANNELS:
                        for payload in payloads:
                            conn.execute("select pg_notify(%s, %s)", (channel, json.dumps(payload)))
                            self.sent += 1
                for garbage in ("not json", "{}", '{"type": "abort_job_requested"}', "[1]", "null"):
                    conn.execute("select pg_notify(%s, %s)", (CHANNELS[0], garbage))
                    self.sent += 1
                time.sleep(0.05)


def test_spoofed_notifications_abort_nothing(
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    fleet_factory: FleetFactory,
) -> None:
    dsn = audited_dsn
    staged_fake.extract_latency = (0.1, 0.2)
    cache = tmp_path.parent / "chaos-exports"
    with ThreadPoolExecutor(2) as pool:
        sources = list(pool.map(lambda s: export_file(cache, 40, s), range(701, 704)))
    fleet = fleet_factory(concurrency=3)
    worker = fleet.start(0)
    ids = [submit_export(dsn, storage.root, src, OPTIONS)[0] for src in sources]
    _wait(lambda: all(_extracting(dsn, i) for i in ids), 90, "every import to extract")

    attacker = uuid.uuid4()  # a signed-in user with no import of their own
    spoofers = [Spoofer(dsn, "anon", None), Spoofer(dsn, "authenticated", attacker)]
    for s in spoofers:
        s.start()
    try:
        rows = wait_all_final(dsn, ids, timeout=180, fleet=fleet)
    finally:
        for s in spoofers:
            s.stop.set()
        for s in spoofers:
            s.join(timeout=10)
    states = {str(k): (r["status"], r["stage"], r["error"]) for k, r in rows.items()}
    assert all(r["status"] == "complete" for r in rows.values()), states
    aborted = query(dsn, "select count(*) as n from procrastinate_jobs where status = 'aborted'")
    assert aborted == [{"n": 0}]
    assert worker.alive, "the worker died of a notification"
    sent = sum(s.sent for s in spoofers)
    assert sent > 1000
    record_figures(
        "spoofed_notifications",
        {"imports": len(ids), "notifications_sent": sent, "aborted_jobs": 0, "completed": len(ids)},
    )


def test_a_frozen_worker_that_wakes_up_pays_for_nothing_twice(
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    fleet_factory: FleetFactory,
) -> None:
    dsn = audited_dsn
    staged_fake.extract_latency = (0.15, 0.3)
    cache = tmp_path.parent / "chaos-exports"
    with ThreadPoolExecutor(2) as pool:
        sources = list(pool.map(lambda s: export_file(cache, 60, s), range(801, 803)))
    fleet = fleet_factory(concurrency=2)
    frozen = fleet.start(0)
    ids = [submit_export(dsn, storage.root, src, OPTIONS)[0] for src in sources]
    _wait(lambda: all(_extracting(dsn, i, 4) for i in ids), 90, "both imports to extract")
    other = fleet.start(1)

    os.killpg(frozen.proc.pid, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        # The sweeper of the live worker requeues the frozen one's jobs; the live
        # worker takes them (new leases) and checkpoints more chunks.
        other_id = fleet.refresh(other)
        _wait(
            lambda: (
                {j["import_id"] for j in doing_jobs(dsn) if j["worker_id"] == other_id}
                >= {str(i) for i in ids}
            ),
            60,
            "the live worker to take over both extractions",
        )
        before = query(dsn, "select count(*) as n from public.chunk_facts")[0]["n"]
        _wait(
            lambda: query(dsn, "select count(*) as n from public.chunk_facts")[0]["n"] > before + 4,
            60,
            "the live worker to checkpoint chunks",
        )
    finally:
        os.killpg(frozen.proc.pid, signal.SIGCONT)
    woke_at = time.time()
    rows = wait_all_final(dsn, ids, timeout=180, fleet=fleet)
    states = {str(k): (r["status"], r["stage"], r["error"]) for k, r in rows.items()}
    assert all(r["status"] == "complete" for r in rows.values()), states
    assert frozen.alive and other.alive

    check_chunks_and_facts(dsn, ids)
    audit = audit_extractions(dsn, staged_fake, ids)
    assert audit.repeats_after_checkpoint == [], audit.repeats_after_checkpoint[:5]
    overwritten = query(
        dsn, "select count(*) as n from public.chaos_fact_writes where op = 'UPDATE'"
    )[0]["n"]
    assert overwritten == 0
    spent = query(
        dsn,
        "select coalesce(sum(spent_input_tokens), 0) as i, coalesce(sum(spent_output_tokens), 0)"
        " as o from public.imports where id = any(%s)",
        (ids,),
    )[0]
    served_in = sum(c.input_tokens for c in staged_fake.calls(ok=True))
    served_out = sum(c.output_tokens for c in staged_fake.calls(ok=True))
    assert (spent["i"], spent["o"]) == (served_in, served_out)
    record_figures(
        "frozen_worker",
        {
            "frozen_seconds": round(woke_at - frozen_at, 1),
            "imports": len(ids),
            "calls_for_checkpointed_chunks": len(audit.repeats_after_checkpoint),
            "checkpoint_rows_overwritten": overwritten,
            "spent_tokens_equal_served": True,
            "statuses": {r["status"] for r in statuses(dsn, ids).values()},
        },
    )
