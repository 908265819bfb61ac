"""Concurrency per import and per worker process, counted at the fake Messages API."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.fakes.fake_anthropic import FakeAnthropicServer
from tests.helpers import gen_export, running_worker, submit, wait_status
from worker.llm import limiter as limiter_module

#: Small packs: each import makes a few dozen extraction calls.
PACK_TOKENS = 600


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("exports")
    return [
        gen_export(root / f"export-{seed}.zip", zipped=True, conversations=40, seed=seed)
        for seed in range(4)
    ]


async def run_imports(
    db_dsn: str,
    tmp_path: Path,
    fake: FakeAnthropicServer,
    exports: list[Path],
    *,
    concurrency: int,
    global_concurrency: int,
) -> None:
    limiter_module._GLOBAL.clear()  # sized by this worker's settings
    fake.latency = 0.15
    settings = make_settings(
        db_dsn,
        tmp_path,
        **fake.settings_env(),
        FULLPASS_CONCURRENCY=concurrency,
        FULLPASS_GLOBAL_CONCURRENCY=global_concurrency,
        FULLPASS_FANOUT=1,
        FULLPASS_EMBEDDINGS="none",
    )
    options = json.dumps({"pack_tokens": PACK_TOKENS})
    ids = [submit(settings, uuid.uuid4(), export, options) for export in exports]
    async with running_worker(settings, concurrency=len(ids)) as worker:
        for import_id in ids:
            row = await wait_status(
                db_dsn, import_id, ("complete", "failed"), timeout=120, worker=worker
            )
            assert row["status"] == "complete", row["error"]
    assert len(fake.calls("extract")) >= 4 * 8


async def test_concurrency_bounds_each_import_not_the_process(
    db_dsn: str, tmp_path: Path, fake_anthropic: FakeAnthropicServer, exports: list[Path]
) -> None:
    """Four imports of concurrency 2 in one worker: up to 8 calls at once, never more."""
    await run_imports(
        db_dsn, tmp_path, fake_anthropic, exports, concurrency=2, global_concurrency=20
    )
    assert 2 < fake_anthropic.max_in_flight <= 8


async def test_global_concurrency_bounds_the_process(
    db_dsn: str, tmp_path: Path, fake_anthropic: FakeAnthropicServer, exports: list[Path]
) -> None:
    """Four imports of concurrency 5 in a worker capped at 7: 7 calls at once, never more."""
    await run_imports(
        db_dsn, tmp_path, fake_anthropic, exports, concurrency=5, global_concurrency=7
    )
    assert 5 < fake_anthropic.max_in_flight <= 7
