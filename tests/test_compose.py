"""Dockerfile and docker-compose.yml cannot run here (no Docker engine).

They are checked as files instead: their invariants, and against the lock,
the worker's shutdown timing and the README.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from worker import service


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


@dataclass
class Instruction:
    stage: int  # index of the FROM it belongs to
    name: str
    args: str


def _dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        name, _, args = line.partition(" ")
        if name.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, name.upper(), " ".join(args.split())))
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


def _stage(n: int) -> list[Instruction]:
    return [i for i in _dockerfile() if i.stage == n]


def _final_stage() -> list[Instruction]:
    return _stage(max(i.stage for i in _dockerfile()))


def _one(instructions: list[Instruction], name: str) -> Instruction:
    found = [i for i in instructions if i.name == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {len(found)}"
    return found[0]


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(a + u for a, u in parts) == duration, f"odd duration {duration!r}"
    return sum(float(a) * units[u] for a, u in parts)


# --------------------------------------------------------------------------- compose


def test_compose_has_postgres_a_migration_and_workers() -> None:
    services = _compose()["services"]
    assert set(services) == {"db", "migrate", "worker"}
    assert "pgvector" in services["db"]["image"]
    for name in ("migrate", "worker"):
        svc = services[name]
        assert "@db:5432/" in svc["environment"]["DATABASE_URL"]
        assert svc["depends_on"]["db"]["condition"] == "service_healthy"


def test_workers_and_migration_run_the_image_built_from_the_dockerfile() -> None:
    services = _compose()["services"]
    images = set()
    for name in ("migrate", "worker"):
        svc = services[name]
        build = svc["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert context in {".", "./"}, f"{name} must be built from the repository's Dockerfile"
        if isinstance(build, dict):
            assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert "entrypoint" not in svc, f"{name} must keep the image's ENTRYPOINT"
        assert not re.search(r"\bpip\b", json.dumps(svc)), f"{name} installs at start"
        images.add(svc.get("image"))
    assert len(images) == 1, "migrate and worker must run the same image"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["worker"]["command"] == ["worker"]


def test_migration_runs_once_before_the_workers() -> None:
    services = _compose()["services"]
    migrate, worker = services["migrate"], services["worker"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate.get("restart", "no") == "no"
    assert migrate["healthcheck"] == {"disable": True}


def test_the_worker_can_be_scaled() -> None:
    worker = _compose()["services"]["worker"]
    assert "container_name" not in worker, "a fixed name allows one container only"
    assert "ports" not in worker, "a published port allows one container per host only"


def test_the_worker_is_health_checked_and_stops_gracefully() -> None:
    worker = _compose()["services"]["worker"]
    check = worker["healthcheck"]
    assert check["test"] == ["CMD", "fullpass", "health"]
    # `fullpass health` gives up on the database after 10 s.
    assert _seconds(check["timeout"]) > 10
    assert worker["stop_signal"] == "SIGTERM"
    # The worker waits for running jobs for at most this long after SIGTERM (less
    # when FULLPASS_STALLED_SECONDS is under 60), then aborts them and closes.
    graceful = inspect.signature(service.run_worker).parameters["shutdown_graceful_timeout"]
    assert _seconds(worker["stop_grace_period"]) >= graceful.default + 10


SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.I)


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"sk-ant|eyJ[A-Za-z0-9_-]{10,}", text), "a key in docker-compose.yml"
    for name, svc in _compose()["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(var):
                assert re.fullmatch(r"\$\{[A-Z_]+(:-[^}]*)?\}", str(value)), (
                    f"{name}: {var} must come from the environment (${{{var}}})"
                )
            if var == "DATABASE_URL":
                password = re.match(r"postgres(?:ql)?://[^:@/]+:([^@]*)@", str(value))
                assert password is None or password.group(1).startswith("${"), (
                    f"{name}: the password in DATABASE_URL must come from the environment"
                )
    # Real keys are passed through, empty by default.
    env = _compose()["services"]["worker"]["environment"]
    assert env["ANTHROPIC_API_KEY"] == "${ANTHROPIC_API_KEY:-}"


# --------------------------------------------------------------------------- Dockerfile


def test_the_image_is_built_in_two_stages_from_the_runtime_lock() -> None:
    instructions = _dockerfile()
    froms = [i for i in instructions if i.name == "FROM"]
    assert len(froms) == 2
    assert re.fullmatch(r"\S+ AS build", froms[0].args, re.I)
    build = _stage(0)
    runs = " ".join(i.args for i in build if i.name == "RUN")
    assert "--require-hashes -r requirements/build-lock.txt" in runs
    assert "--require-hashes --only-binary=:all: -r requirements/lock.txt" in runs
    assert "--no-deps --no-build-isolation ." in runs
    # Only the lock goes in before the dependencies are installed: a code change
    # must not invalidate that layer.
    first_install = next(
        n for n, i in enumerate(build) if i.name == "RUN" and "requirements/lock.txt" in i.args
    )
    copied = [i.args for i in build[:first_install] if i.name == "COPY"]
    assert copied == ["requirements/build-lock.txt requirements/lock.txt requirements/"]


def test_the_base_image_is_python_311_slim_like_the_lock() -> None:
    arg = next(i for i in _dockerfile() if i.name == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    image = arg.args.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", image)
    lock_header = (REPO / "requirements" / "lock.txt").read_text().splitlines()[1]
    assert "--python-version 3.11" in lock_header
    assert all(i.args.startswith("${PYTHON_IMAGE}") for i in _dockerfile() if i.name == "FROM")


def test_the_runtime_stage_runs_unprivileged_without_compilers() -> None:
    final = _final_stage()
    user = _one(final, "USER").args
    assert user not in {"root", "0"} and not user.startswith(("root:", "0:"))
    names = [i.name for i in final]
    assert names.index("USER") < names.index("ENTRYPOINT")
    runs = " ".join(i.args for i in final if i.name == "RUN")
    assert "apt-get" not in runs and "pip" not in runs, "the runtime stage installs nothing"
    copies = [i.args for i in final if i.name == "COPY"]
    assert copies == ["--from=build /opt/fullpass /opt/fullpass"]


def test_fullpass_home_is_a_volume_the_user_owns() -> None:
    final = _final_stage()
    env = " ".join(i.args for i in final if i.name == "ENV")
    home = re.search(r"FULLPASS_HOME=(\S+)", env)
    assert home
    assert json.loads(_one(final, "VOLUME").args) == [home.group(1)]
    runs = " ".join(i.args for i in final if i.name == "RUN")
    user = _one(final, "USER").args
    assert re.search(rf"install -d -o {user} -g {user} [^&]*{re.escape(home.group(1))}", runs)


def test_entrypoint_command_healthcheck_and_stop_signal() -> None:
    final = _final_stage()
    assert json.loads(_one(final, "ENTRYPOINT").args) == ["fullpass"]
    assert json.loads(_one(final, "CMD").args) == ["worker"]
    assert _one(final, "STOPSIGNAL").args == "SIGTERM"
    check = _one(final, "HEALTHCHECK").args
    options, _, command = check.partition(" CMD ")
    assert json.loads(command) == ["fullpass", "health"]
    timeout = re.search(r"--timeout=(\S+)", options)
    assert timeout and _seconds(timeout.group(1)) > 10


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".git", ".venv", ".test-home", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert entry in ignored, f".dockerignore must exclude {entry}"
    assert {"bench", "bench/results"} & ignored
    assert "**/__pycache__" in ignored
    # Everything the Dockerfile copies from the context exists and is not ignored.
    for instr in _dockerfile():
        if instr.name != "COPY" or instr.args.startswith("--from"):
            continue
        for source in instr.args.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            top = source.split("/")[0]
            assert top not in ignored and source not in ignored, f"{source} is in .dockerignore"


@pytest.mark.parametrize("name", ["DATABASE_URL", "ANTHROPIC_API_KEY", "SUPABASE_SERVICE_ROLE_KEY"])
def test_the_image_carries_no_secret(name: str) -> None:
    env = " ".join(i.args for i in _dockerfile() if i.name in {"ENV", "ARG"})
    assert name not in env


# --------------------------------------------------------------------------- README


def test_readme_documents_the_compose_setup() -> None:
    readme = (REPO / "README.md").read_text()
    assert "docker compose up" in readme
    assert "--scale worker=" in readme
    for name in _compose()["services"]["worker"]["environment"]:
        assert f"`{name}`" in readme, f"{name} is set in docker-compose.yml but not in the README"


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:15])
    assert "make demo" in head and "make test" in head
