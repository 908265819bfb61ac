"""Chaos: three worker processes share one organisation's rate limit.

The fake Messages API enforces a requests-per-minute limit far below what the
fleet would send (three workers, two jobs each, three calls in flight per
import); the workers draw from the budget in PostgreSQL (FULLPASS_RATE_RPM)
and so keep to it: every import completes, under 2 % of the calls get a 429,
and the fleet's calls go through at close to the limit.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.chaos.conftest import FleetFactory
from tests.chaos.harness import export_file, record_figures, submit_export, wait_all_final
from tests.chaos.services import SlowStorage, StagedFake
from tests.conftest import query

pytestmark = pytest.mark.slow

WORKERS = 3
LIMIT_RPM = 240  # 4 a second
#: The organisation's burst (the API may allow a minute's worth; here 10 s), and
#: the budget's, smaller: bursts are where a fleet overshoots.
FAKE_BURST_S = 10.0
BUDGET_BURST_S = 5.0
#: What the steady rate is measured over: after the bursts, before the tail.
SETTLE_S = 10.0
OPTIONS = {"concurrency": 3, "pack_tokens": 600}


def test_a_fleet_keeps_to_the_organisations_rate_limit(
    audited_dsn: str,
    tmp_path: Path,
    staged_fake: StagedFake,
    storage: SlowStorage,
    fleet_factory: FleetFactory,
) -> None:
    dsn = audited_dsn
    staged_fake.extract_latency = (0.2, 0.3)
    staged_fake.set_rate_limits(rpm=LIMIT_RPM, burst_seconds=FAKE_BURST_S)
    storage.download_seconds = 0.2
    storage.callback_seconds = 0.05
    cache = tmp_path.parent / "chaos-exports"
    sources = [export_file(cache, 40, seed) for seed in range(701, 707)]
    fleet = fleet_factory(
        concurrency=2,
        FULLPASS_RATE_RPM=str(LIMIT_RPM),
        FULLPASS_RATE_BURST_SECONDS=str(BUDGET_BURST_S),
        FULLPASS_FANOUT="1",
        FULLPASS_EMBEDDINGS="none",
    )
    for slot in range(WORKERS):
        fleet.start(slot)
    ids: list[uuid.UUID] = [
        submit_export(dsn, storage.root, source, OPTIONS)[0] for source in sources
    ]
    rows = wait_all_final(dsn, ids, timeout=240, fleet=fleet)
    assert {r["status"] for r in rows.values()} == {"complete"}, rows

    messages = [r for r in staged_fake.requests if r.path == "/v1/messages"]
    answered = sorted(r.started for r in messages if r.status == 200)
    refused = staged_fake.rate_limited()
    assert len(answered) >= 150  # enough calls for the rate to mean something
    share = len(refused) / len(messages)
    assert share < 0.02, f"{len(refused)} of {len(messages)} calls got a 429"

    # Demand stays above the limit until the imports run out of calls: over the
    # middle of the run, the calls go at close to the limit, never above it.
    start, end = answered[0] + SETTLE_S, answered[int(len(answered) * 0.9)]
    steady = [t for t in answered if start <= t <= end]
    rpm = len(steady) / (end - start) * 60
    record_figures(
        "rate_limits",
        {
            "limit_rpm": LIMIT_RPM,
            "calls": len(messages),
            "answered": len(answered),
            "rate_limited": len(refused),
            "rate_limited_share": round(share, 4),
            "steady_rpm": round(rpm, 1),
            "run_s": round(answered[-1] - answered[0], 1),
            "max_in_flight": staged_fake.max_in_flight,
        },
    )
    assert 0.8 * LIMIT_RPM <= rpm <= 1.05 * LIMIT_RPM, f"{rpm:.0f} calls a minute"
    budget = query(dsn, "select rpm, draws from public.fullpass_rate_budget")
    assert budget == [{"rpm": LIMIT_RPM, "draws": budget[0]["draws"]}]
    assert budget[0]["draws"] >= len(messages)
