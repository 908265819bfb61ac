"""docker-compose.yml cannot run here (no Docker engine): check it against the README instead."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import REPO


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_compose_has_postgres_with_pgvector_and_a_worker() -> None:
    services = _compose()["services"]
    assert set(services) == {"db", "worker"}
    assert "pgvector" in services["db"]["image"]
    worker = services["worker"]
    env = worker["environment"]
    assert "@db:5432/" in env["DATABASE_URL"]
    assert "fullpass migrate" in worker["command"] and "fullpass worker" in worker["command"]
    assert worker["depends_on"]["db"]["condition"] == "service_healthy"
    assert worker["stop_signal"] == "SIGTERM"


def test_readme_documents_the_compose_setup() -> None:
    readme = (REPO / "README.md").read_text()
    assert "docker compose up" in readme
    for name in _compose()["services"]["worker"]["environment"]:
        assert f"`{name}`" in readme, f"{name} is set in docker-compose.yml but not in the README"


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:15])
    assert "make demo" in head and "make test" in head
