"""Fixtures of the chaos tests: the slow services and a fleet of worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Fleet, install_audit, worker_env
from tests.chaos.services import SlowStorage, StagedFake

FleetFactory = Callable[..., Fleet]


@pytest.fixture
def staged_fake() -> Iterator[StagedFake]:
    """A fake Messages API of this test's own (per-kind latency), on 127.0.0.1."""
    with StagedFake() as fake:
        yield fake


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SlowStorage]:
    with SlowStorage(tmp_path / "storage") as s:
        yield s


@pytest.fixture
def audited_dsn(db_dsn: str) -> str:
    install_audit(db_dsn)
    return db_dsn


@pytest.fixture
def fleet_factory(
    audited_dsn: str, tmp_path: Path, staged_fake: StagedFake, storage: SlowStorage
) -> Iterator[FleetFactory]:
    """Builds fleets of worker processes; every process is SIGKILLed at teardown."""
    fleets: list[Fleet] = []

    def make(concurrency: int = 2, **extra: str) -> Fleet:
        env = worker_env(audited_dsn, tmp_path, staged_fake, {**storage.env(), **extra})
        fleet = Fleet(audited_dsn, env, tmp_path, concurrency=concurrency)
        fleets.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.close()
