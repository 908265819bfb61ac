"""Chaos: one import's map step spread over several worker processes, and
embedding, with workers SIGKILLed while they hold lanes or embed.

Afterwards the import is complete, each chunk has one checkpoint written once,
no chunk was extracted (or embedded) again once its checkpoint was committed,
and the lanes ran on several workers at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.conftest import FleetFactory
from tests.chaos.harness import (
    Fleet,
    audit_extractions,
    check_chunks_and_facts,
    doing_jobs,
    export_file,
    probe,
    submit_export,
    wait_all_final,
    worker_env,
)
from tests.chaos.services import SlowStorage, StagedFake
from tests.conftest import query, stores_embeddings
from tests.fakes.fake_openai_embeddings import FakeOpenAIEmbeddingsServer
from worker.stages import LANE_TASK

pytestmark = pytest.mark.slow

#: Many small pages: lanes on every worker, and a kill lands mid-page.
SPREAD = {"page_chunks": 40, "fanout": 3, "concurrency": 4, "pack_tokens": 2000}


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_spread_map_step_survives_a_killed_lane_and_repeats_nothing(
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    fleet_factory: FleetFactory,
) -> None:
    dsn = audited_dsn
    staged_fake.extract_latency = (0.15, 0.25)
    fleet = fleet_factory(concurrency=2, FULLPASS_EMBEDDINGS="none")
    for slot in range(3):
        fleet.start(slot)
    source = export_file(tmp_path / "exports", 240, seed=31)
    import_id, _ = submit_export(dsn, storage.root, source, SPREAD)

    lanes_seen: set[int] = set()
    peak_workers = 0

    def lanes() -> list[dict[str, object]]:
        return [j for j in doing_jobs(dsn) if j["task_name"] == LANE_TASK]

    def spread() -> bool:
        nonlocal peak_workers
        running = lanes()
        workers = {j["worker_id"] for j in running}
        lanes_seen.update(int(str(j["worker_id"])) for j in running)
        peak_workers = max(peak_workers, len(workers))
        return len(workers) >= 3

    _wait(spread, 60, "lanes on three workers at once")
    # Kill a worker holding a lane once it has checkpointed part of its pages.
    _wait(
        lambda: query(dsn, "select count(*) as n from public.chunk_facts")[0]["n"] > 40,
        60,
        "some checkpoints",
    )
    victim_id = int(str(lanes()[0]["worker_id"]))
    victim = next(wp for wp in fleet.live() if fleet.refresh(wp) == victim_id)
    fleet.kill(victim)
    killed_at = time.time()
    fleet.start(victim.slot, wait_registered=False)

    rows = wait_all_final(dsn, [import_id], 240, fleet)
    assert rows[import_id]["status"] == "complete", rows[import_id]["error"]
    check_chunks_and_facts(dsn, [import_id])
    audit = audit_extractions(dsn, staged_fake, [import_id])
    assert audit.unmatched_calls == 0
    assert max(audit.writes_per_chunk.values()) == 1, "a chunk's facts were written twice"
    assert audit.repeats_after_checkpoint == [], audit.repeats_after_checkpoint[:5]
    # Only the calls of the killed lane that were in flight may be repeated.
    assert audit.repeated(import_id) <= SPREAD["concurrency"] * audit.max_members
    pages = query(
        dsn,
        "select count(*) as n, count(*) filter (where attempts > 1) as retaken"
        " from public.import_pages where import_id = %s and stage = 'extract'",
        (import_id,),
    )[0]
    assert pages["n"] >= 6 and pages["retaken"] >= 1, pages
    assert peak_workers == 3
    assert killed_at > 0


@pytest.fixture
def slow_embeddings() -> Iterator[FakeOpenAIEmbeddingsServer]:
    with FakeOpenAIEmbeddingsServer() as server:
        server.latency = 0.15
        yield server


def test_a_worker_killed_mid_embed_never_pays_a_stored_batch_twice(
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    slow_embeddings: FakeOpenAIEmbeddingsServer,
) -> None:
    dsn = audited_dsn
    if not stores_embeddings(dsn):
        pytest.skip("pgvector is not installed on this server")
    env = worker_env(
        dsn,
        tmp_path,
        staged_fake,
        {
            **storage.env(),
            **slow_embeddings.settings_env("text-embedding-3-small"),
            "FULLPASS_EMBEDDINGS_DIMENSION": "256",
            "FULLPASS_EMBEDDINGS_BATCH": "8",
            "FULLPASS_EMBEDDINGS_CONCURRENCY": "2",
        },
    )
    fleet = Fleet(dsn, env, tmp_path, concurrency=2)
    try:
        worker = fleet.start(0)
        source = export_file(tmp_path / "exports", 120, seed=32)
        import_id, _ = submit_export(dsn, storage.root, source, {"page_chunks": 100000})

        def embedded() -> int:
            rows = probe(
                dsn,
                "select count(*) filter (where embedding is not null) as n"
                " from public.import_chunks where import_id = %s",
                (import_id,),
            )
            return int(rows[0]["n"]) if rows else 0

        _wait(lambda: embedded() >= 24, 120, "some stored embeddings")
        fleet.kill(worker)
        stored = {
            r["text"]
            for r in query(
                dsn,
                "select title || E'\\n\\n' || content as text from public.import_chunks"
                " where import_id = %s and embedding is not null",
                (import_id,),
            )
        }
        sent_before = len(slow_embeddings.requests)
        fleet.start(0)
        rows = wait_all_final(dsn, [import_id], 240, fleet)
        assert rows[import_id]["status"] == "complete", rows[import_id]["error"]
        later = [t for r in slow_embeddings.requests[sent_before:] if r.ok for t in r.texts]
        assert not stored & set(later), "a stored embedding was paid for again"
        published = query(
            dsn,
            "select count(*) filter (where embedding_model = 'text-embedding-3-small') as n,"
            " count(*) as total from public.conversation_chunks where import_id = %s",
            (import_id,),
        )[0]
        assert published["n"] == published["total"] == rows[import_id]["chunk_count"]
        # At most the batches in flight at the kill were paid twice.
        texts = [t for r in slow_embeddings.requests if r.ok for t in r.texts]
        assert len(texts) - len(set(texts)) <= 2 * 8
        assert uuid.UUID(str(import_id))
    finally:
        fleet.close()
